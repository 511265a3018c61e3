package main

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"mta/internal/peer"
	"mta/internal/selfsigned"
	"mta/internal/testpeer"
	"mta/spool"
)

// asRoot skips a test that runs commands as another user.
func asRoot(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("running commands as another user needs root")
	}
}

// TestProcessConfigErrors: the binary refuses a broken config at start and
// in check-config, naming every problem with its line and key, with
// EX_CONFIG; check-config passes a good one and warns about missing
// postmaster and root aliases.
func TestProcessConfigErrors(t *testing.T) {
	p := newProc(t, "1s", "")
	bad := filepath.Join(p.dir, "bad.yaml")
	writeFile(t, bad, "hostname: mta.example.test\nlisteners:\n  relay: [\"127.0.0.1:0\"]\n  smtp: [\"127.0.0.1:25\"]\n"+
		"delivery:\n  lifetime: forever\n  ip_family: ipv5\nlimits: {max_recipients: many}\n")
	want := []string{"4 problem(s)", `line 4: unknown key "smtp" in listeners`, `line 6: delivery.lifetime: "forever" is not a duration`,
		`line 7: delivery.ip_family: "ipv5" is not one of`, "line 8: limits.max_recipients: cannot unmarshal"}
	for _, args := range [][]string{{"serve", "--config", bad}, {"check-config", bad}} {
		r := p.run(client{uid: -1}, args...)
		if r.code != exitConfig {
			t.Errorf("mta %s: exit %d, want %d (EX_CONFIG)\n%s", args[0], r.code, exitConfig, r.err)
		}
		for _, w := range want {
			if !strings.Contains(r.err, w) {
				t.Errorf("mta %s: stderr lacks %q:\n%s", args[0], w, r.err)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(p.dir, "state")); err == nil {
		t.Error("serve with a broken config made its state directory")
	}

	p.editConfig("myorigin: example.test\n", "myorigin: example.test\nlocal_domains: [example.test]\naliases: {postmaster: admin@sender.test}\n")
	r := p.run(client{uid: -1}, "check-config", p.config)
	if r.code != 0 || !strings.Contains(r.out, `no alias for "root"`) || strings.Contains(r.out, `"postmaster"`) || !strings.Contains(r.out, ": ok (") {
		t.Errorf("check-config of a good config: exit %d\n%s%s", r.code, r.out, r.err)
	}
}

// TestProcessQueueCommands drives every `mta queue` command, as a table
// and as --json, against the daemon process through its admin socket, on
// a message the MX host defers and then takes, and one deleted with a
// bounce; ordinary users are kept off the admin socket.
func TestProcessQueueCommands(t *testing.T) {
	p := newProc(t, "1h", "")
	mx := p.hosts["127.0.0.2"]
	if err := mx.SetBehaviour(peer.Behaviour{Rcpt: &peer.Reply{Code: 451, Enhanced: "4.3.0", Text: "try later"}}); err != nil {
		t.Fatal(err)
	}
	p.start()
	if fi, err := os.Stat(p.admin); err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Errorf("admin socket %s: %v, %v; want a socket with mode 0660", p.admin, fi.Mode(), err)
	}
	id := sendSMTP(t, p.relay, "a@sender.test", []string{"b@example.test"}, "Subject: one\r\n\r\nhello\r\n")
	p.waitMessage(id, "the deferral", func(m *spool.Message) bool { return m.Envelope.Recipients[0].State == spool.Deferred })

	list := p.mta("queue", "list")
	for _, want := range []string{"DOMAIN", "example.test", "total: 1 message(s)", id, "a@sender.test", "451 4.3.0 try later"} {
		if !strings.Contains(list, want) {
			t.Errorf("queue list lacks %q:\n%s", want, list)
		}
	}
	resp := decodeAdmin(t, p.mta("queue", "list", "--json"))
	if resp.Counts == nil || resp.Counts.ByDomain["example.test"].Deferred != 1 || len(resp.Messages) != 1 || resp.Messages[0].ID != id {
		t.Errorf("queue list --json: %+v", resp)
	}
	resp = decodeAdmin(t, p.mta("queue", "show", id, "--json"))
	if m := resp.Message; m == nil || len(m.Envelope.Recipients) != 1 || len(m.Envelope.Recipients[0].Attempts) == 0 ||
		m.Envelope.Recipients[0].Attempts[0].Code != 451 || m.Retired {
		t.Errorf("queue show --json: %+v", resp.Message)
	}

	if out := p.mta("queue", "hold", id); !strings.Contains(out, id+": hold done") {
		t.Errorf("hold: %s", out)
	}
	if out := p.mta("queue", "list", "--state", "held"); !strings.Contains(out, id) || !strings.Contains(p.mta("queue", "show", id), "held (deferred)") {
		t.Errorf("held message not shown as held:\n%s", out)
	}
	if out := p.mta("queue", "retry", id); !strings.Contains(out, "0 recipient(s) due now") {
		t.Errorf("retry of a held message: %s", out)
	}
	p.mta("queue", "release", id)
	if err := mx.SetBehaviour(peer.Behaviour{}); err != nil {
		t.Fatal(err)
	}
	if out := p.mta("queue", "retry", id); !strings.Contains(out, "1 recipient(s) due now") {
		t.Errorf("retry: %s", out)
	}
	waitMessages(t, mx, 1)
	p.waitMessage(id, "the retired record", func(m *spool.Message) bool { return m.Retired })
	show := p.mta("queue", "show", id)
	for _, want := range []string{"retired record", "to <b@example.test>: delivered (2 attempt(s))", "rcpt: 451 4.3.0 try later", "mx.example.test[127.0.0.2]", "data: 250"} {
		if !strings.Contains(show, want) {
			t.Errorf("show of the delivered message lacks %q:\n%s", want, show)
		}
	}
	resp = decodeAdmin(t, p.mta("queue", "show", id, "--json"))
	if resp.Message == nil || !resp.Message.Retired {
		t.Errorf("show --json of a delivered message: %+v", resp.Message)
	}

	// A second message: flush, then delete with a bounce.
	if err := mx.SetBehaviour(peer.Behaviour{Rcpt: &peer.Reply{Code: 451, Enhanced: "4.3.0", Text: "try later"}}); err != nil {
		t.Fatal(err)
	}
	id2 := sendSMTP(t, p.relay, "a@sender.test", []string{"c@example.test"}, "Subject: two\r\n\r\nhello\r\n")
	p.waitMessage(id2, "the second deferral", func(m *spool.Message) bool { return m.Envelope.Recipients[0].State == spool.Deferred })
	if out := p.mta("queue", "flush"); !strings.Contains(out, "1 recipient(s) due now") {
		t.Errorf("flush: %s", out)
	}
	p.waitMessage(id2, "the second attempt", func(m *spool.Message) bool {
		return m.Envelope.Recipients[0].AttemptCount == 2 && m.Envelope.Recipients[0].State == spool.Deferred
	})
	resp = decodeAdmin(t, p.mta("queue", "delete", id2, "--bounce", "--json"))
	if resp.Error != "" {
		t.Errorf("delete --json: %+v", resp)
	}
	dsn := waitMessages(t, p.hosts["127.0.0.3"], 1)
	if dsn[0].From != "" || dsn[0].To[0] != "a@sender.test" || !strings.Contains(string(dsn[0].Data), "deleted by the administrator") {
		t.Errorf("bounce after delete: from <%s> to %v\n%s", dsn[0].From, dsn[0].To, dsn[0].Data)
	}
	testpeer.WaitFor(t, "an empty queue after the bounce", func() bool {
		resp, err := adminCall(t.Context(), p.admin, adminRequest{Op: "list"})
		return err == nil && resp.Counts != nil && resp.Counts.Messages == 0
	})
	if out := p.mta("queue", "list"); !strings.Contains(out, "total: 0 message(s)") || strings.Contains(out, id2) {
		t.Errorf("queue after the delete:\n%s", out)
	}
	// The finished messages, newest first: the bounce, the deleted one,
	// the delivered one.
	finished := p.mta("queue", "list", "--retired")
	if i, j := strings.Index(finished, id2), strings.Index(finished, id); i < 0 || j < i || !strings.Contains(finished, "b@example.test (1 delivered)") ||
		!strings.Contains(finished, "c@example.test (1 failed)") || !strings.Contains(finished, "a@sender.test (1 delivered)") {
		t.Errorf("queue list --retired:\n%s", finished)
	}
	if resp := decodeAdmin(t, p.mta("queue", "list", "--retired", "--limit", "2", "--json")); len(resp.Messages) != 2 || !resp.Messages[0].Retired || resp.Cursor == "" {
		t.Errorf("queue list --retired --limit 2 --json: %+v", resp)
	}

	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"queue", "show", "1nosuchmessage0000000000000"}, exitDataErr},
		{[]string{"queue", "show"}, exitUsage},
		{[]string{"queue", "frobnicate"}, exitUsage},
		{[]string{"queue", "retry"}, exitUsage},
	} {
		if r := p.run(client{uid: -1}, append(tc.args, "--config", p.config)...); r.code != tc.code {
			t.Errorf("mta %v: exit %d, want %d\n%s", tc.args, r.code, tc.code, r.err)
		}
	}

	t.Run("spool_check_needs_a_stopped_daemon", func(t *testing.T) {
		if r := p.run(client{uid: -1}, "spool", "check", "--config", p.config); r.code == 0 || !strings.Contains(r.err, "in use by another process") {
			t.Errorf("spool check of a running daemon's spool: exit %d\n%s%s", r.code, r.out, r.err)
		}
	})

	t.Run("ordinary_users_kept_off", func(t *testing.T) {
		asRoot(t)
		r := p.run(client{uid: nobodyUID}, "queue", "list", "--config", p.config)
		if r.code != exitNoPerm || !strings.Contains(r.err, "permission denied") {
			t.Errorf("queue list as uid %d: exit %d\n%s", nobodyUID, r.code, r.err)
		}
		// With the socket's mode gone wrong, the daemon's own uid check
		// still refuses.
		if err := os.Chmod(p.admin, 0o666); err != nil {
			t.Fatal(err)
		}
		r = p.run(client{uid: nobodyUID}, "queue", "hold", id2, "--config", p.config)
		if r.code != exitNoPerm || !strings.Contains(r.err, "not in the admin group") {
			t.Errorf("queue hold as uid %d through a 0666 socket: exit %d\n%s", nobodyUID, r.code, r.err)
		}
		if _, ok := p.log.waitFrom(0, 30*time.Second, nil, "admin socket: peer refused", fmt.Sprintf("uid=%d", nobodyUID)); !ok {
			t.Error("the refused peer is not logged")
		}
	})

	p.stop()
	if out := p.mta("spool", "check"); !strings.Contains(out, "0 message(s), 0 problem(s)") {
		t.Errorf("spool check after the stop: %s", out)
	}
	if out := p.mta("spool", "compact"); !strings.Contains(out, "compacted") {
		t.Errorf("spool compact: %s", out)
	}
	p.start()
	if out := p.mta("queue", "show", id); !strings.Contains(out, "delivered") {
		t.Errorf("retired record lost across compact and restart:\n%s", out)
	}
}

