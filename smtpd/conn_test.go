package smtpd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/user"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mta/spool"
)

// firstLine dials kind from source and returns the server's first line
// ("" if it closed without one).
func (ts *testServer) firstLine(kind Kind, source string) (string, net.Conn) {
	ts.t.Helper()
	conn := ts.rawConn(kind, source)
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second)) // a hung test fails instead
	line, _ := bufio.NewReader(conn).ReadString('\n')
	return line, conn
}

// eventually polls cond until it holds or 10 s pass.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestConnectionLimits(t *testing.T) {
	t.Run("per address, with trusted networks exempt", func(t *testing.T) {
		ts := startServer(t, func(c *Config) {
			c.TrustedNetworks = mustPrefixes("127.0.0.1/32")
			c.Limits.ConnsPerIP = 3
		})
		var open []net.Conn
		for range 3 {
			line, conn := ts.firstLine(Relay, "127.0.0.2")
			if !strings.HasPrefix(line, "220 ") {
				t.Fatalf("connection under the limit got %q", line)
			}
			open = append(open, conn)
		}
		line, _ := ts.firstLine(Relay, "127.0.0.2")
		if line != "421 4.7.0 Too many connections, try again later\r\n" {
			t.Fatalf("connection over the limit got %q", line)
		}
		for range 5 {
			if line, _ := ts.firstLine(Relay, "127.0.0.1"); !strings.HasPrefix(line, "220 ") {
				t.Fatalf("trusted client got %q", line)
			}
		}
		open[0].Close()
		eventually(t, "the slot to be released", func() bool {
			line, conn := ts.firstLine(Relay, "127.0.0.2")
			conn.Close()
			return strings.HasPrefix(line, "220 ")
		})
	})
	t.Run("flood over the total", func(t *testing.T) {
		ts := startServer(t, func(c *Config) { c.Limits.ConnsTotal = 10 })
		const n = 60
		lines := make(chan string, n)
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				line, _ := ts.firstLine(Relay, "127.0.0.3")
				lines <- line
			})
		}
		wg.Wait()
		close(lines)
		got := map[string]int{}
		for l := range lines {
			got[l[:4]]++
		}
		if got["220 "] != 10 || got["421 "] != n-10 {
			t.Errorf("replies %v, want 10 greetings and %d refusals", got, n-10)
		}
		if r := ts.obs.get(func() int { return ts.obs.refused }); r != n-10 {
			t.Errorf("observer counted %d refusals", r)
		}
	})
}

func TestTimeouts(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		c.Timeouts = Timeouts{Command: time.Second, TLSHandshake: time.Second, DataIdle: 300 * time.Millisecond, Data: time.Hour}
	})
	t.Run("idle command", func(t *testing.T) {
		s := ts.raw(Relay, "")
		s.expect("421 4.4.2")
		s.closed()
	})
	t.Run("idle in DATA; the rest is never read as commands", func(t *testing.T) {
		s := ts.raw(Relay, "")
		s.write("EHLO client.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
		s.expect("250 ")
		s.expect("250 ")
		s.expect("250 ")
		s.expect("354 ")
		s.write("Subject: slow\r\n\r\nhalf a mess")
		s.expect("421 4.4.2 Timeout reading message data")
		s.write("age\r\n.\r\nNOOP\r\n")
		s.expect("421 4.4.2")
		s.closed()
		if n := ts.messages(); n != 0 {
			t.Errorf("%d messages stored", n)
		}
	})
	t.Run("TLS handshake on 465", func(t *testing.T) {
		line, _ := ts.firstLine(Submissions, "") // a plain client that never starts TLS
		if line != "" {
			t.Errorf("got %q before any TLS", line)
		}
	})
	t.Run("TLS handshake after STARTTLS", func(t *testing.T) {
		s := ts.raw(Submission, "")
		s.write("STARTTLS\r\n")
		s.expect("220 2.0.0")
		s.closed()
	})
}

func TestDataOverallCap(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		c.Timeouts = Timeouts{DataIdle: 10 * time.Second, Data: 300 * time.Millisecond}
	})
	s := ts.raw(Relay, "")
	s.write("EHLO client.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	for _, w := range []string{"250 ", "250 ", "250 ", "354 "} {
		s.expect(w)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // a client that keeps sending, slowly
		defer close(done)
		for range 2000 {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if _, err := s.conn.Write([]byte("x\r\n")); err != nil {
				return
			}
		}
	}()
	s.expect("421 4.4.2 Timeout reading message data")
	close(stop)
	<-done
}

