package peer

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"
)

const (
	pop3User = "mx1.lab.test"
	pop3Pass = "secret words"
)

// pop3Messages are appended in order; the first uses bare LF line ends,
// which the mailbox stores as CRLF (77, 26 and 30 octets).
var pop3Messages = []string{
	"Subject: one\nFrom: a@example.test\n\nfirst line\n.hidden dot line\n.\nlast\n",
	"Subject: two\r\n\r\nbody two\r\n",
	"Subject: three\r\n\r\nb1\r\nb2\r\nb3",
}

type pop3Peer struct {
	srv  *POP3Server
	box  *Mailbox
	addr string
	uids []string
}

// startPOP3 serves a mailbox holding pop3Messages on 127.0.0.1, for user
// pop3User, until the test ends; then it checks no session panicked.
func startPOP3(t *testing.T, idle time.Duration) *pop3Peer {
	t.Helper()
	box := NewMailbox()
	p := &pop3Peer{box: box}
	for _, m := range pop3Messages {
		p.uids = append(p.uids, box.Append([]byte(m)))
	}
	p.srv = NewPOP3(POP3Config{
		Hostname:    "mx1.lab.test",
		Accounts:    map[string]POP3Account{pop3User: {Password: pop3Pass, Mailbox: box}},
		IdleTimeout: idle,
		Logger:      testLogger(t),
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = l.Addr().String()
	served := make(chan error, 1)
	go func() { served <- p.srv.Serve(l) }()
	t.Cleanup(func() {
		if err := p.srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-served; !errors.Is(err, ErrPOP3Closed) {
			t.Errorf("Serve returned %v, want ErrPOP3Closed", err)
		}
		if n := p.srv.Panics(); n != 0 {
			t.Errorf("%d sessions panicked", n)
		}
	})
	return p
}

// popClient speaks raw POP3 lines over TCP.
type popClient struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

// dial connects and checks the greeting. The connection deadline only
// keeps a broken server from hanging the test.
func (p *pop3Peer) dial(t *testing.T) *popClient {
	t.Helper()
	conn, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() }) // may already be closed by the test
	if err := conn.SetDeadline(time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	c := &popClient{t: t, conn: conn, r: bufio.NewReader(conn)}
	if g := c.line(); g != "+OK mx1.lab.test POP3 server ready" {
		t.Fatalf("greeting %q", g)
	}
	return c
}

func (c *popClient) line() string {
	c.t.Helper()
	s, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (got %q)", err, s)
	}
	if !strings.HasSuffix(s, "\r\n") {
		c.t.Fatalf("line %q does not end in CRLF", s)
	}
	return strings.TrimSuffix(s, "\r\n")
}

func (c *popClient) send(line string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, line+"\r\n"); err != nil {
		c.t.Fatal(err)
	}
}

// do sends a command and returns its whole response, lines joined by
// "\n": a multi-line response (RFC 1939 §3) is read to its "." line.
func (c *popClient) do(cmd string) string {
	c.t.Helper()
	c.send(cmd)
	lines := []string{c.line()}
	if strings.HasPrefix(lines[0], "+OK") && multiLine(cmd) {
		for lines[len(lines)-1] != "." {
			lines = append(lines, c.line())
		}
	}
	return strings.Join(lines, "\n")
}

func multiLine(cmd string) bool {
	f := strings.Fields(strings.ToUpper(cmd))
	if len(f) == 0 {
		return false
	}
	switch f[0] {
	case "CAPA", "RETR", "TOP":
		return true
	case "LIST", "UIDL":
		return len(f) == 1
	}
	return false
}

func (c *popClient) login() {
	c.t.Helper()
	if r := c.do("USER " + pop3User); r != "+OK send PASS" {
		c.t.Fatalf("USER: %q", r)
	}
	if r := c.do("PASS " + pop3Pass); !strings.HasPrefix(r, "+OK") {
		c.t.Fatalf("PASS: %q", r)
	}
}

// expectEOF waits for the server to close the connection.
func (c *popClient) expectEOF() {
	c.t.Helper()
	if s, err := c.r.ReadString('\n'); err == nil || s != "" {
		c.t.Fatalf("read %q, %v; want the connection closed", s, err)
	}
}

type pop3Step struct{ send, want string }

