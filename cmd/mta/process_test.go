package main

// The daemon as the service it is: the built binary (this test binary
// acting as mta, see TestMain) started as a child process on a temp
// config, driven only from outside, through SMTP, its sockets, its
// client commands run as processes (as root and as an ordinary user) and
// signals.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"mta/internal/peer"
	"mta/internal/testpeer"
	"mta/spool"
)

// proc is a daemon run as a child process.
type proc struct {
	t      *testing.T
	dir    string // readable and searchable by every user
	config string
	bin    string // the test binary, where every user may run it
	hosts  map[string]*peer.Host
	port   int // the MX hosts' port
	dns    *testpeer.DNS
	env    []string

	// From the "ready" line of the current run.
	relay, submission, submit, admin, metrics string

	log    *procLog
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // from Wait, once exited is closed
}

// newProc writes a config like serveWorld's (MX hosts for example.test on
// 127.0.0.2 and sender.test on 127.0.0.3, retry_min retry) plus extra,
// in a directory tree an ordinary user may read; it does not start the
// daemon. In extra, PORT stands for the MX hosts' port.
func newProc(t *testing.T, retry, extra string) *proc {
	t.Helper()
	port, hosts := testpeer.SMTPHosts(t, map[string]peer.Behaviour{"127.0.0.2": {}, "127.0.0.3": {}})
	dns := testpeer.NewDNS(t, worldZone)
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p := &proc{t: t, dir: dir, config: filepath.Join(dir, "mta.yaml"), hosts: hosts, port: port, dns: dns, log: &procLog{}}
	p.bin = copyTestBinary(t, filepath.Join(dir, "mta"))
	p.writeConfig(worldConfig(worldConfigOptions{stateDir: filepath.Join(dir, "state"), runtimeDir: filepath.Join(dir, "run"),
		submission: true, dns: dns.Addr(), port: port, retry: retry}) + strings.ReplaceAll(extra, "PORT", fmt.Sprint(port)))
	t.Cleanup(func() {
		if p.cmd != nil {
			_ = p.cmd.Process.Kill() // a test that failed half-way
			<-p.exited
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", p.log.String())
		}
	})
	return p
}

func (p *proc) writeConfig(text string) {
	p.t.Helper()
	writeFile(p.t, p.config, text)
}

// editConfig replaces old by new in the config file.
func (p *proc) editConfig(old, new string) {
	p.t.Helper()
	b, err := os.ReadFile(p.config)
	if err != nil {
		p.t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		p.t.Fatalf("config lacks %q", old)
	}
	p.writeConfig(strings.Replace(string(b), old, new, 1))
}

// start runs `mta serve --config` and returns when it logs "ready".
func (p *proc) start() {
	p.t.Helper()
	p.waitReady(p.launch())
}

// launch starts `mta serve --config` and returns the index of its first
// log line.
func (p *proc) launch() int {
	p.t.Helper()
	cmd := exec.Command(p.bin, "serve", "--config", p.config)
	cmd.Env = append(childEnv(), p.env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		p.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.cmd, p.exited = cmd, make(chan struct{})
	from := p.log.count()
	var copied sync.WaitGroup
	copied.Add(1)
	go func() {
		defer copied.Done()
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.log.add(sc.Text())
		}
	}()
	exited := p.exited
	go func() {
		copied.Wait() // Wait closes the pipe: read it all first
		p.err = cmd.Wait()
		close(exited)
	}()
	return from
}

// waitReady waits for the "ready" line of the run whose log starts at
// index from and takes the listeners' addresses from it.
func (p *proc) waitReady(from int) {
	p.t.Helper()
	ready, ok := p.log.waitFrom(from, 30*time.Second, p.exited, "ready", "listening")
	if !ok {
		p.t.Fatalf("daemon not ready (exit: %v)", p.exitErr())
	}
	l := listening(ready)
	p.relay, p.submission, p.submit, p.admin, p.metrics = l["relay"], l["submission"], l["submit"], l["admin"], l["metrics"]
}

// listening reads the daemon's ready line (text or JSON log format):
// listener name → address.
func listening(ready string) map[string]string {
	var list string
	var fields map[string]any
	if json.Unmarshal([]byte(ready), &fields) == nil { // log.format: json
		list, _ = fields["listening"].(string)
	} else {
		_, list, _ = strings.Cut(ready, "listening=")
	}
	m := map[string]string{}
	for _, f := range strings.Fields(strings.Trim(list, `"`)) {
		k, v, _ := strings.Cut(strings.Trim(f, `"`), "=")
		m[k] = v
	}
	return m
}

