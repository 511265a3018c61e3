package main

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"mta/internal/peer"
)

// labConfig is the lab's config file (configs/lab.yaml): its DNS address,
// the lab hosts' ports and behaviours, the POP3 password, and the MTA's
// own config.
type labConfig struct {
	DNS            string                   `yaml:"dns"`
	Ports          labPorts                 `yaml:"ports"`
	POP3Password   string                   `yaml:"pop3_password"`
	SessionTimeout Duration                 `yaml:"session_timeout"`
	Hosts          map[string]labHostConfig `yaml:"hosts"`
	// Daemon is the MTA's config (mta.yaml's keys) over labDaemonDefaults;
	// DaemonConfig names a file holding it instead.
	Daemon       *Config `yaml:"daemon"`
	DaemonConfig string  `yaml:"daemon_config"`
}

// labPorts are the ports of every lab host; nil takes the default (the
// standard port as root, else a high one), 0 any free port.
type labPorts struct {
	SMTP *int `yaml:"smtp"`
	POP3 *int `yaml:"pop3"`
}

// labHostConfig is how one lab host answers.
type labHostConfig struct {
	Behaviour string         `yaml:"behaviour"` // accept, refuse, greet421, reject, slow, hang
	Reject    map[string]int `yaml:"reject"`    // reject: recipient (or "*") → 4xx/5xx code
	Delay     Duration       `yaml:"delay"`     // slow: before every reply
	Hang      string         `yaml:"hang"`      // hang: greeting, ehlo, mail, rcpt, dot
}

var labBehaviours = []string{"accept", "refuse", "greet421", "reject", "slow", "hang"}

// The ports lab hosts use when the config leaves them out.
const (
	labSMTPPort       = 2500
	labPOP3Port       = 1100
	labDefaultDNS     = "127.0.0.1:5300"
	labDefaultPass    = "lab"
	labSubmitUser     = "student"
	labHostname       = "mta.lab.test"
	labOrigin         = "lab.test"
	labSessionTimeout = 10 * time.Second
)

// labDaemonDefaults is the MTA's config in the lab before the lab file's
// daemon section: loopback listeners on high ports, quick retries, no
// metrics, no admin group (the lab's own user and root may ask).
func labDaemonDefaults() *Config {
	c := Default()
	c.Hostname, c.MyOrigin = labHostname, labOrigin
	c.Listeners = Listeners{Relay: []string{"127.0.0.1:2525"}, Submission: []string{"127.0.0.1:2587"}}
	c.Delivery.RetryMin = Duration(10 * time.Second)
	c.Delivery.RetryMax = Duration(time.Minute)
	c.Delivery.Lifetime = Duration(30 * time.Minute)
	c.Delivery.DelayWarning = 0
	c.Spool.RetiredMaxCount = 10000
	c.Metrics.Address = ""
	c.Admin.Group = ""
	return c
}

