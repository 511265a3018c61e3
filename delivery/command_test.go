package delivery

import (
	"bufio"
	"net"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"mta/spool"
)

// recordCommands serves one connection on loopback offering ext in its
// EHLO reply, answers 250 to MAIL and RCPT, and sends the MAIL and RCPT
// lines it read on the channel when the client quits.
func recordCommands(t *testing.T, ext []string) (string, <-chan []string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	lines := make(chan []string, 1)
	go func() {
		var got []string
		defer func() { lines <- got }()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		say := func(s string) { _, _ = c.Write([]byte(s + "\r\n")) }
		say("220 rec.test")
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return
			}
			l = strings.TrimSuffix(l, "\r\n")
			switch verb := strings.ToUpper(l[:min(4, len(l))]); verb {
			case "EHLO":
				reply := "250-rec.test\r\n250-" + strings.Join(ext, "\r\n250-")
				say(reply[:strings.LastIndex(reply, "250-")] + "250 " + ext[len(ext)-1])
			case "QUIT":
				say("221 bye")
				return
			default:
				got = append(got, l)
				say("250 ok")
			}
		}
	}()
	return ln.Addr().String(), lines
}

// TestCommandsMatchGoSMTP: the MAIL and RCPT commands the wire sends are
// byte for byte those go-smtp's client sends for the same envelope, host
// extensions and options (as delivery builds them).
func TestCommandsMatchGoSMTP(t *testing.T) {
	all := []string{"PIPELINING", "8BITMIME", "SIZE 10000000", "SMTPUTF8", "DSN"}
	exts := map[string][]string{
		"none":                  {"HELP"},
		"all":                   all,
		"SIZE_no_limit_DSN":     {"SIZE", "DSN"},
		"8BITMIME_SMTPUTF8_DSN": {"8BITMIME", "SMTPUTF8", "DSN"},
	}
	envs := map[string]spool.Envelope{
		"plain": {Sender: "s@sender.test", Size: 2048, Recipients: []spool.Recipient{{Addr: "a@example.test"}}},
		"null_sender_dsn_fields": {Size: 1, EnvID: "id+1=x", Ret: spool.RetFull, Recipients: []spool.Recipient{
			{Addr: "a@example.test", Notify: spool.NotifySuccess | spool.NotifyFailure | spool.NotifyDelay, ORcpt: "rfc822;a+b=c@example.test"},
			{Addr: "b@example.test", Notify: spool.NotifyNever, ORcpt: "utf-8;dörte b@example.test"},
			{Addr: "c@example.test", Notify: spool.NotifyDelay, ORcpt: "RFC822;ä@example.test"},
			{Addr: "d@bücher.test", ORcpt: "utf-8;x\x01y@example.test"},
		}},
		"utf8_headers_ret": {Sender: "dörte@sender.test", EnvID: "not printable é", Ret: spool.RetHeaders, SMTPUTF8: true,
			Recipients: []spool.Recipient{{Addr: "jürgen@example.test", ORcpt: "utf-8;jürgen@example.test"}}},
	}
	for en, ext := range exts {
		for vn, env := range envs {
			t.Run(en+"/"+vn, func(t *testing.T) {
				addr, lines := recordCommands(t, ext)
				nc, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				c := smtp.NewClient(nc)
				defer c.Close()
				if err := c.Hello("mta.test"); err != nil {
					t.Fatal(err)
				}
				s := &session{x: extensionsOf(c)}
				a := &attempt{j: &job{msg: &spool.Message{Envelope: env}}}
				a.j.need8Bit, a.j.needUTF8 = needs(&env, []spool.Task{{Rcpt: 0}})
				var want, ours []string
				if ok, _ := c.Extension("SMTPUTF8"); a.j.needUTF8 && !ok {
					t.Skip("a host without SMTPUTF8 never gets such a message")
				}
				mo := a.mailOptions(s)
				if err := c.Mail(wireAddr(env.Sender), mo); err != nil {
					t.Fatalf("go-smtp MAIL: %v", err)
				}
				b, err := appendMail(nil, wireAddr(env.Sender), mo, s.x)
				if err != nil {
					t.Fatalf("our MAIL: %v", err)
				}
				ours = append(ours, string(b))
				for i := range env.Recipients {
					r := &env.Recipients[i]
					if err := c.Rcpt(wireAddr(r.Addr), rcptOptions(r)); err != nil {
						t.Fatalf("go-smtp RCPT: %v", err)
					}
					b, err := appendRcpt(nil, wireAddr(r.Addr), rcptOptions(r), s.x)
					if err != nil {
						t.Fatalf("our RCPT: %v", err)
					}
					ours = append(ours, string(b))
				}
				if err := c.Quit(); err != nil {
					t.Fatal(err)
				}
				want = <-lines
				if strings.Join(ours, "\n") != strings.Join(want, "\n") {
					t.Errorf("ours:\n%s\ngo-smtp's:\n%s", strings.Join(ours, "\n"), strings.Join(want, "\n"))
				}
			})
		}
	}
}

func TestCommandsRefuseWhatCannotBeSent(t *testing.T) {
	x := extensions{dsn: true}
	if _, err := appendMail(nil, "a@b.test\r\nRCPT TO:<x@y.test>", &smtp.MailOptions{}, x); err == nil {
		t.Errorf("a sender with CRLF was written")
	}
	if _, err := appendRcpt(nil, "x@y.test\n", &smtp.RcptOptions{}, x); err == nil {
		t.Errorf("a recipient with LF was written")
	}
	if _, err := appendMail(nil, "a@b.test", &smtp.MailOptions{UTF8: true}, x); err == nil {
		t.Errorf("SMTPUTF8 written to a host without it")
	}
	bad := []smtp.DSNNotify{smtp.DSNNotifyNever, smtp.DSNNotifySuccess}
	if _, err := appendRcpt(nil, "x@y.test", &smtp.RcptOptions{Notify: bad}, x); err == nil {
		t.Errorf("NOTIFY=NEVER,SUCCESS written")
	}
	if _, err := appendMail(nil, "a@b.test", &smtp.MailOptions{RequireTLS: true}, x); err == nil {
		t.Errorf("an option the writer does not know was dropped")
	}
}
