package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/miekg/dns"

	"mta/internal/testpeer"
)

// labScenario is one domain of the shipped zone: what a message to it
// must meet.
type labScenario struct {
	name    string
	rcpt    string
	state   string
	route   []string // the first attempt's route: host phase code enhanced
	mailbox string   // the lab host that must hold the message
	bounce  string   // the status the bounce in inbox.lab.test must give
	minMS   int64    // the first attempt lasted at least this long
}

// labScenarios are the shipped zone's scenarios, for the shipped lab.yaml
// as labTestConfig changes it (a 1 s session timeout, 20 ms slow replies).
var labScenarios = []labScenario{
	{name: "priority", rcpt: "you@priority.test", state: "delivered", route: []string{"mx1.priority.test data 250 2.0.0"}, mailbox: "mx1.priority.test"},
	{name: "fallback_on_refusal", rcpt: "you@refused.test", state: "delivered",
		route: []string{"mx1.refused.test dial 0 4.4.1", "mx2.refused.test data 250 2.0.0"}, mailbox: "mx2.refused.test"},
	{name: "fallback_on_421", rcpt: "you@greet421.test", state: "delivered",
		route: []string{"mx1.greet421.test greeting 421 4.3.2", "mx2.greet421.test data 250 2.0.0"}, mailbox: "mx2.greet421.test"},
	{name: "CNAME_to_another_domain", rcpt: "you@alias.test", state: "delivered", route: []string{"mx.target.test data 250 2.0.0"}, mailbox: "mx.target.test"},
	{name: "implicit_MX", rcpt: "you@implicit.test", state: "delivered", route: []string{"implicit.test data 250 2.0.0"}, mailbox: "implicit.test"},
	{name: "null_MX", rcpt: "you@nullmx.test", state: "failed", route: []string{"nullmx.test dns 0 5.1.10"}, bounce: "5.1.10"},
	{name: "NXDOMAIN", rcpt: "you@nosuch.test", state: "failed", route: []string{"nosuch.test dns 0 5.1.2"}, bounce: "5.1.2"},
	{name: "MX_host_without_address", rcpt: "you@noaddr.test", state: "failed",
		route: []string{"mx.noaddr.test skip 0 ", "noaddr.test dns 0 5.4.4"}, bounce: "5.4.4"},
	{name: "CNAME_loop", rcpt: "you@loop1.test", state: "deferred", route: []string{"loop1.test dns 0 4.4.3"}},
	// Six replies waited for (greeting, EHLO, MAIL, RCPT, DATA, the dot),
	// each 20 ms late: a floor, which waits can only exceed.
	{name: "slow_host", rcpt: "you@slow.test", state: "delivered", route: []string{"mx.slow.test data 250 2.0.0"}, mailbox: "mx.slow.test", minMS: 6 * 20},
	{name: "hanging_host", rcpt: "you@hang.test", state: "delivered",
		route: []string{"mx1.hang.test greeting 0 4.4.2", "mx2.hang.test data 250 2.0.0"}, mailbox: "mx2.hang.test", minMS: 1000},
}

// TestLabScenarios runs the shipped lab (configs/lab.zone, configs/lab.yaml
// with free ports) in-process and checks every scenario.
func TestLabScenarios(t *testing.T) {
	info, dir := startTestLab(t)
	checkLabScenarios(t, info, dir)
}

// checkLabScenarios sends mail to each scenario's domain through the
// MTA's relay listener, then checks what `mta lab status` says of the
// route and what the lab hosts' mailboxes hold, read over POP3.
func checkLabScenarios(t *testing.T, info *labInfo, dir string) {
	for _, tc := range labScenarios {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			checkLabScenario(t, info, dir, tc)
		})
	}
	for name, f := range map[string]func(*testing.T, *labInfo, string){
		"reject_some_recipients":  testLabPicky,
		"equal_preference_spread": testLabSpread,
		"submission_with_AUTH":    testLabSubmission,
		"status_text_and_trace":   testLabStatusAndTrace,
		"DNS_answers_as_shown":    testLabDNS,
		"sent_as_the_README_does": testLabREADMESend,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f(t, info, dir)
		})
	}
}