func TestPOP3Session(t *testing.T) {
	tests := []struct {
		name  string
		steps []pop3Step
		left  []int // indexes of pop3Messages still in the mailbox after
	}{
		{"textbook session", []pop3Step{
			{"USER " + pop3User, "+OK send PASS"},
			{"PASS " + pop3Pass, "+OK mx1.lab.test has 3 messages (133 octets)"},
			{"STAT", "+OK 3 133"},
			{"LIST", "+OK 3 messages (133 octets)\n1 77\n2 26\n3 30\n."},
			{"LIST 2", "+OK 2 26"},
			{"UIDL", "+OK unique-id listing follows\n1 {uid1}\n2 {uid2}\n3 {uid3}\n."},
			{"UIDL 3", "+OK 3 {uid3}"},
			{"RETR 1", "+OK 77 octets\nSubject: one\nFrom: a@example.test\n\nfirst line\n..hidden dot line\n..\nlast\n."},
			{"DELE 1", "+OK message 1 deleted"},
			{"RETR 2", "+OK 26 octets\nSubject: two\n\nbody two\n."},
			{"DELE 2", "+OK message 2 deleted"},
			{"NOOP", "+OK"},
			{"QUIT", "+OK bye, 2 messages deleted"},
		}, []int{2}},
		{"TOP sends the header and n body lines", []pop3Step{
			{"USER " + pop3User, "+OK send PASS"},
			{"PASS " + pop3Pass, "+OK mx1.lab.test has 3 messages (133 octets)"},
			{"TOP 3 0", "+OK top of message follows\nSubject: three\n\n."},
			{"TOP 3 2", "+OK top of message follows\nSubject: three\n\nb1\nb2\n."},
			{"TOP 1 3", "+OK top of message follows\nSubject: one\nFrom: a@example.test\n\nfirst line\n..hidden dot line\n..\n."},
			{"TOP 2 99", "+OK top of message follows\nSubject: two\n\nbody two\n."},
			{"TOP 2", "-ERR syntax: TOP msg n"},
			{"TOP 2 -1", "-ERR syntax: TOP msg n (n a number of lines, 0 or more)"},
			{"QUIT", "+OK bye, 0 messages deleted"},
		}, []int{0, 1, 2}},
		{"deleted messages are gone from the session, RSET brings them back", []pop3Step{
			{"USER " + pop3User, "+OK send PASS"},
			{"PASS " + pop3Pass, "+OK mx1.lab.test has 3 messages (133 octets)"},
			{"DELE 2", "+OK message 2 deleted"},
			{"STAT", "+OK 2 107"},
			{"LIST", "+OK 2 messages (107 octets)\n1 77\n3 30\n."},
			{"UIDL", "+OK unique-id listing follows\n1 {uid1}\n3 {uid3}\n."},
			{"LIST 2", "-ERR message 2 already deleted"},
			{"RETR 2", "-ERR message 2 already deleted"},
			{"TOP 2 0", "-ERR message 2 already deleted"},
			{"DELE 2", "-ERR message 2 already deleted"},
			{"RSET", "+OK maildrop has 3 messages (133 octets)"},
			{"STAT", "+OK 3 133"},
			{"DELE 3", "+OK message 3 deleted"},
			{"QUIT", "+OK bye, 1 messages deleted"},
		}, []int{0, 1}},
		{"commands are case-insensitive", []pop3Step{
			{"user " + pop3User, "+OK send PASS"},
			{"pAsS " + pop3Pass, "+OK mx1.lab.test has 3 messages (133 octets)"},
			{"stat", "+OK 3 133"},
			{"dele 3", "+OK message 3 deleted"},
			{"quit", "+OK bye, 1 messages deleted"},
		}, []int{0, 1}},
		{"AUTHORIZATION state refuses the rest", []pop3Step{
			{"STAT", "-ERR log in first (USER, PASS)"},
			{"RETR 1", "-ERR log in first (USER, PASS)"},
			{"NOOP", "-ERR log in first (USER, PASS)"},
			{"PASS " + pop3Pass, "-ERR send USER first"},
			{"APOP " + pop3User + " c4c9334bac560ecc979e58001b3e22fb", "-ERR unknown command"},
			{"USER", "-ERR syntax: USER name"},
			{"USER nobody.lab.test", "+OK send PASS"},
			{"PASS " + pop3Pass, "-ERR [AUTH] invalid user name or password"},
			{"USER " + pop3User, "+OK send PASS"},
			{"PASS secret", "-ERR [AUTH] invalid user name or password"},
			{"PASS " + pop3Pass, "-ERR send USER first"},
			{"", "-ERR empty command"},
			{"QUIT", "+OK bye"},
		}, []int{0, 1, 2}},
		{"TRANSACTION state checks its arguments", []pop3Step{
			{"USER " + pop3User, "+OK send PASS"},
			{"PASS " + pop3Pass, "+OK mx1.lab.test has 3 messages (133 octets)"},
			{"USER " + pop3User, "-ERR already logged in"},
			{"LIST 0", "-ERR no such message"},
			{"LIST 4", "-ERR no such message"},
			{"LIST 99999999999999999999", "-ERR syntax: LIST [msg] (msg is a message number)"},
			{"LIST +1", "-ERR syntax: LIST [msg] (msg is a message number)"},
			{"LIST one", "-ERR syntax: LIST [msg] (msg is a message number)"},
			{"LIST 1 2", "-ERR syntax: LIST [msg]"},
			{"RETR", "-ERR syntax: RETR msg"},
			{"DELE", "-ERR syntax: DELE msg"},
			{"XTND XMIT", "-ERR unknown command"},
			{"RETR " + strings.Repeat("1", 600), "-ERR line too long"},
			{"STAT", "+OK 3 133"},
			{"QUIT", "+OK bye, 0 messages deleted"},
		}, []int{0, 1, 2}},
		{"CAPA in both states", []pop3Step{
			{"CAPA", "+OK capability list follows\nTOP\nUIDL\nUSER\nRESP-CODES\nPIPELINING\nIMPLEMENTATION mta-lab\n."},
			{"USER " + pop3User, "+OK send PASS"},
			{"PASS " + pop3Pass, "+OK mx1.lab.test has 3 messages (133 octets)"},
			{"CAPA", "+OK capability list follows\nTOP\nUIDL\nUSER\nRESP-CODES\nPIPELINING\nIMPLEMENTATION mta-lab\n."},
			{"QUIT", "+OK bye, 0 messages deleted"},
		}, []int{0, 1, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startPOP3(t, 0)
			c := p.dial(t)
			uids := strings.NewReplacer("{uid1}", p.uids[0], "{uid2}", p.uids[1], "{uid3}", p.uids[2])
			for _, st := range tt.steps {
				if got, want := c.do(st.send), uids.Replace(st.want); got != want {
					t.Fatalf("%q:\ngot  %q\nwant %q", st.send, got, want)
				}
			}
			c.expectEOF()
			p.expectLeft(t, tt.left...)
		})
	}
}

