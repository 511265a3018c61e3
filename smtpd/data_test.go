package smtpd

import (
	"encoding/base64"
	"fmt"
	"net/mail"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

// canonical reports what is wrong with stored bytes, or "".
func canonical(body string) string {
	for i, line := range strings.SplitAfter(body, "\n") {
		if line == "" {
			continue
		}
		if !strings.HasSuffix(line, "\r\n") {
			return fmt.Sprintf("line %d does not end in CRLF: %q", i+1, line)
		}
		content := strings.TrimSuffix(line, "\r\n")
		if strings.ContainsAny(content, "\r\n") {
			return fmt.Sprintf("line %d has a bare CR or LF: %q", i+1, line)
		}
		if len(content) > 998 {
			return fmt.Sprintf("line %d has %d octets", i+1, len(content))
		}
	}
	return ""
}

// authedRaw opens a raw session on port 465 and logs in.
func (ts *testServer) authedRaw() *rawSession {
	ts.t.Helper()
	s := ts.raw(Submissions, "")
	s.write("EHLO client.test\r\n")
	s.expect("250 ")
	s.write("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+testLogin+"\x00"+testPassword)) + "\r\n")
	s.expect("235 ")
	return s
}

// TestSmuggling sends the SMTP smuggling end-of-data variants followed by
// a second transaction. Only CRLF.CRLF may end the message: the server
// must give exactly one reply to the data (stored as one message, or
// refused), and the smuggled commands must never run.
func TestSmuggling(t *testing.T) {
	ts := startServer(t)
	variants := []struct {
		name, seq string
		strict    string // reply on submission
		lenient   string // reply on the relay listener
	}{
		{"LF.LF", "\n.\n", "550 5.6.0", "250 "},
		{"CR.CR", "\r.\r", "550 5.6.0", "550 5.6.0"},
		{"LF.CRLF", "\n.\r\n", "550 5.6.0", "250 "},
		{"CRLF.LF", "\r\n.\n", "550 5.6.0", "250 "},
		{"CR.CRLF", "\r.\r\n", "550 5.6.0", "550 5.6.0"},
		{"CRLF.CR", "\r\n.\r", "250 ", "250 "},
		{"CR CRLF.CRLF", "\r\r\n.\r\n", "550 5.6.0", "550 5.6.0"},
	}
	smuggled := "MAIL FROM:<smuggled@163.example>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nFrom: <zbird1@163.example>\r\n\r\nsmuggled body\r\n"
	for _, v := range variants {
		for _, kind := range []Kind{Submissions, Relay} {
			t.Run(v.name+"/"+kind.String(), func(t *testing.T) {
				var s *rawSession
				want := v.lenient
				if kind == Submissions {
					s, want = ts.authedRaw(), v.strict
				} else {
					s = ts.raw(Relay, "")
					s.write("EHLO client.test\r\n")
					s.expect("250 ")
				}
				before := ts.messages()
				s.write("MAIL FROM:<zbird1@163.example>\r\nRCPT TO:<rcpt@example.test>\r\nDATA\r\n")
				s.expect("250 ")
				s.expect("250 ")
				s.expect("354 ")
				s.write("From: <zbird1@163.example>\r\nSubject: s\r\n\r\nfirst body" + v.seq + smuggled + ".\r\nQUIT\r\n")
				lines := s.expect(want)
				s.expect("221 ") // the next reply is QUIT's: nothing smuggled ran
				after := ts.messages()
				if want == "250 " {
					if after != before+1 {
						t.Fatalf("%d messages stored, want 1", after-before)
					}
					id := queuedRe.FindStringSubmatch(lines[0])[1]
					m, body := ts.stored(id)
					if m.Envelope.Sender != "zbird1@163.example" {
						t.Errorf("sender %q", m.Envelope.Sender)
					}
					if p := canonical(body); p != "" {
						t.Errorf("stored bytes not canonical: %s", p)
					}
					if !strings.Contains(body, "MAIL FROM:<smuggled@163.example>\r\n") {
						t.Errorf("the smuggled text is not in the one stored message:\n%q", body)
					}
				} else if after != before {
					t.Fatalf("%d messages stored after a refusal", after-before)
				}
			})
		}
	}
}

func TestLineLength(t *testing.T) {
	ts := startServer(t)
	for _, kind := range []Kind{Submissions, Relay} {
		for _, tc := range []struct {
			name string
			n    int
			want string
		}{
			{"998 octets", 998, "250 "},
			{"999 octets", 999, "550 5.6.0"},
			{"1500 octets", 1500, "550 5.6.0"},
		} {
			t.Run(kind.String()+"/"+tc.name, func(t *testing.T) {
				s := ts.session(kind)
				s.write("MAIL FROM:<zbird1@163.example>\r\nRCPT TO:<rcpt@example.test>\r\nDATA\r\n")
				s.expect("250 ")
				s.expect("250 ")
				s.expect("354 ")
				s.write("From: <zbird1@163.example>\r\n\r\n" + strings.Repeat("x", tc.n) + "\r\nafter\r\n.\r\n")
				lines := s.expect(tc.want)
				s.write("NOOP\r\n")
				s.expect("250 ") // the session goes on
				if tc.want == "250 " {
					_, body := ts.stored(queuedRe.FindStringSubmatch(lines[0])[1])
					if !strings.Contains(body, "\r\n"+strings.Repeat("x", tc.n)+"\r\nafter\r\n") {
						t.Error("the long line was changed")
					}
				}
			})
		}
	}
	t.Run("a line past go-smtp's limit ends the session", func(t *testing.T) {
		s := ts.session(Relay)
		s.write("MAIL FROM:<a@example.test>\r\nRCPT TO:<rcpt@example.test>\r\nDATA\r\n")
		s.expect("250 ")
		s.expect("250 ")
		s.expect("354 ")
		s.write(strings.Repeat("y", 5000) + "\r\nRSET\r\n.\r\n")
		s.expect("550 5.6.0")
		s.expect("500 ")
		s.closed()
	})
}

// session opens a raw session that is ready for MAIL: logged in on
// submission kinds.
func (ts *testServer) session(kind Kind) *rawSession {
	ts.t.Helper()
	if kind == Submissions {
		return ts.authedRaw()
	}
	s := ts.raw(kind, "")
	s.write("EHLO client.test\r\n")
	s.expect("250 ")
	return s
}

func TestPipelining(t *testing.T) {
	ts := startServer(t)
	s := ts.raw(Relay, "")
	s.write("EHLO client.test\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<nobody@local.test>\r\nRCPT TO:<c@example.test>\r\nDATA\r\n")
	s.expect("250 ")
	s.expect("250 ")
	s.expect("250 ")
	s.expect("550 5.1.1")
	s.expect("250 ")
	s.expect("354 ")
	s.write("Subject: one\r\n\r\n..leading dot\r\n.\r\nRSET\r\nMAIL FROM:<>\r\nRCPT TO:<d@example.test>\r\nDATA\r\n")
	first := s.expect("250 2.0.0 Ok: queued as ")
	s.expect("250 ")
	s.expect("250 ")
	s.expect("250 ")
	s.expect("354 ")
	s.write("Subject: two\r\n\r\nx\r\n.\r\nQUIT\r\n")
	second := s.expect("250 2.0.0 Ok: queued as ")
	s.expect("221 ")
	m, body := ts.stored(queuedRe.FindStringSubmatch(first[0])[1])
	if got := len(m.Envelope.Recipients); got != 2 {
		t.Errorf("first message has %d recipients, want 2", got)
	}
	if !strings.HasSuffix(body, "\r\n\r\n.leading dot\r\n") {
		t.Errorf("dot-stuffing not undone: %q", body)
	}
	m2, _ := ts.stored(queuedRe.FindStringSubmatch(second[0])[1])
	if m2.Envelope.Sender != "" || m2.Envelope.Recipients[0].Addr != "d@example.test" {
		t.Errorf("second envelope %+v", m2.Envelope)
	}
}

// TestBDAT: CHUNKING is not offered, BDAT is refused, and the chunk a
// client sends with it is consumed, never run as commands (go-smtp issue
// 315), also after a refused RCPT.
func TestBDAT(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.TrustedNetworks = mustPrefixes("127.0.0.1/32") })
	payload := "RSET\r\nMAIL FROM:<evil@elsewhere.test>\r\nRCPT TO:<postmaster@local.test>\r\nDATA\r\nSubject: injected\r\n\r\nx\r\n.\r\n"
	cases := []struct {
		name   string
		source string
		script string
		want   []string
	}{
		{"after a refused RCPT", "127.0.0.2",
			"MAIL FROM:<a@elsewhere.test>\r\nRCPT TO:<victim@example.test>\r\nBDAT %d LAST\r\n%s",
			[]string{"250 ", "554 5.7.1", "502 5.5.1"}},
		{"after an accepted RCPT", "127.0.0.1",
			"MAIL FROM:<a@elsewhere.test>\r\nRCPT TO:<rcpt@example.test>\r\nBDAT %d LAST\r\n%s",
			[]string{"250 ", "250 ", "502 5.5.1 BDAT not implemented"}},
		{"without a transaction", "127.0.0.2", "BDAT %d LAST\r\n%s", []string{"502 5.5.1"}},
		{"in two chunks", "127.0.0.1",
			"MAIL FROM:<a@elsewhere.test>\r\nRCPT TO:<rcpt@example.test>\r\nBDAT %d\r\n%sBDAT 6 LAST\r\nQUIT\r\n",
			[]string{"250 ", "250 ", "502 5.5.1 BDAT not implemented", "502 5.5.1"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := ts.raw(Relay, tc.source)
			s.write("EHLO client.test\r\n")
			s.expect("250 ")
			s.write(fmt.Sprintf(tc.script, len(payload), payload))
			for _, w := range tc.want {
				s.expect(w)
			}
			s.write("NOOP\r\n")
			s.expect("250 2.0.0") // the next reply is NOOP's: the payload never ran
			if n := ts.messages(); n != 0 {
				t.Errorf("%d messages stored", n)
			}
		})
	}
}

