package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
)

// labInfo describes a running lab: where everything listens. The lab
// prints it at start and keeps it in lab.json beside its admin socket, for
// `mta lab status` and scripts.
type labInfo struct {
	PID         int           `json:"pid"`
	DNS         string        `json:"dns"`
	Relay       []string      `json:"relay"`
	Submission  []string      `json:"submission"`
	Submissions []string      `json:"submissions,omitempty"` // implicit TLS
	Submit      string        `json:"submit_socket"`
	Admin       string        `json:"admin_socket"`
	StateDir    string        `json:"state_dir"`
	Hostname    string        `json:"hostname"`
	User        string        `json:"submission_user"`
	Password    string        `json:"password"` // the lab's; a lab is no secret
	Hosts       []labHostInfo `json:"hosts"`
}

// labHostInfo is one lab host.
type labHostInfo struct {
	Names     []string `json:"names"`
	Addr      string   `json:"addr"`
	SMTP      string   `json:"smtp"`
	POP3      string   `json:"pop3"`
	Behaviour string   `json:"behaviour"`
}

func (l *lab) describe(lc *labConfig, smtpPort, pop3Port int) labInfo {
	d := l.daemon
	info := labInfo{
		PID: os.Getpid(), DNS: l.dns.Addr(),
		Relay: splitListenOn(d.listenOn, "relay"), Submission: splitListenOn(d.listenOn, "submission"),
		Submissions: splitListenOn(d.listenOn, "submissions"),
		Submit:      filepath.Join(l.dirs.runtime, submitSocket), Admin: filepath.Join(l.dirs.runtime, adminSocket),
		StateDir: l.dirs.state, Hostname: d.cfg.Hostname, User: labSubmitUser, Password: lc.POP3Password,
	}
	for _, h := range l.hosts {
		ip := h.Addr.String()
		info.Hosts = append(info.Hosts, labHostInfo{
			Names: h.Names, Addr: ip, Behaviour: h.Conf.describe(),
			SMTP: net.JoinHostPort(ip, strconv.Itoa(smtpPort)), POP3: net.JoinHostPort(ip, strconv.Itoa(pop3Port)),
		})
	}
	return info
}

// print is what a student needs to start: where to send, where to look.
func (i *labInfo) print(w io.Writer, notes []string) {
	dnsHost, dnsPort, _ := net.SplitHostPort(i.DNS)
	fmt.Fprintf(w, "mta lab is running; Ctrl-C stops it.\n\n")
	fmt.Fprintf(w, "DNS server    %s    dig @%s -p %s priority.test MX\n", i.DNS, dnsHost, dnsPort)
	fmt.Fprintf(w, "MTA           %s\n", i.Hostname)
	for _, a := range i.Relay {
		fmt.Fprintf(w, "  relay       %s    send here: no AUTH needed from loopback\n", a)
	}
	for _, a := range i.Submission {
		fmt.Fprintf(w, "  submission  %s    STARTTLS, then AUTH %s / %s (sender @lab.test)\n", a, i.User, i.Password)
	}
	for _, a := range i.Submissions {
		fmt.Fprintf(w, "  submissions %s    TLS from the start, then AUTH %s / %s\n", a, i.User, i.Password)
	}
	fmt.Fprintf(w, "  admin       %s\n", i.Admin)
	fmt.Fprintf(w, "  state       %s\n\n", i.StateDir)
	fmt.Fprintf(w, "Lab hosts (POP3: USER <host name>, PASS %s):\n", i.Password)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  HOST\tSMTP\tPOP3\tBEHAVIOUR\n")
	for _, h := range i.Hosts {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", strings.Join(h.Names, ", "), h.SMTP, h.POP3, h.Behaviour)
	}
	_ = tw.Flush()
	for _, n := range notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	relay := "127.0.0.1:2525"
	if len(i.Relay) > 0 {
		relay = i.Relay[0]
	}
	fmt.Fprintf(w, "\nTry:  swaks --server %s --from student@lab.test --to you@refused.test\n", relay)
	fmt.Fprintf(w, "Then: mta lab status%s\n", i.statusFlag())
}

// statusFlag is the --dir `mta lab status` needs to find this lab.
func (i *labInfo) statusFlag() string {
	def, err := labRuntimeDir(false)
	if err == nil && filepath.Join(def, adminSocket) == i.Admin {
		return ""
	}
	return " --dir " + filepath.Dir(i.Admin)
}

// writeLabInfo writes lab.json whole: a reader never sees half of it.
func writeLabInfo(path string, i *labInfo) error {
	data, err := json.MarshalIndent(i, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// readLabInfo reads the lab.json of a running lab.
func readLabInfo(path string) (*labInfo, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var i labInfo
	if err := json.Unmarshal(data, &i); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &i, nil
}