func TestSpoolFailures(t *testing.T) {
	t.Run("closed spool", func(t *testing.T) {
		ts := startServer(t)
		c := ts.dial(Relay, "")
		if err := ts.spool.Close(); err != nil {
			t.Fatal(err)
		}
		_, err := send(c, "a@example.test", nil, []string{"b@example.test"}, "Subject: x\r\n\r\nx\r\n")
		wantCode(t, err, 451, "4.3.0")
	})
	t.Run("no space", func(t *testing.T) {
		ts := startServerWithSpool(t, spool.Options{MinFreeBytes: 1 << 62})
		c := ts.dial(Relay, "")
		_, err := send(c, "a@example.test", nil, []string{"b@example.test"}, "Subject: x\r\n\r\n"+stringsRepeatLines(2000, 80))
		wantCode(t, err, 452, "4.3.1")
	})
	t.Run("too big for the spool", func(t *testing.T) {
		ts := startServerWithSpool(t, spool.Options{MaxMessageBytes: 1000})
		c := ts.dial(Relay, "")
		_, err := send(c, "a@example.test", nil, []string{"b@example.test"}, "Subject: x\r\n\r\n"+stringsRepeatLines(20, 80))
		wantCode(t, err, 552, "5.3.4")
		if n := ts.messages(); n != 0 {
			t.Errorf("%d messages stored", n)
		}
	})
}

func TestSpoolReplyMapping(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int
	}{
		{spool.ErrNoSpace, 452}, {spool.ErrTooBig, 552}, {spool.ErrClosed, 451},
		{errors.New("disk on fire"), 451}, {context.DeadlineExceeded, 451},
	} {
		if got := spoolReply(tc.err); got.Code != tc.code || strings.Contains(got.Message, "fire") {
			t.Errorf("%v: %d %q", tc.err, got.Code, got.Message)
		}
	}
}

func TestLocalSocket(t *testing.T) {
	me, err := user.Current()
	if err != nil {
		t.Skipf("no current user: %v", err)
	}
	uid := os.Getuid()
	t.Run("untrusted user sends as login@myorigin", func(t *testing.T) {
		ts := startServer(t)
		c := ts.dial(Local, "")
		id := mustSend(t, c, "", []string{"anyone@example.test"}, "Subject: cron\r\n\r\noutput\r\n")
		m, body := ts.stored(id)
		if want := me.Username + "@origin.test"; m.Envelope.Sender != want {
			t.Errorf("sender %q, want %q", m.Envelope.Sender, want)
		}
		if o := m.Envelope.Origin; o.UID != uid || o.Listener != "local" || o.ClientIP != "" {
			t.Errorf("origin %+v", o)
		}
		if !strings.HasPrefix(body, "Received: from client.test (uid "+strconv.Itoa(uid)+")\r\n\tby mx.test (mta) with ESMTP id "+id) {
			t.Errorf("Received field:\n%s", body)
		}
		mustSend(t, c, me.Username+"@origin.test", []string{"anyone@example.test"}, "Subject: x\r\n\r\nx\r\n")
		_, err := send(c, "boss@example.test", nil, []string{"anyone@example.test"}, "Subject: x\r\n\r\nx\r\n")
		wantCode(t, err, 553, "5.7.1")
	})
	for _, trusted := range []string{strconv.Itoa(uid), me.Username} {
		t.Run("trusted user "+trusted+" may use any sender", func(t *testing.T) {
			ts := startServer(t, func(c *Config) { c.SendmailTrustedUsers = []string{trusted} })
			c := ts.dial(Local, "")
			m, _ := ts.stored(mustSend(t, c, "boss@example.test", []string{"a@example.test"}, "Subject: x\r\n\r\nx\r\n"))
			if m.Envelope.Sender != "boss@example.test" {
				t.Errorf("sender %q", m.Envelope.Sender)
			}
			m, _ = ts.stored(mustSend(t, c, "", []string{"a@example.test"}, "Subject: x\r\n\r\nx\r\n"))
			if m.Envelope.Sender != "" {
				t.Errorf("null sender became %q", m.Envelope.Sender)
			}
		})
	}
	t.Run("unknown trusted user name", func(t *testing.T) {
		_, err := New(Config{Hostname: testHost, Spool: &spool.Spool{}, SendmailTrustedUsers: []string{"no-such-user-here"}})
		if err == nil {
			t.Error("New accepted an unknown user name")
		}
	})
}