func TestHeaderFixups(t *testing.T) {
	ts := startServer(t)
	c := ts.submit(Submissions)
	msg := "Return-Path: <forged@example.test>\r\n" +
		"From: Z <zbird1@163.example>\r\n" +
		"To: a@example.test\r\n" +
		"Bcc: secret@example.test,\r\n  other-secret@example.test\r\n" +
		"Resent-Bcc: secret2@example.test\r\n" +
		"bcc: lower@example.test\r\n" +
		"Subject: fix-ups\r\n" +
		"\r\n" +
		"Body line.\r\n"
	id := mustSend(t, c, "zbird1@163.example", []string{"a@example.test"}, msg)
	_, body := ts.stored(id)
	if p := canonical(body); p != "" {
		t.Error(p)
	}
	if !strings.HasPrefix(body, "Received: from client.test (unknown [127.0.0.1])\r\n\tby mx.test (mta) with ESMTPSA id "+id+"\r\n\tfor <a@example.test>;\r\n\t") {
		t.Errorf("Received field:\n%s", body)
	}
	for _, gone := range []string{"secret", "Return-Path", "forged", testLogin + ")", "Bcc", "bcc"} {
		if strings.Contains(body, gone) {
			t.Errorf("%q is still in the message:\n%s", gone, body)
		}
	}
	m, err := mail.ReadMessage(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Header.Get("Message-ID"); got != "<"+id+"@mx.test>" {
		t.Errorf("Message-ID %q", got)
	}
	if _, err := m.Header.Date(); err != nil {
		t.Errorf("Date: %v", err)
	}
	if m.Header.Get("Subject") != "fix-ups" || !strings.HasSuffix(body, "\r\n\r\nBody line.\r\n") {
		t.Errorf("message changed:\n%s", body)
	}

	t.Run("relay and local listeners drop the same fields", func(t *testing.T) {
		for _, kind := range []Kind{Relay, Local} {
			rc := ts.dial(kind, "")
			_, body := ts.stored(mustSend(t, rc, "", []string{"a@example.test"}, msg))
			for _, gone := range []string{"secret", "Return-Path", "forged", "Bcc", "bcc"} {
				if strings.Contains(body, gone) {
					t.Errorf("%s: %q is still in the message:\n%s", kind, gone, body)
				}
			}
			if !strings.Contains(body, "\r\nSubject: fix-ups\r\n") || !strings.Contains(body, "\r\nMessage-ID: <") {
				t.Errorf("%s: message:\n%s", kind, body)
			}
		}
	})
	t.Run("existing Message-ID and Date are kept", func(t *testing.T) {
		msg := "From: <zbird1@163.example>\r\nMessage-ID: <own@163.example>\r\nDate: Mon, 02 Jan 2006 15:04:05 +0000\r\n\r\nx\r\n"
		_, body := ts.stored(mustSend(t, c, "zbird1@163.example", []string{"a@example.test", "b@example.test"}, msg))
		if strings.Count(body, "Message-ID:") != 1 || strings.Count(body, "Date:") != 1 || !strings.Contains(body, "<own@163.example>") {
			t.Errorf("fields doubled or lost:\n%s", body)
		}
		if strings.Contains(body, "for <") {
			t.Errorf("for clause with two recipients:\n%s", body)
		}
	})
	t.Run("a body without an empty line after the header", func(t *testing.T) {
		msg := "From: <zbird1@163.example>\r\nthis line is not a header field\r\nnor this one\r\n"
		_, body := ts.stored(mustSend(t, c, "zbird1@163.example", []string{"a@example.test"}, msg))
		if !strings.HasSuffix(body, "\r\n\r\nthis line is not a header field\r\nnor this one\r\n") {
			t.Errorf("body not separated:\n%s", body)
		}
	})
	t.Run("a first line that would continue our Received field", func(t *testing.T) {
		rc := ts.dial(Relay, "")
		_, body := ts.stored(mustSend(t, rc, "a@example.test", []string{"a@example.test"}, " injected: yes\r\n\r\nbody\r\n"))
		m, err := mail.ReadMessage(strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(m.Header.Get("Received"), "injected") {
			t.Errorf("the client continued our Received field:\n%s", body)
		}
	})
}

func TestReceivedLoop(t *testing.T) {
	ts := startServer(t)
	c := ts.dial(Relay, "")
	for _, tc := range []struct {
		n    int
		code int
	}{{100, 250}, {101, 554}} {
		t.Run(fmt.Sprint(tc.n, " Received fields"), func(t *testing.T) {
			msg := strings.Repeat("Received: from a by b; Mon, 02 Jan 2006 15:04:05 +0000\r\n", tc.n) + "Subject: loop\r\n\r\nx\r\n"
			_, err := send(c, "a@example.test", nil, []string{"b@example.test"}, msg)
			if tc.code == 250 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantCode(t, err, 554, "5.4.6")
		})
	}
}

func TestEightBitAndSMTPUTF8(t *testing.T) {
	ts := startServer(t)
	c := ts.dial(Relay, "")
	t.Run("8-bit body", func(t *testing.T) {
		m, _ := ts.stored(mustSend(t, c, "a@example.test", []string{"b@example.test"}, "Subject: x\r\n\r\nh\xc3\xa9llo\r\n"))
		if !m.Envelope.Has8Bit || m.Envelope.SMTPUTF8 {
			t.Errorf("Has8Bit %v SMTPUTF8 %v", m.Envelope.Has8Bit, m.Envelope.SMTPUTF8)
		}
	})
	t.Run("7-bit message", func(t *testing.T) {
		m, _ := ts.stored(mustSend(t, c, "a@example.test", []string{"b@example.test"}, "Subject: x\r\n\r\nhello\r\n"))
		if m.Envelope.Has8Bit || m.Envelope.SMTPUTF8 {
			t.Errorf("Has8Bit %v SMTPUTF8 %v", m.Envelope.Has8Bit, m.Envelope.SMTPUTF8)
		}
	})
	t.Run("UTF-8 header", func(t *testing.T) {
		m, _ := ts.stored(mustSend(t, c, "a@example.test", []string{"b@example.test"}, "Subject: h\xc3\xa9llo\r\n\r\nhello\r\n"))
		if !m.Envelope.Has8Bit || !m.Envelope.SMTPUTF8 {
			t.Errorf("Has8Bit %v SMTPUTF8 %v", m.Envelope.Has8Bit, m.Envelope.SMTPUTF8)
		}
	})
	t.Run("UTF-8 address without SMTPUTF8", func(t *testing.T) {
		_, err := send(c, "j\xc3\xb6rg@example.test", nil, []string{"b@example.test"}, "x\r\n")
		wantCode(t, err, 553, "5.6.7")
	})
	t.Run("UTF-8 addresses with SMTPUTF8", func(t *testing.T) {
		id, err := send(c, "j\xc3\xb6rg@example.test", &smtp.MailOptions{UTF8: true}, []string{"b\xc3\xbc@b\xc3\xbccher.example"}, "Subject: x\r\n\r\nx\r\n")
		if err != nil {
			t.Fatal(err)
		}
		m, body := ts.stored(id)
		env := m.Envelope
		if !env.SMTPUTF8 || env.Recipients[0].Domain != "xn--bcher-kva.example" || env.Recipients[0].Addr != "b\xc3\xbc@xn--bcher-kva.example" {
			t.Errorf("envelope %+v", env)
		}
		if !strings.Contains(body, "with UTF8SMTP id") {
			t.Errorf("Received protocol:\n%s", body)
		}
	})
}
