// Package mailaddr parses and normalises the mailbox addresses of SMTP
// envelopes (RFC 5321 §4.1.2, with RFC 6531 UTF-8), for smtpd and delivery.
//
// Invariants: a parsed Address has a non-empty local part of at most 64
// octets, and a Domain that is either a normalised domain name (lowercase
// A-label, no trailing dot, at least two labels) or a canonical address
// literal ("[192.0.2.1]", "[IPv6:2001:db8::1]").
package mailaddr

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Errors a caller branches on.
var (
	ErrSyntax = errors.New("address syntax error")
	ErrDomain = errors.New("invalid domain")
)

// Limits of RFC 5321 §4.5.3.1.
const (
	MaxLocalOctets  = 64
	MaxDomainOctets = 255
	MaxPathOctets   = 256
)

// Address is a parsed mailbox.
type Address struct {
	// Local is the local part as written (quoted form kept verbatim);
	// case is preserved, since only the receiving host may fold it.
	Local string
	// Domain is the normalised domain or canonical address literal.
	Domain string
	// UTF8Domain is the domain as the user wrote it in U-label form (equal
	// to Domain for ASCII names and literals).
	UTF8Domain string
}

// String is the address as sent in MAIL/RCPT: local@domain with the
// domain in A-label form.
func (a Address) String() string { return a.Local + "@" + a.Domain }

// ASCII reports whether the address can be sent without SMTPUTF8: its
// local part is ASCII (the domain always goes out as an A-label).
func (a Address) ASCII() bool { return IsASCII(a.Local) }

var lookup = idna.New(idna.MapForLookup(), idna.BidiRule(), idna.Transitional(false))

// Parse parses "local@domain" (without angle brackets). It accepts a
// Dot-string or Quoted-string local part; UTF-8 in the local part is
// allowed (RFC 6531), the caller decides whether SMTPUTF8 was negotiated.
func Parse(s string) (Address, error) {
	if len(s) > MaxPathOctets {
		return Address{}, fmt.Errorf("%w: longer than %d octets", ErrSyntax, MaxPathOctets)
	}
	if !utf8.ValidString(s) {
		return Address{}, fmt.Errorf("%w: not valid UTF-8", ErrSyntax)
	}
	at := strings.LastIndexByte(s, '@')
	if at <= 0 || at == len(s)-1 {
		return Address{}, fmt.Errorf("%w: want local@domain", ErrSyntax)
	}
	local, domain := s[:at], s[at+1:]
	if err := checkLocal(local); err != nil {
		return Address{}, err
	}
	norm, err := NormalizeDomain(domain)
	if err != nil {
		return Address{}, err
	}
	u := norm
	// Only an xn-- label has another U-label form.
	if !strings.HasPrefix(norm, "[") && strings.Contains(norm, "xn--") {
		if d, err := idna.ToUnicode(norm); err == nil {
			u = d
		}
	}
	return Address{Local: local, Domain: norm, UTF8Domain: u}, nil
}

func checkLocal(local string) error {
	if len(local) > MaxLocalOctets {
		return fmt.Errorf("%w: local part longer than %d octets", ErrSyntax, MaxLocalOctets)
	}
	if strings.HasPrefix(local, `"`) {
		return checkQuoted(local)
	}
	for _, atom := range strings.Split(local, ".") {
		if atom == "" {
			return fmt.Errorf("%w: empty atom in local part", ErrSyntax)
		}
		for _, r := range atom {
			if !atext(r) {
				return fmt.Errorf("%w: %q not allowed in local part", ErrSyntax, r)
			}
		}
	}
	return nil
}

// checkQuoted accepts a Quoted-string (RFC 5321 §4.1.2): printable ASCII
// or UTF-8 except '"' and '\' unless escaped.
func checkQuoted(q string) error {
	if len(q) < 2 || !strings.HasSuffix(q, `"`) {
		return fmt.Errorf("%w: unterminated quoted local part", ErrSyntax)
	}
	body := q[1 : len(q)-1]
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch {
		case c == '\\':
			i++
			if i == len(body) || body[i] < 32 || body[i] > 126 {
				return fmt.Errorf("%w: bad escape in quoted local part", ErrSyntax)
			}
		case c == '"' || c < 32 || c == 127:
			return fmt.Errorf("%w: bad character in quoted local part", ErrSyntax)
		}
	}
	return nil
}

