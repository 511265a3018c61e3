package resolver_test

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"mta/internal/peer"
	"mta/internal/testpeer"
	"mta/resolver"
)

// routeZone serves every case of TestRoute. Addresses in 192.0.2.0/24 and
// 2001:db8::/32 count as public; 127/8 and 10/8 are prohibited.
const routeZone = `$ORIGIN test.
$TTL 300
@                  IN SOA ns.test. hostmaster.test. 1 3600 600 86400 60

plain              IN MX 10 mx1.plain
plain              IN MX 20 mx2.plain
mx1.plain          IN A 192.0.2.1
mx2.plain          IN A 192.0.2.2
mx2.plain          IN AAAA 2001:db8::2

implicit           IN A 192.0.2.10
implicit           IN AAAA 2001:db8::10
exists-no-address  IN TXT "no mail here"

nofallback         IN MX 10 gone.nofallback
nofallback         IN A 192.0.2.11

nullmx             IN MX 0 .
mixednull          IN MX 0 .
mixednull          IN MX 10 mx1.plain

alias              IN CNAME plain
alias-authonly     IN CNAME plain
alias-implicit     IN CNAME implicit
alias-nx           IN CNAME nowhere
loop1              IN CNAME loop2
loop2              IN CNAME loop1
ping               IN CNAME pong
pong               IN CNAME ping
long0              IN CNAME long1
long1              IN CNAME long2
long2              IN CNAME long3
long3              IN CNAME long4
long4              IN CNAME long5
long5              IN CNAME long6
long6              IN CNAME long7
long7              IN CNAME long8
long8              IN CNAME long9
long9              IN CNAME plain
short0             IN CNAME short1
short1             IN CNAME plain

mxcname            IN MX 10 host.mxcname
host.mxcname       IN CNAME mx1.plain

mxip               IN MX 10 192.0.2.50.
mxip               IN MX 20 mx1.plain
mxip-only          IN MX 10 192.0.2.50.

dup                IN MX 30 mx1.plain
dup                IN MX 10 mx1.plain

partial            IN MX 10 broken.partial
partial            IN MX 20 mx1.plain
allnx              IN MX 10 nx1.allnx
allnx              IN MX 20 nx2.allnx
allfail            IN MX 10 sf.allfail
allfail            IN MX 20 nx.allfail
nodata-hosts       IN MX 10 txt.nodata-hosts
txt.nodata-hosts   IN TXT "host without addresses"

private            IN MX 10 lo.private
private            IN MX 20 ten.private
lo.private         IN A 127.0.0.1
ten.private        IN A 10.0.0.1
ten.private        IN AAAA fd00::1
attack             IN MX 10 localhost.
localhost          IN A 127.0.0.1
mixedaddr          IN MX 10 both.mixedaddr
both.mixedaddr     IN A 10.1.1.1
both.mixedaddr     IN A 192.0.2.30
both.mixedaddr     IN AAAA ::ffff:127.0.0.1

self               IN MX 10 me.self
self               IN MX 20 other.self
me.self            IN A 192.0.2.99
other.self         IN A 192.0.2.98
selfbetter         IN MX 5 better.selfbetter
selfbetter         IN MX 10 me.self
selfbetter         IN MX 20 other.self
better.selfbetter  IN A 192.0.2.97
selfaddr           IN MX 5 better.selfbetter
selfaddr           IN MX 10 a.selfaddr
selfaddr           IN MX 10 b.selfaddr
selfaddr           IN MX 20 c.selfaddr
a.selfaddr         IN A 192.0.2.77
b.selfaddr         IN A 192.0.2.78
c.selfaddr         IN A 192.0.2.79
selfimplicit       IN A 192.0.2.77

servfail           IN MX 10 mx1.plain
timeout            IN MX 10 mx1.plain
xn--bcher-kva      IN MX 10 mx1.plain
`