// decodeAdmin reads what `mta queue … --json` printed.
func decodeAdmin(t *testing.T, s string) adminResponse {
	t.Helper()
	var resp adminResponse
	if err := json.Unmarshal([]byte(s), &resp); err != nil {
		t.Fatalf("%v:\n%s", err, s)
	}
	return resp
}

// TestProcessSendmail: local programs submit through a `sendmail` symlink
// to the binary and the submit socket (mode 0666): -t takes recipients
// from To/Cc/Bcc and drops Bcc, a lone dot ends the input unless -oi,
// lines become CRLF, From (with -F), Date and Message-ID are added, and
// the caller's uid is in the Received header. -f is honoured for
// sendmail_trusted_users and refused (EX_NOPERM) for anyone else.
func TestProcessSendmail(t *testing.T) {
	p := newProc(t, "1s", "sendmail_trusted_users: [root]\n")
	p.start()
	if fi, err := os.Stat(p.submit); err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o666 {
		t.Errorf("submit socket %s: %v, %v; want a socket with mode 0666", p.submit, fi.Mode(), err)
	}
	mx, other := p.hosts["127.0.0.2"], p.hosts["127.0.0.3"]
	sendmail := func(uid int, stdin string, args ...string) result {
		t.Helper()
		return p.run(client{uid: uid, name: "sendmail", stdin: stdin}, append([]string{"-C", p.config}, args...)...)
	}

	msg := "To: b@example.test\nCc: c@sender.test\nBcc: hidden@example.test\nSubject: report\n\nall good\n.\nnot sent\n"
	if r := sendmail(-1, msg, "-t", "-F", "Cron Daemon"); r.code != 0 || r.err != "" {
		t.Fatalf("sendmail -t: exit %d\n%s", r.code, r.err)
	}
	got, cc := waitMessages(t, mx, 1)[0], waitMessages(t, other, 1)[0]
	if rcpts := strings.Join(got.To, ","); rcpts != "b@example.test,hidden@example.test" || cc.To[0] != "c@sender.test" {
		t.Errorf("RCPTs: %s and %v", rcpts, cc.To)
	}
	login := currentLogin()
	data := string(got.Data)
	for _, want := range []string{"From: \"Cron Daemon\" <" + login + "@example.test>\r\n", "\r\nDate: ", "\r\nMessage-ID: <", "Subject: report\r\n",
		"\r\n\r\nall good\r\n", fmt.Sprintf("(uid %d)", os.Getuid())} {
		if !strings.Contains(data, want) {
			t.Errorf("message lacks %q:\n%s", want, data)
		}
	}
	if strings.Contains(data, "Bcc") || strings.Contains(data, "hidden@") || strings.Contains(data, "not sent") {
		t.Errorf("Bcc or the text after the dot went out:\n%s", data)
	}
	if strings.Count(data, "\n") != strings.Count(data, "\r\n") {
		t.Errorf("a bare LF went out:\n%q", data)
	}
	if got.From != login+"@example.test" {
		t.Errorf("envelope sender %q, want %s@example.test", got.From, login)
	}

	if r := sendmail(-1, "Subject: x\n\nx\n", "-f", "ceo@example.test", "d@example.test"); r.code != 0 {
		t.Fatalf("sendmail -f by a trusted user: exit %d\n%s", r.code, r.err)
	}
	if m := waitMessages(t, mx, 2)[1]; m.From != "ceo@example.test" {
		t.Errorf("trusted -f: envelope sender %q", m.From)
	}
	if r := sendmail(-1, "Subject: auto-reply\n\nx\n", "-f", "<>", "d@example.test"); r.code != 0 {
		t.Fatalf("sendmail -f '<>' by a trusted user: exit %d\n%s", r.code, r.err)
	}
	if m := waitMessages(t, mx, 3)[2]; m.From != "" {
		t.Errorf("trusted -f '<>': envelope sender %q, want the null sender", m.From)
	}

	t.Run("untrusted_user", func(t *testing.T) {
		asRoot(t)
		r := sendmail(nobodyUID, "Subject: x\n\nx\n", "-f", "ceo@example.test", "e@example.test")
		if r.code != exitNoPerm || !strings.Contains(r.err, "553") {
			t.Errorf("sendmail -f as uid %d: exit %d, want %d\n%s", nobodyUID, r.code, exitNoPerm, r.err)
		}
		if r := sendmail(nobodyUID, "Subject: dots\n\n.\nstill here\n", "-oi", "e@example.test"); r.code != 0 || r.err != "" {
			t.Fatalf("sendmail -oi as uid %d: exit %d\n%s", nobodyUID, r.code, r.err)
		}
		m := waitMessages(t, mx, 4)[3]
		data := string(m.Data)
		for _, want := range []string{"From: <nobody@example.test>\r\n", "\r\n\r\n.\r\nstill here\r\n", fmt.Sprintf("(uid %d)", nobodyUID)} {
			if !strings.Contains(data, want) {
				t.Errorf("message from uid %d lacks %q:\n%s", nobodyUID, want, data)
			}
		}
		if m.From != "nobody@example.test" || len(mx.Messages()) != 4 {
			t.Errorf("envelope sender %q (want nobody@example.test); %d messages at the MX", m.From, len(mx.Messages()))
		}
	})
}

