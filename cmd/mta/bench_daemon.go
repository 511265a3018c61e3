package main

// The daemon under measurement, run as a child process: the real binary
// with `serve --config`, the real spool on disk with fsync. Its CPU time
// and anonymous memory are read from /proc; its Go heap from its own
// /metrics.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// daemonOptions shape the child daemon and its config.
type daemonOptions struct {
	Bin      string // the mta binary
	Dir      string // holds the config, state, sockets and log
	DNS      string // the bench DNS server, ip:port
	SinkPort int    // delivery.port
	// RetryMin and RetryMax override the backoff (0: the defaults).
	RetryMin, RetryMax time.Duration
	// SessionTimeout is delivery.session_timeout (0: RFC 5321's).
	SessionTimeout time.Duration
	// MinFreeBytes is spool.min_free_bytes (0: the default, 100 MiB).
	MinFreeBytes int64
	// StateDir overrides Dir/state (e.g. a small file system).
	StateDir   string
	ProfileDir string // set profileDirEnv
	LogLevel   string // default info
	// Submission adds submission listeners (587-style STARTTLS and
	// 465-style implicit TLS) on free loopback ports.
	Submission bool
	// Extra is YAML appended to the config: top-level keys the config
	// does not set otherwise (users_file, aliases, ...).
	Extra string
	// Env is added to the daemon's environment.
	Env []string
}

// childDaemon is a running child daemon. SMTP and Metrics stay fixed across
// restarts on the same config.
type childDaemon struct {
	opts    daemonOptions
	Config  string // path of the config file
	SMTP    string // relay listener, 127.0.0.1:port
	Metrics string // metrics listener
	Admin   string // admin socket path
	LogPath string
	// Submission and Submissions are set with daemonOptions.Submission.
	Submission, Submissions string

	cmd    *exec.Cmd
	log    *os.File
	exited chan struct{}
	err    error // from Wait, once exited is closed
}

// newDaemon writes the config (ports chosen now) without starting.
func newDaemon(opts daemonOptions) (*childDaemon, error) {
	if opts.StateDir == "" {
		opts.StateDir = filepath.Join(opts.Dir, "state")
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "info"
	}
	ports, err := freePorts(4)
	if err != nil {
		return nil, err
	}
	d := &childDaemon{opts: opts,
		Config:  filepath.Join(opts.Dir, "mta.yaml"),
		SMTP:    net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])),
		Metrics: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1])),
		Admin:   filepath.Join(opts.Dir, "run", adminSocket),
		LogPath: filepath.Join(opts.Dir, "daemon.log"),
	}
	if opts.Submission {
		d.Submission = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[2]))
		d.Submissions = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[3]))
	}
	for _, dir := range []string{opts.StateDir, filepath.Join(opts.Dir, "run")} {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, err
		}
	}
	cfg := d.configText()
	if _, err := ParseConfig([]byte(cfg), d.Config); err != nil {
		return nil, fmt.Errorf("bench config: %w", err)
	}
	return d, os.WriteFile(d.Config, []byte(cfg), 0o640)
}

func (d *childDaemon) configText() string {
	o := d.opts
	var b strings.Builder
	fmt.Fprintf(&b, "hostname: mta.%s\nstate_dir: %q\nruntime_dir: %q\n", benchZone, o.StateDir, filepath.Join(o.Dir, "run"))
	fmt.Fprintf(&b, "trusted_networks: [127.0.0.0/8]\n")
	fmt.Fprintf(&b, "listeners:\n  relay: [%q]\n  submission: [%s]\n  submissions: [%s]\n", d.SMTP, quoted(d.Submission), quoted(d.Submissions))
	fmt.Fprintf(&b, "limits:\n  conns_per_ip: 1000\n  conns_total: 2000\n")
	fmt.Fprintf(&b, "delivery:\n  allow_private_mx: true\n  port: %d\n", o.SinkPort)
	if o.RetryMin > 0 {
		fmt.Fprintf(&b, "  retry_min: %s\n  retry_max: %s\n", o.RetryMin, max(o.RetryMax, o.RetryMin))
	}
	if o.SessionTimeout > 0 {
		fmt.Fprintf(&b, "  session_timeout: %s\n", o.SessionTimeout)
	}
	fmt.Fprintf(&b, "dns:\n  servers: [%q]\n  timeout: 2s\n", o.DNS)
	if o.MinFreeBytes != 0 {
		fmt.Fprintf(&b, "spool:\n  min_free_bytes: %d\n", o.MinFreeBytes)
	}
	fmt.Fprintf(&b, "metrics:\n  address: %q\nlog:\n  format: text\n  level: %s\n", d.Metrics, o.LogLevel)
	b.WriteString(o.Extra)
	return b.String()
}

// quoted is s as a YAML string, or nothing when s is empty.
func quoted(s string) string {
	if s == "" {
		return ""
	}
	return strconv.Quote(s)
}

// freePorts finds n free TCP ports on 127.0.0.1. Another process may take
// one before the daemon binds it; the daemon then fails to start and says
// so.
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}()
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Start runs `mta serve` and returns once it greets on its SMTP listener.
func (d *childDaemon) Start(ctx context.Context) error {
	f, err := os.OpenFile(d.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	cmd := exec.Command(d.opts.Bin, "serve", "--config", d.Config)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), d.opts.Env...)
	if d.opts.ProfileDir != "" {
		cmd.Env = append(cmd.Env, profileDirEnv+"="+d.opts.ProfileDir)
	}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start daemon: %w", err)
	}
	d.cmd, d.log, d.exited = cmd, f, make(chan struct{})
	go func() {
		d.err = cmd.Wait()
		f.Close()
		close(d.exited)
	}()
	return d.waitReady(ctx)
}