// routeCase is one case of TestRoute. want and dropped are host lines as
// hostLines formats them.
type routeCase struct {
	domain   string
	cfg      func(*resolver.Config)
	want     []string
	implicit bool
	dropped  []string
	err      error    // sentinel; nil for a route
	code     string   // enhanced code of the error
	trace    []string // when set, the exact "TYPE name" list of the trace
}

func TestRoute(t *testing.T) {
	d := testpeer.NewDNS(t, routeZone)
	d.Set("alias-authonly.test", peer.ModeCNAMEOnly)
	d.Set("ping.test", peer.ModeCNAMEOnly)
	d.Set("pong.test", peer.ModeCNAMEOnly)
	d.Set("broken.partial.test", peer.ModeServfail)
	d.Set("sf.allfail.test", peer.ModeServfail)
	d.Set("servfail.test", peer.ModeServfail)
	d.Set("timeout.test", peer.ModeSilent)
	self := func(c *resolver.Config) { c.Hostname = "ME.self.test." }
	selfAddr := func(c *resolver.Config) { c.SelfAddrs = []netip.Addr{netip.MustParseAddr("192.0.2.77")} }
	allowPrivate := func(c *resolver.Config) { c.AllowPrivate = true }
	mx1 := "mx1.plain.test 10 [192.0.2.1]"
	plain := []string{mx1, "mx2.plain.test 20 [192.0.2.2 2001:db8::2]"}

	cases := map[string]routeCase{
		"MX_by_preference": {domain: "plain.test", want: plain},
		"case_and_trailing_dot_normalised": {domain: "PLAIN.Test.", want: plain,
			trace: []string{"MX plain.test.", "A mx1.plain.test.", "AAAA mx1.plain.test.", "A mx2.plain.test.", "AAAA mx2.plain.test."}},
		"IDNA_domain_looked_up_as_A-label": {domain: "BÜCHER.test", want: []string{mx1},
			trace: []string{"MX xn--bcher-kva.test.", "A mx1.plain.test.", "AAAA mx1.plain.test."}},
		"implicit_MX_on_NODATA": {domain: "implicit.test", implicit: true, want: []string{"implicit.test 0 [192.0.2.10 2001:db8::10]"},
			trace: []string{"MX implicit.test.", "A implicit.test.", "AAAA implicit.test."}},
		"NXDOMAIN_is_permanent": {domain: "nonexistent.test", err: resolver.ErrNXDomain, code: "5.1.2"},
		"no_A_fallback_when_MX_exist": {domain: "nofallback.test", err: resolver.ErrNoHost, code: "5.4.4",
			dropped: []string{"gone.nofallback.test 10: host does not exist (NXDOMAIN)"},
			trace:   []string{"MX nofallback.test.", "A gone.nofallback.test."}},
		"implicit_MX_without_address":        {domain: "exists-no-address.test", implicit: true, err: resolver.ErrNoHost, code: "5.4.4", dropped: []string{"exists-no-address.test 0: no A or AAAA records"}},
		"null_MX_is_permanent":               {domain: "nullmx.test", err: resolver.ErrNullMX, code: "5.1.10"},
		"null_MX_mixed_with_real_MX_ignored": {domain: "mixednull.test", want: []string{mx1}, dropped: []string{". 0: null MX among real MX records, ignored"}},
		"CNAME_chain_in_answer_followed": {domain: "alias.test", want: plain,
			trace: []string{"MX alias.test.", "A mx1.plain.test.", "AAAA mx1.plain.test.", "A mx2.plain.test.", "AAAA mx2.plain.test."}},
		"CNAME_only_answer_requeried": {domain: "alias-authonly.test", want: plain,
			trace: []string{"MX alias-authonly.test.", "MX plain.test.", "A mx1.plain.test.", "AAAA mx1.plain.test.", "A mx2.plain.test.", "AAAA mx2.plain.test."}},
		"CNAME_to_domain_without_MX": {domain: "alias-implicit.test", implicit: true, want: []string{"alias-implicit.test 0 [192.0.2.10 2001:db8::10]"},
			trace: []string{"MX alias-implicit.test.", "A alias-implicit.test.", "AAAA alias-implicit.test."}},
		"CNAME_to_NXDOMAIN":       {domain: "alias-nx.test", err: resolver.ErrNXDomain, code: "5.1.2"},
		"CNAME_loop_is_temporary": {domain: "loop1.test", err: resolver.ErrCNAMELoop, code: "4.4.3"},
		"CNAME_loop_across_answers": {domain: "ping.test", err: resolver.ErrCNAMELoop, code: "4.4.3",
			trace: []string{"MX ping.test.", "MX pong.test."}},
		"CNAME_chain_too_long_is_temporary":  {domain: "long0.test", err: resolver.ErrCNAMELoop, code: "4.4.3"},
		"CNAME_chain_within_bound":           {domain: "short0.test", want: plain},
		"CNAME_at_MX_target_tolerated":       {domain: "mxcname.test", want: []string{"host.mxcname.test 10 [192.0.2.1]"}},
		"MX_target_IP_literal_skipped":       {domain: "mxip.test", want: []string{"mx1.plain.test 20 [192.0.2.1]"}, dropped: []string{"192.0.2.50 10: malformed: MX target is an IP address"}},
		"MX_target_IP_literal_only":          {domain: "mxip-only.test", err: resolver.ErrNoHost, code: "5.4.4"},
		"duplicate_MX_keeps_best_preference": {domain: "dup.test", want: []string{mx1}},
		"host_lookup_failure_skipped":        {domain: "partial.test", want: []string{"mx1.plain.test 20 [192.0.2.1]"}, dropped: []string{"broken.partial.test 10: address lookup failed: SERVFAIL; SERVFAIL"}},
		"all_hosts_NXDOMAIN_is_permanent":    {domain: "allnx.test", err: resolver.ErrNoHost, code: "5.4.4"},
		"hosts_without_addresses_permanent":  {domain: "nodata-hosts.test", err: resolver.ErrNoHost, code: "5.4.4"},
		"host_SERVFAIL_is_temporary":         {domain: "allfail.test", err: resolver.ErrNoHost, code: "4.4.4"},
		"prohibited_addresses_skipped":       {domain: "private.test", err: resolver.ErrNoHost, code: "5.4.4", dropped: []string{"lo.private.test 10: no usable address (all prohibited) skipped 127.0.0.1=prohibited: loopback", "ten.private.test 20: no usable address (all prohibited) skipped 10.0.0.1=prohibited: private fd00::1=prohibited: private"}},
		"MX_localhost_attack_refused":        {domain: "attack.test", err: resolver.ErrNoHost, code: "5.4.4"},
		"private_allowed_for_labs":           {domain: "private.test", cfg: allowPrivate, want: []string{"lo.private.test 10 [127.0.0.1]", "ten.private.test 20 [10.0.0.1 fd00::1]"}},
		"public_address_kept_beside_private": {domain: "mixedaddr.test", want: []string{"both.mixedaddr.test 10 [192.0.2.30] skipped 10.1.1.1=prohibited: private 127.0.0.1=prohibited: loopback"}},
		"self_by_name_loops": {domain: "self.test", cfg: self, err: resolver.ErrLoopsToSelf, code: "5.4.6",
			dropped: []string{"me.self.test 10: self: our host name", "other.self.test 20: preference 20 is not better than ours (10)"},
			trace:   []string{"MX self.test."}},
		"self_keeps_better_hosts":          {domain: "selfbetter.test", cfg: self, want: []string{"better.selfbetter.test 5 [192.0.2.97]"}, dropped: []string{"me.self.test 10: self: our host name", "other.self.test 20: preference 20 is not better than ours (10)"}},
		"self_by_address_drops_equal_pref": {domain: "selfaddr.test", cfg: selfAddr, want: []string{"better.selfbetter.test 5 [192.0.2.97]"}},
		"implicit_MX_to_self_loops":        {domain: "selfimplicit.test", cfg: selfAddr, implicit: true, err: resolver.ErrLoopsToSelf, code: "5.4.6"},
		"SERVFAIL_is_temporary":            {domain: "servfail.test", err: resolver.ErrDNS, code: "4.4.3"},
		"timeout_is_temporary":             {domain: "timeout.test", err: resolver.ErrDNS, code: "4.4.3"},
	}
	for _, name := range sortedKeys(cases) {
		tc := cases[name]
		t.Run(name, func(t *testing.T) {
			cfg := resolver.Config{Servers: []string{d.Addr()}, Timeout: timeoutFor(tc.domain)}
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			r, err := resolver.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			rt, err := r.Route(t.Context(), tc.domain)
			checkRoute(t, tc, rt, err)
		})
	}
}

