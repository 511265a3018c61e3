package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"mta/internal/peer"
	"mta/internal/testpeer"
)

// served is an in-process `mta serve` and what it listens on, read from
// its "ready" log line.
type served struct {
	dir     string
	config  string
	relay   string
	admin   string
	submit  string
	metrics string
	log     *lineLog
	all     testpeer.Buffer // every line, for a failed test's output
	done    chan error
}

// lineLog keeps the daemon's recent log lines for assertions.
type lineLog struct {
	lines chan string
}

// worldZone routes example.test to 127.0.0.2 and sender.test to 127.0.0.3.
const worldZone = `
example.test. 300 IN MX 10 mx.example.test.
mx.example.test. 300 IN A 127.0.0.2
sender.test. 300 IN MX 10 mx.sender.test.
mx.sender.test. 300 IN A 127.0.0.3
`

// serveWorld starts DNS, two MX hosts and the daemon in-process with the
// extra YAML (top-level keys other than those set here), and stops the
// daemon when the test ends. retry is delivery.retry_min.
func serveWorld(t *testing.T, extra string) (*served, map[string]*peer.Host) {
	return serveWorldRetry(t, "1s", extra)
}

func serveWorldRetry(t *testing.T, retry, extra string) (*served, map[string]*peer.Host) {
	t.Helper()
	port, hosts := testpeer.SMTPHosts(t, map[string]peer.Behaviour{"127.0.0.2": {}, "127.0.0.3": {}})
	dns := testpeer.NewDNS(t, worldZone)
	dir := t.TempDir()
	cfg := worldConfig(worldConfigOptions{stateDir: dir, dns: dns.Addr(), port: port, retry: retry}) + extra
	path := filepath.Join(dir, "mta.yaml")
	writeFile(t, path, cfg)
	return startServe(t, path), hosts
}

func startServe(t *testing.T, config string) *served {
	t.Helper()
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	s := &served{dir: filepath.Dir(config), config: config, log: &lineLog{lines: make(chan string, 1000)}, done: make(chan error, 1)}
	go func() {
		s.done <- run(ctx, []string{"mta", "serve", "--config", config}, Stdio{In: strings.NewReader(""), Out: io.Discard, Err: pw})
		pw.Close()
	}()
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			s.all.Write([]byte(line + "\n"))
			if strings.Contains(line, "msg=ready") {
				ready <- line
			}
			select {
			case s.log.lines <- line:
			default:
			}
		}
	}()
	var result error
	finished := false
	t.Cleanup(func() {
		cancel()
		if !finished {
			result = <-s.done
		}
		if result != nil {
			t.Errorf("serve: %v", result)
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", s.all.String())
		}
	})
	select {
	case line := <-ready:
		l := listening(line)
		s.relay, s.admin, s.submit, s.metrics = l["relay"], l["admin"], l["submit"], l["metrics"]
	case result = <-s.done:
		finished = true
		t.Fatalf("serve ended before ready: %v", result)
	case <-time.After(20 * time.Second):
		t.Fatal("serve not ready in 20s")
	}
	return s
}

// mta runs a client subcommand against this daemon's config.
func (s *served) mta(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	var out, errb strings.Builder
	err := run(t.Context(), append([]string{"mta"}, args...), Stdio{In: strings.NewReader(stdin), Out: &out, Err: &errb})
	if err != nil {
		code := exitCode(err, &errb)
		return out.String() + errb.String(), fmt.Errorf("exit %d: %s", code, errb.String())
	}
	return out.String() + errb.String(), nil
}