// expectLeft checks which of pop3Messages are still in the mailbox, by UID.
func (p *pop3Peer) expectLeft(t *testing.T, idx ...int) {
	t.Helper()
	var want, got []string
	for _, i := range idx {
		want = append(want, p.uids[i])
	}
	for _, m := range p.box.List() {
		got = append(got, m.UID)
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("mailbox holds %v, want %v", got, want)
	}
}

// waitUnlocked waits until no session holds the mailbox: the server has
// finished with a connection the client dropped.
func (p *pop3Peer) waitUnlocked(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !p.box.lock() {
		if time.Now().After(deadline) {
			t.Fatal("mailbox still locked")
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, not synchronising on time
	}
	p.box.unlock()
}

func TestPOP3DeletionsOnlyAtQuit(t *testing.T) {
	t.Run("DELE then QUIT removes the message for the next session", func(t *testing.T) {
		p := startPOP3(t, 0)
		c := p.dial(t)
		c.login()
		c.do("DELE 1")
		if r := c.do("QUIT"); r != "+OK bye, 1 messages deleted" {
			t.Fatalf("QUIT: %q", r)
		}
		c = p.dial(t)
		c.login()
		if r := c.do("UIDL"); r != "+OK unique-id listing follows\n1 "+p.uids[1]+"\n2 "+p.uids[2]+"\n." {
			t.Errorf("UIDL after reconnect: %q (UIDs must stay, numbers restart at 1)", r)
		}
	})
	t.Run("a dropped connection deletes nothing", func(t *testing.T) {
		p := startPOP3(t, 0)
		c := p.dial(t)
		c.login()
		c.do("DELE 1")
		c.do("DELE 2")
		if err := c.conn.Close(); err != nil {
			t.Fatal(err)
		}
		p.waitUnlocked(t)
		p.expectLeft(t, 0, 1, 2)
	})
	t.Run("an idle session is closed without UPDATE", func(t *testing.T) {
		// One write, so a slow machine cannot idle out between commands.
		p := startPOP3(t, 200*time.Millisecond)
		c := p.dial(t)
		c.send("USER " + pop3User + "\r\nPASS " + pop3Pass + "\r\nDELE 1")
		for _, want := range []string{"+OK send PASS", "+OK mx1.lab.test has 3 messages (133 octets)", "+OK message 1 deleted"} {
			if got := c.line(); got != want {
				t.Fatalf("got %q, want %q", got, want)
			}
		}
		c.expectEOF()
		p.waitUnlocked(t)
		p.expectLeft(t, 0, 1, 2)
	})
	t.Run("Close ends sessions without UPDATE", func(t *testing.T) {
		p := startPOP3(t, 0)
		c := p.dial(t)
		c.login()
		c.do("DELE 1")
		if err := p.srv.Close(); err != nil {
			t.Fatal(err)
		}
		c.expectEOF()
		p.expectLeft(t, 0, 1, 2)
	})
}

func TestPOP3Maildrop(t *testing.T) {
	t.Run("a second session is refused while the first holds the mailbox", func(t *testing.T) {
		p := startPOP3(t, 0)
		first := p.dial(t)
		first.login()
		second := p.dial(t)
		second.do("USER " + pop3User)
		if r := second.do("PASS " + pop3Pass); r != "-ERR [IN-USE] mailbox in use by another session" {
			t.Errorf("second PASS: %q", r)
		}
		first.do("QUIT")
		second.do("USER " + pop3User)
		if r := second.do("PASS " + pop3Pass); !strings.HasPrefix(r, "+OK") {
			t.Errorf("PASS after the first QUIT: %q", r)
		}
	})
	t.Run("mail arriving during a session shows in the next one", func(t *testing.T) {
		p := startPOP3(t, 0)
		c := p.dial(t)
		c.login()
		uid := p.box.Append([]byte("Subject: late\r\n\r\nx\r\n"))
		if r := c.do("STAT"); r != "+OK 3 133" {
			t.Errorf("STAT during the session: %q", r)
		}
		c.do("DELE 1")
		c.do("QUIT")
		c = p.dial(t)
		c.login()
		if r := c.do("UIDL 3"); r != "+OK 3 "+uid {
			t.Errorf("UIDL 3 in the next session: %q", r)
		}
	})
	t.Run("three failed logins close the session", func(t *testing.T) {
		p := startPOP3(t, 0)
		c := p.dial(t)
		for range 2 {
			c.do("USER " + pop3User)
			if r := c.do("PASS wrong"); r != "-ERR [AUTH] invalid user name or password" {
				t.Fatalf("PASS wrong: %q", r)
			}
		}
		c.do("USER " + pop3User)
		if r := c.do("PASS wrong"); r != "-ERR [AUTH] invalid user name or password, closing" {
			t.Fatalf("third PASS wrong: %q", r)
		}
		c.expectEOF()
	})
	t.Run("pipelined commands with bare LF line ends", func(t *testing.T) {
		p := startPOP3(t, 0)
		c := p.dial(t)
		if _, err := io.WriteString(c.conn, "USER "+pop3User+"\nPASS "+pop3Pass+"\nSTAT\nQUIT\n"); err != nil {
			t.Fatal(err)
		}
		want := []string{"+OK send PASS", "+OK mx1.lab.test has 3 messages (133 octets)", "+OK 3 133", "+OK bye, 0 messages deleted"}
		for _, w := range want {
			if got := c.line(); got != w {
				t.Errorf("got %q, want %q", got, w)
			}
		}
		c.expectEOF()
	})
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// BenchmarkPOP3Session measures whole sessions over loopback: login, STAT,
// RETR of a 4 KiB message, QUIT.
func BenchmarkPOP3Session(b *testing.B) {
	box := NewMailbox()
	box.Append([]byte("Subject: bench\r\n\r\n" + strings.Repeat(".dotted line of text, 32 octets\r\n", 128)))
	srv := NewPOP3(POP3Config{Accounts: map[string]POP3Account{pop3User: {Password: pop3Pass, Mailbox: box}}})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }() // ends with ErrPOP3Closed at Close
	b.Cleanup(func() { _ = srv.Close() })
	script := "USER " + pop3User + "\r\nPASS " + pop3Pass + "\r\nSTAT\r\nRETR 1\r\nQUIT\r\n"
	b.ReportAllocs()
	for b.Loop() {
		conn, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.WriteString(conn, script); err != nil {
			b.Fatal(err)
		}
		reply, err := io.ReadAll(conn)
		if err != nil || !strings.Contains(string(reply), "+OK bye") {
			b.Fatalf("session: %v\n%s", err, reply)
		}
		_ = conn.Close() // the server has closed it already
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sessions/s")
}
