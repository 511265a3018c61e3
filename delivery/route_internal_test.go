package delivery

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestOrderAddrs(t *testing.T) {
	a4, b4 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	a6, b6 := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
	in := []netip.Addr{a6, b6, a4, b4}
	tests := []struct {
		name string
		fam  IPFamily
		want []netip.Addr
	}{
		{"any_alternates_from_the_first", FamilyAny, []netip.Addr{a6, a4, b6, b4}},
		{"ipv4_only", FamilyIPv4, []netip.Addr{a4, b4}},
		{"ipv6_only", FamilyIPv6, []netip.Addr{a6, b6}},
		{"prefer_ipv4", FamilyPreferIPv4, []netip.Addr{a4, b4, a6, b6}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := orderAddrs(in, tc.fam); !slices.Equal(got, tc.want) {
				t.Errorf("orderAddrs(%v) = %v, want %v", tc.fam, got, tc.want)
			}
		})
	}
}

func TestSpreadBest(t *testing.T) {
	names := func(hs []mxHost) []string {
		var out []string
		for _, h := range hs {
			out = append(out, h.name)
		}
		return out
	}
	for n, want := range [][]string{{"a", "b", "c", "z"}, {"b", "c", "a", "z"}, {"c", "a", "b", "z"}} {
		hs := []mxHost{{name: "a", pref: 10}, {name: "b", pref: 10}, {name: "c", pref: 10}, {name: "z", pref: 20}}
		spreadBest(hs, n)
		if got := names(hs); !slices.Equal(got, want) {
			t.Errorf("spreadBest(%d) = %v, want %v", n, got, want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	cfg := Config{Hostname: "localhost", IPFamily: "ipv5",
		TLSPolicies: map[string]TLSPolicy{"example.org": "sometimes"},
		Routes: map[string]NextHop{
			"example.net": {Hosts: []string{"relay.example.net:99999"}},
			"example.com": {Hosts: []string{"[192.0.2.1]:587"}, TLS: TLSNone, Auth: &Auth{Username: "u"}},
		}}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("Validate accepted a bad config")
	}
	for _, want := range []string{"spool", "resolver", "hostname", "ip_family", "tls_policies.example.org",
		"routes.example.net.hosts", "routes.example.com.auth"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestRoutesLookup(t *testing.T) {
	cfg := &Config{
		Routes:    map[string]NextHop{"Own.Example": {Hosts: []string{"[10.0.0.5]:25"}}},
		Relayhost: &Relayhost{NextHop: NextHop{Hosts: []string{"smtp.provider.example:587"}}, Domains: []string{"listed.example"}},
	}
	r := newRoutes(cfg.Routes, cfg.Relayhost)
	if sr := r.lookup("own.example"); sr == nil || sr.hops[0].addr.String() != "10.0.0.5" || sr.tls != TLSVerify {
		t.Errorf("own.example route %+v", sr)
	}
	if sr := r.lookup("listed.example"); sr == nil || sr.hops[0].name != "smtp.provider.example" || sr.hops[0].port != 587 {
		t.Errorf("listed.example route %+v", sr)
	}
	if sr := r.lookup("other.example"); sr != nil {
		t.Errorf("other.example goes to %+v, want MX delivery", sr)
	}
	cfg.Relayhost.Domains = nil
	if sr := newRoutes(cfg.Routes, cfg.Relayhost).lookup("other.example"); sr == nil {
		t.Errorf("a relayhost without domains should take every domain")
	}
}

// TestAttemptErrorText: the text of an attempt error names where it
// happened only when there is a host, with no stray space otherwise.
func TestAttemptErrorText(t *testing.T) {
	tests := []struct {
		name string
		e    AttemptError
		want string
	}{
		{"reply", AttemptError{Host: "mx.example.test", IP: "192.0.2.1", Phase: "rcpt", Code: 550, Enhanced: "5.1.1", Text: "no such user"},
			"mx.example.test[192.0.2.1] rcpt: 550 5.1.1 no such user"},
		{"local_with_host", AttemptError{Host: "mx.example.test", Phase: "dial", Enhanced: "4.4.1", Text: "connect: refused"},
			"mx.example.test dial: connect: refused (4.4.1)"},
		{"no_host", AttemptError{Phase: "dns", Enhanced: "4.4.3", Text: "SERVFAIL"}, "dns: SERVFAIL (4.4.3)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.e.Error(); got != tc.want {
				t.Errorf("Error() = %q, want %q", got, tc.want)
			}
		})
	}
}
