package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"

	"mta/internal/testpeer"
)

// TestLabScenarios runs the shipped lab (configs/lab.zone, configs/lab.yaml
// with free ports) in-process and sends mail to each scenario's domain
// through the MTA's relay listener, then checks what `mta lab status` says
// of the route and what the lab hosts' mailboxes hold, read over POP3.
func TestLabScenarios(t *testing.T) {
	info, dir := startTestLab(t)
	relay := info.Relay[0]
	tests := []struct {
		name    string
		rcpt    string
		state   string
		route   []string // the first attempt's route: host phase code enhanced
		mailbox string   // the lab host that must hold the message
		bounce  string   // the status the bounce in inbox.lab.test must give
	}{
		{"priority", "you@priority.test", "delivered", []string{"mx1.priority.test data 250 2.0.0"}, "mx1.priority.test", ""},
		{"fallback_on_refusal", "you@refused.test", "delivered",
			[]string{"mx1.refused.test dial 0 4.4.1", "mx2.refused.test data 250 2.0.0"}, "mx2.refused.test", ""},
		{"fallback_on_421", "you@greet421.test", "delivered",
			[]string{"mx1.greet421.test greeting 421 4.3.2", "mx2.greet421.test data 250 2.0.0"}, "mx2.greet421.test", ""},
		{"CNAME_to_another_domain", "you@alias.test", "delivered", []string{"mx.target.test data 250 2.0.0"}, "mx.target.test", ""},
		{"implicit_MX", "you@implicit.test", "delivered", []string{"implicit.test data 250 2.0.0"}, "implicit.test", ""},
		{"null_MX", "you@nullmx.test", "failed", []string{"nullmx.test dns 0 5.1.10"}, "", "5.1.10"},
		{"NXDOMAIN", "you@nosuch.test", "failed", []string{"nosuch.test dns 0 5.1.2"}, "", "5.1.2"},
		{"MX_host_without_address", "you@noaddr.test", "failed",
			[]string{"mx.noaddr.test skip 0 ", "noaddr.test dns 0 5.4.4"}, "", "5.4.4"},
		{"CNAME_loop", "you@loop1.test", "deferred", []string{"loop1.test dns 0 4.4.3"}, "", ""},
		{"slow_host", "you@slow.test", "delivered", []string{"mx.slow.test data 250 2.0.0"}, "mx.slow.test", ""},
		{"hanging_host", "you@hang.test", "delivered",
			[]string{"mx1.hang.test greeting 0 4.4.2", "mx2.hang.test data 250 2.0.0"}, "mx2.hang.test", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			id, msgID := labSend(t, relay, nil, tc.rcpt)
			m := waitLabMessage(t, dir, id, tc.state != "deferred")
			r := m.Recipients[0]
			if r.State != tc.state {
				t.Errorf("state %s, want %s", r.State, tc.state)
			}
			if got := routeOf(r.Attempts[0]); !slices.Equal(got, tc.route) {
				t.Errorf("route:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.route, "\n"))
			}
			if tc.mailbox != "" {
				if r.TakenBy != tc.mailbox {
					t.Errorf("taken by %q, want %s", r.TakenBy, tc.mailbox)
				}
				waitMailbox(t, info, tc.mailbox, "Message-ID: <"+msgID+">", "by "+tc.mailbox+" with ESMTP")
			}
			if tc.bounce != "" {
				waitMailbox(t, info, "inbox.lab.test", "Status: "+tc.bounce, msgID)
			}
		})
	}
	for name, f := range map[string]func(*testing.T, *labInfo, string){
		"reject_some_recipients":  testLabPicky,
		"equal_preference_spread": testLabSpread,
		"submission_with_AUTH":    testLabSubmission,
		"status_text_and_trace":   testLabStatusAndTrace,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f(t, info, dir)
		})
	}
}

