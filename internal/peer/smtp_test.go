package peer_test

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"mta/internal/peer"
	"mta/internal/selfsigned"
	"mta/internal/testpeer"
)

func dial(t *testing.T, h *peer.Host) *smtp.Client {
	t.Helper()
	c, err := smtp.Dial(h.Addr())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Hello("client.test"); err != nil {
		t.Fatalf("hello: %v", err)
	}
	return c
}

func send(c *smtp.Client, from string, to []string, body string) error {
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write([]byte(body)); err != nil {
		return err
	}
	return w.Close()
}

func code(err error) int {
	var e *smtp.SMTPError
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

func TestHostRecords(t *testing.T) {
	h := testpeer.NewSMTP(t, "127.0.0.2:0", peer.Behaviour{})
	c := dial(t, h)
	if err := send(c, "a@x.test", []string{"b@y.test", "c@y.test"}, "Subject: hi\r\n\r\nbody\r\n"); err != nil {
		t.Fatalf("send: %v", err)
	}
	msgs := h.Messages()
	if len(msgs) != 1 || msgs[0].From != "a@x.test" || len(msgs[0].To) != 2 || msgs[0].EHLO != "client.test" {
		t.Fatalf("mailbox = %+v", msgs)
	}
	if !strings.Contains(string(msgs[0].Data), "body") {
		t.Errorf("data = %q", msgs[0].Data)
	}
	ss := h.Sessions()
	if h.Connections() != 1 || len(ss) != 1 || len(ss[0].Transactions) != 1 || ss[0].Transactions[0].Reply != 250 {
		t.Fatalf("sessions = %+v", ss)
	}
	for _, ext := range []string{"8BITMIME", "SMTPUTF8", "DSN", "SIZE"} {
		if ok, _ := c.Extension(ext); !ok {
			t.Errorf("%s not advertised", ext)
		}
	}
	if !h.Delete(msgs[0].ID) || len(h.Messages()) != 0 {
		t.Errorf("delete did not empty the mailbox")
	}
}

func TestHostFillsMailbox(t *testing.T) {
	h := testpeer.NewSMTP(t, "127.0.0.2:0", peer.Behaviour{Domain: "mx1.lab.test"})
	mb := peer.NewMailbox()
	h.SetMailbox(mb)
	if err := send(dial(t, h), "a@x.test", []string{"b@y.test"}, "Subject: hi\r\n\r\nbody\r\n"); err != nil {
		t.Fatal(err)
	}
	msgs := mb.List()
	if len(msgs) != 1 {
		t.Fatalf("%d messages in the mailbox", len(msgs))
	}
	d := string(msgs[0].Data)
	for _, want := range []string{"Return-Path: <a@x.test>\r\n", "Received: from client.test ([127.0.0.1])", "by mx1.lab.test with ESMTP", "for <b@y.test>", "Subject: hi"} {
		if !strings.Contains(d, want) {
			t.Errorf("mailbox message lacks %q:\n%s", want, d)
		}
	}
	// Two recipients: no "for" clause (RFC 5321 gives it one path).
	if err := send(dial(t, h), "a@x.test", []string{"b@y.test", "c@y.test"}, "Subject: two\r\n\r\nbody\r\n"); err != nil {
		t.Fatal(err)
	}
	if msgs = mb.List(); len(msgs) != 2 || !strings.Contains(string(msgs[1].Data), "\tby mx1.lab.test with ESMTP id 2; ") {
		t.Errorf("mailbox %q, want a second message without a for clause", msgs)
	}
}

// With ReverseName the Received field says what the host saw, as Postfix
// writes it: the name reverse DNS gives, or "unknown".
func TestHostFillsMailboxWithReverseName(t *testing.T) {
	for _, tc := range []struct{ name, rdns, want string }{
		{"named", "client.rdns.test", "Received: from client.test (client.rdns.test [127.0.0.1])\r\n\tby mx1.lab.test with ESMTP id 1\r\n"},
		{"no name", "", "Received: from client.test (unknown [127.0.0.1])\r\n\tby mx1.lab.test with ESMTP id 1\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var asked []string
			h := testpeer.NewSMTP(t, "127.0.0.2:0", peer.Behaviour{Domain: "mx1.lab.test", ReverseName: func(ip string) string {
				asked = append(asked, ip) // one session at a time: no race
				return tc.rdns
			}})
			mb := peer.NewMailbox()
			h.SetMailbox(mb)
			if err := send(dial(t, h), "a@x.test", []string{"b@y.test"}, "Subject: hi\r\n\r\nbody\r\n"); err != nil {
				t.Fatal(err)
			}
			msgs := mb.List()
			if len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), tc.want) {
				t.Fatalf("mailbox %q, want a message with %q", msgs, tc.want)
			}
			if len(asked) != 1 || asked[0] != "127.0.0.1" {
				t.Errorf("ReverseName asked for %q, want the client's address once", asked)
			}
		})
	}
}

