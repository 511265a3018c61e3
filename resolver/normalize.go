package resolver

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// maxDomainOctets is the longest domain name in text form without the
// trailing dot (RFC 1035 §2.3.4: 255 octets on the wire).
const maxDomainOctets = 253

// newIDNA is the profile domains are looked up with: UTS #46 mapping for
// lookup (lowercase, width folding), STD3 rules, the Bidi rule and the DNS
// length limits. A Profile is immutable, so one per Resolver is shared.
func newIDNA() *idna.Profile {
	return idna.New(idna.MapForLookup(), idna.BidiRule(), idna.Transitional(false),
		idna.VerifyDNSLength(true))
}

// normalizeDomain returns the form of d that routing uses: a lowercase
// A-label name without the trailing dot, or, for an address literal, its
// canonical text and address. Errors wrap ErrInvalidDomain.
func normalizeDomain(p *idna.Profile, d string) (name string, lit netip.Addr, err error) {
	if strings.HasPrefix(d, "[") {
		return parseLiteral(d)
	}
	d = strings.TrimSuffix(d, ".")
	if d == "" || !utf8.ValidString(d) {
		return "", netip.Addr{}, fmt.Errorf("%w: empty or not UTF-8", ErrInvalidDomain)
	}
	a, err := p.ToASCII(d)
	if err == nil {
		// The A-label form must itself be valid: this refuses what the
		// mapping turned into something that does not round-trip.
		var again string
		again, err = p.ToASCII(a)
		if err == nil && again != a {
			err = errors.New("the A-label form does not round-trip")
		}
	}
	if err != nil {
		return "", netip.Addr{}, fmt.Errorf("%w: %q: %v", ErrInvalidDomain, d, err)
	}
	a = strings.ToLower(a)
	if err := checkHostName(a); err != nil {
		return "", netip.Addr{}, fmt.Errorf("%w: %q: %v", ErrInvalidDomain, d, err)
	}
	if !strings.Contains(a, ".") {
		return "", netip.Addr{}, fmt.Errorf("%w: %q has no dot (search domains are never applied)", ErrInvalidDomain, d)
	}
	return a, netip.Addr{}, nil
}

// parseLiteral parses "[192.0.2.1]" or "[IPv6:2001:db8::1]" (RFC 5321
// §4.1.3) into its canonical text and address.
func parseLiteral(d string) (string, netip.Addr, error) {
	bad := func() (string, netip.Addr, error) {
		return "", netip.Addr{}, fmt.Errorf("%w: bad address literal %q", ErrInvalidDomain, d)
	}
	if len(d) < 3 || !strings.HasSuffix(d, "]") {
		return bad()
	}
	inner := d[1 : len(d)-1]
	v6 := false
	if len(inner) > 5 && strings.EqualFold(inner[:5], "IPv6:") {
		inner, v6 = inner[5:], true
	}
	ip, err := netip.ParseAddr(inner)
	if err != nil || ip.Zone() != "" || ip.Is4() == v6 || ip.Is4In6() {
		return bad()
	}
	if v6 {
		return "[IPv6:" + ip.String() + "]", ip, nil
	}
	return "[" + ip.String() + "]", ip, nil
}

// checkHostName checks a lowercase name without trailing dot: labels of 1
// to 63 letters, digits, hyphens (not at either end) or underscores, at most
// 253 octets, and a last label that is not all digits (so that an IP
// address written without brackets is refused).
func checkHostName(s string) error {
	if s == "" || len(s) > maxDomainOctets {
		return errors.New("empty or longer than 253 octets")
	}
	labels := strings.Split(s, ".")
	for _, l := range labels {
		if err := checkLabel(l); err != nil {
			return err
		}
	}
	if allDigits(labels[len(labels)-1]) {
		return errors.New("numeric top-level label (an IP address needs brackets)")
	}
	return nil
}

func checkLabel(l string) error {
	if l == "" || len(l) > 63 {
		return errors.New("empty or over-long label")
	}
	if l[0] == '-' || l[len(l)-1] == '-' {
		return errors.New("label starts or ends with a hyphen")
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		// "_" is outside RFC 952 host names but seen in real MX targets.
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("bad character %q", c)
		}
	}
	return nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// mxTarget checks an MX target from DNS (already an A-label name) and
// returns its lowercase form without the trailing dot, or why it cannot be
// used as a host.
func mxTarget(t string) (string, string) {
	name := hostKey(t)
	if name == "" {
		return "", "null MX among real MX records, ignored"
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return name, "malformed: MX target is an IP address"
	}
	if strings.HasPrefix(name, "[") {
		return name, "malformed: MX target is an address literal"
	}
	if err := checkHostName(name); err != nil {
		return name, "malformed host name: " + err.Error()
	}
	return name, ""
}