// testLabPicky sends to three recipients of one host that accepts one,
// rejects one (550) and defers one (450).
func testLabPicky(t *testing.T, info *labInfo, dir string) {
	id, msgID := labSend(t, info.Relay[0], nil, "you@picky.test", "nobody@picky.test", "later@picky.test")
	m := waitLabMessage(t, dir, id, false)
	want := map[string]string{
		"you@picky.test":    "delivered mx.picky.test data 250 2.0.0",
		"nobody@picky.test": "failed mx.picky.test rcpt 550 5.1.1",
		"later@picky.test":  "deferred mx.picky.test rcpt 450 4.2.1",
	}
	for _, r := range m.Recipients {
		got := r.State + " " + strings.Join(routeOf(r.Attempts[0]), "; ")
		if got != want[r.Addr] {
			t.Errorf("%s: %s, want %s", r.Addr, got, want[r.Addr])
		}
	}
	waitMailbox(t, info, "mx.picky.test", msgID, "for <you@picky.test>;")
}

// testLabSpread sends to the equal-preference domain until both hosts
// have taken a message (bounded).
func testLabSpread(t *testing.T, info *labInfo, dir string) {
	took := map[string]int{}
	for i := 0; i < 40 && (took["mx1.spread.test"] == 0 || took["mx2.spread.test"] == 0); i++ {
		id, _ := labSend(t, info.Relay[0], nil, "you@spread.test")
		r := waitLabMessage(t, dir, id, true).Recipients[0]
		if len(r.Attempts[0].Route) != 1 {
			t.Errorf("route %v: an equal-preference host was not the first tried", routeOf(r.Attempts[0]))
		}
		took[r.TakenBy]++
	}
	if took["mx1.spread.test"] == 0 || took["mx2.spread.test"] == 0 || len(took) != 2 {
		t.Errorf("messages taken per host: %v, want both spread hosts used", took)
	}
}

// testLabSubmission sends through the submission listener as the lab's
// student user.
func testLabSubmission(t *testing.T, info *labInfo, dir string) {
	id, msgID := labSend(t, info.Submission[0], sasl.NewPlainClient("", info.User, info.Password), "you@priority.test")
	waitLabMessage(t, dir, id, true)
	msg := waitMailbox(t, info, "mx1.priority.test", msgID)
	if !strings.Contains(msg, "with ESMTPSA") {
		t.Errorf("our Received header does not say ESMTPSA:\n%s", msg)
	}
}

// testLabStatusAndTrace checks the text of `mta lab status` for a
// fallback, then reads the message back over POP3 with Python's poplib
// and runs `mta trace` on it.
func testLabStatusAndTrace(t *testing.T, info *labInfo, dir string) {
	id, msgID := labSend(t, info.Relay[0], nil, "trace@refused.test")
	waitLabMessage(t, dir, id, true)
	var out bytes.Buffer
	if err := run(t.Context(), []string{"mta", "lab", "status", "--dir", dir}, Stdio{Out: &out, Err: &out}); err != nil {
		t.Fatalf("lab status: %v\n%s", err, out.String())
	}
	text := out.String()
	block := text[strings.Index(text, "message "+id):]
	if i := strings.Index(block[1:], "\nmessage "); i >= 0 {
		block = block[:i+1]
	}
	for _, want := range []string{
		"to <trace@refused.test>: delivered, taken by mx2.refused.test [127.0.0.22]",
		"attempt 1 at ",
		"1. mx1.refused.test [127.0.0.21]  dial: connect: ",
		"connection refused (4.4.1)",
		"2. mx2.refused.test [127.0.0.22]  data: 250 2.0.0 ",
		"<- took it",
	} {
		if !strings.Contains(block, want) {
			t.Errorf("lab status lacks %q:\n%s", want, block)
		}
	}
	msg := waitMailbox(t, info, "mx2.refused.test", msgID)
	if py := poplibRetrieve(t, info, "mx2.refused.test", msgID); py != "" {
		msg = py // what an independent client read
	}
	var tr bytes.Buffer
	if err := run(t.Context(), []string{"mta", "trace", "--json"}, Stdio{In: strings.NewReader(msg), Out: &tr, Err: &tr}); err != nil {
		t.Fatalf("trace: %v\n%s", err, tr.String())
	}
	var hops []traceHop
	if err := json.Unmarshal(tr.Bytes(), &hops); err != nil {
		t.Fatalf("trace --json: %v\n%s", err, tr.String())
	}
	if len(hops) != 2 {
		t.Fatalf("%d hops, want 2 (the MTA, then the lab host):\n%s", len(hops), tr.String())
	}
	if h := hops[0]; h.By != info.Hostname || h.Helo != "client.lab.test" || h.IP != "127.0.0.1" || h.ID != id || h.With != "ESMTP" {
		t.Errorf("hop 1 (the MTA): %+v", h.received)
	}
	if h := hops[1]; h.By != "mx2.refused.test" || h.Helo != info.Hostname || h.IP != "127.0.0.1" || h.For != "trace@refused.test" {
		t.Errorf("hop 2 (the lab host): %+v", h.received)
	}
}

