package smtpd

// Cases where the input scanner must read the client's octets exactly as
// go-smtp does, or it would rewrite message data or chunk octets, or hold
// input go-smtp waits for.

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

func (ts *testServer) storedAfter(t *testing.T, lines []string) string {
	m := queuedRe.FindStringSubmatch(lines[len(lines)-1])
	if m == nil {
		t.Fatalf("no queue ID in %q", lines)
	}
	_, body := ts.stored(m[1])
	return body
}

// "DATA" with trailing white space is DATA to go-smtp (its argument is
// trimmed to nothing): the message that follows is left alone.
func TestScannerDATAWithTrailingSpace(t *testing.T) {
	for _, dl := range []string{"DATA  \r\n", "DATA \t\r\n", "DATA \u00a0\r\n"} {
		ts := startServer(t)
		s := ts.raw(Relay, "")
		s.write("EHLO client.test\r\n")
		s.expect("250 ")
		s.write("MAIL FROM:<a@elsewhere.test>\r\nRCPT TO:<rcpt@example.test>\r\n" + dl)
		s.expect("250 ")
		s.expect("250 ")
		s.expect("354 ")
		s.write("Subject: hi\r\n\r\nRCPT TO:<postmaster>\r\n.\r\n")
		body := ts.storedAfter(t, s.expect("250 "))
		if !strings.HasSuffix(body, "\r\nRCPT TO:<postmaster>\r\n") {
			t.Errorf("%q: stored body changed: %q", dl, body)
		}
	}
}

// ".\r\r\n" does not end a message for go-smtp's data reader (nor does
// "\r\r\n.\r\n"): the scanner follows the same state machine.
func TestScannerDataReaderQuirks(t *testing.T) {
	for _, kind := range []Kind{Relay, Submissions} {
		ts := startServer(t)
		s := ts.session(kind)
		s.write("MAIL FROM:<zbird1@163.example>\r\nRCPT TO:<rcpt@example.test>\r\nDATA\r\n")
		s.expect("250 ")
		s.expect("250 ")
		s.expect("354 ")
		s.write("From: <zbird1@163.example>\r\nSubject: hi\r\n\r\nx\r\n.\r\r\n.\r\nRCPT TO:<postmaster>\r\n.\r\n")
		body := ts.storedAfter(t, s.expect("250 "))
		if !strings.HasSuffix(body, "\r\nRCPT TO:<postmaster>\r\n") {
			t.Errorf("%s: stored body changed: %q", kind, body)
		}
	}
}

// A long BDAT line arriving in two reads is still read as BDAT: its chunk
// is passed on untouched and the session goes on.
func TestScannerLongBDATLine(t *testing.T) {
	ts := startServer(t)
	s := ts.raw(Relay, "")
	s.write("EHLO client.test\r\n")
	s.expect("250 ")
	s.write("MAIL FROM:<a@elsewhere.test>\r\nRCPT TO:<rcpt@example.test>\r\n")
	s.expect("250 ")
	s.expect("250 ")
	s.write("BDAT 5 LAST" + strings.Repeat(" ", 1100))
	time.Sleep(300 * time.Millisecond)
	s.write("\r\nhello")
	_ = s.conn.SetDeadline(time.Now().Add(3 * time.Second))
	s.expect("502 ")
}

func TestScannerLongBDATLineChunkUntouched(t *testing.T) {
	ts := startServer(t)
	s := ts.raw(Relay, "")
	s.write("EHLO client.test\r\n")
	s.expect("250 ")
	chunk := "RCPT TO:<postmaster>\r\n"
	s.write("BDAT 22" + strings.Repeat(" ", 1100))
	time.Sleep(300 * time.Millisecond)
	s.write("\r\n" + chunk + "NOOP\r\n")
	_ = s.conn.SetDeadline(time.Now().Add(3 * time.Second))
	s.expect("502 ")
	s.expect("250 2.0.0") // NOOP
}

// bufConn collects writes while hold is set, to send them in one segment.
type bufConn struct {
	net.Conn
	mu   sync.Mutex
	hold bool
	buf  []byte
}

func (b *bufConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.hold {
		b.buf = append(b.buf, p...)
		return len(p), nil
	}
	return b.Conn.Write(p)
}

func (b *bufConn) flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.hold = false
	_ = b.Conn.SetWriteDeadline(time.Time{})
	_, err := b.Conn.Write(b.buf)
	return err
}

