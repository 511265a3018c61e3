package smtpd

import (
	"encoding/base64"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestAuth(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		// Failures here must not throttle the later cases.
		c.Limits.AuthFailuresPerIP, c.Limits.AuthFailuresPerLogin = 1000, 1000
	})
	cases := []struct {
		name   string
		script []string // command, then the reply it must get, ...
	}{
		{"PLAIN with initial response", []string{"AUTH PLAIN " + b64("\x00abc\x00"+testPassword), "235 2.0.0"}},
		{"PLAIN after an empty challenge", []string{"AUTH PLAIN", "334 ", b64("\x00abc\x00" + testPassword), "235 "}},
		{"PLAIN with authzid equal to the login", []string{"AUTH PLAIN " + b64("abc\x00abc\x00"+testPassword), "235 "}},
		{"login without regard to case", []string{"AUTH PLAIN " + b64("\x00ABC\x00"+testPassword), "235 "}},
		{"PLAIN with another authzid", []string{"AUTH PLAIN " + b64("root\x00abc\x00"+testPassword), "535 5.7.8"}},
		{"PLAIN with a bad password", []string{"AUTH PLAIN " + b64("\x00abc\x00wrong"), "535 5.7.8 Authentication credentials invalid"}},
		{"PLAIN for an unknown user", []string{"AUTH PLAIN " + b64("\x00nobody\x00"+testPassword), "535 5.7.8"}},
		{"PLAIN malformed", []string{"AUTH PLAIN " + b64("abc"), "501 5.5.2"}},
		{"PLAIN bad base64", []string{"AUTH PLAIN !!!", "454 "}},
		{"LOGIN", []string{"AUTH LOGIN", "334 " + b64("Username:"), b64("abc"), "334 " + b64("Password:"), b64(testPassword), "235 "}},
		{"LOGIN with initial response", []string{"AUTH LOGIN " + b64("abc"), "334 " + b64("Password:"), b64(testPassword), "235 "}},
		{"LOGIN with a bad password", []string{"AUTH LOGIN", "334 ", b64("abc"), "334 ", b64("nope"), "535 5.7.8"}},
		{"LOGIN cancelled", []string{"AUTH LOGIN", "334 ", "*", "501 "}},
		{"unknown mechanism", []string{"AUTH CRAM-MD5", "504 5.5.4"}},
		{"MAIL before AUTH", []string{"MAIL FROM:<zbird1@163.example>", "530 5.7.0 Authentication required"}},
		{"AUTH twice", []string{"AUTH PLAIN " + b64("\x00abc\x00"+testPassword), "235 ", "AUTH PLAIN " + b64("\x00abc\x00"+testPassword), "503 "}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := ts.raw(Submissions, "")
			s.write("EHLO client.test\r\n")
			s.expect("250 ")
			for i := 0; i < len(tc.script); i += 2 {
				s.write(tc.script[i] + "\r\n")
				s.expect(tc.script[i+1])
			}
		})
	}
	t.Run("AUTH before STARTTLS", func(t *testing.T) {
		s := ts.raw(Submission, "")
		s.write("EHLO client.test\r\nAUTH PLAIN " + b64("\x00abc\x00"+testPassword) + "\r\nMAIL FROM:<zbird1@163.example>\r\n")
		s.expect("250 ")
		s.expect("530 5.7.0 Must issue a STARTTLS command first")
		s.expect("530 5.7.0")
	})
	t.Run("go-smtp client, LOGIN", func(t *testing.T) {
		c := ts.dial(Submissions, "")
		if err := c.Auth(sasl.NewLoginClient(testLogin, testPassword)); err != nil {
			t.Fatal(err)
		}
		mustSend(t, c, "zbird1@163.example", []string{"x@example.test"}, simpleMsg)
	})
}

