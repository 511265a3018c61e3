package smtpd

import (
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"mta/spool"
)

const simpleMsg = "From: <zbird1@163.example>\r\nTo: <rcpt@example.test>\r\nSubject: hi\r\n\r\nHello.\r\n"

// ehloKeywords returns the extension keywords of an EHLO reply.
func ehloKeywords(lines []string) []string {
	var kw []string
	for _, l := range lines[1:] {
		kw = append(kw, l[4:])
	}
	return kw
}

func TestEHLOKeywords(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Limits.MaxMessageBytes = 12345 })
	common := []string{"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "DSN", "SIZE 12345"}
	cases := []struct {
		name     string
		kind     Kind
		startTLS bool
		want     []string
	}{
		{"relay offers STARTTLS, no AUTH", Relay, false, append([]string{"STARTTLS"}, common...)},
		{"relay after STARTTLS", Relay, true, common},
		{"submission before TLS has no AUTH", Submission, false, append([]string{"STARTTLS"}, common...)},
		{"submission after STARTTLS offers AUTH", Submission, true, append([]string{"AUTH PLAIN LOGIN"}, common...)},
		{"submissions offers AUTH", Submissions, false, append([]string{"AUTH PLAIN LOGIN"}, common...)},
		{"local socket", Local, false, common},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := ts.raw(tc.kind, "")
			s.write("EHLO client.test\r\n")
			lines := s.expect("250 ")
			if tc.startTLS {
				s.write("STARTTLS\r\n")
				s.expect("220 2.0.0")
				s.startTLS(ts)
				s.write("EHLO client.test\r\n")
				lines = s.expect("250 ")
			}
			got := ehloKeywords(lines)
			slices.Sort(got)
			want := slices.Clone(tc.want)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("EHLO keywords %q, want %q", got, want)
			}
			if slices.Contains(got, "CHUNKING") {
				t.Error("CHUNKING offered")
			}
		})
	}
}

func TestCommands(t *testing.T) {
	ts := startServer(t)
	s := ts.raw(Relay, "")
	s.write("EHLO client.test\r\n")
	s.expect("250 ")
	for _, tc := range []struct{ cmd, want string }{
		{"VRFY postmaster", "252 "},
		{"EXPN staff", "502 5.5.1"},
		{"HELP", "502 5.5.1"},
		{"SEND FROM:<a@example.test>", "502 5.5.1"},
		{"SOML FROM:<a@example.test>", "502 5.5.1"},
		{"SAML FROM:<a@example.test>", "502 5.5.1"},
		{"TURN", "502 5.5.1"},
		{"NOOP", "250 2.0.0"},
		{"RSET", "250 2.0.0"},
		{"AUTH PLAIN AGFiYwB4", "502 5.5.1"},
		{"DATA", "502 5.5.1"},
	} {
		t.Run(tc.cmd, func(t *testing.T) {
			s.write(tc.cmd + "\r\n")
			s.expect(tc.want)
		})
	}
	s.write("QUIT\r\n")
	s.expect("221")
}

