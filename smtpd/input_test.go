package smtpd

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"mta/spool"
)

// scanAll runs in through a scanner the way conn.Read does, cut into
// reads of at most size octets; each DATA or AUTH line (or AUTH response)
// the scanner waits at is answered 354 or 334, or refused, as accept
// says, in order.
func scanAll(in []byte, size int, accept []bool) []byte {
	s := inputScanner{rcptTo: []byte("<postmaster@local.test>")}
	var out []byte
	for len(in) > 0 || s.waiting() {
		if s.waiting() {
			ok := len(accept) > 0 && accept[0]
			if len(accept) > 0 {
				accept = accept[1:]
			}
			out = append(out, s.resolve(ok, ok)...)
			continue
		}
		n := min(size, len(in))
		got, _ := s.feed(in[:n])
		out = append(out, got...)
		in = in[n:]
	}
	return append(out, s.flushHeld()...)
}

// The scanner rewrites a bare <postmaster> in RCPT command lines only:
// never in a message, a BDAT chunk or a line too long to hold, and the
// result is the same however the input is cut into reads.
func TestInputScanner(t *testing.T) {
	long := "RCPT TO:<postmaster> " + strings.Repeat("x", maxHeldLine) + "\r\n" // past go-smtp's limit
	chunk := "RCPT TO:<postmaster>\r\n"
	cases := []struct {
		name     string
		in, want string
		accept   []bool // the answers to DATA and AUTH lines: 354/334 or not
	}{
		{"bare postmaster", "RCPT TO:<postmaster>\r\n", "RCPT TO:<postmaster@local.test>\r\n", nil},
		{"any case, spaces and parameters", "rcpt to: <PostMaster> NOTIFY=NEVER\r\n", "rcpt to: <postmaster@local.test> NOTIFY=NEVER\r\n", nil},
		{"bare LF", "RCPT TO:<postmaster>\n", "RCPT TO:<postmaster@local.test>\n", nil},
		{"with a domain", "RCPT TO:<postmaster@x.test>\r\n", "RCPT TO:<postmaster@x.test>\r\n", nil},
		{"not RCPT", "MAIL FROM:<postmaster>\r\nVRFY <postmaster>\r\n", "MAIL FROM:<postmaster>\r\nVRFY <postmaster>\r\n", nil},
		{"not quite", "RCPT TO:<postmasters>\r\nRCPTTO:<postmaster>\r\n", "RCPT TO:<postmasters>\r\nRCPTTO:<postmaster>\r\n", nil},
		{"in a message, then after it",
			"DATA\r\nRCPT TO:<postmaster>\r\n..\r\n\r\n.\r\nRCPT TO:<postmaster>\r\n",
			"DATA\r\nRCPT TO:<postmaster>\r\n..\r\n\r\n.\r\nRCPT TO:<postmaster@local.test>\r\n", []bool{true}},
		{"an empty message", "DATA\r\n.\r\nRCPT TO:<postmaster>\r\n", "DATA\r\n.\r\nRCPT TO:<postmaster@local.test>\r\n", []bool{true}},
		{"smuggling sequences do not end a message",
			"DATA\r\nx\n.\nRCPT TO:<postmaster>\r\n.\r\n",
			"DATA\r\nx\n.\nRCPT TO:<postmaster>\r\n.\r\n", []bool{true}},
		{"after a refused DATA", "DATA\r\nRCPT TO:<postmaster>\r\n", "DATA\r\nRCPT TO:<postmaster@local.test>\r\n", []bool{false}},
		{"DATA with an argument is no DATA", "DATA x\r\nRCPT TO:<postmaster>\r\n", "DATA x\r\nRCPT TO:<postmaster@local.test>\r\n", nil},
		{"in a BDAT chunk, then after it",
			fmt.Sprintf("BDAT %d\r\n%sRCPT TO:<postmaster>\r\n", len(chunk), chunk),
			fmt.Sprintf("BDAT %d\r\n%sRCPT TO:<postmaster@local.test>\r\n", len(chunk), chunk), nil},
		{"BDAT LAST", fmt.Sprintf("bdat %d last\r\n%s", len(chunk), chunk), fmt.Sprintf("bdat %d last\r\n%s", len(chunk), chunk), nil},
		{"a BDAT go-smtp refuses has no chunk", "BDAT -5\r\nRCPT TO:<postmaster>\r\n", "BDAT -5\r\nRCPT TO:<postmaster@local.test>\r\n", nil},
		{"a line too long to hold", long, long, nil},
		{"DATA with trailing white space is DATA", "DATA \t\r\nRCPT TO:<postmaster>\r\n.\r\n", "DATA \t\r\nRCPT TO:<postmaster>\r\n.\r\n", []bool{true}},
		{"go-smtp's data reader quirks",
			"DATA\r\n.\r\r\nRCPT TO:<postmaster>\r\nx\r\r\n.\r\nRCPT TO:<postmaster>\r\n.\r\nRCPT TO:<postmaster>\r\n",
			"DATA\r\n.\r\r\nRCPT TO:<postmaster>\r\nx\r\r\n.\r\nRCPT TO:<postmaster>\r\n.\r\nRCPT TO:<postmaster@local.test>\r\n", []bool{true}},
		{"an AUTH response is no command", "AUTH PLAIN\r\nBDAT 3\r\nRCPT TO:<postmaster>\r\n", "AUTH PLAIN\r\nBDAT 3\r\nRCPT TO:<postmaster@local.test>\r\n", []bool{true, false}},
		{"AUTH answered at once", "AUTH PLAIN AGEAYg==\r\nRCPT TO:<postmaster>\r\n", "AUTH PLAIN AGEAYg==\r\nRCPT TO:<postmaster@local.test>\r\n", []bool{false}},
		{"unfinished at the end", "RCPT TO:<postmaster>", "RCPT TO:<postmaster>", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for size := 1; size <= len(tc.in); size++ {
				if got := scanAll([]byte(tc.in), size, tc.accept); string(got) != tc.want {
					t.Fatalf("in reads of %d: got %q, want %q", size, got, tc.want)
				}
			}
		})
	}
}

