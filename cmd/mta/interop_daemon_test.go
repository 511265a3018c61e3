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

// needTool skips the test when path is not an executable.
func needTool(t *testing.T, path string) {
	t.Helper()
	if _, err := exec.LookPath(path); err != nil {
		t.Skipf("%s not installed (.ci/install-peers installs it): %v", path, err)
	}
}

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

// TestSwaksSubmission proves submission with STARTTLS then AUTH LOGIN or
// AUTH PLAIN, pipelined, from swaks, ends at the recipient's MX.
func TestSwaksSubmission(t *testing.T) {
	needTool(t, "swaks")
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
			for _, want := range []string{"STARTTLS", "AUTH " + mech, "PIPELINING", "250 "} {
				if !strings.Contains(string(out), want) {
					t.Errorf("swaks transcript lacks %q:\n%s", want, out)
				}
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

// TestPythonSmtplibSubmission proves Python's smtplib submits over implicit
// TLS (465) and STARTTLS (587) with AUTH and the message is delivered.
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

// TestSmtpSourceLoad proves the relay listener carries Postfix's
// smtp-source load (several sessions, several messages each) to the MX
// hosts, every message once.
func TestSmtpSourceLoad(t *testing.T) {
	const bin = "/usr/sbin/smtp-source"
	needTool(t, bin)
	r := newRig(t, rigOptions{Messages: 1, Domains: 1})
	r.start()
	const messages = 200
	out, err := exec.CommandContext(t.Context(), bin, "-s", "5", "-m", strconv.Itoa(messages), "-r", "1", "-l", "2048",
		"-f", benchSender, "-t", "r0@"+r.w.Domains[0], r.d.SMTP).CombinedOutput()
	if err != nil {
		t.Fatalf("smtp-source: %v\n%s", err, out)
	}
	r.waitFor("every message at the sink", time.Minute, func() bool { return r.w.Sinks.Messages() >= messages })
	r.waitQueueEmpty(time.Minute)
	if got := r.w.Sinks.Messages(); got != messages {
		t.Errorf("sink took %d messages, want %d", got, messages)
	}
}

// TestDeliverToPostfixSmtpSink proves the daemon delivers to Postfix's
// smtp-sink as the recipient domain's MX, each message whole.
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
	}
	if len(seen) != messages {
		t.Errorf("smtp-sink has %d distinct bench messages, want %d", len(seen), messages)
	}
}
