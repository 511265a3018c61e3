package smtpd

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// writeLog records what the server writes on the connections it accepts,
// one entry per Write on the socket (one write(2) each). It sits under
// smtpd, between the listener and the socket.
type writeLog struct {
	mu     sync.Mutex
	writes [][]byte
}

func (w *writeLog) add(p []byte) {
	w.mu.Lock()
	w.writes = append(w.writes, bytes.Clone(p))
	w.mu.Unlock()
}

// all returns the writes so far, as strings.
func (w *writeLog) all() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]string, len(w.writes))
	for i, p := range w.writes {
		out[i] = string(p)
	}
	return out
}

type recordingListener struct {
	net.Listener
	log *writeLog
}

func (l recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return recordingConn{c, l.log}, nil
}

type recordingConn struct {
	net.Conn
	log *writeLog
}

func (c recordingConn) Write(p []byte) (int, error) {
	c.log.add(p)
	return c.Conn.Write(p)
}

// startRecorded starts a server whose TCP listeners record the server's
// writes.
func startRecorded(t *testing.T, opts ...func(*Config)) (*testServer, *writeLog) {
	t.Helper()
	log := &writeLog{}
	wrap := func(ln net.Listener) net.Listener { return recordingListener{ln, log} }
	return startTestServer(t, testSetup{wrap: wrap}, opts...), log
}

// TestRepliesBatched: go-smtp writes each reply line on its own; the
// server sends the replies it has in one write when it waits for the
// client, so a multi-line reply and the replies to a pipelined group
// (RFC 2920) each go out whole, in order.
func TestRepliesBatched(t *testing.T) {
	// lastWrite checks that the server's last write was exactly the
	// replies read since the previous check.
	lastWrite := func(t *testing.T, log *writeLog, replies ...[]string) {
		t.Helper()
		var want strings.Builder
		for _, r := range replies {
			for _, l := range r {
				want.WriteString(l + "\r\n")
			}
		}
		writes := log.all()
		if got := writes[len(writes)-1]; got != want.String() {
			t.Errorf("last write %q, want the replies in one write: %q", got, want.String())
		}
	}
	t.Run("a multi-line EHLO reply is one write", func(t *testing.T) {
		ts, log := startRecorded(t)
		s := ts.raw(Relay, "")
		s.write("EHLO client.test\r\n")
		ehlo := s.expect("250 SIZE ")
		if len(ehlo) < 5 {
			t.Fatalf("EHLO reply %q", ehlo)
		}
		lastWrite(t, log, ehlo)
		if n := len(log.all()); n != 2 {
			t.Errorf("%d writes for the greeting and EHLO, want 2: %q", n, log.all())
		}
	})
	t.Run("pipelined commands get their replies in order in one write", func(t *testing.T) {
		ts, log := startRecorded(t)
		s := ts.raw(Relay, "")
		s.write("EHLO client.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n" +
			"RCPT TO:<nobody@local.test>\r\nNOOP\r\nRCPT TO:<c@example.test>\r\nDATA\r\n")
		var got [][]string
		for _, want := range []string{"250 SIZE ", "250 2.0.0", "250 2.0.0", "550 5.1.1", "250 2.0.0 I have", "250 2.0.0", "354 "} {
			got = append(got, s.expect(want))
		}
		lastWrite(t, log, got...)
		s.write("Subject: x\r\n\r\nx\r\n.\r\nRSET\r\nQUIT\r\n")
		queued := s.expect("250 2.0.0 Ok: queued as ")
		rset := s.expect("250 2.0.0 Session reset")
		bye := s.expect("221 2.0.0 Bye")
		s.closed()
		lastWrite(t, log, queued, rset, bye)
		if n := len(log.all()); n != 3 {
			t.Errorf("%d writes, want 3 (greeting, the replies up to 354, the rest): %q", n, log.all())
		}
	})
	t.Run("QUIT's 221 arrives before the close", func(t *testing.T) {
		ts, log := startRecorded(t)
		s := ts.raw(Relay, "")
		s.write("NOOP\r\nQUIT\r\n")
		noop := s.expect("250 ")
		bye := s.expect("221 2.0.0 Bye")
		s.closed()
		lastWrite(t, log, noop, bye)
	})
	t.Run("STARTTLS's 220 goes out before the handshake", func(t *testing.T) {
		ts, log := startRecorded(t)
		s := ts.raw(Submission, "")
		s.write("EHLO client.test\r\nSTARTTLS\r\n")
		ehlo := s.expect("250 ")
		ready := s.expect("220 2.0.0 Ready to start TLS")
		lastWrite(t, log, ehlo, ready)
		s.startTLS(ts)
		s.write("EHLO client.test\r\nAUTH PLAIN " + b64("\x00"+testLogin+"\x00"+testPassword) + "\r\n")
		s.expect("250 ")
		s.expect("235 ")
		s.write("MAIL FROM:<zbird1@163.example>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n")
		s.expect("250 ")
		s.expect("250 ")
		s.expect("354 ")
		s.write("From: <zbird1@163.example>\r\nSubject: x\r\n\r\nx\r\n.\r\nQUIT\r\n")
		s.expect("250 2.0.0 Ok: queued as ")
		s.expect("221 ")
		s.closed()
	})
	t.Run("a relay message takes one write per client turn", func(t *testing.T) {
		ts, log := startRecorded(t)
		c := ts.dial(Relay, "") // greeting, EHLO
		mustSend(t, c, "a@example.test", []string{"b@example.test"}, simpleMsg)
		if err := c.Quit(); err != nil {
			t.Fatal(err)
		}
		// The go-smtp client waits after each command: greeting, EHLO,
		// MAIL, RCPT, DATA, the end of data, QUIT.
		if n := len(log.all()); n != 7 {
			t.Errorf("%d writes, want 7: %q", n, log.all())
		}
	})
}

