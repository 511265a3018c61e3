package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"mta/smtpd"

	"mta/internal/peer"
	"mta/internal/testpeer"
)

// sizedMessage is a message of about n octets (never more).
func sizedMessage(n int) (msg, body string) {
	head := "Subject: sized\r\n\r\n"
	line := strings.Repeat("x", 98) + "\r\n"
	body = strings.Repeat(line, (n-len(head))/len(line))
	return head + body, body
}

// TestMessageUpToTheSizeLimit: a message as large as limits.max_message_bytes
// (the SIZE the relay listener advertises) is taken, though the header
// fix-ups make the stored copy larger than that.
func TestMessageUpToTheSizeLimit(t *testing.T) {
	s, hosts := serveWorld(t, "limits: {max_message_bytes: 8192}\n")
	msg, body := sizedMessage(8192)
	if len(msg) < 8192-100 {
		t.Fatalf("test message is only %d octets", len(msg))
	}
	sendSMTP(t, s.relay, "a@sender.test", []string{"b@example.test"}, msg)
	got := waitMessages(t, hosts["127.0.0.2"], 1)
	if !strings.HasSuffix(string(got[0].Data), body) {
		t.Errorf("delivered message lacks the body")
	}
}

// TestReloadRaisesSizeLimit: a limits.max_message_bytes raised by SIGHUP
// applies to the whole intake, spool included.
func TestReloadRaisesSizeLimit(t *testing.T) {
	s, hosts := serveWorld(t, "limits: {max_message_bytes: 4096}\n")
	s.reload(t, "max_message_bytes: 4096", "max_message_bytes: 16384")
	msg, body := sizedMessage(12000)
	sendSMTP(t, s.relay, "a@sender.test", []string{"b@example.test"}, msg)
	got := waitMessages(t, hosts["127.0.0.2"], 1)
	if !strings.HasSuffix(string(got[0].Data), body) {
		t.Errorf("delivered message lacks the body")
	}
}

// reload rewrites the daemon's config with old replaced by new, sends
// SIGHUP and waits for the reload's log line.
func (s *served) reload(t *testing.T, old, new string) {
	t.Helper()
	cfg, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cfg), old) {
		t.Fatalf("config lacks %q", old)
	}
	writeFile(t, s.config, strings.Replace(string(cfg), old, new, 1))
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	s.log.wait(t, "msg=reloaded")
}

// TestReloadAliasesForBounces: aliases changed by SIGHUP also decide
// where the bounce to a sender in a local domain goes, not only where
// mail to that domain goes.
func TestReloadAliasesForBounces(t *testing.T) {
	s, hosts := serveWorld(t, "local_domains: [local.test]\naliases: {cron: old@sender.test}\n")
	s.reload(t, "cron: old@sender.test", "cron: new@sender.test")
	hosts["127.0.0.2"].SetBehaviour(peer.Behaviour{Rcpt: &peer.Reply{Code: 550, Enhanced: "5.1.1", Text: "no such user"}})
	sendSMTP(t, s.relay, "cron@local.test", []string{"b@example.test"}, "Subject: cron\r\n\r\nreport\r\n")
	dsn := waitMessages(t, hosts["127.0.0.3"], 1)
	if got := strings.Join(dsn[0].To, ","); got != "new@sender.test" {
		t.Errorf("bounce went to %s, want new@sender.test", got)
	}
}

// TestQueueDeleteReason: the bounce after `mta queue delete --bounce` says
// once why the recipient failed.
func TestQueueDeleteReason(t *testing.T) {
	s, hosts := serveWorldRetry(t, "1h", "")
	hosts["127.0.0.2"].SetBehaviour(peer.Behaviour{Rcpt: &peer.Reply{Code: 451, Enhanced: "4.3.0", Text: "try later"}})
	id := sendSMTP(t, s.relay, "a@sender.test", []string{"b@example.test"}, "Subject: hi\r\n\r\nhello\r\n")
	testpeer.WaitFor(t, "the deferral", func() bool {
		out, err := s.mta(t, "", "queue", "show", id, "--config", s.config)
		return err == nil && strings.Contains(out, "deferred, next attempt in")
	})
	if out, err := s.mta(t, "", "queue", "delete", id, "--bounce", "--config", s.config); err != nil {
		t.Fatalf("queue delete: %v\n%s", err, out)
	}
	dsn := string(waitMessages(t, hosts["127.0.0.3"], 1)[0].Data)
	if n := strings.Count(dsn, "deleted by the administrator"); n != 1 {
		t.Errorf("the bounce gives the reason %d times:\n%s", n, dsn)
	}
}

