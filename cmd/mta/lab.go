package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"mta/internal/peer"
	"mta/smtpd"
)

const labSynopsis = `[--zone FILE] [--config FILE] [--dir DIR]
       mta lab status [--dir DIR] [--json] [--limit N]

  Runs the MX routing lab in this process until Ctrl-C: a DNS server for
  the zone, a lab host (SMTP and POP3, with the behaviour lab.yaml gives
  it) on every 127.0.0.x address the zone's MX records lead to, and the
  MTA itself, resolving through that DNS server. Without --zone and
  --config it runs the shipped configs/lab.zone and configs/lab.yaml.

  mta lab status shows how each message was routed: the hosts tried, in
  order, with their replies, the hosts skipped and why, and the host that
  took it.`

// labInfoFile, in the lab's runtime directory, describes the running lab
// for `mta lab status` and for scripts; it exists while the lab runs.
const labInfoFile = "lab.json"

func runLab(ctx context.Context, args []string, stdio Stdio) error {
	if len(args) > 0 && args[0] == "status" {
		return runLabStatus(ctx, args[1:], stdio)
	}
	fs := newFlagSet("lab", labSynopsis, stdio)
	zoneFile := fs.String("zone", "", "zone file in master-file format (default: the shipped lab.zone)")
	config := fs.String("config", "", "lab config (default: the shipped lab.yaml)")
	dir := fs.String("dir", "", "keep the MTA's state and sockets in this directory (default: state in a temporary directory, sockets in "+labRuntimeHint+")")
	if done, err := parseFlags(fs, args, stdio); done {
		return err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return errUsage
	}
	lc, err := loadLabConfig(*config)
	var ce *ConfigError
	if errors.As(err, &ce) {
		fmt.Fprintln(stdio.Err, ce.Error())
		return &exitError{code: exitConfig}
	}
	if err != nil {
		return exitf(exitConfig, "%v", err)
	}
	zone, zoneName := labZone, "lab.zone (built in)"
	if *zoneFile != "" {
		data, err := os.ReadFile(*zoneFile)
		if err != nil {
			return exitf(exitConfig, "%v", err)
		}
		zone, zoneName = string(data), *zoneFile
	}
	// The zone and the hosts lab.yaml names are the user's to fix: say so
	// before anything starts.
	z, err := newLabZoneView(zone)
	if err != nil {
		return exitf(exitConfig, "%s: %v", zoneName, err)
	}
	if _, _, err := labHosts(z, lc.Hosts, listenerAddrs(lc.Daemon)); err != nil {
		return exitf(exitConfig, "%v", err)
	}
	l, err := startLab(ctx, labOptions{Config: lc, Zone: zone, Dir: *dir, Log: stdio.Err})
	if err != nil {
		return exitf(exitSoftware, "lab: %v", err)
	}
	defer l.close()
	// Closing the hosts at once ends any session hanging on one, so the
	// MTA's drain does not wait for it.
	defer context.AfterFunc(ctx, l.closeHosts)()
	l.info.print(stdio.Out, l.notes)
	return l.daemon.loop(ctx)
}

// labOptions start a lab.
type labOptions struct {
	Config *labConfig
	Zone   string
	Dir    string    // state and sockets; "" for the defaults
	Log    io.Writer // the daemon's log
}

// lab is a running lab: DNS, lab hosts, the MTA.
type lab struct {
	info   labInfo
	notes  []string
	dns    *peer.DNS
	hosts  []*labHost
	daemon *daemonState
	dirs   labDirs

	hostsClosed sync.Once
	wroteInfo   bool // lab.json is ours to remove
}

// labHost is one running lab host.
type labHost struct {
	labHostSpec
	smtp *peer.Host
	box  *peer.Mailbox
	pop3 *peer.POP3Server
	done chan struct{} // closed when the POP3 server's Serve returns
}

// startLab starts everything; on error what was started is stopped.
func startLab(ctx context.Context, o labOptions) (*lab, error) {
	l := &lab{}
	ok := false
	defer func() {
		if !ok {
			if l.daemon != nil {
				l.daemon.stop()
			}
			l.close()
		}
	}()
	var err error
	if l.dirs, err = newLabDirs(o.Dir); err != nil {
		return nil, err
	}
	if err := noLabRunning(l.dirs.runtime); err != nil {
		return nil, err
	}
	z, err := newLabZoneView(o.Zone)
	if err != nil {
		return nil, err
	}
	specs, notes, err := labHosts(z, o.Config.Hosts, listenerAddrs(o.Config.Daemon))
	if err != nil {
		return nil, err
	}
	l.notes = notes
	if l.dns, err = peer.NewDNS(peer.DNSOptions{Addr: o.Config.DNS, Zone: o.Zone}); err != nil {
		return nil, fmt.Errorf("dns: %w%s", err, portHint(err, "dns"))
	}
	smtpPort, err := l.startHosts(specs, o.Config.smtpPort(), z.reverseName)
	if err != nil {
		return nil, err
	}
	if smtpPort == 0 { // no hosts: nothing for the MTA to reach
		smtpPort = labSMTPPort
	}
	pop3Port, err := l.startPOP3(o.Config.pop3Port(), o.Config.POP3Password)
	if err != nil {
		return nil, err
	}
	if err := l.startDaemon(ctx, o, smtpPort); err != nil {
		return nil, err
	}
	l.info = l.describe(o.Config, smtpPort, pop3Port)
	l.wroteInfo = true // even half written, it is ours
	if err := writeLabInfo(filepath.Join(l.dirs.runtime, labInfoFile), &l.info); err != nil {
		return nil, err
	}
	ok = true
	return l, nil
}