// loadLabConfig reads the lab config at path, or the shipped one when
// path is "".
func loadLabConfig(path string) (*labConfig, error) {
	if path == "" {
		return parseLabConfig(labYAML, "lab.yaml (built in)", "")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseLabConfig(data, path, filepath.Dir(path))
}

// parseLabConfig decodes data strictly (unknown keys are errors, also in
// the daemon section) and reports every problem at once with its line.
// dir resolves a relative daemon_config.
func parseLabConfig(data []byte, name, dir string) (*labConfig, error) {
	lc := &labConfig{DNS: labDefaultDNS, POP3Password: labDefaultPass,
		SessionTimeout: Duration(labSessionTimeout), Daemon: labDaemonDefaults()}
	problems, err := decodeStrict(data, name, lc)
	if err != nil {
		return nil, err
	}
	if lc.Daemon == nil { // "daemon:" with nothing under it
		lc.Daemon = labDaemonDefaults()
	}
	hosts := make(map[string]labHostConfig, len(lc.Hosts))
	for name, h := range lc.Hosts {
		hosts[labName(name)] = h // as the zone's names are compared
	}
	lc.Hosts = hosts
	lines := keyLines(data)
	_, hasDaemon := lines["daemon"]
	for _, p := range lc.validate(hasDaemon) {
		problems = append(problems, withLine(p, lines))
	}
	if lc.DaemonConfig != "" && len(problems) == 0 {
		if err := lc.loadDaemonConfig(dir); err != nil {
			return nil, err
		}
	}
	if len(problems) > 0 {
		return nil, &ConfigError{File: name, Problems: problems}
	}
	return lc, nil
}

// loadDaemonConfig reads daemon_config over the lab's defaults.
func (lc *labConfig) loadDaemonConfig(dir string) error {
	path := lc.DaemonConfig
	if !filepath.IsAbs(path) && dir != "" {
		path = filepath.Join(dir, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("daemon_config: %w", err)
	}
	c, err := parseConfigOnto(labDaemonDefaults(), data, path)
	if err != nil {
		return err
	}
	if p := labListenerProblems(c); len(p) > 0 {
		return &ConfigError{File: path, Problems: p}
	}
	lc.Daemon = c
	return nil
}

// validate returns every problem of the lab's own keys and of the daemon
// section, each with its key path.
func (lc *labConfig) validate(hasDaemon bool) []string {
	v := &validator{}
	if ap, err := netip.ParseAddrPort(lc.DNS); err != nil || !ap.Addr().IsLoopback() {
		v.add("dns", "%q is not a loopback address with a port, like 127.0.0.1:5300", lc.DNS)
	}
	for _, p := range []struct {
		key  string
		port *int
	}{{"ports.smtp", lc.Ports.SMTP}, {"ports.pop3", lc.Ports.POP3}} {
		if p.port != nil && (*p.port < 0 || *p.port > 65535) {
			v.add(p.key, "%d is not a TCP port", *p.port)
		}
	}
	if lc.POP3Password == "" {
		v.add("pop3_password", "must not be empty")
	}
	if lc.SessionTimeout <= 0 {
		v.add("session_timeout", "must be positive")
	}
	for _, name := range sortedKeys(lc.Hosts) {
		lc.Hosts[name].validate(v, "hosts."+name)
	}
	if lc.DaemonConfig != "" && hasDaemon {
		v.add("daemon_config", "give the daemon's config either here or under daemon:, not both")
	}
	for _, p := range lc.Daemon.Validate() {
		v.problems = append(v.problems, "daemon."+p)
	}
	for _, p := range labListenerProblems(lc.Daemon) {
		v.problems = append(v.problems, "daemon."+p)
	}
	return v.problems
}

func (h labHostConfig) validate(v *validator, path string) {
	b := h.Behaviour
	if b == "" {
		b = "accept"
	}
	v.oneOf(path+".behaviour", b, labBehaviours)
	if len(h.Reject) > 0 && b != "reject" {
		v.add(path+".reject", "goes with behaviour: reject")
	}
	if b == "reject" && len(h.Reject) == 0 {
		v.add(path+".reject", "needs at least one recipient (or \"*\") and its code")
	}
	for _, rcpt := range sortedKeys(h.Reject) {
		if c := h.Reject[rcpt]; c < 400 || c > 599 {
			v.add(path+".reject."+rcpt, "%d is not a 4xx or 5xx reply code", c)
		}
	}
	if (h.Delay != 0) != (b == "slow") || h.Delay < 0 {
		v.add(path+".delay", "a positive delay goes with behaviour: slow, and only with it")
	}
	switch {
	case b == "hang":
		v.oneOf(path+".hang", h.Hang, []string{peer.HangGreeting, peer.HangEHLO, peer.HangMail, peer.HangRcpt, peer.HangDot})
	case h.Hang != "":
		v.add(path+".hang", "goes with behaviour: hang")
	}
}

// labListenerProblems refuses MTA listeners off loopback: the lab's MTA
// relays for anyone local and delivers to private addresses.
func labListenerProblems(c *Config) []string {
	v := &validator{}
	for _, l := range []struct {
		kind  string
		addrs []string
	}{{"relay", c.Listeners.Relay}, {"submission", c.Listeners.Submission}, {"submissions", c.Listeners.Submissions}} {
		for i, a := range l.addrs {
			if ap, err := netip.ParseAddrPort(a); err == nil && !ap.Addr().IsLoopback() {
				v.add(fmt.Sprintf("listeners.%s[%d]", l.kind, i), "%q: the lab listens on loopback only", a)
			}
		}
	}
	if len(c.Listeners.Relay)+len(c.Listeners.Submission)+len(c.Listeners.Submissions) == 0 {
		v.add("listeners", "the lab's MTA needs a listener to take mail")
	}
	return v.problems
}

// smtpPort and pop3Port are the lab hosts' ports.
func (lc *labConfig) smtpPort() int { return portOr(lc.Ports.SMTP, 25, labSMTPPort) }
func (lc *labConfig) pop3Port() int { return portOr(lc.Ports.POP3, 110, labPOP3Port) }

func portOr(p *int, root, user int) int {
	switch {
	case p != nil:
		return *p
	case os.Geteuid() == 0:
		return root
	}
	return user
}
