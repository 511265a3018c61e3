package resolver

import "net/netip"

// prohibited says why an MX address must not be dialled unless private
// routes are allowed, or "" for a global unicast address. IPv4-mapped IPv6
// addresses are judged as the IPv4 address they carry.
func prohibited(a netip.Addr) string {
	a = a.Unmap()
	var b [4]byte
	if a.Is4() {
		b = a.As4()
	}
	switch {
	case !a.IsValid():
		return "prohibited: invalid"
	case a.IsUnspecified():
		return "prohibited: unspecified"
	case a.IsLoopback():
		return "prohibited: loopback"
	case a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast():
		return "prohibited: link-local"
	case a.IsMulticast():
		return "prohibited: multicast"
	case a.IsPrivate():
		return "prohibited: private"
	case a.Is4() && b[0] == 0: // 0.0.0.0/8, RFC 1122 §3.2.1.3
		return "prohibited: this network"
	case a.Is4() && b[0] == 100 && b[1]&0xc0 == 64: // 100.64.0.0/10, RFC 6598
		return "prohibited: shared address space"
	case a.Is4() && b[0] >= 240: // 240.0.0.0/4 and broadcast, RFC 1112 §4
		return "prohibited: reserved"
	case !a.IsGlobalUnicast():
		return "prohibited: not global unicast"
	}
	return ""
}