func sendSMTP(t *testing.T, addr, from string, to []string, msg string) string {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.example.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail(from, nil); err != nil {
		t.Fatal(err)
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			t.Fatal(err)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, msg); err != nil {
		t.Fatal(err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Quit()
	id := resp.StatusText[strings.LastIndex(resp.StatusText, " ")+1:]
	return id
}

func waitMessages(t *testing.T, h *peer.Host, n int) []peer.Message {
	t.Helper()
	testpeer.WaitHost(t, h, fmt.Sprintf("%d message(s)", n), func(h *peer.Host) bool { return len(h.Messages()) >= n })
	return h.Messages()
}

// TestServeDeliversAndShows: a message taken on the relay listener is
// delivered to the MX host, and `mta queue show` explains it afterwards
// from the retired record, through the admin socket.
func TestServeDeliversAndShows(t *testing.T) {
	s, hosts := serveWorld(t, "")
	// The zone has no address for our own name: the start warns.
	s.log.wait(t, "hostname does not resolve", "hostname=mta.example.test")
	id := sendSMTP(t, s.relay, "a@sender.test", []string{"b@example.test"}, "Subject: hi\r\n\r\nhello\r\n")
	got := waitMessages(t, hosts["127.0.0.2"], 1)
	if got[0].To[0] != "b@example.test" || !strings.Contains(string(got[0].Data), "by mta.example.test (mta) with ESMTP id "+id) {
		t.Fatalf("MX got %+v:\n%s", got[0], got[0].Data)
	}
	var out string
	testpeer.WaitFor(t, "the retired record", func() bool {
		var err error
		out, err = s.mta(t, "", "queue", "show", id, "--config", s.config)
		return err == nil && strings.Contains(out, "finished")
	})
	for _, want := range []string{"message " + id, "from:     a@sender.test", "to <b@example.test>: delivered", "mx.example.test[127.0.0.2]", "data: 250"} {
		if !strings.Contains(out, want) {
			t.Errorf("queue show lacks %q:\n%s", want, out)
		}
	}
	if _, err := s.mta(t, "", "queue", "show", "nosuchid", "--config", s.config); err == nil || !strings.Contains(err.Error(), "exit 65") {
		t.Errorf("show of an unknown ID: %v", err)
	}
	// One log line for the accepted message, one per delivery attempt.
	accepted := s.log.wait(t, `msg="message accepted"`, "msg_id="+id)
	attempt := s.log.wait(t, `msg="delivery attempt"`, "msg_id="+id)
	for _, want := range []string{"listener=relay", "sender=a@sender.test", "rcpts=1"} {
		if !strings.Contains(accepted, want) {
			t.Errorf("accept log line lacks %s: %s", want, accepted)
		}
	}
	for _, want := range []string{"rcpt=b@example.test", "mx=mx.example.test", "ip=127.0.0.2", "code=250", "status=delivered"} {
		if !strings.Contains(attempt, want) {
			t.Errorf("attempt log line lacks %s: %s", want, attempt)
		}
	}
}

// wait returns the first log line containing every part.
func (l *lineLog) wait(t *testing.T, parts ...string) string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case line := <-l.lines:
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(line, p)
			}
			if ok {
				return line
			}
		case <-timeout:
			t.Fatalf("no log line with %q", parts)
		}
	}
}

