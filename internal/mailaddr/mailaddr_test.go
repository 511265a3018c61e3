package mailaddr

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/net/idna"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name, in          string
		local, domain, u8 string
		err               error
	}{
		{"plain", "user@example.org", "user", "example.org", "example.org", nil},
		{"domain is lowercased, local kept", "John.Doe@Example.ORG", "John.Doe", "example.org", "example.org", nil},
		{"trailing dot dropped", "a@example.org.", "a", "example.org", "example.org", nil},
		{"IDN domain to A-label", "info@bücher.example", "info", "xn--bcher-kva.example", "bücher.example", nil},
		{"UTF-8 local part", "δοκιμή@example.org", "δοκιμή", "example.org", "example.org", nil},
		{"quoted local part", `"john doe"@example.org`, `"john doe"`, "example.org", "example.org", nil},
		{"quoted with escape", `"a\"b"@example.org`, `"a\"b"`, "example.org", "example.org", nil},
		{"IPv4 literal", "a@[192.0.2.1]", "a", "[192.0.2.1]", "[192.0.2.1]", nil},
		{"IPv6 literal canonical", "a@[ipv6:2001:DB8:0::1]", "a", "[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]", nil},
		{"plus and symbols", "a+tag!x@example.org", "a+tag!x", "example.org", "example.org", nil},
		{"no at", "user", "", "", "", ErrSyntax},
		{"empty local", "@example.org", "", "", "", ErrSyntax},
		{"empty domain", "user@", "", "", "", ErrSyntax},
		{"double dot", "a..b@example.org", "", "", "", ErrSyntax},
		{"leading dot", ".a@example.org", "", "", "", ErrSyntax},
		{"space in local", "a b@example.org", "", "", "", ErrSyntax},
		{"local too long", strings.Repeat("a", 65) + "@example.org", "", "", "", ErrSyntax},
		{"dotless domain", "root@localhost", "", "", "", ErrDomain},
		{"hyphen label", "a@-x.example", "", "", "", ErrDomain},
		{"bad literal", "a@[300.1.1.1]", "", "", "", ErrDomain},
		{"v4 in IPv6 tag", "a@[IPv6:192.0.2.1]", "", "", "", ErrDomain},
		{"v6 without tag", "a@[2001:db8::1]", "", "", "", ErrDomain},
		{"invalid utf-8", "a\xff@example.org", "", "", "", ErrSyntax},
		{"unterminated quote", `"abc@example.org`, "", "", "", ErrSyntax},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := Parse(tt.in)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("Parse(%q) error = %v, want %v", tt.in, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if a.Local != tt.local || a.Domain != tt.domain || a.UTF8Domain != tt.u8 {
				t.Errorf("Parse(%q) = %+v, want local %q domain %q utf8 %q", tt.in, a, tt.local, tt.domain, tt.u8)
			}
		})
	}
}

func TestASCII(t *testing.T) {
	for in, want := range map[string]bool{
		"user@bücher.example": true, // the domain goes out as an A-label
		"δοκιμή@example.org":  false,
	} {
		a, err := Parse(in)
		if err != nil {
			t.Fatal(err)
		}
		if a.ASCII() != want {
			t.Errorf("%q ASCII() = %v, want %v", in, a.ASCII(), want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"user@example.org", `"q\"x"@[IPv6:::1]`, "a@bücher.example", "@", "a@[1.2.3.4]", "x@xn--bcher-kva.example."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := Parse(s)
		if err != nil {
			return
		}
		if a.Local == "" || a.Domain == "" || len(a.Local) > MaxLocalOctets {
			t.Fatalf("Parse(%q) = %+v: invariant broken", s, a)
		}
		if u, err := idna.ToUnicode(a.Domain); !strings.HasPrefix(a.Domain, "[") && err == nil && u != a.UTF8Domain {
			t.Fatalf("Parse(%q).UTF8Domain = %q, want %q", s, a.UTF8Domain, u)
		}
		// A normalised address parses to itself.
		b, err := Parse(a.String())
		if err != nil || b.Domain != a.Domain || b.Local != a.Local {
			t.Fatalf("re-parse of %q (from %q) = %+v, %v", a.String(), s, b, err)
		}
	})
}

// TestPlainDomain checks the fast path against the IDNA path it skips:
// every name plainDomain takes must come out of IDNA mapping unchanged.
func TestPlainDomain(t *testing.T) {
	long63 := strings.Repeat("a", 63)
	tests := []struct {
		in    string
		plain bool
	}{
		{"example.org", true},
		{"mx1.d-1.example", true},
		{"1.2.3.4", true},
		{long63 + ".example", true},
		{strings.Repeat(long63+".", 3) + strings.Repeat("b", 63), true}, // 255 octets
		{strings.Repeat(long63+".", 3) + strings.Repeat("b", 64), false},
		{long63 + "a.example", false},
		{"example", false},
		{"", false},
		{".example.org", false},
		{"example.org.", false}, // NormalizeDomain drops the dot first
		{"a..example", false},
		{"-a.example", false},
		{"a-.example", false},
		{"ab--c.example", false},
		{"xn--bcher-kva.example", false},
		{"Example.org", false},
		{"a_b.example", false},
		{"bücher.example", false},
		{"a b.example", false},
	}
	for _, tt := range tests {
		if got := plainDomain(tt.in); got != tt.plain {
			t.Errorf("plainDomain(%q) = %v, want %v", tt.in, got, tt.plain)
		}
		if tt.plain {
			if d, err := normalizeIDNA(tt.in); err != nil || d != tt.in {
				t.Errorf("normalizeIDNA(%q) = %q, %v; the fast path gives it unchanged", tt.in, d, err)
			}
		}
	}
}

func FuzzNormalizeDomain(f *testing.F) {
	for _, s := range []string{"Example.ORG.", "bücher.example", "0.\xc00", "[IPv6:::1]", "xn--bcher-kva.example", "a..b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if plainDomain(s) {
			if d, err := normalizeIDNA(s); err != nil || d != s {
				t.Fatalf("plainDomain(%q), but IDNA mapping gives %q, %v", s, d, err)
			}
		}
		d, err := NormalizeDomain(s)
		if err != nil {
			return
		}
		again, err := NormalizeDomain(d)
		if err != nil || again != d {
			t.Fatalf("NormalizeDomain(%q) = %q, which normalises to %q, %v", s, d, again, err)
		}
	})
}