// checkLabScenario sends one message to tc.rcpt through the relay
// listener and checks its first attempt, where it landed, and its bounce.
func checkLabScenario(t *testing.T, info *labInfo, dir string, tc labScenario) {
	t.Helper()
	id, msgID := labSend(t, info.Relay[0], nil, tc.rcpt)
	m := waitLabMessage(t, dir, id, tc.state != "deferred")
	r := m.Recipients[0]
	if r.State != tc.state {
		t.Errorf("state %s, want %s", r.State, tc.state)
	}
	a := r.Attempts[0]
	if got := routeOf(a); !slices.Equal(got, tc.route) {
		t.Errorf("route:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.route, "\n"))
	}
	if a.DurationMS < tc.minMS || a.Ended.Sub(a.Started).Milliseconds() != a.DurationMS {
		t.Errorf("attempt from %s to %s took %dms, want at least %dms", a.Started, a.Ended, a.DurationMS, tc.minMS)
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
	if len(info.Submission) != 1 || len(info.Submissions) != 1 {
		t.Fatalf("submission listeners %q, submissions %q: want one of each (labTestConfig)", info.Submission, info.Submissions)
	}
	for _, l := range []struct {
		addr     string
		implicit bool
	}{{info.Submission[0], false}, {info.Submissions[0], true}} {
		id, msgID := labSendTLS(t, l.addr, sasl.NewPlainClient("", info.User, info.Password), l.implicit, "you@priority.test")
		waitLabMessage(t, dir, id, true)
		msg := waitMailbox(t, info, "mx1.priority.test", msgID)
		if !strings.Contains(msg, "with ESMTPSA") {
			t.Errorf("%s: our Received header does not say ESMTPSA:\n%s", l.addr, msg)
		}
	}
}

// testLabREADMESend sends as the README's walkthrough does: swaks to the
// refusing domain, Python's smtplib to the null-MX one (each skipped when
// absent), and checks where the mail went.
func testLabREADMESend(t *testing.T, info *labInfo, dir string) {
	host, port, _ := strings.Cut(info.Relay[0], ":")
	queued := regexp.MustCompile(`queued as (\w+)`)
	if swaks, err := exec.LookPath("swaks"); err != nil {
		t.Logf("swaks absent: %v", err)
	} else {
		out, err := exec.CommandContext(t.Context(), swaks, "--server", info.Relay[0], "--from", "student@lab.test",
			"--to", "swaks@refused.test", "--header", "Subject: watch the fallback").CombinedOutput()
		m := queued.FindSubmatch(out)
		if err != nil || m == nil {
			t.Fatalf("swaks: %v\n%s", err, out)
		}
		r := waitLabMessage(t, dir, string(m[1]), true).Recipients[0]
		if r.State != "delivered" || r.TakenBy != "mx2.refused.test" {
			t.Errorf("swaks's message: %s, taken by %q; want delivered by mx2.refused.test", r.State, r.TakenBy)
		}
	}
	const python = "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		t.Logf("%s absent: %v", python, err)
		return
	}
	// sendmail as in the README, but by its steps, to read the queue ID
	// in the reply to the final dot.
	const script = `import smtplib, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]))
s.ehlo()
s.mail("student@lab.test")
s.rcpt("py@nullmx.test")
print(s.data("From: student@lab.test\r\nTo: py@nullmx.test\r\nSubject: nobody home\r\n\r\nhi\r\n")[1].decode())
s.quit()
`
	out, err := exec.CommandContext(t.Context(), python, "-c", script, host, port).CombinedOutput()
	m := queued.FindSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("smtplib: %v\n%s", err, out)
	}
	r := waitLabMessage(t, dir, string(m[1]), true).Recipients[0]
	if r.State != "failed" || len(r.Attempts) != 1 || r.Attempts[0].Outcome.Enhanced != "5.1.10" {
		t.Errorf("smtplib's message: %+v; want failed at once with 5.1.10", r)
	}
}