// TestSendmail: `mta sendmail -t` through the submit socket: recipients
// from To/Cc/Bcc, Bcc dropped from the header, the uid in Received; -f for
// an untrusted user is refused with EX_NOPERM.
func TestSendmail(t *testing.T) {
	s, hosts := serveWorld(t, "")
	msg := "To: b@example.test\nCc: c@sender.test\nBcc: hidden@example.test\nSubject: report\n\nall good\n.\nnot sent\n"
	if out, err := s.mta(t, msg, "sendmail", "-C", s.config, "-t", "-F", "Cron Daemon"); err != nil {
		t.Fatalf("sendmail: %v\n%s", err, out)
	}
	mx := waitMessages(t, hosts["127.0.0.2"], 1)
	other := waitMessages(t, hosts["127.0.0.3"], 1)
	if got := strings.Join(mx[0].To, ","); got != "b@example.test,hidden@example.test" {
		t.Errorf("example.test MX got RCPT %s", got)
	}
	if other[0].To[0] != "c@sender.test" {
		t.Errorf("sender.test MX got RCPT %v", other[0].To)
	}
	data := string(mx[0].Data)
	login := currentLogin()
	for _, want := range []string{"From: \"Cron Daemon\" <" + login + "@example.test>", "Subject: report", "all good\r\n", fmt.Sprintf("(uid %d)", os.Getuid())} {
		if !strings.Contains(data, want) {
			t.Errorf("message lacks %q:\n%s", want, data)
		}
	}
	if strings.Contains(data, "Bcc") || strings.Contains(data, "hidden@") || strings.Contains(data, "not sent") {
		t.Errorf("Bcc or text after the dot leaked:\n%s", data)
	}
	if mx[0].From != login+"@example.test" {
		t.Errorf("envelope sender %q, want %s@example.test", mx[0].From, login)
	}

	out, err := s.mta(t, "Subject: x\n\nx\n", "sendmail", "-C", s.config, "-f", "ceo@example.test", "b@example.test")
	if err == nil || !strings.Contains(err.Error(), "exit 77") || !strings.Contains(out, "553") {
		t.Errorf("-f by an untrusted user: err %v, output %q", err, out)
	}
}

// TestSendmailTrustedSender: users in sendmail_trusted_users may choose the
// envelope sender.
func TestSendmailTrustedSender(t *testing.T) {
	s, hosts := serveWorld(t, fmt.Sprintf("sendmail_trusted_users: [%q]\n", fmt.Sprint(os.Getuid())))
	if out, err := s.mta(t, "Subject: x\n\nx\n", "sendmail", "-C", s.config, "-f", "ceo@example.test", "b@example.test"); err != nil {
		t.Fatalf("sendmail -f: %v\n%s", err, out)
	}
	if got := waitMessages(t, hosts["127.0.0.2"], 1); got[0].From != "ceo@example.test" {
		t.Errorf("envelope sender %q, want ceo@example.test", got[0].From)
	}
}

// TestSendmailMaildrop: with the daemon down, sendmail keeps the message in
// the maildrop and exits 0; the next start imports and delivers it.
func TestSendmailMaildrop(t *testing.T) {
	port, hosts := testpeer.SMTPHosts(t, map[string]peer.Behaviour{"127.0.0.2": {}})
	dns := testpeer.NewDNS(t, worldZone)
	dir := t.TempDir()
	path := filepath.Join(dir, "mta.yaml")
	writeFile(t, path, fmt.Sprintf("hostname: mta.example.test\nstate_dir: %s\nlisteners: {relay: [\"127.0.0.1:0\"], submission: [], submissions: []}\n"+
		"dns: {servers: [%q]}\ndelivery: {port: %d, allow_private_mx: true}\nmetrics: {address: \"\"}\n", dir, dns.Addr(), port))
	if err := ensureMaildrop(filepath.Join(dir, maildropSubdir)); err != nil {
		t.Fatal(err)
	}
	var out, errb strings.Builder
	err := run(t.Context(), []string{"mta", "sendmail", "-C", path, "b@example.test"}, Stdio{In: strings.NewReader("Subject: cron\n\nbackup done\n"), Out: &out, Err: &errb})
	if err != nil || !strings.Contains(errb.String(), "kept in") {
		t.Fatalf("sendmail with the daemon down: %v, %q", err, errb.String())
	}
	startServe(t, path)
	got := waitMessages(t, hosts["127.0.0.2"], 1)
	if !strings.Contains(string(got[0].Data), "backup done") {
		t.Errorf("imported message:\n%s", got[0].Data)
	}
	// The file goes after the import's session ends, which may be after
	// the delivery.
	testpeer.WaitFor(t, "the maildrop emptied", func() bool {
		files, err := listMaildrop(filepath.Join(dir, maildropSubdir), time.Now())
		return err == nil && len(files) == 0
	})
}

