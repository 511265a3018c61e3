package smtpd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"mta/internal/selfsigned"
	"mta/spool"
)

const (
	testHost     = "mx.test"
	testLogin    = "abc"
	testPassword = "correct horse battery staple"
)

// testUsers: abc owns zbird1@163.example and all of own.example; the
// login itself is not an address.
func testUsers(t testing.TB) *Users {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(testPassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	u, err := ParseUsers([]byte("# test users\n" + testLogin + ":" + string(h) + ":zbird1@163.example,@own.example\n"))
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// countingObserver counts the events the tests look at.
type countingObserver struct {
	mu       sync.Mutex
	opened   int
	closed   int
	refused  int
	replies  map[int]int
	accepted int
	authFail int
	panics   int
}

func (o *countingObserver) do(f func()) { o.mu.Lock(); f(); o.mu.Unlock() }

func (o *countingObserver) ConnOpened(string)  { o.do(func() { o.opened++ }) }
func (o *countingObserver) ConnClosed(string)  { o.do(func() { o.closed++ }) }
func (o *countingObserver) ConnRefused(string) { o.do(func() { o.refused++ }) }
func (o *countingObserver) Reply(_ string, code int) {
	o.do(func() {
		if o.replies == nil {
			o.replies = map[int]int{}
		}
		o.replies[code]++
	})
}
func (o *countingObserver) MessageAccepted(string, int64, int) { o.do(func() { o.accepted++ }) }
func (o *countingObserver) AuthFailed(string)                  { o.do(func() { o.authFail++ }) }
func (o *countingObserver) Panicked(string)                    { o.do(func() { o.panics++ }) }

func (o *countingObserver) get(f func() int) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return f()
}

// testServer is a Server with a real spool in a temporary directory and
// every kind of listener on loopback.
type testServer struct {
	t     testing.TB
	srv   *Server
	spool *spool.Spool
	cert  *selfsigned.Cert
	obs   *countingObserver
	addr  map[Kind]string // host:port, or the socket path for Local
}

// startServer starts a server; opts adjust the config before New.
func startServer(t testing.TB, opts ...func(*Config)) *testServer {
	t.Helper()
	return startServerWithSpool(t, spool.Options{}, opts...)
}

func startServerWithSpool(t testing.TB, so spool.Options, opts ...func(*Config)) *testServer {
	t.Helper()
	return startTestServer(t, testSetup{spool: so}, opts...)
}

// testSetup is what a test may choose besides the Config.
type testSetup struct {
	spool spool.Options
	// wrap, when set, wraps each TCP listener before Serve sees it.
	wrap func(net.Listener) net.Listener
}

func startTestServer(t testing.TB, setup testSetup, opts ...func(*Config)) *testServer {
	t.Helper()
	so := setup.spool
	so.Logger = testLogger(t)
	sp, err := spool.Open(t.TempDir(), so)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() }) // a test may have closed it already
	cert, err := selfsigned.Generate([]string{testHost, "127.0.0.1"}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{t: t, spool: sp, cert: cert, obs: &countingObserver{}, addr: map[Kind]string{}}
	cfg := Config{
		Hostname:     testHost,
		Spool:        sp,
		TLS:          &tls.Config{Certificates: []tls.Certificate{cert.TLS}},
		LocalDomains: []string{"local.test"},
		MyOrigin:     "origin.test",
		Aliases:      map[string][]string{"postmaster": {"admin@example.test"}, "root": {"postmaster@local.test"}},
		Users:        testUsers(t),
		Logger:       testLogger(t),
		Observer:     ts.obs,
		TempDir:      t.TempDir(),
	}
	for _, o := range opts {
		o(&cfg)
	}
	ts.srv, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	serve := func(kind Kind, ln net.Listener) {
		ts.addr[kind] = ln.Addr().String()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := ts.srv.Serve(ln, kind); !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve %s: %v", kind, err)
			}
		}()
	}
	for _, k := range []Kind{Relay, Submission, Submissions} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if setup.wrap != nil {
			ln = setup.wrap(ln)
		}
		serve(k, ln)
	}
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "submit.sock"))
	if err != nil {
		t.Fatal(err)
	}
	serve(Local, ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := ts.srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		wg.Wait()
		if n := ts.obs.get(func() int { return ts.obs.panics }); n != 0 {
			t.Errorf("%d panics in sessions", n)
		}
	})
	return ts
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("SMTPD_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func (ts *testServer) clientTLS() *tls.Config {
	return &tls.Config{RootCAs: ts.cert.Pool(), ServerName: testHost}
}

// dial connects a go-smtp client to a listener, from source when set.
func (ts *testServer) dial(kind Kind, source string) *smtp.Client {
	ts.t.Helper()
	conn := ts.rawConn(kind, source)
	if kind == Submissions {
		conn = tls.Client(conn, ts.clientTLS())
	}
	c := smtp.NewClient(conn)
	ts.t.Cleanup(func() { _ = c.Close() }) // the test may have quit already
	if err := c.Hello("client.test"); err != nil {
		ts.t.Fatalf("EHLO: %v", err)
	}
	return c
}