// A slow host waits before every reply, also before each of the replies
// to pipelined commands that arrive in one read. The bound is a floor,
// never a ceiling: waits only add up.
func TestHostSlowDelaysEveryReply(t *testing.T) {
	const delay = 40 * time.Millisecond
	h := testpeer.NewSMTP(t, "127.0.0.2:0", peer.Behaviour{Delay: delay})
	conn, err := net.Dial("tcp", h.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tp := textproto.NewConn(conn)
	if _, _, err := tp.ReadResponse(220); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	// One write: EHLO (a multi-line reply, waited for once), MAIL, two
	// RCPTs and DATA: five replies.
	if _, err := io.WriteString(conn, "EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []int{250, 250, 250, 250, 354} {
		if _, msg, err := tp.ReadResponse(want); err != nil {
			t.Fatalf("want %d: %v %s", want, err, msg)
		}
	}
	if took := time.Since(start); took < 5*delay {
		t.Errorf("five replies took %v, want at least 5 × %v", took, delay)
	}
}

func TestHostScripts(t *testing.T) {
	tests := []struct {
		name string
		b    peer.Behaviour
		want int // code of the first failing step
	}{
		{"mail_451", peer.Behaviour{Mail: &peer.Reply{Code: 451, Enhanced: "4.3.0"}}, 451},
		{"rcpt_550_for_one", peer.Behaviour{RcptReplies: map[string]peer.Reply{"B@y.test": {Code: 550, Enhanced: "5.1.1"}}}, 550},
		{"data_554", peer.Behaviour{Data: &peer.Reply{Code: 554}}, 554},
		{"max_rcpts", peer.Behaviour{MaxRcpts: 1}, 452},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := testpeer.NewSMTP(t, "127.0.0.2:0", tc.b)
			err := send(dial(t, h), "a@x.test", []string{"c@y.test", "b@y.test"}, "x\r\n")
			if code(err) != tc.want {
				t.Fatalf("err = %v, want code %d", err, tc.want)
			}
		})
	}
}

func TestHostGreeting(t *testing.T) {
	h := testpeer.NewSMTP(t, "127.0.0.2:0", peer.Behaviour{Greeting: &peer.Reply{Code: 421, Enhanced: "4.3.2"}})
	c, err := smtp.Dial(h.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.test"); code(err) != 421 {
		t.Fatalf("hello = %v, want 421", err)
	}
	if h.Connections() != 1 {
		t.Errorf("connections = %d", h.Connections())
	}
}

func TestHostWithout8BitMIME(t *testing.T) {
	h := testpeer.NewSMTP(t, "127.0.0.2:0", peer.Behaviour{No8BitMIME: true, NoSMTPUTF8: true, NoDSN: true, MaxSizeBytes: 1000})
	c := dial(t, h)
	for _, ext := range []string{"8BITMIME", "SMTPUTF8", "DSN"} {
		if ok, _ := c.Extension(ext); ok {
			t.Errorf("%s advertised", ext)
		}
	}
	if n, ok := c.MaxMessageSize(); !ok || n != 1000 {
		t.Errorf("SIZE = %d %v", n, ok)
	}
}

func TestHostDropAfterDot(t *testing.T) {
	h := testpeer.NewSMTP(t, "127.0.0.2:0", peer.Behaviour{DropAfterDot: true})
	err := send(dial(t, h), "a@x.test", []string{"b@y.test"}, "x\r\n")
	if err == nil || code(err) != 0 {
		t.Fatalf("err = %v, want a connection error", err)
	}
	if len(h.Messages()) != 1 {
		t.Errorf("the dropped message was not kept")
	}
}