func TestPTR(t *testing.T) {
	slow := func(ctx context.Context, _ netip.Addr) (string, error) { <-ctx.Done(); return "", ctx.Err() }
	cases := []struct {
		name   string
		lookup func(context.Context, netip.Addr) (string, error)
		cached func(netip.Addr) (string, bool)
		want   string
	}{
		// A cache hit is used without a lookup (slow would say unknown); a
		// miss falls back to the lookup.
		{"cached name", slow, func(netip.Addr) (string, bool) { return "cached.ptr.test", true }, "(cached.ptr.test [127.0.0.1])"},
		{"cached none", slow, func(netip.Addr) (string, bool) { return "", true }, "(unknown [127.0.0.1])"},
		{"cache miss", func(context.Context, netip.Addr) (string, error) { return "looked.ptr.test", nil },
			func(netip.Addr) (string, bool) { return "", false }, "(looked.ptr.test [127.0.0.1])"},
		{"name", func(context.Context, netip.Addr) (string, error) { return "client.ptr.test.", nil }, nil, "(client.ptr.test [127.0.0.1])"},
		{"failure", func(context.Context, netip.Addr) (string, error) { return "", errors.New("SERVFAIL") }, nil, "(unknown [127.0.0.1])"},
		{"timeout", slow, nil, "(unknown [127.0.0.1])"},
		{"hostile name", func(context.Context, netip.Addr) (string, error) { return "a;b)\r\nX-Evil: 1", nil }, nil, "(a?b???X-Evil:?1 [127.0.0.1])"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, func(c *Config) { c.LookupPTR, c.CachedPTR = tc.lookup, tc.cached })
			c := ts.dial(Relay, "")
			_, body := ts.stored(mustSend(t, c, "a@example.test", []string{"b@example.test"}, "Subject: x\r\n\r\nx\r\n"))
			if first, _, _ := strings.Cut(body, "\r\n"); first != "Received: from client.test "+tc.want {
				t.Errorf("got %q", first)
			}
		})
	}
}

func TestShutdown(t *testing.T) {
	ts := startServer(t)
	idle := ts.raw(Relay, "")
	idle.write("EHLO client.test\r\n")
	idle.expect("250 ")
	busy := ts.raw(Relay, "")
	busy.write("EHLO client.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n")
	busy.expect("250 ")
	busy.expect("250 ")
	busy.expect("250 ")
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done <- ts.srv.Shutdown(ctx)
	}()
	idle.expect("421 4.3.2 Service shutting down")
	idle.closed()
	busy.write("DATA\r\n")
	busy.expect("354 ")
	busy.write("Subject: last one\r\n\r\nx\r\n.\r\n")
	busy.expect("250 2.0.0 Ok: queued as ")
	busy.expect("421 4.3.2")
	if err := <-done; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if _, err := net.Dial("tcp", ts.addr[Relay]); err == nil {
		t.Error("still accepting after Shutdown")
	}
	if err := ts.srv.Serve(mustListen(t), Relay); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after Shutdown: %v", err)
	}
}

func mustListen(t *testing.T) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func TestDataConcurrency(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Limits.DataConcurrency = 1 })
	first := ts.session(Relay)
	first.write("MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	for _, w := range []string{"250 ", "250 ", "354 "} {
		first.expect(w)
	}
	first.write("Subject: slow\r\n\r\nstill sending")
	eventually(t, "the first DATA phase", func() bool { return ts.srv.data.Load() == 1 })
	second := ts.dial(Relay, "")
	_, err := send(second, "a@example.test", nil, []string{"b@example.test"}, "Subject: x\r\n\r\nx\r\n")
	wantCode(t, err, 451, "4.3.2")
	first.write("\r\n.\r\n")
	first.expect("250 2.0.0 Ok: queued as ")
	mustSend(t, second, "a@example.test", []string{"b@example.test"}, "Subject: x\r\n\r\nx\r\n")
}