// submit dials a submission listener, starts TLS and logs in. After
// STARTTLS the go-smtp client says EHLO localhost.
func (ts *testServer) submit(kind Kind) *smtp.Client {
	ts.t.Helper()
	var c *smtp.Client
	if kind == Submission {
		var err error
		c, err = smtp.NewClientStartTLS(ts.rawConn(kind, ""), ts.clientTLS())
		if err != nil {
			ts.t.Fatalf("STARTTLS: %v", err)
		}
		ts.t.Cleanup(func() { _ = c.Close() }) // the test may have quit already
	} else {
		c = ts.dial(kind, "")
	}
	if err := c.Auth(sasl.NewPlainClient("", testLogin, testPassword)); err != nil {
		ts.t.Fatalf("AUTH: %v", err)
	}
	return c
}

func (ts *testServer) rawConn(kind Kind, source string) net.Conn {
	ts.t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	network := "tcp"
	if kind == Local {
		network = "unix"
	}
	if source != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(source)}
	}
	conn, err := d.Dial(network, ts.addr[kind])
	if err != nil {
		ts.t.Fatal(err)
	}
	ts.t.Cleanup(func() { _ = conn.Close() })
	return conn
}

var queuedRe = regexp.MustCompile(`queued as ([A-Za-z0-9_-]+)`)

// send runs one transaction and returns the queued ID, or the error.
func send(c *smtp.Client, from string, opts *smtp.MailOptions, rcpts []string, msg string) (string, error) {
	if err := c.Mail(from, opts); err != nil {
		return "", err
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			return "", err
		}
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := io.WriteString(w, msg); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	m := queuedRe.FindStringSubmatch(resp.StatusText)
	if m == nil {
		return "", fmt.Errorf("no queue ID in %q", resp.StatusText)
	}
	return m[1], nil
}

// mustSend is send that fails the test on error.
func mustSend(t testing.TB, c *smtp.Client, from string, rcpts []string, msg string) string {
	t.Helper()
	id, err := send(c, from, nil, rcpts, msg)
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	return id
}

// wantCode checks that err is an SMTP reply with code and enhanced code.
func wantCode(t testing.TB, err error, code int, enhanced string) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("got %v, want SMTP error %d %s", err, code, enhanced)
	}
	got := fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
	if se.Code != code || got != enhanced {
		t.Fatalf("got %d %s %q, want %d %s", se.Code, got, se.Message, code, enhanced)
	}
}

// stored returns a spooled message and its body.
func (ts *testServer) stored(id string) (*spool.Message, string) {
	ts.t.Helper()
	m, err := ts.spool.Message(id)
	if err != nil {
		ts.t.Fatal(err)
	}
	r, err := ts.spool.Body(id)
	if err != nil {
		ts.t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		ts.t.Fatal(err)
	}
	return m, string(b)
}

// messages counts the live messages in the spool.
func (ts *testServer) messages() int {
	ts.t.Helper()
	c, err := ts.spool.Counts()
	if err != nil {
		ts.t.Fatal(err)
	}
	return c.Messages
}

// rawSession speaks SMTP as bytes.
type rawSession struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
}

func (ts *testServer) raw(kind Kind, source string) *rawSession {
	ts.t.Helper()
	conn := ts.rawConn(kind, source)
	if kind == Submissions {
		conn = tls.Client(conn, ts.clientTLS())
	}
	s := &rawSession{t: ts.t, conn: conn, r: bufio.NewReader(conn)}
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second)) // a hung test fails instead of hanging
	s.expect("220")
	return s
}

func (s *rawSession) write(data string) {
	s.t.Helper()
	if _, err := io.WriteString(s.conn, data); err != nil {
		s.t.Fatalf("write: %v", err)
	}
}

// reply reads one (possibly multi-line) reply and returns its lines.
func (s *rawSession) reply() []string {
	s.t.Helper()
	var lines []string
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			s.t.Fatalf("reading reply after %q: %v", lines, err)
		}
		line = strings.TrimRight(line, "\r\n")
		lines = append(lines, line)
		if len(line) < 4 || line[3] != '-' {
			return lines
		}
	}
}

// expect reads a reply and checks that its last line starts with prefix.
func (s *rawSession) expect(prefix string) []string {
	s.t.Helper()
	lines := s.reply()
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, prefix) {
		s.t.Fatalf("got reply %q, want %q", lines, prefix)
	}
	return lines
}

// closed checks that the server closed the connection.
func (s *rawSession) closed() {
	s.t.Helper()
	line, err := s.r.ReadString('\n')
	if err == nil {
		s.t.Fatalf("got %q, want the connection closed", line)
	}
}

// startTLS switches a raw session to TLS after the server's 220.
func (s *rawSession) startTLS(ts *testServer) {
	s.t.Helper()
	if s.r.Buffered() != 0 {
		s.t.Fatalf("%d bytes after the STARTTLS reply", s.r.Buffered())
	}
	tc := tls.Client(s.conn, ts.clientTLS())
	if err := tc.Handshake(); err != nil {
		s.t.Fatalf("TLS handshake: %v", err)
	}
	s.conn = tc
	s.r = bufio.NewReader(tc)
}

func mustPrefixes(ps ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

// testClock is a clock tests move by hand.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *testClock { return &testClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}