func TestHostStartTLSAndAuth(t *testing.T) {
	cert, err := selfsigned.Generate([]string{"mx.test"}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	h := testpeer.NewSMTP(t, "127.0.0.2:0", peer.Behaviour{Cert: &cert.TLS, Auth: map[string]string{"u": "p"}})
	plain := dial(t, h)
	if ok, _ := plain.Extension("AUTH"); ok {
		t.Errorf("AUTH offered before TLS")
	}
	c, err := smtp.DialStartTLS(h.Addr(), &tls.Config{ServerName: "mx.test", RootCAs: cert.Pool()})
	if err != nil {
		t.Fatalf("starttls: %v", err)
	}
	defer c.Close()
	if err := c.Mail("a@x.test", nil); code(err) != 530 {
		t.Fatalf("mail before auth = %v, want 530", err)
	}
	if err := c.Auth(sasl.NewLoginClient("u", "p")); err != nil {
		t.Fatalf("auth: %v", err)
	}
	if err := send(c, "a@x.test", []string{"b@y.test"}, "x\r\n"); err != nil {
		t.Fatalf("send: %v", err)
	}
	s := h.Sessions()[1]
	if !s.TLS || s.ServerName != "mx.test" || s.AuthUser != "u" {
		t.Errorf("session = %+v", s)
	}
}

func TestHostsShareAPort(t *testing.T) {
	port, hosts := testpeer.SMTPHosts(t, map[string]peer.Behaviour{
		"127.0.0.2": {}, "127.0.0.3": {}, "127.0.0.4": {Refuse: true},
	})
	for ip, h := range hosts {
		if h.Port() == "" || !strings.HasSuffix(h.Addr(), ":"+strconv.Itoa(port)) {
			t.Errorf("%s: addr %s, want port %d", ip, h.Addr(), port)
		}
	}
	if _, err := smtp.Dial(hosts["127.0.0.4"].Addr()); err == nil {
		t.Errorf("refusing host accepted a connection")
	}
}

// TestHostRecordsCommands pipelines MAIL, RCPT and DATA in one write from
// a raw client: the host records them as one read, skips the message
// data, and hides PIPELINING when told.
func TestHostRecordsCommands(t *testing.T) {
	for _, noPipe := range []bool{false, true} {
		t.Run("NoPipelining="+strconv.FormatBool(noPipe), func(t *testing.T) {
			h := testpeer.NewSMTP(t, "127.0.0.2:0", peer.Behaviour{NoPipelining: noPipe})
			nc, err := net.Dial("tcp", h.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			c := textproto.NewConn(nc)
			say := func(cmds string, replies ...int) string {
				t.Helper()
				if cmds != "" {
					if _, err := io.WriteString(nc, cmds); err != nil {
						t.Fatal(err)
					}
				}
				var last string
				for _, want := range replies {
					code, msg, err := c.ReadResponse(want)
					if err != nil {
						t.Fatalf("after %q: %d %s: %v", cmds, code, msg, err)
					}
					last = msg
				}
				return last
			}
			say("", 220)
			ehlo := say("EHLO client.test\r\n", 250)
			if strings.Contains(ehlo, "PIPELINING") == noPipe {
				t.Errorf("EHLO reply %q with NoPipelining=%v", ehlo, noPipe)
			}
			say("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n", 250, 250, 354)
			say("MAIL FROM:<not@a.command>\r\n..x\r\n.\r\n", 250)
			say("QUIT\r\n", 221)
			var got []string
			for _, cmd := range h.Sessions()[0].Commands {
				got = append(got, fmt.Sprintf("%d %s", cmd.Read, cmd.Line))
			}
			want := []string{"1 EHLO client.test", "2 MAIL FROM:<a@x.test>", "2 RCPT TO:<b@y.test>", "2 DATA", "4 QUIT"}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("commands:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if m := h.Messages(); len(m) != 1 || string(m[0].Data) != "MAIL FROM:<not@a.command>\r\n.x\r\n" {
				t.Errorf("messages %+v", m)
			}
		})
	}
}
