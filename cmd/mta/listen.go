package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"strconv"
	"syscall"
	"time"
)

// fallbackPorts are used for the default listeners when zero-config runs
// without the right to bind the privileged ports.
var fallbackPorts = map[string]string{"25": "2525", "587": "2587", "465": "2465"}

// mailListen makes the SMTP listeners. Accepted sockets get no TCP
// keepalive (Go turns it on by default, four setsockopt calls for every
// connection): every read and write of a session has a deadline (smtpd's
// timeouts), and that deadline is what ends a session whose client has
// vanished.
var mailListen = net.ListenConfig{KeepAlive: -1}

// listenTCP binds addr; with fallback (zero-config only) a port from
// fallbackPorts is tried when the privileged one cannot be bound.
func listenTCP(addr string, fallback bool, log *slog.Logger) (net.Listener, error) {
	ln, err := mailListen.Listen(context.Background(), "tcp", addr)
	if err == nil || !fallback {
		return ln, err
	}
	host, port, _ := net.SplitHostPort(addr)
	alt, ok := fallbackPorts[port]
	if !ok {
		return nil, err
	}
	altAddr := net.JoinHostPort(host, alt)
	ln, err2 := mailListen.Listen(context.Background(), "tcp", altAddr)
	if err2 != nil {
		return nil, fmt.Errorf("%w; fallback %s: %v", err, altAddr, err2)
	}
	log.Warn("cannot bind the standard port; using the zero-config fallback", "addr", addr, "fallback", altAddr, "reason", err)
	return ln, nil
}

// listenUnix makes a unix socket at path with mode, owned by group when it
// is given and exists. A stale socket file left by a crash is replaced; a
// live one (another daemon) is an error.
func listenUnix(path string, mode os.FileMode, group string, log *slog.Logger) (net.Listener, error) {
	if _, err := os.Lstat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another daemon is listening there", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, err
	}
	if group != "" {
		var unknown user.UnknownGroupError
		if err := chgrp(path, group); errors.As(err, &unknown) {
			log.Info("socket keeps the daemon's group: the admin group does not exist", "path", path, "group", group)
		} else if err != nil {
			log.Warn("socket keeps the daemon's group", "path", path, "group", group, "reason", err)
		}
	}
	return ln, nil
}

func chgrp(path, group string) error {
	g, err := user.LookupGroup(group)
	if err != nil {
		return err
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return err
	}
	if err := os.Chown(path, -1, gid); err != nil && !errors.Is(err, syscall.EPERM) {
		return err
	} else if err != nil {
		return fmt.Errorf("not a member of %s: %w", group, err)
	}
	return nil
}
