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

// storeVia sends one message on s (ready for MAIL), with dataLine as its
// DATA command, and returns the message as stored.
func (ts *testServer) storeVia(s *rawSession, dataLine, body string) string {
	ts.t.Helper()
	s.write("MAIL FROM:<zbird1@163.example>\r\nRCPT TO:<rcpt@example.test>\r\n" + dataLine)
	for _, want := range []string{"250 ", "250 ", "354 "} {
		s.expect(want)
	}
	s.write(body)
	lines := s.expect("250 ")
	m := queuedRe.FindStringSubmatch(lines[len(lines)-1])
	if m == nil {
		ts.t.Fatalf("no queue ID in %q", lines)
	}
	_, stored := ts.stored(m[1])
	return stored
}

// The scanner must leave a message alone, however it is written.
func TestScannerLeavesMessagesAlone(t *testing.T) {
	const head = "From: <zbird1@163.example>\r\nSubject: hi\r\n\r\n"
	for _, tc := range []struct{ name, dataLine, body string }{
		// "DATA" with trailing white space is DATA to go-smtp (its
		// argument is trimmed to nothing).
		{"DATA and spaces", "DATA  \r\n", head + "RCPT TO:<postmaster>\r\n.\r\n"},
		{"DATA and a tab", "DATA \t\r\n", head + "RCPT TO:<postmaster>\r\n.\r\n"},
		{"DATA and a no-break space", "DATA \u00a0\r\n", head + "RCPT TO:<postmaster>\r\n.\r\n"},
		// ".\r\r\n" does not end a message for go-smtp's data reader.
		{"dot CR CR LF", "DATA\r\n", head + "x\r\n.\r\r\n.\r\nRCPT TO:<postmaster>\r\n.\r\n"},
	} {
		for _, kind := range []Kind{Relay, Submissions} {
			t.Run(tc.name+"/"+kind.String(), func(t *testing.T) {
				ts := startServer(t)
				if got := ts.storeVia(ts.session(kind), tc.dataLine, tc.body); !strings.HasSuffix(got, "\r\nRCPT TO:<postmaster>\r\n") {
					t.Errorf("stored message changed: %q", got)
				}
			})
		}
	}
}

// A long BDAT line arriving in two reads is still read as BDAT: its chunk
// is passed on untouched, and the next command is answered as such.
func TestScannerLongBDATLine(t *testing.T) {
	ts := startServer(t)
	s := ts.session(Relay)
	chunk := "RCPT TO:<postmaster>\r\n"
	s.write(fmt.Sprintf("BDAT %d%s", len(chunk), strings.Repeat(" ", 1100)))
	time.Sleep(300 * time.Millisecond) // the rest in another read
	s.write("\r\n" + chunk + "NOOP\r\n")
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
	auth := "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+testLogin+"\x00"+testPassword)) + "\r\n"
	// Were the BDAT read as a command, its "chunk" would be the AUTH and
	// the transaction below, and the message after DATA commands.
	s.write(fmt.Sprintf("BDAT %d\r\n", len(auth)+len("MAIL FROM:<zbird1@163.example>\r\nRCPT TO:<rcpt@example.test>\r\nDATA\r\n")))
	s.expect("454 4.7.0") // go-smtp: not base64
	s.write(auth)
	s.expect("235 ")
	body := ts.storeVia(s, "DATA\r\n", "From: <zbird1@163.example>\r\nSubject: hi\r\n\r\nRCPT TO:<postmaster>\r\n.\r\n")
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
	s := ts.session(Relay)
	s.write("MAIL FROM:<a@elsewhere.test>\r\n")
	s.expect("250 ")
	s.write("RCPT TO:<postmaster>" + strings.Repeat(" ", 1975) + "\r\n")
	s.expect("501 5.5.2")
	s.write("NOOP\r\n")
	s.expect("250 ")
}