// waitReady polls the SMTP listener for a 220 greeting, giving up when the
// daemon exits or after 30 seconds.
func (d *childDaemon) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if greets(d.SMTP) {
			return nil
		}
		select {
		case <-d.exited:
			return fmt.Errorf("daemon exited at start (%v): %s", d.err, d.LogTail(2000))
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("daemon not greeting on %s after 30s: %s", d.SMTP, d.LogTail(2000))
		}
	}
}

func greets(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "220") {
		return false
	}
	_, _ = io.WriteString(c, "QUIT\r\n") // polite; the answer does not matter
	return true
}

// PID is the running daemon's process id.
func (d *childDaemon) PID() int { return d.cmd.Process.Pid }

// Kill ends the daemon with SIGKILL and waits for it.
func (d *childDaemon) Kill() error {
	if d.cmd == nil {
		return nil
	}
	_ = d.cmd.Process.Signal(syscall.SIGKILL) // it may have exited already
	<-d.exited
	d.cmd = nil
	return nil
}

// Stop asks the daemon to drain with SIGTERM; after timeout it is killed.
// The error says when it did not exit cleanly.
func (d *childDaemon) Stop(timeout time.Duration) error {
	if d.cmd == nil {
		return nil
	}
	defer func() { d.cmd = nil }()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
		if d.err != nil {
			return fmt.Errorf("daemon exit: %w", d.err)
		}
		return nil
	case <-time.After(timeout):
		_ = d.cmd.Process.Signal(syscall.SIGKILL)
		<-d.exited
		return fmt.Errorf("daemon did not stop within %s of SIGTERM", timeout)
	}
}

// Signal sends sig to the running daemon.
func (d *childDaemon) Signal(sig syscall.Signal) error {
	if d.cmd == nil {
		return errors.New("daemon not running")
	}
	return d.cmd.Process.Signal(sig)
}

// LogTail is the last n bytes of the daemon's log.
func (d *childDaemon) LogTail(n int) string {
	b, err := os.ReadFile(d.LogPath)
	if err != nil {
		return ""
	}
	return string(b[max(0, len(b)-n):])
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times; 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// procCPU is the user plus system CPU time of process pid.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may hold spaces) in parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// machineCPU reads the machine's CPU time from the first line of
// /proc/stat: all of it, and the part the hypervisor gave to other guests
// (steal), in clock ticks.
func machineCPU() (total, steal int64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, errors.New("/proc/stat: unexpected format")
	}
	for i, v := range f[1:] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %w", err)
		}
		if i < 8 { // user … steal; guest time is counted in user already
			total += n
		}
		if i == 7 {
			steal = n
		}
	}
	return total, steal, nil
}

// stealPercent is the share of the machine's CPU time stolen between two
// machineCPU readings; 0 when nothing can be said.
func stealPercent(total0, steal0, total1, steal1 int64) float64 {
	if total1 <= total0 {
		return 0
	}
	return 100 * float64(steal1-steal0) / float64(total1-total0)
}

// procStatus reads one "Key: N kB" line of /proc/PID/status, in bytes.
func procStatus(pid int, key string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			f := strings.Fields(v)
			if len(f) == 0 {
				break
			}
			n, err := strconv.ParseInt(f[0], 10, 64)
			return n * 1024, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s", pid, key)
}

// scrapeMetric reads one unlabelled sample from a Prometheus text page.
func scrapeMetric(ctx context.Context, addr, name string) (float64, error) {
	return scrape(ctx, addr, name, "", false)
}

// scrapeSum adds up the samples of a labelled metric whose labels contain
// label (`result="deferred"`); none is a sum of 0.
func scrapeSum(ctx context.Context, addr, name, label string) (float64, error) {
	return scrape(ctx, addr, name, label, true)
}

func scrape(ctx context.Context, addr, name, label string, sum bool) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	total := 0.0
	for sc.Scan() {
		line := sc.Text()
		if !sum {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				return strconv.ParseFloat(strings.TrimSpace(v), 64)
			}
			continue
		}
		labels, ok := strings.CutPrefix(line, name+"{")
		if !ok {
			continue
		}
		end := strings.LastIndexByte(labels, '}')
		if end < 0 || !strings.Contains(labels[:end], label) {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(labels[end+1:]), 64)
		if err != nil {
			return 0, fmt.Errorf("metric %s: %w", name, err)
		}
		total += v
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	if sum {
		return total, nil
	}
	return 0, fmt.Errorf("metric %s not found", name)
}

// dirBytes is the size of the files under dir (the spool: its bbolt file
// and body files).
func dirBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, e os.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			if fi, err := e.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil // a file removed meanwhile is simply not counted
	})
	return n
}

// fsName names the file system that holds dir, from statfs's magic
// number, or "" when it cannot be read.
func fsName(dir string) string {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return ""
	}
	switch uint32(st.Type) {
	case 0xEF53:
		return "ext2/3/4"
	case 0x58465342:
		return "xfs"
	case 0x9123683E:
		return "btrfs"
	case 0x2FC12FC1:
		return "zfs"
	case 0x794C7630:
		return "overlayfs"
	case 0x01021994:
		return "tmpfs"
	}
	return fmt.Sprintf("file system 0x%x", st.Type)
}