// TestProcessMaildrop: with the daemon down, sendmail (run by an ordinary
// user when the test is root) keeps the message in the maildrop (sticky,
// mode 1733) and exits 0; the next start imports and delivers it as that
// user's. When the maildrop cannot take it either, sendmail exits 75.
func TestProcessMaildrop(t *testing.T) {
	p := newProc(t, "1s", "")
	p.start()
	p.stop()
	drop := filepath.Join(p.dir, "state", maildropSubdir)
	if fi, err := os.Stat(drop); err != nil || fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o733 {
		t.Fatalf("maildrop %v, %v; want sticky 0733", fi.Mode(), err)
	}
	uid := -1
	if os.Getuid() == 0 {
		uid = nobodyUID
	}
	r := p.run(client{uid: uid, name: "sendmail", stdin: "Subject: cron\n\nbackup done\n"}, "-C", p.config, "b@example.test")
	if r.code != 0 || !strings.Contains(r.err, "kept in "+drop) {
		t.Fatalf("sendmail with the daemon down: exit %d\n%s", r.code, r.err)
	}
	files, err := listMaildrop(drop, time.Now())
	if err != nil || len(files) != 1 {
		t.Fatalf("maildrop holds %v, %v", files, err)
	}
	if fi, err := os.Stat(files[0]); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("maildrop file mode %v, %v; want 0600", fi.Mode(), err)
	}

	p.start()
	got := waitMessages(t, p.hosts["127.0.0.2"], 1)[0]
	wantUID := os.Getuid()
	if uid >= 0 {
		wantUID = uid
	}
	if !strings.Contains(string(got.Data), "backup done") || !strings.Contains(string(got.Data), fmt.Sprintf("(uid %d)", wantUID)) {
		t.Errorf("imported message:\n%s", got.Data)
	}
	testpeer.WaitFor(t, "the maildrop emptied", func() bool {
		files, err := listMaildrop(drop, time.Now())
		return err == nil && len(files) == 0
	})

	nowhere := filepath.Join(p.dir, "nowhere.yaml")
	writeFile(t, nowhere, fmt.Sprintf("hostname: mta.example.test\nstate_dir: %s\n", filepath.Join(p.dir, "missing")))
	r = p.run(client{uid: uid, name: "sendmail", stdin: "Subject: lost?\n\nx\n"}, "-C", nowhere, "b@example.test")
	if r.code != exitTempFail || !strings.Contains(r.err, "maildrop failed") {
		t.Errorf("sendmail with neither daemon nor maildrop: exit %d, want %d\n%s", r.code, exitTempFail, r.err)
	}
}