// TestSTARTTLSInjection: commands sent in plaintext behind STARTTLS
// (CVE-2011-0411) are dropped, not run inside TLS.
func TestSTARTTLSInjection(t *testing.T) {
	ts := startServer(t)
	s := ts.raw(Submission, "")
	s.write("EHLO client.test\r\n")
	s.expect("250 ")
	s.write("STARTTLS\r\nAUTH PLAIN " + b64("\x00abc\x00"+testPassword) + "\r\n")
	s.expect("220 ")
	s.r.Reset(s.conn) // whatever the server said in plaintext after 220 is not read
	s.startTLS(ts)
	s.write("MAIL FROM:<zbird1@163.example>\r\n")
	s.expect("502 5.5.1") // go-smtp: no EHLO yet after TLS; nothing from before TLS counts
	s.write("EHLO client.test\r\nMAIL FROM:<zbird1@163.example>\r\n")
	s.expect("250 ")
	s.expect("530 5.7.0 Authentication required")
}

func TestAuthThrottle(t *testing.T) {
	clock := newClock()
	ts := startServer(t, func(c *Config) {
		c.Now = clock.Now
		c.Limits.AuthFailuresPerIP = 3
		c.Limits.AuthFailuresPerLogin = 2
		c.Limits.AuthFailureWindow = time.Hour
	})
	loginFrom := func(source, user, pw string) error {
		c := ts.dial(Submissions, source)
		return c.Auth(sasl.NewPlainClient("", user, pw))
	}
	login := func(user, pw string) error { return loginFrom("", user, pw) }
	// The user logs in from 127.0.0.9 before anyone guesses.
	if err := loginFrom("127.0.0.9", testLogin, testPassword); err != nil {
		t.Fatal(err)
	}
	t.Run("per login", func(t *testing.T) {
		for range 2 {
			wantCode(t, login(testLogin, "wrong"), 535, "5.7.8")
		}
		wantCode(t, login(testLogin, testPassword), 454, "4.7.0")
		wantCode(t, loginFrom("127.0.0.8", testLogin, testPassword), 454, "4.7.0")
	})
	t.Run("an address the login was used from is not locked out by others", func(t *testing.T) {
		if err := loginFrom("127.0.0.9", testLogin, testPassword); err != nil {
			t.Fatal(err)
		}
		// Its own mistakes count against it as an address only.
		wantCode(t, loginFrom("127.0.0.9", testLogin, "typo"), 535, "5.7.8")
		if err := loginFrom("127.0.0.9", testLogin, testPassword); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("per address", func(t *testing.T) {
		wantCode(t, login("other", "wrong"), 535, "5.7.8") // the third failure from 127.0.0.1
		wantCode(t, login("someone-else", "x"), 454, "4.7.0")
	})
	if n := ts.obs.get(func() int { return ts.obs.authFail }); n != 4 {
		t.Errorf("observer counted %d failures, want 4", n)
	}
	t.Run("after the window", func(t *testing.T) {
		clock.Add(time.Hour)
		if err := login(testLogin, testPassword); err != nil {
			t.Fatal(err)
		}
	})
}

func TestSenderOwnership(t *testing.T) {
	ts := startServer(t)
	cases := []struct {
		name     string
		from     string
		header   string
		code     int
		enhanced string
	}{
		{"owned address", "zbird1@163.example", "From: Zbird <zbird1@163.example>\r\n", 250, ""},
		{"owned address in another case", "ZBird1@163.EXAMPLE", "From: zbird1@163.example\r\n", 250, ""},
		{"owned domain", "anyone@own.example", "From: \"A. One\" <anyone@own.example>\r\n", 250, ""},
		{"null sender", "", "From: <zbird1@163.example>\r\n", 250, ""},
		{"encoded display name in an unknown charset", "zbird1@163.example", "From: =?gb2312?B?1cXI/Q==?= <zbird1@163.example>\r\n", 250, ""},
		{"MAIL FROM not owned", "boss@163.example", "From: <zbird1@163.example>\r\n", 553, "5.7.1"},
		{"From not owned", "zbird1@163.example", "From: <boss@163.example>\r\n", 550, "5.7.1"},
		{"one of two From addresses not owned", "zbird1@163.example", "From: <zbird1@163.example>, <boss@163.example>\r\n", 550, "5.7.1"},
		{"no From", "zbird1@163.example", "", 550, "5.6.0"},
		{"two From fields", "zbird1@163.example", "From: <zbird1@163.example>\r\nFrom: <zbird1@163.example>\r\n", 550, "5.6.0"},
		{"unparsable From", "zbird1@163.example", "From: <<<\r\n", 550, "5.6.0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := ts.submit(Submissions)
			_, err := send(c, tc.from, nil, []string{"a@example.test"}, tc.header+"Subject: x\r\n\r\nx\r\n")
			if tc.code == 250 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantCode(t, err, tc.code, tc.enhanced)
		})
	}
	t.Run("AllowUnownedFrom", func(t *testing.T) {
		ts := startServer(t, func(c *Config) { c.AllowUnownedFrom = true })
		c := ts.submit(Submissions)
		if _, err := send(c, "zbird1@163.example", nil, []string{"a@example.test"}, "From: <boss@163.example>\r\n\r\nx\r\n"); err != nil {
			t.Fatal(err)
		}
		_, err := send(c, "zbird1@163.example", nil, []string{"a@example.test"}, "Subject: no From\r\n\r\nx\r\n")
		wantCode(t, err, 550, "5.6.0")
	})
}

func TestUsersSwapped(t *testing.T) {
	ts := startServer(t)
	c := ts.dial(Submissions, "")
	if err := c.Auth(sasl.NewPlainClient("", "newuser", "pw2")); err == nil {
		t.Fatal("unknown user logged in")
	}
	hash, err := HashPassword([]byte("pw2"), 4)
	if err != nil {
		t.Fatal(err)
	}
	u, err := ParseUsers([]byte("newuser:" + hash + ":new@own.example\n"))
	if err != nil {
		t.Fatal(err)
	}
	ts.srv.SetUsers(u)
	c = ts.dial(Submissions, "")
	if err := c.Auth(sasl.NewPlainClient("", "newuser", "pw2")); err != nil {
		t.Fatalf("after SetUsers: %v", err)
	}
	c = ts.dial(Submissions, "")
	wantCode(t, c.Auth(sasl.NewPlainClient("", testLogin, testPassword)), 535, "5.7.8")
}

func TestRateLimits(t *testing.T) {
	clock := newClock()
	ts := startServer(t, func(c *Config) {
		c.Now = clock.Now
		c.Limits.UserMessagesPerDay = 2
		c.Limits.UserRecipientsPerHour = 3
	})
	c := ts.submit(Submissions)
	mustSend(t, c, "zbird1@163.example", []string{"a@example.test"}, simpleMsg)
	t.Run("recipients per hour", func(t *testing.T) {
		if err := c.Mail("zbird1@163.example", nil); err != nil {
			t.Fatal(err)
		}
		for _, r := range []string{"b@example.test", "c@example.test"} {
			if err := c.Rcpt(r, nil); err != nil {
				t.Fatal(err)
			}
		}
		wantCode(t, c.Rcpt("d@example.test", nil), 450, "4.7.1")
		w, err := c.Data()
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(simpleMsg))
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("messages per day", func(t *testing.T) {
		wantCode(t, c.Mail("zbird1@163.example", nil), 450, "4.7.1")
	})
	t.Run("a day later", func(t *testing.T) {
		clock.Add(25 * time.Hour)
		mustSend(t, c, "zbird1@163.example", []string{"a@example.test"}, simpleMsg)
	})
}

func TestRecipientLimit(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Limits.MaxRecipients = 2 })
	c := ts.dial(Relay, "")
	if err := c.Mail("a@example.test", nil); err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"b@example.test", "c@example.test"} {
		if err := c.Rcpt(r, nil); err != nil {
			t.Fatal(err)
		}
	}
	wantCode(t, c.Rcpt("d@example.test", nil), 452, "4.5.3")
	ts.srv.SetLimits(Limits{MaxRecipients: 3})
	if err := c.Rcpt("d@example.test", nil); err != nil {
		t.Errorf("after SetLimits: %v", err)
	}
}

