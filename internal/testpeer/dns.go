// Package testpeer starts the real peers of internal/peer for tests: each
// listens on loopback and stops when the test ends. Import it only from
// _test.go files (.ci/check-imports enforces this).
package testpeer

import (
	"testing"

	"mta/internal/peer"
)

// DNS is an authoritative DNS server run for one test.
type DNS struct {
	*peer.DNS
}

// NewDNS serves zone (master-file text, origin ".") over UDP and TCP on
// 127.0.0.1 and a free port until the test ends. Point a resolver at
// d.Addr().
func NewDNS(t testing.TB, zone string) *DNS {
	t.Helper()
	return NewDNSAt(t, "127.0.0.1:0", zone)
}

// NewDNSAt is NewDNS on a given address ("127.0.0.2:0", "127.0.0.3:5353").
func NewDNSAt(t testing.TB, addr, zone string) *DNS {
	t.Helper()
	d, err := peer.NewDNS(peer.DNSOptions{Addr: addr, Zone: zone})
	if err != nil {
		t.Fatalf("testpeer.NewDNS: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("testpeer: close DNS %s: %v", d.Addr(), err)
		}
	})
	return &DNS{DNS: d}
}