// TestQueueCommands drives `mta queue` end to end through the admin
// socket on a message the MX host defers: list, hold, release, retry,
// delete with a bounce to the sender.
func TestQueueCommands(t *testing.T) {
	s, hosts := serveWorldRetry(t, "1h", "")
	hosts["127.0.0.2"].SetBehaviour(peer.Behaviour{Rcpt: &peer.Reply{Code: 451, Enhanced: "4.3.0", Text: "try later"}})
	id := sendSMTP(t, s.relay, "a@sender.test", []string{"b@example.test"}, "Subject: hi\r\n\r\nhello\r\n")
	cfg := []string{"--config", s.config}
	q := func(args ...string) string {
		t.Helper()
		out, err := s.mta(t, "", append(append([]string{"queue"}, args...), cfg...)...)
		if err != nil {
			t.Fatalf("queue %v: %v\n%s", args, err, out)
		}
		return out
	}
	testpeer.WaitFor(t, "the deferral", func() bool { return strings.Contains(q("show", id), "deferred, next attempt in") })
	list := q("list")
	for _, want := range []string{"example.test", id, "451 4.3.0 try later"} {
		if !strings.Contains(list, want) {
			t.Errorf("queue list lacks %q:\n%s", want, list)
		}
	}
	if out := q("hold", id); !strings.Contains(out, "hold done") {
		t.Errorf("hold: %s", out)
	}
	if out := q("list", "--state", "held"); !strings.Contains(out, id) {
		t.Errorf("held message not listed as held:\n%s", out)
	}
	q("release", id)
	if out := q("retry", "all"); !strings.Contains(out, "recipient(s) due now") {
		t.Errorf("retry: %s", out)
	}
	q("delete", id, "--bounce")
	dsn := waitMessages(t, hosts["127.0.0.3"], 1)
	if dsn[0].From != "" || !strings.Contains(string(dsn[0].Data), "deleted by the administrator") {
		t.Errorf("bounce after delete: from <%s>\n%s", dsn[0].From, dsn[0].Data)
	}
	if out := q("list"); strings.Contains(out, id) {
		t.Errorf("deleted message still listed:\n%s", out)
	}
	if out := q("show", id); !strings.Contains(out, "finished") || !strings.Contains(out, "deleted by the administrator") {
		t.Errorf("deleted message's record:\n%s", out)
	}
}