func TestTooBig(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Limits.MaxMessageBytes = 2000 })
	c := ts.dial(Relay, "")
	if size, ok := c.MaxMessageSize(); !ok || size != 2000 {
		t.Errorf("SIZE %d %v", size, ok)
	}
	t.Run("declared SIZE", func(t *testing.T) {
		wantCode(t, c.Mail("a@example.test", &smtp.MailOptions{Size: 2001}), 552, "5.3.4")
	})
	t.Run("data over the limit", func(t *testing.T) {
		big := "Subject: big\r\n\r\n" + stringsRepeatLines(40, 60)
		_, err := send(c, "a@example.test", nil, []string{"b@example.test"}, big)
		wantCode(t, err, 552, "5.3.4")
	})
	t.Run("the session goes on", func(t *testing.T) {
		mustSend(t, c, "a@example.test", []string{"b@example.test"}, "Subject: small\r\n\r\nx\r\n")
	})
}

func stringsRepeatLines(n, width int) string {
	line := make([]byte, width)
	for i := range line {
		line[i] = 'z'
	}
	out := make([]byte, 0, n*(width+2))
	for range n {
		out = append(out, line...)
		out = append(out, '\r', '\n')
	}
	return string(out)
}

// TestDummyHash: an unknown login is compared against a dummy hash of the
// users' own cost, so it takes the time a known login with a wrong
// password takes; SetUsers remakes it when the cost changes.
func TestDummyHash(t *testing.T) {
	ts := startServer(t)
	cost := func() int {
		t.Helper()
		d := ts.srv.auth.dummy.Load()
		if d == nil {
			t.Fatal("no dummy hash")
		}
		c, err := bcrypt.Cost(*d)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if c := cost(); c != bcrypt.MinCost {
		t.Errorf("dummy cost %d, want the users' %d", c, bcrypt.MinCost)
	}
	hash, err := HashPassword([]byte("pw"), bcrypt.MinCost+1)
	if err != nil {
		t.Fatal(err)
	}
	u, err := ParseUsers([]byte("other:" + hash + ":o@own.example\n"))
	if err != nil {
		t.Fatal(err)
	}
	ts.srv.SetUsers(u)
	if c := cost(); c != bcrypt.MinCost+1 {
		t.Errorf("after SetUsers: dummy cost %d, want %d", c, bcrypt.MinCost+1)
	}
	c := ts.dial(Submissions, "")
	wantCode(t, c.Auth(sasl.NewPlainClient("", "nobody", "pw")), 535, "5.7.8")
}

// authPanicky is an Observer whose AuthFailed panics: inside the SASL
// exchange, which go-smtp runs outside the session hooks.
type authPanicky struct{ *countingObserver }

func (authPanicky) AuthFailed(string) { panic("observer bug") }

func TestAuthPanicRecovered(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Observer = authPanicky{c.Observer.(*countingObserver)} })
	for _, mech := range []string{"PLAIN " + b64("\x00abc\x00wrong"), "PLAIN " + b64("root\x00abc\x00wrong")} {
		s := ts.raw(Submissions, "")
		s.write("EHLO client.test\r\nAUTH " + mech + "\r\nNOOP\r\n")
		s.expect("250 ")
		s.expect("421 4.3.0")
		s.closed()
	}
	s := ts.raw(Submissions, "")
	s.write("EHLO client.test\r\nAUTH LOGIN " + b64(testLogin) + "\r\n")
	s.expect("250 ")
	s.expect("334 ")
	s.write(b64("wrong") + "\r\nNOOP\r\n")
	s.expect("421 4.3.0")
	s.closed()
	if n := ts.obs.get(func() int { return ts.obs.panics }); n != 3 {
		t.Errorf("%d panics counted, want 3", n)
	}
	ts.obs.do(func() { ts.obs.panics = 0 }) // expected here; the cleanup check is for the others
	if err := ts.dial(Submissions, "").Auth(sasl.NewPlainClient("", testLogin, testPassword)); err != nil {
		t.Errorf("a login after the panics: %v", err)
	}
}