// Input with nothing to rewrite passes as it came, without a copy.
func TestInputScannerPassesThrough(t *testing.T) {
	s := inputScanner{rcptTo: []byte("<postmaster@local.test>")}
	for _, in := range []string{"EHLO a.test\r\n", "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"} {
		if out, same := s.feed([]byte(in)); !same || string(out) != in {
			t.Errorf("feed(%q) = %q, same %v; want it unchanged", in, out, same)
		}
	}
}

// FuzzInputScanner: however the input is cut into reads and whatever the
// answers to DATA, the scanner loses, adds and reorders nothing, and
// changes nothing but bare <postmaster> paths.
func FuzzInputScanner(f *testing.F) {
	f.Add([]byte("RCPT TO:<postmaster>\r\nDATA\r\nRCPT TO:<postmaster>\r\n.\r\nBDAT 3\r\nabcRCPT TO:<postmaster>\r\n"), uint8(3), uint8(1))
	f.Add([]byte("DATA\r\n\r\n.\r\n"), uint8(1), uint8(0))
	f.Fuzz(func(t *testing.T, in []byte, size, accept uint8) {
		var answers []bool
		for i := range 8 {
			answers = append(answers, accept&(1<<i) != 0)
		}
		whole := scanAll(in, len(in)+1, answers)
		cut := scanAll(in, int(size)%16+1, answers)
		if !bytes.Equal(whole, cut) {
			t.Fatalf("cut into reads: %q, at once: %q", cut, whole)
		}
		if back := bytes.ReplaceAll(whole, []byte("<postmaster@local.test>"), []byte("<postmaster>")); !bytes.EqualFold(back, bytes.ReplaceAll(in, []byte("<postmaster@local.test>"), []byte("<postmaster>"))) {
			t.Fatalf("changed more than the paths: %q from %q", whole, in)
		}
	})
}

// TestBarePostmaster: RCPT TO:<Postmaster> without a domain is accepted
// (RFC 5321 §4.5.1) from anyone and goes to the postmaster alias; the
// same line inside a message or a BDAT chunk is left as it is.
func TestBarePostmaster(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.TrustedNetworks = mustPrefixes("127.0.0.1/32") })
	s := ts.raw(Relay, "127.0.0.2") // not trusted: only local domains
	s.write("EHLO client.test\r\n")
	s.expect("250 ")
	body := "Subject: hi\r\n\r\nRCPT TO:<postmaster>\r\n"
	const bodyEnd = "\r\n\r\nRCPT TO:<postmaster>\r\n"
	// Pipelined, with a parameter.
	s.write("MAIL FROM:<a@elsewhere.test>\r\nRCPT TO:<Postmaster> NOTIFY=NEVER\r\nDATA\r\n")
	s.expect("250 ")
	s.expect("250 ")
	s.expect("354 ")
	s.write(body + ".\r\n")
	lines := s.expect("250 ")
	m := queuedRe.FindStringSubmatch(lines[len(lines)-1])
	if m == nil {
		t.Fatalf("no queue ID in %q", lines)
	}
	msg, stored := ts.stored(m[1])
	if rs := msg.Envelope.Recipients; len(rs) != 1 || rs[0].Addr != "admin@example.test" || rs[0].Notify != spool.NotifyNever {
		t.Errorf("recipients %+v, want the postmaster alias admin@example.test with NOTIFY=NEVER", rs)
	}
	if !strings.HasSuffix(stored, bodyEnd) {
		t.Errorf("stored message %q, want it to end with %q unchanged", stored, bodyEnd)
	}
	// In a BDAT chunk the line stays as it is: go-smtp takes exactly the
	// announced octets, and the next command is answered as such.
	chunk := "RCPT TO:<postmaster>\r\n"
	s.write(fmt.Sprintf("MAIL FROM:<a@elsewhere.test>\r\nRCPT TO:<postmaster>\r\nBDAT %d LAST\r\n%sNOOP\r\n", len(chunk), chunk))
	s.expect("250 ")
	s.expect("250 ")
	s.expect("502 5.5.1")
	s.expect("250 2.0.0") // NOOP
	// After a DATA refused for want of recipients, commands are commands.
	s.write("MAIL FROM:<a@elsewhere.test>\r\nRCPT TO:<nobody@elsewhere.test>\r\nDATA\r\n")
	s.expect("250 ")
	s.expect("554 5.7.1")
	s.expect("5")
	s.write("RCPT TO:<postmaster>\r\n")
	s.expect("250 ")
}