// timeoutFor keeps the one silent-server case short; the others never wait.
func timeoutFor(domain string) time.Duration {
	if strings.HasPrefix(domain, "timeout") {
		return 200 * time.Millisecond
	}
	return 0
}

func checkRoute(t *testing.T, tc routeCase, rt *resolver.Route, err error) {
	t.Helper()
	var trace []resolver.Exchange
	if rt != nil {
		trace = rt.Trace
	} else if re := (*resolver.Error)(nil); errors.As(err, &re) {
		trace = re.Trace
	}
	if tc.trace != nil && !slices.Equal(traceLines(trace), tc.trace) {
		t.Errorf("trace:\n got %q\nwant %q", traceLines(trace), tc.trace)
	}
	if tc.err != nil {
		var re *resolver.Error
		if !errors.As(err, &re) || !errors.Is(err, tc.err) {
			t.Fatalf("error = %v, want *Error with %v", err, tc.err)
		}
		if re.Enhanced != tc.code || re.Permanent != strings.HasPrefix(tc.code, "5") {
			t.Errorf("code %s permanent %v, want %s", re.Enhanced, re.Permanent, tc.code)
		}
		if len(re.Trace) == 0 {
			t.Errorf("error has no trace")
		}
		if tc.dropped != nil && !slices.Equal(hostLines(re.Dropped), tc.dropped) {
			t.Errorf("dropped:\n got %q\nwant %q", hostLines(re.Dropped), tc.dropped)
		}
		return
	}
	if err != nil {
		t.Fatalf("Route: %v", err)
	}
	if got := hostLines(rt.Hosts); !slices.Equal(got, tc.want) {
		t.Errorf("hosts:\n got %q\nwant %q", got, tc.want)
	}
	if rt.Implicit != tc.implicit {
		t.Errorf("Implicit = %v, want %v", rt.Implicit, tc.implicit)
	}
	if tc.dropped != nil && !slices.Equal(hostLines(rt.Dropped), tc.dropped) {
		t.Errorf("dropped:\n got %q\nwant %q", hostLines(rt.Dropped), tc.dropped)
	}
}

