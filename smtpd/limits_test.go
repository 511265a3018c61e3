package smtpd

import (
	"net/netip"
	"testing"
)

// The per-address limits count an IPv6 client by its /64, an IPv4 one
// (mapped or not) by its address.
func TestClientBlock(t *testing.T) {
	for _, tc := range []struct{ ip, want string }{
		{"192.0.2.7", "192.0.2.7"},
		{"::ffff:192.0.2.7", "192.0.2.7"},
		{"2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::"},
		{"2001:db8:1:2::1", "2001:db8:1:2::"},
		{"fe80::1%eth0", "fe80::"},
		{"::1", "::"},
	} {
		if got := clientBlock(netip.MustParseAddr(tc.ip)); got.String() != tc.want {
			t.Errorf("clientBlock(%s) = %s, want %s", tc.ip, got, tc.want)
		}
	}
}