// testLabDNS asks the lab's DNS server what the README shows, with
// miekg/dns's client and, when it is installed, with dig.
func testLabDNS(t *testing.T, info *labInfo, _ string) {
	q := new(dns.Msg)
	q.SetQuestion("refused.test.", dns.TypeMX)
	for _, proto := range []string{"udp", "tcp"} {
		m, _, err := (&dns.Client{Net: proto, Timeout: 5 * time.Second}).Exchange(q, info.DNS)
		if err != nil {
			t.Fatalf("%s: %v", proto, err)
		}
		var got []string
		for _, rr := range m.Answer {
			got = append(got, strings.Join(strings.Fields(rr.String()), " "))
		}
		want := []string{"refused.test. 60 IN MX 10 mx1.refused.test.", "refused.test. 60 IN MX 20 mx2.refused.test."}
		if !m.Authoritative || m.Rcode != dns.RcodeSuccess || !slices.Equal(got, want) {
			t.Errorf("%s: aa=%v rcode %s answer %q, want aa and %q", proto, m.Authoritative, dns.RcodeToString[m.Rcode], got, want)
		}
	}
	dig, err := exec.LookPath("dig")
	if err != nil {
		t.Logf("dig absent: asked with miekg/dns only")
		return
	}
	host, port, _ := strings.Cut(info.DNS, ":")
	out, err := exec.CommandContext(t.Context(), dig, "@"+host, "-p", port, "refused.test", "MX", "+noall", "+answer").Output()
	if err != nil {
		t.Fatalf("dig: %v", err)
	}
	if want := "refused.test.\t\t60\tIN\tMX\t10 mx1.refused.test.\nrefused.test.\t\t60\tIN\tMX\t20 mx2.refused.test.\n"; string(out) != want {
		t.Errorf("dig printed %q, want %q", out, want)
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
	// Both receivers name 127.0.0.1 by the lab zone's PTR record.
	if h := hops[0]; h.By != info.Hostname || h.Helo != "client.lab.test" || h.RDNS != "mta.lab.test" || h.IP != "127.0.0.1" || h.ID != id || h.With != "ESMTP" {
		t.Errorf("hop 1 (the MTA): %+v", h.received)
	}
	if h := hops[1]; h.By != "mx2.refused.test" || h.Helo != info.Hostname || h.RDNS != "mta.lab.test" || h.IP != "127.0.0.1" || h.For != "trace@refused.test" {
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
// acting as mta: main and all), as a student would, checks every scenario
// against it, and stops it with SIGINT.
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
		"  submission  " + info.Submission[0] + "    STARTTLS", "  submissions " + info.Submissions[0] + "    TLS from the start",
		"mx1.refused.test", "refuse connections", "mta lab status --dir " + dir} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the lab's summary lacks %q", want)
		}
	}
	t.Run("scenarios", func(t *testing.T) { checkLabScenarios(t, info, dir) })
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

// ownLabZone and ownLabConfig are a lab of one's own (--zone, --config):
// hosts that reject every recipient, and hosts that hang at each later
// phase of a session, each with a backup MX.
const ownLabZone = `$ORIGIN test.
$TTL 60
@              IN SOA ns.lab.test. hostmaster.lab.test. 1 3600 600 86400 60
lab            IN MX  10 inbox.lab
inbox.lab      IN A   127.0.0.2
all550         IN MX  10 mx.all550
mx.all550      IN A   127.0.0.201
all450         IN MX  10 mx.all450
mx.all450      IN A   127.0.0.202
hangehlo       IN MX  10 mx1.hangehlo
hangehlo       IN MX  20 mx2.hangehlo
mx1.hangehlo   IN A   127.0.0.203
mx2.hangehlo   IN A   127.0.0.204
hangmail       IN MX  10 mx1.hangmail
hangmail       IN MX  20 mx2.hangmail
mx1.hangmail   IN A   127.0.0.205
mx2.hangmail   IN A   127.0.0.206
hangrcpt       IN MX  10 mx1.hangrcpt
hangrcpt       IN MX  20 mx2.hangrcpt
mx1.hangrcpt   IN A   127.0.0.207
mx2.hangrcpt   IN A   127.0.0.208
hangdot        IN MX  10 mx1.hangdot
hangdot        IN MX  20 mx2.hangdot
mx1.hangdot    IN A   127.0.0.209
mx2.hangdot    IN A   127.0.0.210
`