func TestSubmissionQueues(t *testing.T) {
	ts := startServer(t)
	for _, kind := range []Kind{Submission, Submissions} {
		t.Run(kind.String(), func(t *testing.T) {
			c := ts.submit(kind)
			id := mustSend(t, c, "zbird1@163.example", []string{"rcpt@example.test"}, simpleMsg)
			m, body := ts.stored(id)
			env := m.Envelope
			if env.Sender != "zbird1@163.example" || len(env.Recipients) != 1 || env.Recipients[0].Addr != "rcpt@example.test" {
				t.Errorf("envelope %+v", env)
			}
			if env.Recipients[0].Domain != "example.test" {
				t.Errorf("recipient domain %q", env.Recipients[0].Domain)
			}
			o := env.Origin
			helo := map[Kind]string{Submission: "localhost", Submissions: "client.test"}[kind]
			if o.Listener != kind.String() || o.AuthUser != testLogin || o.ClientIP != "127.0.0.1" || o.HELO != helo || o.UID != -1 {
				t.Errorf("origin %+v", o)
			}
			if !strings.Contains(body, "with ESMTPSA id "+id) {
				t.Errorf("Received field lacks ESMTPSA and the ID:\n%s", body)
			}
			// The ID's alphabet has the login's letters: look past it.
			if strings.Contains(strings.ReplaceAll(body, id, ""), testLogin) {
				t.Errorf("the AUTH login appears in the message:\n%s", body)
			}
			if err := c.Quit(); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestRelayPolicy(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		c.TrustedNetworks = mustPrefixes("127.0.0.1/32")
		c.Aliases["abuse@local.test"] = []string{"abuse-desk@example.test", "postmaster@local.test"}
	})
	cases := []struct {
		name   string
		source string // client address: only 127.0.0.1 is trusted
		rcpt   string
		code   int
		want   []string // stored recipients
	}{
		{"trusted client to any domain", "127.0.0.1", "someone@example.test", 250, []string{"someone@example.test"}},
		{"untrusted client to another domain is denied", "127.0.0.2", "someone@example.test", 554, nil},
		{"untrusted client to postmaster", "127.0.0.2", "postmaster@local.test", 250, []string{"admin@example.test"}},
		{"postmaster in any case", "127.0.0.2", "PostMaster@LOCAL.test", 250, []string{"admin@example.test"}},
		{"alias through an alias", "127.0.0.2", "root@local.test", 250, []string{"admin@example.test"}},
		{"full-address alias with two targets", "127.0.0.2", "abuse@local.test", 250, []string{"abuse-desk@example.test", "admin@example.test"}},
		{"unknown local user", "127.0.0.2", "nobody@local.test", 550, nil},
		{"unknown local user from a trusted client", "127.0.0.1", "nobody@local.test", 550, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := ts.dial(Relay, tc.source)
			id, err := send(c, "sender@elsewhere.test", nil, []string{tc.rcpt}, simpleMsg)
			if tc.code != 250 {
				switch tc.code {
				case 554:
					wantCode(t, err, 554, "5.7.1")
				case 550:
					wantCode(t, err, 550, "5.1.1")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			m, _ := ts.stored(id)
			var got []string
			for _, r := range m.Envelope.Recipients {
				got = append(got, r.Addr)
				if tc.rcpt != tc.want[0] && !strings.HasPrefix(r.ORcpt, "rfc822;") {
					t.Errorf("alias target %s has ORCPT %q", r.Addr, r.ORcpt)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("recipients %q, want %q", got, tc.want)
			}
			if m.Envelope.Origin.Listener != "relay" {
				t.Errorf("origin %+v", m.Envelope.Origin)
			}
		})
	}
}

// TestOpenRelayFromUntrustedAddress checks the relay listener from a source
// address outside trusted_networks (127.0.0.1/32 only).
func TestOpenRelayFromUntrustedAddress(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.TrustedNetworks = mustPrefixes("127.0.0.1/32") })
	s := ts.raw(Relay, "127.0.0.2")
	s.write("EHLO spammer.test\r\nMAIL FROM:<spam@spammer.test>\r\nRCPT TO:<victim@example.test>\r\nRCPT TO:<%victim@example.test@local.test>\r\nRCPT TO:<postmaster@local.test>\r\nDATA\r\n")
	s.expect("250 ")
	s.expect("250 ")
	s.expect("554 5.7.1 Relay access denied")
	s.expect("5") // source route / percent hacks are not local users
	s.expect("250 ")
	s.expect("354")
	s.write("Subject: x\r\n\r\nx\r\n.\r\n")
	s.expect("250 2.0.0 Ok: queued as ")
	c := ts.dial(Relay, "127.0.0.1")
	if _, err := send(c, "a@example.test", nil, []string{"victim@example.test"}, simpleMsg); err != nil {
		t.Errorf("trusted 127.0.0.1 refused: %v", err)
	}
}

func TestDSNParametersStored(t *testing.T) {
	ts := startServer(t)
	c := ts.submit(Submission)
	if err := c.Mail("zbird1@163.example", &smtp.MailOptions{Return: smtp.DSNReturnHeaders, EnvelopeID: "env+id 1"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("a@example.test", &smtp.RcptOptions{
		Notify:                []smtp.DSNNotify{smtp.DSNNotifySuccess, smtp.DSNNotifyDelayed},
		OriginalRecipientType: smtp.DSNAddressTypeRFC822, OriginalRecipient: "orig@example.test",
	}); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("b@example.test", &smtp.RcptOptions{Notify: []smtp.DSNNotify{smtp.DSNNotifyNever}}); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte(simpleMsg))
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatal(err)
	}
	m, _ := ts.stored(queuedRe.FindStringSubmatch(resp.StatusText)[1])
	env := m.Envelope
	if env.Ret != spool.RetHeaders || env.EnvID != "env+id 1" {
		t.Errorf("RET %v ENVID %q", env.Ret, env.EnvID)
	}
	r := env.Recipients
	if r[0].Notify != spool.NotifySuccess|spool.NotifyDelay || r[0].ORcpt != "rfc822;orig@example.test" {
		t.Errorf("first recipient %+v", r[0])
	}
	if r[1].Notify != spool.NotifyNever || r[1].ORcpt != "" {
		t.Errorf("second recipient %+v", r[1])
	}
}

func TestDuplicateRecipientsStoredOnce(t *testing.T) {
	ts := startServer(t)
	c := ts.submit(Submission)
	id := mustSend(t, c, "zbird1@163.example", []string{"a@example.test", "a@EXAMPLE.test", "b@example.test"}, simpleMsg)
	m, body := ts.stored(id)
	if n := len(m.Envelope.Recipients); n != 2 {
		t.Errorf("%d recipients, want 2", n)
	}
	if strings.Contains(body, "\tfor <") {
		t.Errorf("Received has a for clause with two recipients:\n%s", body)
	}
}