// Over TLS 1.2 a read can return the last data together with EOF
// (close_notify right behind it): what the scanner held after DATA still
// reaches go-smtp, and the message is stored.
func TestScannerTLSDataWithEOF(t *testing.T) {
	ts := startServer(t)
	bc := &bufConn{Conn: ts.rawConn(Submissions, "")}
	cfg := ts.clientTLS()
	cfg.MaxVersion = tls.VersionTLS12
	tc := tls.Client(bc, cfg)
	s := &rawSession{t: t, conn: tc, r: bufio.NewReader(tc)}
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	s.expect("220")
	s.write("EHLO client.test\r\n")
	s.expect("250 ")
	s.write("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+testLogin+"\x00"+testPassword)) + "\r\n")
	s.expect("235 ")
	bc.mu.Lock()
	bc.hold = true
	bc.mu.Unlock()
	s.write("MAIL FROM:<zbird1@163.example>\r\nRCPT TO:<rcpt@example.test>\r\nDATA\r\nFrom: <zbird1@163.example>\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n")
	if err := tc.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if err := bc.flush(); err != nil {
		t.Fatal(err)
	}
	s.expect("250 ")
	s.expect("250 ")
	s.expect("354 ")
	s.expect("250 ")
	s.expect("221 ")
}

// A line sent after a 334 is an AUTH response, not a command, whatever it
// looks like: a "BDAT n" there announces no chunk.
func TestScannerSASLResponseNotACommand(t *testing.T) {
	ts := startServer(t)
	s := ts.raw(Submissions, "")
	s.write("EHLO client.test\r\n")
	s.expect("250 ")
	s.write("AUTH PLAIN\r\n")
	s.expect("334")
	cmds := "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+testLogin+"\x00"+testPassword)) + "\r\nMAIL FROM:<zbird1@163.example>\r\nRCPT TO:<rcpt@example.test>\r\nDATA\r\n"
	s.write(fmt.Sprintf("BDAT %d\r\n", len(cmds)))
	s.expect("454 4.7.0") // go-smtp: not base64
	s.write(cmds)
	s.expect("235 ")
	s.expect("250 ")
	s.expect("250 ")
	s.expect("354 ")
	s.write("From: <zbird1@163.example>\r\nSubject: hi\r\n\r\nRCPT TO:<postmaster>\r\n.\r\n")
	body := ts.storedAfter(t, s.expect("250 "))
	if !strings.HasSuffix(body, "\r\nRCPT TO:<postmaster>\r\n") {
		t.Errorf("stored body changed: %q", body)
	}
}

// A long RCPT line is rewritten the same whether it comes in one read or
// is cut.
func TestScannerLongRcptSplit(t *testing.T) {
	in := []byte("RCPT TO:<postmaster>" + strings.Repeat(" ", 1100) + "\r\n")
	whole := scanAll(in, len(in)+1, nil)
	cut := scanAll(in, 1100, nil)
	if string(whole) != string(cut) {
		t.Errorf("whole %q...\ncut %q...", whole[:40], cut[:40])
	}
}

// A 354 counts only for the DATA it answers: a refused DATA later in the
// same read leaves commands as commands.
func TestScannerRefusedDATAAfterAccepted(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.TrustedNetworks = mustPrefixes("127.0.0.1/32") })
	s := ts.raw(Relay, "127.0.0.2")
	s.write("EHLO client.test\r\n")
	s.expect("250 ")
	s.write("MAIL FROM:<a@elsewhere.test>\r\nRCPT TO:<postmaster@local.test>\r\nDATA  \r\nSubject: x\r\n\r\nb\r\n.\r\n" +
		"MAIL FROM:<a@elsewhere.test>\r\nRCPT TO:<nobody@elsewhere.test>\r\nDATA\r\nRCPT TO:<postmaster>\r\n")
	for _, want := range []string{"250 ", "250 ", "354 ", "250 2.0.0 Ok: queued", "250 ", "554 5.7.1", "502 5.5.1", "250 2.0.0 I'll make sure <postmaster@local.test>"} {
		s.expect(want)
	}
}

// A rewrite never takes a line past go-smtp's line limit (which would end
// the session): such a line is left to go-smtp, which answers 501.
func TestScannerRewriteWithinLineLimit(t *testing.T) {
	ts := startServer(t)
	s := ts.raw(Relay, "")
	s.write("EHLO client.test\r\n")
	s.expect("250 ")
	s.write("MAIL FROM:<a@elsewhere.test>\r\n")
	s.expect("250 ")
	s.write("RCPT TO:<postmaster>" + strings.Repeat(" ", 1975) + "\r\n")
	s.expect("501 5.5.2")
	s.write("NOOP\r\n")
	s.expect("250 ")
}