// writeCert writes a fresh self-signed certificate for name to certFile
// and keyFile and returns its serial number.
func writeCert(t *testing.T, name, certFile, keyFile string) string {
	t.Helper()
	c, err := selfsigned.Generate([]string{name}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, certFile, string(c.CertPEM))
	writeFile(t, keyFile, string(c.KeyPEM))
	return c.Leaf.SerialNumber.String()
}

// listenerFacts is what the listeners say: the relay's greeting and SIZE, the
// submission listener's certificate.
func listenerFacts(t *testing.T, relay, submission string) (greeting, size, serial string) {
	t.Helper()
	c, err := smtp.Dial(relay)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Hello("client.example.test"); err != nil {
		t.Fatal(err)
	}
	_, size = c.Extension("SIZE")
	_ = c.Quit()
	s, err := smtp.DialStartTLS(submission, &tls.Config{InsecureSkipVerify: true}) // the certificate is what is checked
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Hello("client.example.test"); err != nil { // the handshake
		t.Fatal(err)
	}
	st, _ := s.TLSConnectionState()
	serial = st.PeerCertificates[0].SerialNumber.String()
	g, err := net.DialTimeout("tcp", relay, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	_ = g.SetDeadline(time.Now().Add(10 * time.Second))
	greeting, err = bufio.NewReader(g).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	return greeting, size, serial
}

// TestProcessReload: SIGHUP (between RELOADING=1 and READY=1 on
// NOTIFY_SOCKET) applies a new TLS certificate, limits, aliases and
// routes to the running daemon, and names what only a restart applies;
// the watchdog is petted meanwhile.
func TestProcessReload(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	serialA := writeCert(t, "mta.example.test", certFile, keyFile)
	p := newProc(t, "1s", fmt.Sprintf(`local_domains: [local.test]
aliases: {postmaster: b@example.test, info: b@example.test}
routes:
  route.test: {hosts: ["127.0.0.2:PORT"], tls: opportunistic}
tls: {cert_file: %q, key_file: %q}
limits: {max_message_bytes: 10000}
`, certFile, keyFile))
	notify := newNotifySocket(t)
	p.env = []string{"NOTIFY_SOCKET=" + notify.path, "WATCHDOG_USEC=300000"}
	p.start()
	notify.expect(t, "READY=1")
	notify.expect(t, "WATCHDOG=1")
	mx2, mx3 := p.hosts["127.0.0.2"], p.hosts["127.0.0.3"]

	greeting, size, serial := listenerFacts(t, p.relay, p.submission)
	if !strings.Contains(greeting, "mta.example.test") || size != "10000" || serial != serialA {
		t.Errorf("before the reload: greeting %q, SIZE %s, certificate %s (want %s)", greeting, size, serial, serialA)
	}
	sendSMTP(t, p.relay, "a@sender.test", []string{"info@local.test"}, "Subject: alias\r\n\r\nx\r\n")
	sendSMTP(t, p.relay, "a@sender.test", []string{"x@route.test"}, "Subject: route\r\n\r\nx\r\n")
	if got := waitMessages(t, mx2, 2); got[0].To[0]+" "+got[1].To[0] != "b@example.test x@route.test" && got[1].To[0]+" "+got[0].To[0] != "b@example.test x@route.test" {
		t.Errorf("before the reload 127.0.0.2 got %v and %v", got[0].To, got[1].To)
	}

	serialB := writeCert(t, "mta.example.test", certFile, keyFile)
	p.editConfig("info: b@example.test", "info: c@sender.test")
	p.editConfig("127.0.0.2:", "127.0.0.3:")
	p.editConfig("max_message_bytes: 10000", "max_message_bytes: 20000")
	p.editConfig("hostname: mta.example.test", "hostname: renamed.example.test")
	from := p.log.count()
	p.signal(syscall.SIGHUP)
	notify.expect(t, "RELOADING=1")
	notify.expect(t, "READY=1")
	line := p.waitLog(from, "msg=reloaded")
	if !strings.Contains(line, "applied=users,tls,limits,aliases,routes") || !strings.Contains(line, "need_restart=hostname") {
		t.Errorf("reload log line: %s", line)
	}
	greeting, size, serial = listenerFacts(t, p.relay, p.submission)
	if !strings.Contains(greeting, "mta.example.test") || size != "20000" || serial != serialB {
		t.Errorf("after the reload: greeting %q (the hostname waits for a restart), SIZE %s, certificate %s (want %s)", greeting, size, serial, serialB)
	}
	sendSMTP(t, p.relay, "a@sender.test", []string{"info@local.test"}, "Subject: alias\r\n\r\nx\r\n")
	sendSMTP(t, p.relay, "a@sender.test", []string{"y@route.test"}, "Subject: route\r\n\r\nx\r\n")
	got := waitMessages(t, mx3, 2)
	if rcpts := got[0].To[0] + " " + got[1].To[0]; rcpts != "c@sender.test y@route.test" && rcpts != "y@route.test c@sender.test" {
		t.Errorf("after the reload 127.0.0.3 got %s", rcpts)
	}
	if n := len(mx2.Messages()); n != 2 {
		t.Errorf("127.0.0.2 got %d messages after the reload", n-2)
	}

	// A config with an error is refused whole; the daemon goes on.
	p.editConfig("max_message_bytes: 20000", "max_message_bytes: 30000, max_recipients: lots")
	from = p.log.count()
	p.signal(syscall.SIGHUP)
	notify.expect(t, "READY=1")
	if line := p.waitLog(from, "reload refused"); !strings.Contains(line, "limits.max_recipients") {
		t.Errorf("refused reload does not say why: %s", line)
	}
	if _, size, _ := listenerFacts(t, p.relay, p.submission); size != "20000" {
		t.Errorf("a refused reload changed SIZE to %s", size)
	}
	p.stop()
	notify.expect(t, "STOPPING=1")
}

// TestProcessDrain: SIGTERM stops new sessions, lets a session in DATA
// finish with its 250 and a delivery in flight finish at the MX host, and
// exits 0; what was accepted and not yet delivered goes out after the next
// start, and nothing goes out twice.
func TestProcessDrain(t *testing.T) {
	p := newProc(t, "1s", "")
	notify := newNotifySocket(t)
	p.env = []string{"NOTIFY_SOCKET=" + notify.path}
	mx, other := p.hosts["127.0.0.2"], p.hosts["127.0.0.3"]
	if err := mx.SetBehaviour(peer.Behaviour{Delay: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	p.start()
	id := sendSMTP(t, p.relay, "a@sender.test", []string{"b@example.test"}, "Subject: in flight\r\n\r\nx\r\n")
	testpeer.WaitHost(t, mx, "the delivery's connection", func(h *peer.Host) bool { return h.Connections() > 0 })

	c, err := smtp.Dial(p.relay)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.example.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("a@sender.test", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("c@sender.test", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("Subject: mid-DATA\r\n\r\nfirst half\r\n")); err != nil {
		t.Fatal(err)
	}

	from := p.log.count()
	term := time.Now()
	p.signal(syscall.SIGTERM)
	notify.expect(t, "STOPPING=1")
	p.waitLog(from, "stopping: draining")
	testpeer.WaitFor(t, "the relay listener to close", func() bool {
		c, err := net.Dial("tcp", p.relay)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	if _, err := w.Write([]byte("second half\r\n")); err != nil {
		t.Fatal(err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatalf("the session in DATA at SIGTERM: %v", err)
	}
	id2 := resp.StatusText[strings.LastIndex(resp.StatusText, " ")+1:]
	_ = c.Quit()
	if err := p.waitExit(60 * time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	got := mx.Messages()
	if len(got) != 1 || !got[0].Received.After(term) {
		t.Fatalf("the delivery in flight at SIGTERM did not finish during the drain: %d messages", len(got))
	}

	if err := mx.SetBehaviour(peer.Behaviour{}); err != nil {
		t.Fatal(err)
	}
	p.start()
	if m := waitMessages(t, other, 1)[0]; !strings.Contains(string(m.Data), "first half\r\nsecond half\r\n") {
		t.Errorf("message taken during the drain:\n%s", m.Data)
	}
	for _, msgID := range []string{id, id2} {
		p.waitMessage(msgID, "the retired record", func(m *spool.Message) bool { return m.Retired })
	}
	if out := p.mta("queue", "show", id); !strings.Contains(out, "delivered (1 attempt(s))") {
		t.Errorf("the message delivered during the drain:\n%s", out)
	}
	if n := len(mx.Messages()); n != 1 {
		t.Errorf("the message delivered during the drain went out %d times", n)
	}
}

// TestProcessDrainBounded: a delivery that never ends (the MX host goes
// silent at the final dot) holds a stop only for drain_timeout; the
// message is due again and delivered after the next start.
func TestProcessDrainBounded(t *testing.T) {
	p := newProc(t, "1s", "drain_timeout: 2s\n")
	mx := p.hosts["127.0.0.2"]
	if err := mx.SetBehaviour(peer.Behaviour{Hang: peer.HangDot}); err != nil {
		t.Fatal(err)
	}
	p.start()
	id := sendSMTP(t, p.relay, "a@sender.test", []string{"b@example.test"}, "Subject: stuck\r\n\r\nx\r\n")
	testpeer.WaitHost(t, mx, "the message's data at the silent host", func(h *peer.Host) bool {
		for _, s := range h.Sessions() {
			for _, tr := range s.Transactions {
				if tr.Size > 0 {
					return true
				}
			}
		}
		return false
	})
	from := p.log.count()
	p.signal(syscall.SIGTERM)
	if err := p.waitExit(60 * time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	p.waitLog(from, "in-flight attempts abandoned")
	if err := mx.SetBehaviour(peer.Behaviour{}); err != nil {
		t.Fatal(err)
	}
	p.start()
	waitMessages(t, mx, 1)
	p.waitMessage(id, "the retired record", func(m *spool.Message) bool { return m.Retired })
	if out := p.mta("queue", "show", id); !strings.Contains(out, "delivered (2 attempt(s))") {
		t.Errorf("the message abandoned at the stop:\n%s", out)
	}
}

// TestProcessJSONLog: with log.format json every line on stderr is a JSON
// object, with one line for the accepted message and one per recipient
// per delivery attempt, under the documented keys.
func TestProcessJSONLog(t *testing.T) {
	p := newProc(t, "1s", "log: {format: json, level: info}\n")
	p.start()
	id := sendSMTP(t, p.relay, "a@sender.test", []string{"b@example.test", "c@example.test"}, "Subject: json\r\n\r\nx\r\n")
	waitMessages(t, p.hosts["127.0.0.2"], 1)
	p.waitLog(0, `"msg":"delivery attempt"`, `"rcpt":"c@example.test"`)
	p.stop()
	counts := map[string]int{}
	for i, line := range strings.Split(p.log.String(), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %d is not JSON: %v\n%s", i+1, err, line)
		}
		if rec["msg_id"] != id {
			continue
		}
		counts[rec["msg"].(string)]++
		switch rec["msg"] {
		case "message accepted":
			for k, v := range map[string]any{"listener": "relay", "sender": "a@sender.test", "rcpts": float64(2)} {
				if rec[k] != v {
					t.Errorf("accepted line: %s = %v, want %v\n%s", k, rec[k], v, line)
				}
			}
		case "delivery attempt":
			for _, k := range []string{"rcpt", "domain", "mx", "ip", "attempt", "phase", "code", "enhanced", "duration", "tls", "status", "reply"} {
				if _, ok := rec[k]; !ok {
					t.Errorf("attempt line lacks %s:\n%s", k, line)
				}
			}
			if rec["status"] != "delivered" || rec["code"] != float64(250) || rec["ip"] != "127.0.0.2" {
				t.Errorf("attempt line: %s", line)
			}
		}
	}
	if counts["message accepted"] != 1 || counts["delivery attempt"] != 2 {
		t.Errorf("log lines for %s: %v, want 1 accepted and 2 attempts", id, counts)
	}
}

// TestProcessAdminGroup: the admin socket belongs to admin.group, whose
// members may run `mta queue`; other users may not.
func TestProcessAdminGroup(t *testing.T) {
	asRoot(t)
	const group, member, outsider = "nogroup", nobodyUID, 1 // nobody's group; the daemon user
	g, err := user.LookupGroup(group)
	if err != nil || g.Gid != fmt.Sprint(member) {
		t.Skipf("no group %s with gid %d: %v", group, member, err)
	}
	p := newProc(t, "1s", "admin: {group: "+group+"}\n")
	p.start()
	fi, err := os.Stat(p.admin)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Gid != member || fi.Mode().Perm() != 0o660 {
		t.Errorf("admin socket gid %d mode %v, want gid %d (%s) mode 0660", st.Gid, fi.Mode().Perm(), member, group)
	}
	if r := p.run(client{uid: member}, "queue", "list", "--config", p.config); r.code != 0 || !strings.Contains(r.out, "total: 0 message(s)") {
		t.Errorf("queue list by a member of %s: exit %d\n%s%s", group, r.code, r.out, r.err)
	}
	if r := p.run(client{uid: outsider}, "queue", "list", "--config", p.config); r.code != exitNoPerm || !strings.Contains(r.err, "members of group "+group) {
		t.Errorf("queue list by uid %d: exit %d\n%s", outsider, r.code, r.err)
	}
}

// TestProcessHangupWhileStarting: a SIGHUP that comes while the daemon is
// still starting (here: its hostname lookup held unanswered) neither ends
// it, as SIGHUP's default action would, nor is lost: it reloads once the
// daemon is up.
func TestProcessHangupWhileStarting(t *testing.T) {
	p := newProc(t, "1s", "")
	release := p.dns.Hold("mta.example.test")
	from := p.launch()
	testpeer.WaitFor(t, "the start's hostname lookup", func() bool { return p.dns.Count("mta.example.test", "A") > 0 })
	p.signal(syscall.SIGHUP)
	release()
	p.waitReady(from)
	p.waitLog(from, "msg=reloaded")
	if id := sendSMTP(t, p.relay, "a@sender.test", []string{"b@example.test"}, "Subject: up\r\n\r\nx\r\n"); id == "" {
		t.Error("no queue ID")
	}
	waitMessages(t, p.hosts["127.0.0.2"], 1)
	p.stop()
}