// hostLines formats hosts as "name pref [addrs]" for usable hosts and
// "name pref: reason" for dropped ones, with skipped addresses after.
func hostLines(hs []resolver.Host) []string {
	var out []string
	for _, h := range hs {
		s := fmt.Sprintf("%s %d", h.Name, h.Pref)
		if h.Reason != "" {
			s += ": " + h.Reason
		} else {
			s += fmt.Sprintf(" %v", h.Addrs)
		}
		if len(h.Skipped) > 0 {
			s += " skipped"
			for _, sk := range h.Skipped {
				s += fmt.Sprintf(" %s=%s", sk.Addr, sk.Reason)
			}
		}
		out = append(out, s)
	}
	return out
}

func traceLines(exs []resolver.Exchange) []string {
	var out []string
	for _, ex := range exs {
		out = append(out, ex.Type+" "+ex.Name)
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// TestRouteLiteral checks address literals: they route straight to the
// address without any DNS query, unless prohibited or ours.
func TestRouteLiteral(t *testing.T) {
	d := testpeer.NewDNS(t, routeZone)
	cases := []struct {
		name, domain string
		cfg          func(*resolver.Config)
		want         string
		err          error
		code         string
	}{
		{name: "IPv4", domain: "[192.0.2.1]", want: "[192.0.2.1] 0 [192.0.2.1]"},
		{name: "IPv6", domain: "[ipv6:2001:DB8:0::1]", want: "[IPv6:2001:db8::1] 0 [2001:db8::1]"},
		{name: "loopback_prohibited", domain: "[127.0.0.1]", err: resolver.ErrNoHost, code: "5.4.4"},
		{name: "loopback_allowed_for_labs", domain: "[127.0.0.1]", cfg: func(c *resolver.Config) { c.AllowPrivate = true }, want: "[127.0.0.1] 0 [127.0.0.1]"},
		{name: "own_address_loops", domain: "[192.0.2.77]", cfg: func(c *resolver.Config) { c.SelfAddrs = []netip.Addr{netip.MustParseAddr("192.0.2.77")} }, err: resolver.ErrLoopsToSelf, code: "5.4.6"},
		{name: "IPv6_without_tag", domain: "[2001:db8::1]", err: resolver.ErrInvalidDomain, code: "5.1.2"},
		{name: "unterminated", domain: "[192.0.2.1", err: resolver.ErrInvalidDomain, code: "5.1.2"},
		{name: "leading_zeros", domain: "[192.0.2.01]", err: resolver.ErrInvalidDomain, code: "5.1.2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := resolver.Config{Servers: []string{d.Addr()}}
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			r, err := resolver.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			rt, err := r.Route(t.Context(), tc.domain)
			if tc.err != nil {
				var re *resolver.Error
				if !errors.As(err, &re) || !errors.Is(err, tc.err) || re.Enhanced != tc.code {
					t.Fatalf("error = %v, want %v (%s)", err, tc.err, tc.code)
				}
			} else if err != nil {
				t.Fatalf("Route: %v", err)
			} else if got := hostLines(rt.Hosts); len(got) != 1 || got[0] != tc.want || !rt.Literal {
				t.Errorf("hosts %q literal %v, want %q", got, rt.Literal, tc.want)
			}
			if q := d.Queries(); len(q) != 0 {
				t.Errorf("literal made DNS queries: %v", q)
			}
		})
	}
}

// TestRouteInvalidDomain checks that names that are not routable domains
// fail before any query: search domains are never applied.
func TestRouteInvalidDomain(t *testing.T) {
	d := testpeer.NewDNS(t, routeZone)
	r, err := resolver.New(resolver.Config{Servers: []string{d.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	for name, domain := range map[string]string{
		"dotless":            "plain",
		"dotless_localhost":  "localhost",
		"empty":              "",
		"only_dot":           ".",
		"empty_label":        "a..test",
		"bare_IP_address":    "192.0.2.1",
		"space":              "exa mple.test",
		"label_too_long":     strings.Repeat("a", 64) + ".test",
		"name_too_long":      strings.Repeat("abcdefghi.", 26) + "test",
		"hyphen_at_start":    "-bad.test",
		"underscore_in_name": "bad_name.test",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := r.Route(t.Context(), domain)
			var re *resolver.Error
			if !errors.As(err, &re) || !errors.Is(err, resolver.ErrInvalidDomain) || !re.Permanent || re.Enhanced != "5.1.2" {
				t.Fatalf("Route(%q) = %v, want permanent ErrInvalidDomain 5.1.2", domain, err)
			}
		})
	}
	if q := d.Queries(); len(q) != 0 {
		t.Errorf("invalid domains made DNS queries: %v", q)
	}
}

// TestRouteProhibited checks every kind of address an MX host must not be
// dialled at unless Config.AllowPrivate is set: with one such address the
// host is dropped and the route fails permanently (5.4.4), the address
// shown with its reason; with AllowPrivate the same zone routes to it.
func TestRouteProhibited(t *testing.T) {
	kinds := []struct{ name, rr, addr, why string }{
		{"unspecified_v4", "A", "0.0.0.0", "prohibited: unspecified"},
		{"unspecified_v6", "AAAA", "::", "prohibited: unspecified"},
		{"loopback_v4", "A", "127.0.0.2", "prohibited: loopback"},
		{"loopback_v6", "AAAA", "::1", "prohibited: loopback"},
		{"mapped_loopback", "AAAA", "::ffff:127.0.0.1", "prohibited: loopback"},
		{"link-local_v4", "A", "169.254.10.1", "prohibited: link-local"},
		{"link-local_v6", "AAAA", "fe80::1", "prohibited: link-local"},
		{"multicast_v4", "A", "239.1.2.3", "prohibited: multicast"},
		{"link-local_multicast", "A", "224.0.0.251", "prohibited: link-local"},
		{"multicast_v6", "AAAA", "ff0e::1", "prohibited: multicast"},
		{"RFC_1918_10", "A", "10.0.0.1", "prohibited: private"},
		{"RFC_1918_172", "A", "172.16.5.4", "prohibited: private"},
		{"RFC_1918_192", "A", "192.168.1.1", "prohibited: private"},
		{"ULA", "AAAA", "fd12:3456::1", "prohibited: private"},
		{"mapped_private", "AAAA", "::ffff:192.168.1.1", "prohibited: private"},
		{"shared_RFC_6598", "A", "100.64.0.1", "prohibited: shared address space"},
		{"this_network", "A", "0.1.2.3", "prohibited: this network"},
		{"reserved", "A", "240.0.0.1", "prohibited: reserved"},
		{"broadcast", "A", "255.255.255.255", "prohibited: reserved"},
	}
	var zone strings.Builder
	zone.WriteString("$ORIGIN prohibited.test.\n$TTL 300\n")
	for i, k := range kinds {
		fmt.Fprintf(&zone, "d%d IN MX 10 mx.d%d\nmx.d%d IN %s %s\n", i, i, i, k.rr, k.addr)
	}
	d := testpeer.NewDNS(t, zone.String())
	for i, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			domain := fmt.Sprintf("d%d.prohibited.test", i)
			host := "mx." + domain
			want := netip.MustParseAddr(k.addr).Unmap()
			r := newResolver(t, resolver.Config{Servers: []string{d.Addr()}})
			_, err := r.Route(t.Context(), domain)
			var re *resolver.Error
			if !errors.As(err, &re) || !errors.Is(err, resolver.ErrNoHost) || re.Enhanced != "5.4.4" || !re.Permanent {
				t.Fatalf("error = %v, want permanent ErrNoHost 5.4.4", err)
			}
			wantDropped := fmt.Sprintf("%s 10: no usable address (all prohibited) skipped %s=%s", host, want, k.why)
			if got := hostLines(re.Dropped); !slices.Equal(got, []string{wantDropped}) {
				t.Errorf("dropped %q, want %q", got, wantDropped)
			}
			lab := newResolver(t, resolver.Config{Servers: []string{d.Addr()}, AllowPrivate: true})
			rt, err := lab.Route(t.Context(), domain)
			if err != nil {
				t.Fatalf("with AllowPrivate: %v", err)
			}
			if got, w := hostLines(rt.Hosts), fmt.Sprintf("%s 10 [%s]", host, want); !slices.Equal(got, []string{w}) {
				t.Errorf("with AllowPrivate hosts %q, want %q", got, w)
			}
		})
	}
}
