package main

// The daemon against SMTP implementations we did not write: swaks and
// Python's smtplib as submission clients, Postfix's smtp-source as a load
// client, Postfix's smtp-sink as the receiving MX. The smtpd and delivery
// packages have their own interop tests; these prove the assembled daemon.

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"mta/smtpd"
)

const (
	interopUser     = "alice"
	interopPassword = "correct horse battery"
	interopFrom     = "alice@src.bench.test"
)

// needTool skips the test when path is not an executable. In CI (CI set,
// as .ci/run runs after .ci/install-peers) a missing peer fails the test
// instead: an interop test must not pass there by skipping unseen.
func needTool(t *testing.T, path string, check ...string) {
	t.Helper()
	_, err := exec.LookPath(path)
	if err == nil && len(check) > 0 {
		if out, cerr := exec.Command(check[0], check[1:]...).CombinedOutput(); cerr != nil {
			err = fmt.Errorf("%s: %v: %s", strings.Join(check, " "), cerr, out)
		}
	}
	if err == nil {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s not usable in CI (.ci/install-peers should have installed it): %v", path, err)
	}
	t.Skipf("%s not usable (.ci/install-peers installs it): %v", path, err)
}

// swaksNeedsTLS is the check that swaks can do STARTTLS: it needs Perl's
// Net::SSLeay (only a Recommends of the Debian package).
var swaksNeedsTLS = []string{"perl", "-MNet::SSLeay", "-e1"}