const ownLabConfig = `dns: 127.0.0.1:0
ports:
  smtp: 0
  pop3: 0
session_timeout: 300ms
hosts:
  mx.all550.test:
    behaviour: reject
    reject:
      "*": 550
  mx.all450.test:
    behaviour: reject
    reject:
      "*": 450
  mx1.hangehlo.test:
    behaviour: hang
    hang: ehlo
  mx1.hangmail.test:
    behaviour: hang
    hang: mail
  mx1.hangrcpt.test:
    behaviour: hang
    hang: rcpt
  mx1.hangdot.test:
    behaviour: hang
    hang: dot
daemon:
  listeners:
    relay: ["127.0.0.1:0"]
    submission: ["127.0.0.1:0"]
  log:
    level: warn
  delivery:
    retry_min: 1m
    retry_max: 2m
`

// TestLabOwnZone runs a lab from a zone and config of one's own and checks
// the behaviours the shipped lab does not show.
func TestLabOwnZone(t *testing.T) {
	files := t.TempDir()
	zone, config := filepath.Join(files, "own.zone"), filepath.Join(files, "own.yaml")
	writeFile(t, zone, ownLabZone)
	writeFile(t, config, ownLabConfig)
	info, dir := startTestLab(t, "--zone", zone, "--config", config)
	tests := []labScenario{
		{name: "every_recipient_550", rcpt: "a@all550.test", state: "failed", route: []string{"mx.all550.test rcpt 550 5.1.1"}, bounce: "5.1.1"},
		{name: "every_recipient_450", rcpt: "a@all450.test", state: "deferred", route: []string{"mx.all450.test rcpt 450 4.2.1"}},
		{name: "hang_at_EHLO", rcpt: "a@hangehlo.test", state: "delivered",
			route: []string{"mx1.hangehlo.test ehlo 0 4.4.2", "mx2.hangehlo.test data 250 2.0.0"}, mailbox: "mx2.hangehlo.test", minMS: 300},
		{name: "hang_at_MAIL", rcpt: "a@hangmail.test", state: "delivered",
			route: []string{"mx1.hangmail.test mail 0 4.4.2", "mx2.hangmail.test data 250 2.0.0"}, mailbox: "mx2.hangmail.test", minMS: 300},
		{name: "hang_at_RCPT", rcpt: "a@hangrcpt.test", state: "delivered",
			route: []string{"mx1.hangrcpt.test rcpt 0 4.4.2", "mx2.hangrcpt.test data 250 2.0.0"}, mailbox: "mx2.hangrcpt.test", minMS: 300},
		// The message went over whole: mx1 may have it, so it is not sent
		// to mx2 (a duplicate), but deferred.
		{name: "hang_at_the_final_dot", rcpt: "a@hangdot.test", state: "deferred", route: []string{"mx1.hangdot.test data 0 4.4.2"}, minMS: 300},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			checkLabScenario(t, info, dir, tc)
		})
	}
}

// A second lab in the same directory is refused with a clear message, and
// leaves the running lab's lab.json (which `mta lab status` reads) alone.
func TestLabAlreadyRunning(t *testing.T) {
	info, dir := startTestLab(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute) // ends a second lab that wrongly started
	defer cancel()
	var out, errb bytes.Buffer
	err := run(ctx, []string{"mta", "lab", "--dir", dir, "--config", labTestConfig(t)}, Stdio{In: strings.NewReader(""), Out: &out, Err: &errb})
	var ee *exitError
	if !errors.As(err, &ee) || !strings.Contains(ee.msg, "a lab is already running in "+dir) {
		t.Errorf("second lab: %v\n%s", err, errb.String())
	}
	if st := labStatusOf(t, dir); st.Lab == nil || st.Lab.PID != info.PID || st.Lab.DNS != info.DNS {
		t.Errorf("after the second lab, lab status finds %+v, want the first lab", st.Lab)
	}
}
