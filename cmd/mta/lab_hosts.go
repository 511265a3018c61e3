package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"

	"mta/internal/peer"
)

// maxPortTries bounds the search for a port free on every lab address
// when the config asks for any free port (0).
const maxPortTries = 20

// startHosts starts an SMTP host with its mailbox on every lab address, all
// on one port: port, or with 0 one free on every address. A refusing host
// listens nowhere. rdns names clients in the hosts' Received fields. It
// returns the port.
func (l *lab) startHosts(specs []labHostSpec, port int, rdns func(ip string) string) (int, error) {
	for try := 1; ; try++ {
		p, err := l.tryHosts(specs, port, rdns)
		if err == nil {
			slices.SortFunc(l.hosts, func(a, b *labHost) int { return a.Addr.Compare(b.Addr) })
			return p, nil
		}
		if port != 0 || try == maxPortTries || !errors.Is(err, syscall.EADDRINUSE) {
			return 0, err
		}
		l.closeHostsNow() // the port is taken on some address: another
		l.hosts = nil
	}
}

func (l *lab) tryHosts(specs []labHostSpec, port int, rdns func(ip string) string) (int, error) {
	// A refusing host cannot choose the port: start the listening ones first.
	for _, refusing := range []bool{false, true} {
		for _, s := range specs {
			b := s.behaviour()
			b.ReverseName = rdns
			if b.Refuse != refusing {
				continue
			}
			if port == 0 && refusing {
				p, err := freeTCPPort(s.Addr.String())
				if err != nil {
					return 0, err
				}
				port = p
			}
			h, err := peer.Listen(net.JoinHostPort(s.Addr.String(), strconv.Itoa(port)), b)
			if err != nil {
				return 0, fmt.Errorf("lab host %s: %w%s", s.Names[0], err, portHint(err, "ports.smtp"))
			}
			lh := &labHost{labHostSpec: s, smtp: h, box: peer.NewMailbox()}
			h.SetMailbox(lh.box)
			l.hosts = append(l.hosts, lh)
			if port == 0 {
				port, _ = strconv.Atoi(h.Port())
			}
		}
	}
	return port, nil
}

// startPOP3 serves each host's mailbox over POP3 on its own address, to
// its names as users, all on one port (chosen as startHosts does). It
// returns the port.
func (l *lab) startPOP3(port int, password string) (int, error) {
	if len(l.hosts) == 0 {
		return port, nil
	}
	var lns []net.Listener
	for try := 1; ; try++ {
		var err error
		lns, err = listenEach(l.hosts, port)
		if err == nil {
			break
		}
		if port != 0 || try == maxPortTries || !errors.Is(err, syscall.EADDRINUSE) {
			return 0, fmt.Errorf("pop3: %w%s", err, portHint(err, "ports.pop3"))
		}
	}
	port = lns[0].Addr().(*net.TCPAddr).Port
	for i, h := range l.hosts {
		accounts := map[string]peer.POP3Account{}
		for _, n := range h.Names {
			accounts[n] = peer.POP3Account{Password: password, Mailbox: h.box}
		}
		h.pop3 = peer.NewPOP3(peer.POP3Config{Hostname: h.Names[0], Accounts: accounts})
		h.done = make(chan struct{})
		go func(ln net.Listener) {
			defer close(h.done)
			_ = h.pop3.Serve(ln) // returns at Close
		}(lns[i])
	}
	return port, nil
}

// listenEach binds port (0: the first free one) on every host's address;
// on error none stays bound.
func listenEach(hosts []*labHost, port int) ([]net.Listener, error) {
	var lns []net.Listener
	for _, h := range hosts {
		ln, err := net.Listen("tcp", net.JoinHostPort(h.Addr.String(), strconv.Itoa(port)))
		if err != nil {
			for _, l := range lns {
				_ = l.Close() // never served
			}
			return nil, fmt.Errorf("%s: %w", h.Names[0], err)
		}
		lns = append(lns, ln)
		port = ln.Addr().(*net.TCPAddr).Port
	}
	return lns, nil
}

// closeHosts stops every host's SMTP and POP3 server, once.
func (l *lab) closeHosts() {
	l.hostsClosed.Do(l.closeHostsNow)
}

func (l *lab) closeHostsNow() {
	for _, h := range l.hosts {
		if h.pop3 != nil {
			_ = h.pop3.Close() // ends sessions without applying their deletions
			<-h.done
		}
		if h.smtp != nil {
			_ = h.smtp.Close() // ends hangs too
		}
	}
}

func portHint(err error, key string) string {
	if errors.Is(err, syscall.EADDRINUSE) && key == "dns" {
		return " (another lab running? set dns in the lab config)"
	}
	if errors.Is(err, syscall.EADDRINUSE) {
		return " (another server holds the port on every address? set " + key + " in the lab config)"
	}
	if errors.Is(err, syscall.EACCES) {
		return " (ports below 1024 need root; set " + key + " in the lab config)"
	}
	return ""
}

func freeTCPPort(ip string) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// labDirs are where the lab's MTA keeps its state and its sockets.
type labDirs struct {
	state, runtime string
	tmpState       bool // removed when the lab stops
}

// labRuntimeHint names the default runtime directory in help texts.
const labRuntimeHint = "$TMPDIR/mta-lab-$UID"

// newLabDirs uses dir for both, or a temporary state directory and the
// well-known runtime directory `mta lab status` looks in.
func newLabDirs(dir string) (labDirs, error) {
	if dir != "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return labDirs{}, err
		}
		return labDirs{state: abs, runtime: abs}, os.MkdirAll(abs, 0o700)
	}
	run, err := labRuntimeDir(true)
	if err != nil {
		return labDirs{}, err
	}
	state, err := os.MkdirTemp("", "mta-lab-state-")
	if err != nil {
		return labDirs{}, err
	}
	return labDirs{state: state, runtime: run, tmpState: true}, nil
}

// labRuntimeDir is $TMPDIR/mta-lab-<uid>, made when asked. It must be a
// directory of ours that nobody else may enter: the admin socket is there.
func labRuntimeDir(create bool) (string, error) {
	dir := filepath.Join(os.TempDir(), "mta-lab-"+strconv.Itoa(os.Getuid()))
	if create {
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return "", err
		}
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return "", err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !st.IsDir() || !ok || int(sys.Uid) != os.Getuid() || st.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s is not a private directory of this user: remove it, or use --dir", dir)
	}
	return dir, nil
}