// submissionRig is a rig whose daemon has submission listeners and one
// user, alice, who owns @src.bench.test.
func submissionRig(t *testing.T, messages int) *rig {
	t.Helper()
	hash, err := smtpd.HashPassword([]byte(interopPassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	users := filepath.Join(t.TempDir(), "users")
	writeFile(t, users, fmt.Sprintf("%s:%s:@src.bench.test\n", interopUser, hash))
	r := newRig(t, rigOptions{Messages: messages, Domains: 2,
		Daemon: daemonOptions{Submission: true, Extra: fmt.Sprintf("users_file: %q\n", users)}})
	r.start()
	return r
}

// swaksPipelined is a transaction swaks sent in one go after TLS (RFC
// 2920): MAIL, RCPT and DATA before the first of their replies.
var swaksPipelined = regexp.MustCompile(`(?m)^ *~> MAIL FROM:<[^>]*>\n *~> RCPT TO:<[^>]*>\n *~> DATA\n *<~  250 `)

// TestSwaksSubmission proves that swaks, a client we did not write,
// submits to the daemon with STARTTLS, then AUTH LOGIN or AUTH PLAIN, then
// a pipelined transaction, and that the message reaches its MX.
func TestSwaksSubmission(t *testing.T) {
	needTool(t, "swaks", swaksNeedsTLS...)
	r := submissionRig(t, 2)
	for seq, mech := range []string{"LOGIN", "PLAIN"} {
		t.Run(mech, func(t *testing.T) {
			out, err := exec.CommandContext(t.Context(), "swaks", "--server", r.d.Submission, "--tls", "--pipeline",
				"--auth", mech, "--auth-user", interopUser, "--auth-password", interopPassword,
				"--helo", benchHelo, "--from", interopFrom, "--to", "r0@"+r.w.Domains[seq],
				"--header", fmt.Sprintf("%s: %s-%d", benchHeader, r.led.tag, seq), "--body", "sent by swaks").CombinedOutput()
			if err != nil {
				t.Fatalf("swaks: %v\n%s", err, out)
			}
			for _, want := range []string{" -> STARTTLS\n<-  220 ", "=== TLS started", " ~> AUTH " + mech, "<~  235 ", "<~  250 2.0.0 Ok: queued as "} {
				if !strings.Contains(string(out), want) {
					t.Errorf("swaks transcript lacks %q:\n%s", want, out)
				}
			}
			if !swaksPipelined.Match(out) {
				t.Errorf("swaks did not pipeline MAIL, RCPT and DATA:\n%s", out)
			}
			r.led.accept(seq, time.Now())
		})
	}
	r.waitDelivered(time.Minute)
	r.checkNothingLost()
}

// pythonSubmit sends one message with smtplib: over port 465 (implicit
// TLS) or 587 (STARTTLS), with login.
const pythonSubmit = `
import smtplib, sys
from email.message import EmailMessage
mode, addr, user, password, sender, rcpt, bench = sys.argv[1:8]
host, port = addr.rsplit(":", 1)
m = EmailMessage()
m["From"], m["To"], m["Subject"], m["X-Bench-Id"] = sender, rcpt, "from smtplib", bench
m.set_content("sent by Python smtplib\n")
if mode == "465":
    s = smtplib.SMTP_SSL(host, int(port), timeout=30)
else:
    s = smtplib.SMTP(host, int(port), timeout=30)
    s.starttls()
s.login(user, password)
refused = s.send_message(m)
s.quit()
print("refused:", refused)
`

// TestPythonSmtplibSubmission proves that Python's smtplib, a client we
// did not write, submits over implicit TLS (465) and over STARTTLS (587),
// logs in (AUTH, its choice of mechanism), and the message is delivered.
func TestPythonSmtplibSubmission(t *testing.T) {
	const python = "/usr/bin/python3"
	needTool(t, python)
	r := submissionRig(t, 2)
	for seq, mode := range []string{"465", "587"} {
		t.Run(mode, func(t *testing.T) {
			addr := r.d.Submission
			if mode == "465" {
				addr = r.d.Submissions
			}
			out, err := exec.CommandContext(t.Context(), python, "-c", pythonSubmit, mode, addr, interopUser, interopPassword,
				interopFrom, "r0@"+r.w.Domains[seq], fmt.Sprintf("%s-%d", r.led.tag, seq)).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "refused: {}") {
				t.Fatalf("smtplib: %v\n%s", err, out)
			}
			r.led.accept(seq, time.Now())
		})
	}
	r.waitDelivered(time.Minute)
	r.checkNothingLost()
}

// TestSmtpSourceLoad proves that the relay listener carries the load of
// Postfix's smtp-source, a client we did not write (5 parallel sessions,
// a new connection per message or, with -d, every message of a session on
// one connection), to the MX hosts, every message exactly once.
func TestSmtpSourceLoad(t *testing.T) {
	const bin = "/usr/sbin/smtp-source"
	needTool(t, bin)
	r := newRig(t, rigOptions{Messages: 1, Domains: 1})
	r.start()
	const messages = 200
	for _, tt := range []struct{ name, flag string }{{"connection per message", ""}, {"one connection per session", "-d"}} {
		t.Run(tt.name, func(t *testing.T) {
			before := r.w.Sinks.Messages()
			args := []string{"-s", "5", "-m", strconv.Itoa(messages), "-r", "1", "-l", "2048", "-f", benchSender, "-t", "r0@" + r.w.Domains[0]}
			if tt.flag != "" {
				args = append(args, tt.flag)
			}
			out, err := exec.CommandContext(t.Context(), bin, append(args, r.d.SMTP)...).CombinedOutput()
			if err != nil {
				t.Fatalf("smtp-source %v: %v\n%s", args, err, out)
			}
			r.waitFor("every message at the sink", time.Minute, func() bool { return r.w.Sinks.Messages()-before >= messages })
			r.waitQueueEmpty(time.Minute)
			if got := r.w.Sinks.Messages() - before; got != messages {
				t.Errorf("sink took %d messages, want %d", got, messages)
			}
		})
	}
}

// TestDeliverToPostfixSmtpSink proves that the daemon delivers to Postfix's
// smtp-sink, a server we did not write, as the recipient domain's MX:
// every message once, with its envelope recipient and its whole body.
func TestDeliverToPostfixSmtpSink(t *testing.T) {
	const bin = "/usr/sbin/smtp-sink"
	needTool(t, bin)
	const ip, messages = "127.0.0.60", 20
	r := newRig(t, rigOptions{Messages: messages, Domains: 1,
		Zone: fmt.Sprintf("pf.bench.test. IN MX 10 mx.pf.bench.test.\nmx.pf.bench.test. IN A %s\n", ip)})
	dumps := t.TempDir()
	args := []string{"-d", filepath.Join(dumps, "%M."), net.JoinHostPort(ip, strconv.Itoa(r.w.Sinks.Port())), "50"}
	if os.Geteuid() == 0 {
		args = append([]string{"-u", "root"}, args...) // it refuses to run as root otherwise
	}
	sink := exec.Command(bin, args...)
	if err := sink.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sink.Process.Kill(); _ = sink.Wait() })
	r.waitFor("smtp-sink to listen", 20*time.Second, func() bool { return greets(net.JoinHostPort(ip, strconv.Itoa(r.w.Sinks.Port()))) })
	r.start()
	opts := r.gen(0, messages, 2)
	opts.Domains = []string{"pf.bench.test"}
	if g := generate(t.Context(), opts, r.led); g.Accepted != messages {
		t.Fatalf("accepted %d of %d: %+v", g.Accepted, messages, g)
	}
	var files []string
	r.waitFor("smtp-sink to dump every message", time.Minute, func() bool {
		files, _ = filepath.Glob(filepath.Join(dumps, "*"))
		return len(files) >= messages
	})
	r.waitQueueEmpty(time.Minute)
	// smtp-sink dumps with LF line ends.
	body := strings.ReplaceAll(string(bodyFiller(opts.SizeBytes)), "\r\n", "\n")
	seen := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, benchHeader+": "); ok {
				seen[strings.TrimSpace(v)] = true
			}
		}
		if !strings.Contains(string(b), "X-Rcpt-Args: <r0@pf.bench.test>") {
			t.Errorf("%s: no recipient line", f)
		}
		if !strings.Contains(string(b), body) {
			t.Errorf("%s: the body is not the one sent", f)
		}
	}
	if len(seen) != messages {
		t.Errorf("smtp-sink has %d distinct bench messages, want %d", len(seen), messages)
	}
}