func TestHELOProtocol(t *testing.T) {
	ts := startServer(t)
	s := ts.raw(Relay, "")
	s.write("HELO old.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	for _, w := range []string{"250 ", "250 ", "250 ", "354 "} {
		s.expect(w)
	}
	s.write("Subject: x\r\n\r\nx\r\n.\r\n")
	lines := s.expect("250 2.0.0 Ok: queued as ")
	id := queuedRe.FindStringSubmatch(lines[0])[1]
	_, body := ts.stored(id)
	if !strings.HasPrefix(body, "Received: from old.test (unknown [127.0.0.1])\r\n\tby mx.test (mta) with SMTP id "+id) {
		t.Errorf("Received field:\n%s", body)
	}
	s2 := ts.raw(Relay, "")
	s2.write("EHLO client.test\r\nSTARTTLS\r\n")
	s2.expect("250 ")
	s2.expect("220 ")
	s2.startTLS(ts)
	s2.write("EHLO client.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	for _, w := range []string{"250 ", "250 ", "250 ", "354 "} {
		s2.expect(w)
	}
	s2.write("Subject: x\r\n\r\nx\r\n.\r\n")
	lines = s2.expect("250 2.0.0 Ok: queued as ")
	_, body = ts.stored(queuedRe.FindStringSubmatch(lines[0])[1])
	if !strings.Contains(body, "with ESMTPS id") {
		t.Errorf("relay over STARTTLS:\n%s", body)
	}
}

// panicky is an Observer whose first MessageAccepted panics inside the
// DATA hook.
type panicky struct {
	*countingObserver
	done *atomic.Bool
}

func (p panicky) MessageAccepted(string, int64, int) {
	if !p.done.Swap(true) {
		panic("observer bug")
	}
}

func TestPanicRecovered(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Observer = panicky{c.Observer.(*countingObserver), new(atomic.Bool)} })
	s := ts.session(Relay)
	s.write("MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
	for _, w := range []string{"250 ", "250 ", "354 "} {
		s.expect(w)
	}
	s.write("Subject: x\r\n\r\nx\r\n.\r\nNOOP\r\n")
	s.expect("421 4.3.0")
	s.closed()
	if n := ts.obs.get(func() int { return ts.obs.panics }); n != 1 {
		t.Errorf("%d panics counted, want 1", n)
	}
	ts.obs.do(func() { ts.obs.panics = 0 }) // expected here; the cleanup check is for the others
	mustSend(t, ts.dial(Relay, ""), "a@example.test", []string{"b@example.test"}, "Subject: x\r\n\r\nx\r\n")
}

// TestShutdownRacingServe: Serve returns after a Shutdown that ran before
// its accept loop started.
func TestShutdownRacingServe(t *testing.T) {
	ts := startServer(t)
	for i := range 20 {
		srv, err := New(Config{Hostname: testHost, Spool: ts.spool, TLS: ts.srv.tls})
		if err != nil {
			t.Fatal(err)
		}
		ln := mustListen(t)
		served := make(chan error, 1)
		go func() { served <- srv.Serve(ln, Submission) }()
		if i%2 == 0 {
			runtime.Gosched()
		}
		if err := srv.Shutdown(context.Background()); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		select {
		case err := <-served:
			if !errors.Is(err, ErrServerClosed) {
				t.Fatalf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Serve did not return after Shutdown")
		}
	}
}

// TestTLSVersions: a TLS config that allows older versions is raised to
// TLS 1.2, on port 465 and after STARTTLS.
func TestTLSVersions(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.TLS.MinVersion = tls.VersionTLS10 })
	client := func(minV, maxV uint16) *tls.Config {
		c := ts.clientTLS()
		c.MinVersion, c.MaxVersion = minV, maxV
		return c
	}
	handshake := func(t *testing.T, kind Kind, cfg *tls.Config) (*tls.Conn, error) {
		t.Helper()
		conn := ts.rawConn(kind, "")
		_ = conn.SetDeadline(time.Now().Add(20 * time.Second)) // a hung test fails instead
		if kind == Submission {
			s := &rawSession{t: t, conn: conn, r: bufio.NewReader(conn)}
			s.expect("220 ")
			s.write("EHLO client.test\r\nSTARTTLS\r\n")
			s.expect("250 ")
			s.expect("220 2.0.0")
		}
		tc := tls.Client(conn, cfg)
		return tc, tc.Handshake()
	}
	for _, kind := range []Kind{Submissions, Submission} {
		t.Run(kind.String()+" refuses TLS 1.1", func(t *testing.T) {
			if _, err := handshake(t, kind, client(tls.VersionTLS10, tls.VersionTLS11)); err == nil {
				t.Error("TLS 1.1 handshake succeeded")
			}
		})
		t.Run(kind.String()+" takes TLS 1.2", func(t *testing.T) {
			tc, err := handshake(t, kind, client(tls.VersionTLS12, tls.VersionTLS12))
			if err != nil {
				t.Fatal(err)
			}
			if v := tc.ConnectionState().Version; v != tls.VersionTLS12 {
				t.Errorf("version %x", v)
			}
		})
	}
}
