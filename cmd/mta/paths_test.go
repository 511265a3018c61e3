package main

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestResolveDirs: the daemon takes its directories from the config, then
// from systemd's $STATE_DIRECTORY / $RUNTIME_DIRECTORY, then ./mta-data;
// client commands never from the environment, which is their caller's.
func TestResolveDirs(t *testing.T) {
	env := map[string]string{"STATE_DIRECTORY": "/var/lib/mta:/var/lib/other", "RUNTIME_DIRECTORY": "/run/mta"}
	getenv := func(k string) string { return env[k] }
	cwd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		cfg   Config
		env   func(string) string
		state string
		run   string
	}{
		{"systemd", Config{}, getenv, "/var/lib/mta", "/run/mta"},
		{"config wins", Config{StateDir: "/srv/mta"}, getenv, "/srv/mta", "/run/mta"},
		{"zero-config", Config{}, func(string) string { return "" }, filepath.Join(cwd, "mta-data"), filepath.Join(cwd, "mta-data")},
		{"sockets in the state directory", Config{StateDir: "/srv/mta"}, func(string) string { return "" }, "/srv/mta", "/srv/mta"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := resolveDirs(&tc.cfg, tc.env)
			if d.State != tc.state || d.Runtime != tc.run {
				t.Errorf("dirs %+v, want state %s, runtime %s", d, tc.state, tc.run)
			}
		})
	}
	if d := clientDirs(&Config{}); d.State != filepath.Join(cwd, "mta-data") {
		t.Errorf("client dirs %+v", d)
	}
}

// TestListenFallback: the default listeners fall back from 25/587/465 to
// 2525/2587/2465 when the port cannot be bound, only without a config
// file; with one, the error stands.
func TestListenFallback(t *testing.T) {
	const ip = "127.0.0.77"
	if os.Getuid() == 0 {
		// root may bind 25: hold it, so the daemon cannot.
		held, err := net.Listen("tcp", ip+":25")
		if errors.Is(err, syscall.EADDRINUSE) {
			t.Skipf("%s:25 is in use", ip)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if ln, err := listenTCP(ip+":25", false, log); err == nil {
		ln.Close()
		t.Fatal("bound port 25 that the test holds (or, not root, may not bind)")
	}
	ln, err := listenTCP(ip+":25", true, log)
	if errors.Is(err, syscall.EADDRINUSE) {
		t.Skipf("%s:2525 is in use: %v", ip, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if got := ln.Addr().String(); got != ip+":2525" {
		t.Errorf("zero-config fallback listens on %s, want %s:2525", got, ip)
	}
}

// Accepted SMTP sockets have no TCP keepalive: the session deadlines end
// a vanished client's session.
func TestListenTCPNoKeepalive(t *testing.T) {
	ln, err := listenTCP("127.0.0.1:0", false, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rc, err := s.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var on int
	var serr error
	if err := rc.Control(func(fd uintptr) { on, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	if on != 0 {
		t.Errorf("SO_KEEPALIVE = %d on an accepted socket, want 0", on)
	}
}
