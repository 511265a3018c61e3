package testpeer

import (
	"errors"
	"net"
	"strconv"
	"syscall"
	"testing"
	"time"

	"mta/internal/peer"
)

// NewSMTP starts a scripted SMTP host on addr ("127.0.0.2:0" picks a
// port) and closes it when the test ends.
func NewSMTP(t testing.TB, addr string, script peer.Behaviour) *peer.Host {
	t.Helper()
	h, err := peer.Listen(addr, script)
	if err != nil {
		t.Fatalf("smtp peer: %v", err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// SMTPHosts starts one scripted host per loopback IP ("127.0.0.2",
// "127.0.0.3", …), all on one port, and returns the port and the hosts by
// IP. Point delivery's Port at the port. Hosts with Refuse do not listen,
// so their address refuses connections.
func SMTPHosts(t testing.TB, scripts map[string]peer.Behaviour) (int, map[string]*peer.Host) {
	t.Helper()
	var lastErr error
	for range 20 { // another test may hold the port on one of the IPs
		port, hosts, err := listenAll(scripts)
		if err == nil {
			t.Cleanup(func() {
				for _, h := range hosts {
					_ = h.Close()
				}
			})
			return port, hosts
		}
		lastErr = err
		if !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	t.Fatalf("smtp peers: %v", lastErr)
	return 0, nil
}

func listenAll(scripts map[string]peer.Behaviour) (int, map[string]*peer.Host, error) {
	hosts := make(map[string]*peer.Host, len(scripts))
	closeAll := func() {
		for _, h := range hosts {
			_ = h.Close()
		}
	}
	port := 0
	// A refusing host cannot choose the port: start the listening ones first.
	for _, refusing := range []bool{false, true} {
		for ip, b := range scripts {
			if b.Refuse != refusing {
				continue
			}
			if port == 0 && refusing {
				p, err := freePort(ip)
				if err != nil {
					return 0, nil, err
				}
				port = p
			}
			h, err := peer.Listen(net.JoinHostPort(ip, strconv.Itoa(port)), b)
			if err != nil {
				closeAll()
				return 0, nil, err
			}
			hosts[ip] = h
			if port == 0 {
				port, _ = strconv.Atoi(h.Port())
			}
		}
	}
	return port, hosts, nil
}

func freePort(ip string) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// WaitFor polls cond until it holds, failing the test after 20 seconds.
// Use it to wait for what a peer records, never to pace a test.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// WaitHost waits until cond holds for h, woken by h's changes.
func WaitHost(t testing.TB, h *peer.Host, what string, cond func(*peer.Host) bool) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		ch := h.Changed()
		if cond(h) {
			return
		}
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("%s: timed out waiting for %s", h.Addr(), what)
		}
	}
}