func (p *proc) exitErr() error {
	select {
	case <-p.exited:
		return p.err
	default:
		return errors.New("still running")
	}
}

func (p *proc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
}

// waitExit waits for the daemon to end and returns its exit error.
func (p *proc) waitExit(limit time.Duration) error {
	p.t.Helper()
	select {
	case <-p.exited:
		p.cmd = nil
		return p.err
	case <-time.After(limit):
		p.t.Fatalf("daemon still running %s after the signal", limit)
		return nil
	}
}

// stop ends the daemon with SIGTERM and expects a clean exit.
func (p *proc) stop() {
	p.t.Helper()
	p.signal(syscall.SIGTERM)
	if err := p.waitExit(60 * time.Second); err != nil {
		p.t.Fatalf("exit after SIGTERM: %v", err)
	}
}

// waitLog returns the first line logged from line index from on that
// holds every part.
func (p *proc) waitLog(from int, parts ...string) string {
	p.t.Helper()
	line, ok := p.log.waitFrom(from, 30*time.Second, nil, parts...)
	if !ok {
		p.t.Fatalf("no log line with %q", parts)
	}
	return line
}

// waitMessage polls the daemon's admin socket (in-process: cheaper than
// running the binary) until message id satisfies cond.
func (p *proc) waitMessage(id, what string, cond func(*spool.Message) bool) {
	p.t.Helper()
	testpeer.WaitFor(p.t, what+" of "+id, func() bool {
		resp, err := adminCall(p.t.Context(), p.admin, adminRequest{Op: "show", ID: id})
		return err == nil && resp.Message != nil && cond(resp.Message)
	})
}

// childEnv is the environment of a child process acting as mta (TestMain
// has set GORACE so that a -race child does not sleep at exit).
func childEnv() []string {
	return append(os.Environ(), asMTAEnv+"=1")
}

// client is how a client command is run: as which user, under which name.
type client struct {
	uid   int    // -1: as the test runs
	name  string // the program to run: "" is the mta binary; else a symlink to it
	stdin string
}

// result is a finished client command.
type result struct {
	out, err string
	code     int
}

// run runs a client command (mta ARGS, or the symlink c.name) and returns
// its output and exit status.
func (p *proc) run(c client, args ...string) result {
	p.t.Helper()
	path := p.bin
	if c.name != "" {
		path = filepath.Join(p.dir, c.name)
		if _, err := os.Lstat(path); err != nil {
			if err := os.Symlink(p.bin, path); err != nil {
				p.t.Fatal(err)
			}
		}
	}
	cmd := exec.CommandContext(p.t.Context(), path, args...)
	cmd.Env = childEnv()
	cmd.Stdin = strings.NewReader(c.stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if c.uid >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(c.uid), Gid: uint32(c.uid)}}
	}
	err := cmd.Run()
	r := result{out: out.String(), err: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		p.t.Fatalf("run %s %v: %v", path, args, err)
	}
	return r
}

// mta runs `mta ARGS --config` as the test's user and fails the test
// unless it exits 0.
func (p *proc) mta(args ...string) string {
	p.t.Helper()
	r := p.run(client{uid: -1}, append(args, "--config", p.config)...)
	if r.code != 0 {
		p.t.Fatalf("mta %v: exit %d\n%s%s", args, r.code, r.out, r.err)
	}
	return r.out
}

// procLog collects the daemon's log lines across its runs.
type procLog struct {
	mu      sync.Mutex
	lines   []string
	changed chan struct{}
}

func (l *procLog) add(line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, line)
	if l.changed != nil {
		close(l.changed)
		l.changed = nil
	}
}

func (l *procLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lines)
}

func (l *procLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// waitFrom waits for a line at index from or later holding every part,
// until limit or until stop is closed (all the daemon logged is in by
// then).
func (l *procLog) waitFrom(from int, limit time.Duration, stop <-chan struct{}, parts ...string) (string, bool) {
	timeout := time.After(limit)
	for {
		line, ok, changed := l.find(from, parts)
		if ok {
			return line, true
		}
		select {
		case <-changed:
		case <-stop:
			line, ok, _ := l.find(from, parts)
			return line, ok
		case <-timeout:
			return "", false
		}
	}
}

// find returns the first line from index from on with every part, or a
// channel closed when the next line comes.
func (l *procLog) find(from int, parts []string) (string, bool, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines[min(from, len(l.lines)):] {
		ok := true
		for _, part := range parts {
			ok = ok && strings.Contains(line, part)
		}
		if ok {
			return line, true, nil
		}
	}
	if l.changed == nil {
		l.changed = make(chan struct{})
	}
	return "", false, l.changed
}