// submitAs sends msg through the submission listener at addr as login,
// after STARTTLS, and returns the reply to the final dot.
func submitAs(t *testing.T, addr, login, password, from, to, msg string) error {
	t.Helper()
	c, err := smtp.DialStartTLS(addr, &tls.Config{InsecureSkipVerify: true}) // the daemon's self-signed certificate
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", login, password)); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	if err := c.Rcpt(to, nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, msg); err != nil {
		return err
	}
	return w.Close()
}

// serveWithSubmission is serveWorld with a submission listener too; it
// returns the daemon and that listener's address.
func serveWithSubmission(t *testing.T, extra string) (*served, string) {
	t.Helper()
	port, _ := testpeer.SMTPHosts(t, map[string]peer.Behaviour{"127.0.0.2": {}})
	dns := testpeer.NewDNS(t, worldZone)
	dir := t.TempDir()
	path := filepath.Join(dir, "mta.yaml")
	writeFile(t, path, fmt.Sprintf(`hostname: mta.example.test
state_dir: %s
listeners: {relay: ["127.0.0.1:0"], submission: ["127.0.0.1:0"], submissions: []}
dns: {servers: [%q]}
delivery: {port: %d, allow_private_mx: true}
metrics: {address: ""}
%s`, dir, dns.Addr(), port, extra))
	s := startServe(t, path)
	ready := s.log.wait(t, "msg=ready")
	_, rest, _ := strings.Cut(ready, "submission=")
	addr, _, _ := strings.Cut(rest, " ")
	return s, strings.Trim(addr, `"`)
}

// TestReloadFromHeaderRule: limits.from_header_must_match changed by
// SIGHUP applies to the next message, as the other limits do.
func TestReloadFromHeaderRule(t *testing.T) {
	hash, err := smtpd.HashPassword([]byte("secret"), 4)
	if err != nil {
		t.Fatal(err)
	}
	users := filepath.Join(t.TempDir(), "users")
	writeFile(t, users, "abc:"+hash+":a@sender.test\n")
	s, addr := serveWithSubmission(t, fmt.Sprintf("users_file: %s\nlimits: {from_header_must_match: true}\n", users))
	msg := "From: boss@elsewhere.test\r\nSubject: on behalf\r\n\r\nhi\r\n"
	err = submitAs(t, addr, "abc", "secret", "a@sender.test", "b@example.test", msg)
	if se, ok := err.(*smtp.SMTPError); !ok || se.Code != 550 {
		t.Fatalf("From: not owned, rule on: %v, want 550", err)
	}
	s.reload(t, "from_header_must_match: true", "from_header_must_match: false")
	if err := submitAs(t, addr, "abc", "secret", "a@sender.test", "b@example.test", msg); err != nil {
		t.Errorf("From: not owned after the rule was turned off by SIGHUP: %v", err)
	}
}

// TestReloadWithoutUsersFile: a users_file taken out of the config by
// SIGHUP takes its users' logins with it.
func TestReloadWithoutUsersFile(t *testing.T) {
	hash, err := smtpd.HashPassword([]byte("secret"), 4)
	if err != nil {
		t.Fatal(err)
	}
	users := filepath.Join(t.TempDir(), "users")
	writeFile(t, users, "abc:"+hash+":a@sender.test\n")
	s, addr := serveWithSubmission(t, fmt.Sprintf("users_file: %s\n", users))
	login := func() error {
		c, err := smtp.DialStartTLS(addr, &tls.Config{InsecureSkipVerify: true}) // the daemon's self-signed certificate
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.Auth(sasl.NewPlainClient("", "abc", "secret"))
	}
	if err := login(); err != nil {
		t.Fatalf("login with users_file set: %v", err)
	}
	s.reload(t, "users_file: "+users, "")
	if err := login(); err == nil {
		t.Errorf("abc still logs in after users_file was removed from the config")
	}
}