// TestClientNotReading: a client that sends commands but never reads the
// replies fills the socket buffers; the server's send then blocks.
func TestClientNotReading(t *testing.T) {
	t.Run("the write timeout ends the session", func(t *testing.T) {
		ts := startTestServer(t, testSetup{wrap: smallSendBuffers}, func(c *Config) {
			c.Timeouts.Command = time.Second
		})
		floodNOOPs(t, ts, "")
		waitClosed(t, ts)
	})
	t.Run("a forced Shutdown does not wait for the write timeout", func(t *testing.T) {
		// The write timeout is 5 min. In a transaction, Shutdown waits
		// for the session until its context ends.
		ts := startTestServer(t, testSetup{wrap: smallSendBuffers})
		floodNOOPs(t, ts, "EHLO client.test\r\nMAIL FROM:<a@example.test>\r\n")
		eventually(t, "the transaction", func() bool {
			return ts.obs.get(func() int { return ts.obs.replies[250] }) > 1 // EHLO, MAIL
		})
		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			done <- ts.srv.Shutdown(ctx)
		}()
		select {
		case err := <-done:
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Shutdown: %v, want the context's error", err)
			}
		case <-time.After(time.Minute):
			t.Fatal("Shutdown is stuck behind a client that does not read")
		}
		waitClosed(t, ts)
	})
}

// smallSendBuffers makes the server's sockets send buffers small, so a
// client that does not read blocks the server soon.
func smallSendBuffers(ln net.Listener) net.Listener { return smallBufListener{ln} }

type smallBufListener struct{ net.Listener }

func (l smallBufListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(4096) // best effort: the kernel's minimum may be higher
	}
	return c, err
}

// floodNOOPs connects to the relay listener and sends first, then up to
// 4 MiB of NOOPs (32 MiB of replies) without reading, until the server
// stops taking them.
func floodNOOPs(t *testing.T, ts *testServer, first string) {
	t.Helper()
	conn := ts.rawConn(Relay, "")
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(4096) // best effort, as above
	}
	_ = conn.SetWriteDeadline(time.Now().Add(2 * time.Minute)) // a hung test fails instead
	chunk := []byte(strings.Repeat("NOOP\r\n", 64<<10/6))
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := io.WriteString(conn, first); err != nil {
			return
		}
		for sent := 0; sent < 4<<20; sent += len(chunk) {
			if _, err := conn.Write(chunk); err != nil {
				return // the server closed the connection
			}
		}
	}()
	t.Cleanup(func() {
		_ = conn.Close() // unblocks the writer
		<-done
	})
	eventually(t, "the session to start", func() bool { return ts.obs.get(func() int { return ts.obs.opened }) == 1 })
}

// waitClosed waits until the server has ended its only session.
func waitClosed(t *testing.T, ts *testServer) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for ts.obs.get(func() int { return ts.obs.closed }) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the session of a client that does not read is still open")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := ts.obs.get(func() int { return ts.obs.opened }); n != 1 {
		t.Errorf("%d sessions opened, want 1", n)
	}
}