func atext(r rune) bool {
	switch {
	case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		return true
	case r >= 0x80:
		return true // RFC 6531 UTF8-non-ascii
	}
	return strings.ContainsRune("!#$%&'*+-/=?^_`{|}~", r)
}

// NormalizeDomain returns d lowercased, in A-label form, without a trailing
// dot; an address literal comes back in canonical form. A dotless name is
// refused: mail is never routed with resolv.conf search domains.
func NormalizeDomain(d string) (string, error) {
	if strings.HasPrefix(d, "[") {
		return normalizeLiteral(d)
	}
	d = strings.TrimSuffix(d, ".")
	if plainDomain(d) {
		return d, nil
	}
	return normalizeIDNA(d)
}

// plainDomain reports whether d is already in the form NormalizeDomain
// gives, which IDNA mapping leaves unchanged: at least two labels, each
// of 1 to 63 lowercase ASCII letters, digits and inner hyphens, none with
// "--" (so no A-label, no hyphen rule of RFC 5891 §4.2.3.1 to apply),
// 255 octets at most. Nearly every domain on the wire is such a name; it
// skips the IDNA tables, which cost more than the rest of a session's
// parsing.
func plainDomain(d string) bool {
	if len(d) > MaxDomainOctets {
		return false
	}
	labels, start := 0, 0
	for i := 0; i <= len(d); i++ {
		if i == len(d) || d[i] == '.' {
			if n := i - start; n == 0 || n > 63 || d[i-1] == '-' {
				return false
			}
			labels++
			start = i + 1
			continue
		}
		switch c := d[i]; {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > start && d[i-1] != '-':
		default:
			return false
		}
	}
	return labels >= 2
}

// normalizeIDNA is NormalizeDomain's path through IDNA mapping (RFC 5891
// lookup), for any name plainDomain does not take.
func normalizeIDNA(d string) (string, error) {
	if d == "" || len(d) > MaxDomainOctets || !utf8.ValidString(d) {
		return "", fmt.Errorf("%w: empty, too long or not UTF-8", ErrDomain)
	}
	a, err := lookup.ToASCII(d)
	if err != nil {
		return "", fmt.Errorf("%w: %q: %v", ErrDomain, d, err)
	}
	a = strings.ToLower(a)
	if len(a) > MaxDomainOctets {
		return "", fmt.Errorf("%w: %q is too long", ErrDomain, d)
	}
	// A name whose A-label does not map back to itself (possible with
	// malformed Punycode) would route differently on each pass: refuse it.
	if strings.Contains(a, "xn--") {
		if u, err := lookup.ToUnicode(a); err != nil {
			return "", fmt.Errorf("%w: %q: %v", ErrDomain, d, err)
		} else if back, err := lookup.ToASCII(u); err != nil || strings.ToLower(back) != a {
			return "", fmt.Errorf("%w: %q has no stable A-label form", ErrDomain, d)
		}
	}
	if !strings.Contains(a, ".") {
		return "", fmt.Errorf("%w: %q has no dot", ErrDomain, d)
	}
	for _, label := range strings.Split(a, ".") {
		if err := checkLabel(label); err != nil {
			return "", fmt.Errorf("%w: %q: %v", ErrDomain, d, err)
		}
	}
	return a, nil
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
		// "_" is outside RFC 5321 Let-dig but common in real names; accept it.
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("bad character %q", c)
		}
	}
	return nil
}

func normalizeLiteral(d string) (string, error) {
	if !strings.HasSuffix(d, "]") {
		return "", fmt.Errorf("%w: unterminated address literal", ErrDomain)
	}
	inner := d[1 : len(d)-1]
	v6 := false
	if len(inner) > 5 && strings.EqualFold(inner[:5], "IPv6:") {
		inner, v6 = inner[5:], true
	}
	ip, err := netip.ParseAddr(inner)
	if err != nil || ip.Zone() != "" || ip.Is4() == v6 || ip.Is4In6() {
		return "", fmt.Errorf("%w: bad address literal %q", ErrDomain, d)
	}
	if v6 {
		return "[IPv6:" + ip.String() + "]", nil
	}
	return "[" + ip.String() + "]", nil
}

// IsASCII reports whether s has only 7-bit octets.
func IsASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