// poplibRetrieve reads the message holding msgID from a lab host with
// Python's poplib, an independent POP3 client; "" when it is absent.
func poplibRetrieve(t *testing.T, info *labInfo, host, msgID string) string {
	t.Helper()
	const python = "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		t.Logf("%s absent: POP3 read with the Go client only", python)
		return ""
	}
	addr := labHostAddr(t, info, host, true)
	ip, port, _ := strings.Cut(addr, ":")
	const script = `
import poplib, sys
p = poplib.POP3(sys.argv[1], int(sys.argv[2]), timeout=30)
p.user(sys.argv[3])
p.pass_(sys.argv[4])
for n in range(1, p.stat()[0] + 1):
    lines = p.retr(n)[1]
    if any(sys.argv[5].encode() in l for l in lines):
        sys.stdout.write("\r\n".join(l.decode() for l in lines) + "\r\n")
p.quit()
`
	var msg []byte
	waitUntil(t, "poplib to read the message", func() bool {
		cmd := exec.CommandContext(t.Context(), python, "-c", script, ip, port, host, info.Password, msgID)
		out, err := cmd.Output()
		msg = out
		return err == nil && len(out) > 0 // an error is the mailbox in use: look again
	})
	if !strings.Contains(string(msg), "Return-Path: <student@lab.test>") {
		t.Errorf("poplib read:\n%s", msg)
	}
	return string(msg)
}

// TestLabChildProcess runs the lab as its own process (this test binary
// acting as mta), as a student would, and stops it with SIGINT.
func TestLabChildProcess(t *testing.T) {
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var out, logs testpeer.Buffer
	cmd := exec.Command(bin, "lab", "--zone", "../../configs/lab.zone", "--config", labTestConfig(t), "--dir", dir)
	cmd.Env = append(os.Environ(), asMTAEnv+"=1")
	cmd.Stdout, cmd.Stderr = &out, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // already gone when the test passed
		if t.Failed() {
			t.Logf("lab output:\n%s\nlab log:\n%s", out.String(), logs.String())
		}
	})
	var info *labInfo
	waitUntil(t, "the lab process to start", func() bool {
		select {
		case err := <-exited:
			t.Fatalf("the lab exited: %v", err)
		default:
		}
		info, err = readLabInfo(filepath.Join(dir, labInfoFile))
		return err == nil
	})
	if info.PID != cmd.Process.Pid {
		t.Errorf("lab.json names pid %d, the lab is %d", info.PID, cmd.Process.Pid)
	}
	// lab.json is written before the summary is printed: wait for its
	// last line.
	waitUntil(t, "the lab's summary", func() bool { return strings.Contains(out.String(), "Then: mta lab status") })
	for _, want := range []string{"mta lab is running; Ctrl-C stops it.", "DNS server    " + info.DNS, "  relay       " + info.Relay[0],
		"mx1.refused.test", "refuse connections", "mta lab status --dir " + dir} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the lab's summary lacks %q", want)
		}
	}
	id, _ := labSend(t, info.Relay[0], nil, "child@refused.test")
	waitLabMessage(t, dir, id, true)
	status := exec.CommandContext(t.Context(), bin, "lab", "status", "--dir", dir)
	status.Env = cmd.Env
	text, err := status.CombinedOutput()
	if err != nil {
		t.Fatalf("mta lab status: %v\n%s", err, text)
	}
	for _, want := range []string{"to <child@refused.test>: delivered, taken by mx2.refused.test", "1. mx1.refused.test [127.0.0.21]  dial:", "<- took it"} {
		if !strings.Contains(string(text), want) {
			t.Errorf("mta lab status lacks %q:\n%s", want, text)
		}
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("the lab exited with %v after SIGINT, want 0", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the lab did not stop on SIGINT")
	}
	if _, err := os.Stat(filepath.Join(dir, labInfoFile)); err == nil {
		t.Errorf("lab.json left behind")
	}
}