// TestMetrics: after a delivery, a deferral and a bounce, /metrics shows
// them under the documented names, with the queue by state, the latency,
// DNS lookups answered by the server and by the cache, replies by class
// and the connections in use; /healthz answers ok.
func TestMetrics(t *testing.T) {
	s, hosts := serveWorldRetry(t, "1h", "")
	if err := hosts["127.0.0.2"].SetBehaviour(peer.Behaviour{RcptReplies: map[string]peer.Reply{
		"later@example.test": {Code: 451, Enhanced: "4.3.0", Text: "try later"},
		"gone@example.test":  {Code: 550, Enhanced: "5.1.1", Text: "no such user"},
	}}); err != nil {
		t.Fatal(err)
	}
	for _, rcpt := range []string{"b@example.test", "later@example.test", "gone@example.test"} {
		sendSMTP(t, s.relay, "a@sender.test", []string{rcpt}, "Subject: hi\r\n\r\nhello\r\n")
	}
	waitMessages(t, hosts["127.0.0.2"], 1)
	waitMessages(t, hosts["127.0.0.3"], 1) // the bounce
	get := func(path string) string {
		t.Helper()
		resp, err := http.Get("http://" + s.metrics + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %v", path, resp.StatusCode, err)
		}
		return string(b)
	}
	if h := get("/healthz"); h != "ok\n" {
		t.Errorf("/healthz = %q", h)
	}
	var m string
	// The hosts have the mail before the spool has the results: wait for
	// the spool to settle with the deferred message alone live.
	testpeer.WaitFor(t, "the attempts in the metrics", func() bool {
		m = get("/metrics")
		return strings.Contains(m, `mta_delivery_attempts_total{class="2xx",phase="data",result="delivered"} 2`) &&
			strings.Contains(m, `mta_spool_recipients{state="deferred"} 1`) && strings.Contains(m, "mta_spool_messages 1\n")
	})
	for _, want := range []string{
		`mta_smtpd_messages_received_total{listener="relay"} 3`,
		`mta_smtpd_received_bytes_total `,
		`mta_smtpd_replies_total{class="2xx",listener="relay"}`,
		`mta_smtpd_connections{listener="relay"} 0`,
		`mta_delivery_attempts_total{class="4xx",phase="rcpt",result="deferred"} 1`,
		`mta_delivery_attempts_total{class="5xx",phase="rcpt",result="failed"} 1`,
		`mta_delivery_latency_seconds_count 2`,
		`mta_delivery_connections `,
		`mta_delivery_postponed_total 0`,
		`mta_spool_recipients{state="pending"} 0`,
		`mta_spool_messages 1`,
		`mta_spool_retired_messages 3`,
		`mta_spool_file_bytes `,
		`mta_spool_commits_total{result="ok"}`,
		`mta_spool_commit_seconds_count`,
		`mta_resolver_lookups_total{cached="false",result="ok",type="MX"}`,
		`mta_resolver_lookups_total{cached="true",result="ok",type="MX"}`,
		`go_goroutines `,
		`process_resident_memory_bytes `,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(m, "mta_panics_total{") {
		t.Errorf("a panic was counted:\n%s", m)
	}
}

// TestMaildropRejectedSetAside: a maildrop message the intake refuses for
// good (an unknown user of a local domain) is set aside with its reason
// instead of being retried forever; an unreadable file likewise.
func TestMaildropRejectedSetAside(t *testing.T) {
	dns := testpeer.NewDNS(t, worldZone)
	dir := t.TempDir()
	path := filepath.Join(dir, "mta.yaml")
	writeFile(t, path, fmt.Sprintf("hostname: mta.example.test\nstate_dir: %s\nlocal_domains: [local.test]\naliases: {postmaster: a@example.test}\n"+
		"listeners: {relay: [\"127.0.0.1:0\"], submission: [], submissions: []}\ndns: {servers: [%q]}\nmetrics: {address: \"\"}\n", dir, dns.Addr()))
	drop := filepath.Join(dir, maildropSubdir)
	if err := ensureMaildrop(drop); err != nil {
		t.Fatal(err)
	}
	if _, err := writeMaildrop(drop, &submission{Rcpts: []string{"nobody@local.test"}, Data: []byte("Subject: x\r\n\r\nx\r\n")}, time.Now()); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(drop, "garbage"), "not a maildrop file\n")
	s := startServe(t, path)
	s.log.wait(t, "maildrop import", "set aside as")
	s.log.wait(t, "maildrop import", "set aside as")
	ents, err := os.ReadDir(drop)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	got := strings.Join(names, " ")
	if !strings.Contains(got, maildropRejected) || !strings.Contains(got, maildropBad+"garbage") || len(names) != 2 {
		t.Errorf("maildrop holds %v, want one rejected. and one bad. file", names)
	}
	if files, _ := listMaildrop(drop, time.Now()); len(files) != 0 {
		t.Errorf("set-aside files are scanned again: %v", files)
	}
}