// startDaemon runs the MTA on the lab's DNS server and hosts: the same
// daemon `mta serve` runs, with the settings a lab needs forced.
func (l *lab) startDaemon(ctx context.Context, o labOptions, smtpPort int) error {
	cfg := *o.Config.Daemon
	cfg.DNS.Servers = []string{l.dns.Addr()}
	cfg.Delivery.AllowPrivateMX = true
	cfg.Delivery.Port = smtpPort
	cfg.StateDir, cfg.RuntimeDir = l.dirs.state, l.dirs.runtime
	if cfg.UsersFile == "" {
		path, err := writeLabUsers(l.dirs.state, o.Config.POP3Password)
		if err != nil {
			return fmt.Errorf("users file: %w", err)
		}
		cfg.UsersFile = path
	}
	log, err := newLogger(cfg.Log, o.Log)
	if err != nil {
		return err
	}
	t := time.Duration(o.Config.SessionTimeout)
	d := &daemonState{cfg: &cfg, configLabel: "(lab)", log: log,
		timeouts: everyPhase(t)}
	if err := d.start(ctx); err != nil {
		d.stop()
		return fmt.Errorf("mta: %w", err)
	}
	l.daemon = d
	return nil
}

// close stops the hosts, POP3 and DNS, and removes the temporary state.
// The daemon has stopped already (its loop stops it).
func (l *lab) close() {
	l.closeHosts()
	if l.dns != nil {
		_ = l.dns.Close()
	}
	if l.wroteInfo {
		_ = os.Remove(filepath.Join(l.dirs.runtime, labInfoFile)) // may be half written: gone either way
	}
	if l.dirs.tmpState {
		_ = os.RemoveAll(l.dirs.state) // a temporary directory: nothing to keep
	}
}

// noLabRunning fails when the lab.json in dir belongs to a lab whose
// admin socket answers: two labs cannot share a runtime directory, and
// the second must not take the first's lab.json away. A lab.json nobody
// answers for was left by a lab that was killed; it is replaced.
func noLabRunning(dir string) error {
	info, err := readLabInfo(filepath.Join(dir, labInfoFile))
	if err != nil {
		return nil // none, or unreadable: this lab writes its own
	}
	c, err := net.DialTimeout("unix", info.Admin, time.Second)
	if err != nil {
		return nil
	}
	_ = c.Close() // only asked whether it answers
	return fmt.Errorf("a lab is already running in %s (pid %d, DNS %s): stop it first, or start this one with its own --dir and ports", dir, info.PID, info.DNS)
}

// listenerAddrs are the IP addresses the MTA listens on.
func listenerAddrs(c *Config) []netip.Addr {
	var out []netip.Addr
	for _, a := range slices.Concat(c.Listeners.Relay, c.Listeners.Submission, c.Listeners.Submissions) {
		if host, _, err := net.SplitHostPort(a); err == nil {
			if ip, err := netip.ParseAddr(host); err == nil {
				out = append(out, ip)
			}
		}
	}
	return out
}

// writeLabUsers makes the users file with the submission user "student",
// who may send as anyone@lab.test.
func writeLabUsers(dir, password string) (string, error) {
	hash, err := smtpd.HashPassword([]byte(password), 4) // bcrypt's minimum: a lab password
	if err != nil {
		return "", err
	}
	u, err := smtpd.NewUser(labSubmitUser, hash, []string{"@" + labOrigin})
	if err != nil {
		return "", err
	}
	users := &smtpd.Users{}
	users.Put(u)
	path := filepath.Join(dir, "lab-users")
	return path, writeUsersFile(path, users)
}

// splitListenOn splits the daemon's "kind=addr" listener notes.
func splitListenOn(notes []string, kind string) []string {
	var out []string
	for _, n := range notes {
		if k, addr, ok := strings.Cut(n, "="); ok && k == kind {
			out = append(out, addr)
		}
	}
	return out
}