// TestHostnameChecks: at start the daemon warns when its hostname is not
// a real FQDN (a dotless one is a config error: TestConfigErrors), when it
// does not resolve, and when the PTR of its address
// names another host (RFC 5321 §4.1.4; receivers check all three), and
// says nothing when all is well.
func TestHostnameChecks(t *testing.T) {
	dns := testpeer.NewDNS(t, `
bad-ptr.example.test. 300 IN A 127.0.0.9
9.0.0.127.in-addr.arpa. 300 IN PTR other.example.test.
good.example.test. 300 IN A 127.0.0.10
10.0.0.127.in-addr.arpa. 300 IN PTR good.example.test.
`)
	for _, tc := range []struct{ hostname, want string }{
		{"mta.localdomain", "hostname is not a fully qualified domain name"},
		{"lonely.example.test", "hostname does not resolve"},
		{"bad-ptr.example.test", "the PTR record of our address does not name our hostname"},
		{"good.example.test", ""},
	} {
		t.Run(tc.hostname, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "mta.yaml")
			writeFile(t, path, fmt.Sprintf("hostname: %s\nstate_dir: %s\nlisteners: {relay: [\"127.0.0.1:0\"], submission: [], submissions: []}\n"+
				"dns: {servers: [%q]}\nmetrics: {address: \"\"}\n", tc.hostname, dir, dns.Addr()))
			s := startServe(t, path)
			var warned []string
			for line := ""; !strings.Contains(line, "msg=ready"); line = s.log.wait(t, "") {
				if strings.Contains(line, "level=WARN") && strings.Contains(line, "hostname") {
					warned = append(warned, line)
				}
			}
			switch {
			case tc.want == "" && len(warned) > 0:
				t.Errorf("warned about a good hostname: %q", warned)
			case tc.want != "" && (len(warned) != 1 || !strings.Contains(warned[0], tc.want) || !strings.Contains(warned[0], "hostname="+tc.hostname)):
				t.Errorf("warnings %q, want one with %q", warned, tc.want)
			}
			if tc.hostname == "bad-ptr.example.test" && len(warned) == 1 && !strings.Contains(warned[0], "ip=127.0.0.9") {
				t.Errorf("the PTR warning does not name the address: %s", warned[0])
			}
		})
	}
}

// TestSetGCPercent: the daemon runs at daemonGCPercent, unless the
// operator's environment sets GOGC.
func TestSetGCPercent(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	t.Run("no GOGC", func(t *testing.T) {
		t.Setenv("GOGC", "")
		if err := os.Unsetenv("GOGC"); err != nil {
			t.Fatal(err)
		}
		debug.SetGCPercent(100)
		setGCPercent()
		if got := debug.SetGCPercent(100); got != daemonGCPercent {
			t.Errorf("GC percent %d, want %d", got, daemonGCPercent)
		}
	})
	t.Run("GOGC set", func(t *testing.T) {
		t.Setenv("GOGC", "150")
		debug.SetGCPercent(150)
		setGCPercent()
		if got := debug.SetGCPercent(100); got != 150 {
			t.Errorf("GC percent %d, want the environment's 150", got)
		}
	})
}

// worldConfigOptions fill worldConfig.
type worldConfigOptions struct {
	stateDir, runtimeDir string // runtimeDir "": the state directory
	submission           bool   // a submission listener besides the relay one
	dns                  string
	port                 int // the MX hosts' port
	retry                string
}

// worldConfig is the config of a daemon delivering into the test world:
// relay listener (and submission) on 127.0.0.1:0, our DNS server, private
// MX addresses allowed, retries every o.retry, metrics on a free port.
func worldConfig(o worldConfigOptions) string {
	runtime, sub := "", "[]"
	if o.runtimeDir != "" {
		runtime = "runtime_dir: " + o.runtimeDir + "\n"
	}
	if o.submission {
		sub = `["127.0.0.1:0"]`
	}
	return fmt.Sprintf(`hostname: mta.example.test
myorigin: example.test
state_dir: %s
%slisteners:
  relay: ["127.0.0.1:0"]
  submission: %s
  submissions: []
dns:
  servers: [%q]
delivery:
  port: %d
  allow_private_mx: true
  retry_min: %s
  retry_max: %s
metrics:
  address: "127.0.0.1:0"
`, o.stateDir, runtime, sub, o.dns, o.port, o.retry, o.retry)
}
