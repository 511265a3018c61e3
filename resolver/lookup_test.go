package resolver_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"mta/internal/peer"
	"mta/internal/testpeer"
	"mta/resolver"
)

// clock is a Config.Now that tests move by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// newResolver is resolver.New for tests; in a test (not a benchmark) the
// Debug line of every exchange goes to the test's output.
func newResolver(t testing.TB, cfg resolver.Config) *resolver.Resolver {
	t.Helper()
	if tt, ok := t.(*testing.T); ok && cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(tt.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	r, err := resolver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestRouteSpread checks that hosts of equal preference are shuffled
// uniformly: each of the 3! orders of the three preference-10 hosts comes
// up about as often as the others (a chi-square test), and the worse
// preference is always last.
func TestRouteSpread(t *testing.T) {
	d := testpeer.NewDNS(t, `$ORIGIN spread.test.
@ 300 IN MX 10 a
@ 300 IN MX 10 b
@ 300 IN MX 10 c
@ 300 IN MX 20 z
a 300 IN A 192.0.2.1
b 300 IN A 192.0.2.2
c 300 IN A 192.0.2.3
z 300 IN A 192.0.2.4
`)
	r := newResolver(t, resolver.Config{Servers: []string{d.Addr()}, Logger: slog.New(slog.DiscardHandler)})
	const n = 6000
	orders := map[string]int{}
	for range n {
		rt, err := r.Route(t.Context(), "spread.test")
		if err != nil {
			t.Fatal(err)
		}
		if len(rt.Hosts) != 4 || rt.Hosts[3].Name != "z.spread.test" {
			t.Fatalf("hosts %q: want the three pref-10 hosts then z", hostLines(rt.Hosts))
		}
		var order string
		for _, h := range rt.Hosts[:3] {
			order += h.Name[:1]
		}
		orders[order]++
	}
	if len(orders) != 6 {
		t.Fatalf("%d of the 6 orders seen: %v", len(orders), orders)
	}
	// With 5 degrees of freedom, chi-square exceeds 35.9 with probability
	// 1e-6 when every order is equally likely: a failure means a biased
	// shuffle, not bad luck.
	expected := float64(n) / 6
	chi2 := 0.0
	for _, c := range orders {
		chi2 += (float64(c) - expected) * (float64(c) - expected) / expected
	}
	if chi2 > 35.9 {
		t.Errorf("orders %v: chi-square %.1f > 35.9, the shuffle is biased", orders, chi2)
	}
}

// TestRouteShuffleSeam checks that Config.Shuffle decides the order of
// equal preferences: a seeded source gives the same order every time.
func TestRouteShuffleSeam(t *testing.T) {
	d := testpeer.NewDNS(t, `$ORIGIN seam.test.
@ 300 IN MX 10 a
@ 300 IN MX 10 b
@ 300 IN MX 10 c
a 300 IN A 192.0.2.1
b 300 IN A 192.0.2.2
c 300 IN A 192.0.2.3
`)
	order := func() []string {
		rng := rand.New(rand.NewPCG(1, 2))
		r := newResolver(t, resolver.Config{Servers: []string{d.Addr()}, Shuffle: rng.Shuffle})
		rt, err := r.Route(t.Context(), "seam.test")
		if err != nil {
			t.Fatal(err)
		}
		return hostLines(rt.Hosts)
	}
	if a, b := order(), order(); !slices.Equal(a, b) {
		t.Errorf("same seed, different orders: %q and %q", a, b)
	}
	noShuffle := newResolver(t, resolver.Config{Servers: []string{d.Addr()}, Shuffle: func(int, func(i, j int)) {}})
	rt, err := noShuffle.Route(t.Context(), "seam.test")
	if err != nil {
		t.Fatal(err)
	}
	if got := rt.Hosts[0].Name; got != "a.seam.test" {
		t.Errorf("without shuffling the first host is %s, want the server's first", got)
	}
}

const cacheZone = `$ORIGIN cache.test.
@          60 IN SOA ns hostmaster 1 3600 600 86400 30
pos       300 IN MX 10 mx
mx        100 IN A 192.0.2.1
mx        100 IN AAAA 2001:db8::1
nodata    300 IN A 192.0.2.2
servfail  300 IN MX 10 mx
`

// TestRouteCache checks that answers are reused for their TTL (the
// smallest of the records used), with their age shown in the trace, and
// asked again when it ends.
func TestRouteCache(t *testing.T) {
	d := testpeer.NewDNS(t, cacheZone)
	clk := newClock()
	r := newResolver(t, resolver.Config{Servers: []string{d.Addr()}, Now: clk.Now})
	route := func() *resolver.Route {
		t.Helper()
		rt, err := r.Route(t.Context(), "pos.cache.test")
		if err != nil {
			t.Fatal(err)
		}
		return rt
	}
	route()
	clk.Advance(40 * time.Second)
	rt := route()
	for _, ex := range rt.Trace {
		if !ex.Cached || ex.Server != "" {
			t.Errorf("second route: %s %s not from cache", ex.Type, ex.Name)
		}
	}
	if got := rt.Trace[0].Answer[0].TTL; got != 260 {
		t.Errorf("cached MX TTL shown as %d, want 300-40 = 260", got)
	}
	if got := d.Count("pos.cache.test", "MX") + d.Count("mx.cache.test", "A"); got != 2 {
		t.Errorf("server saw %d MX+A queries after two routes, want 2", got)
	}
	clk.Advance(60 * time.Second) // 100 s: the address records expire
	route()
	if got, want := d.Count("mx.cache.test", "A"), 2; got != want {
		t.Errorf("A queries after 100 s = %d, want %d", got, want)
	}
	if got := d.Count("pos.cache.test", "MX"); got != 1 {
		t.Errorf("MX queries after 100 s = %d, want 1 (TTL 300)", got)
	}
}

// TestRouteCacheMaxTTL checks that Config.MaxTTL caps a long TTL.
func TestRouteCacheMaxTTL(t *testing.T) {
	d := testpeer.NewDNS(t, cacheZone)
	clk := newClock()
	r := newResolver(t, resolver.Config{Servers: []string{d.Addr()}, Now: clk.Now, MaxTTL: 10 * time.Second})
	for _, step := range []time.Duration{0, 9 * time.Second, time.Second} {
		clk.Advance(step)
		if _, err := r.Route(t.Context(), "pos.cache.test"); err != nil {
			t.Fatal(err)
		}
	}
	if got := d.Count("pos.cache.test", "MX"); got != 2 {
		t.Errorf("MX queries at 0, 9 and 10 s with MaxTTL 10s = %d, want 2", got)
	}
}

// negZone has three apexes whose SOAs give negative TTLs (RFC 2308 §5:
// min(SOA TTL, SOA MINIMUM)) of 30 s by MINIMUM, 20 s by the SOA's own
// TTL, and 3 h by the resolver's cap on a day-long SOA.
const negZone = cacheZone + `
short-soa.test.      20 IN SOA ns.short-soa.test. h.short-soa.test. 1 3600 600 86400 600
nodata.short-soa.test. 300 IN TXT "no MX"
long-soa.test.    86400 IN SOA ns.long-soa.test. h.long-soa.test. 1 3600 600 86400 86400
nodata.long-soa.test. 300 IN TXT "no MX"
`

// TestRouteNegativeCache checks RFC 2308: NXDOMAIN and NODATA are cached
// for min(SOA TTL, SOA MINIMUM), at most 3 hours: the server is not asked
// again a second before the negative TTL ends, and is asked at its end.
func TestRouteNegativeCache(t *testing.T) {
	for name, tc := range map[string]struct {
		domain string
		ttl    time.Duration
	}{
		"NXDOMAIN_by_MINIMUM":        {"missing.cache.test", 30 * time.Second},
		"NODATA_by_MINIMUM":          {"nodata.cache.test", 30 * time.Second},
		"NXDOMAIN_by_SOA_TTL":        {"missing.short-soa.test", 20 * time.Second},
		"NODATA_by_SOA_TTL":          {"nodata.short-soa.test", 20 * time.Second},
		"NXDOMAIN_capped_at_3_hours": {"missing.long-soa.test", 3 * time.Hour},
		"NODATA_capped_at_3_hours":   {"nodata.long-soa.test", 3 * time.Hour},
	} {
		t.Run(name, func(t *testing.T) {
			d := testpeer.NewDNS(t, negZone)
			clk := newClock()
			r := newResolver(t, resolver.Config{Servers: []string{d.Addr()}, Now: clk.Now})
			for i, step := range []time.Duration{0, tc.ttl - time.Second, time.Second} {
				clk.Advance(step)
				_, _ = r.Route(t.Context(), tc.domain) // the outcome is TestRoute's business
				if got, want := d.Count(tc.domain, "MX"), []int{1, 1, 2}[i]; got != want {
					t.Fatalf("after %d routes over %s, %d MX queries, want %d (negative TTL %s)",
						i+1, []time.Duration{0, tc.ttl - time.Second, tc.ttl}[i], got, want, tc.ttl)
				}
			}
		})
	}
}

// TestRouteCacheDayCap checks that a positive answer with a week-long TTL
// is kept for a day at most (the default Config.MaxTTL).
func TestRouteCacheDayCap(t *testing.T) {
	d := testpeer.NewDNS(t, `$ORIGIN week.test.
@  604800 IN MX 10 mx
mx 604800 IN A 192.0.2.1
`)
	clk := newClock()
	r := newResolver(t, resolver.Config{Servers: []string{d.Addr()}, Now: clk.Now})
	for i, step := range []time.Duration{0, 24*time.Hour - time.Second, time.Second} {
		clk.Advance(step)
		if _, err := r.Route(t.Context(), "week.test"); err != nil {
			t.Fatal(err)
		}
		if got, want := d.Count("week.test", "MX"), []int{1, 1, 2}[i]; got != want {
			t.Fatalf("route %d: %d MX queries, want %d", i+1, got, want)
		}
	}
}

// TestRouteServfailCache checks that SERVFAIL is cached briefly: 30 s
// later the failure is reused; 5 minutes after it came (RFC 2308 §7.1's
// limit) the server is asked again.
func TestRouteServfailCache(t *testing.T) {
	d := testpeer.NewDNS(t, cacheZone)
	d.Set("servfail.cache.test", peer.ModeServfail)
	clk := newClock()
	r := newResolver(t, resolver.Config{Servers: []string{d.Addr()}, Now: clk.Now})
	check := func(step time.Duration, wantQueries int, wantCached bool) {
		t.Helper()
		clk.Advance(step)
		_, err := r.Route(t.Context(), "servfail.cache.test")
		var re *resolver.Error
		if !errors.As(err, &re) || !errors.Is(err, resolver.ErrDNS) || re.Permanent {
			t.Fatalf("error = %v, want temporary ErrDNS", err)
		}
		if got := re.Trace[0].Cached; got != wantCached {
			t.Errorf("at +%s cached = %v, want %v", step, got, wantCached)
		}
		if got := d.Count("servfail.cache.test", "MX"); got != wantQueries {
			t.Errorf("at +%s the server saw %d queries, want %d", step, got, wantQueries)
		}
	}
	check(0, 1, false)
	check(30*time.Second, 1, true)
	check(5*time.Minute-30*time.Second, 2, false)
}

// TestRouteTimeoutNotCached checks that a lookup that got no answer at all
// is not reused: the next route asks again.
func TestRouteTimeoutNotCached(t *testing.T) {
	d := testpeer.NewDNS(t, cacheZone)
	d.Set("pos.cache.test", peer.ModeSilent)
	r := newResolver(t, resolver.Config{Servers: []string{d.Addr()}, Timeout: 100 * time.Millisecond})
	for range 2 {
		if _, err := r.Route(t.Context(), "pos.cache.test"); !errors.Is(err, resolver.ErrDNS) {
			t.Fatalf("error = %v, want ErrDNS", err)
		}
	}
	if got := d.Count("pos.cache.test", "MX"); got != 2 {
		t.Errorf("server saw %d queries, want 2", got)
	}
}

// TestRouteTCPFallback checks that a truncated UDP answer is asked again
// over TCP, both when the server forces it and when the answer is too big
// for the 1232-byte EDNS0 buffer.
func TestRouteTCPFallback(t *testing.T) {
	var big strings.Builder
	big.WriteString("$ORIGIN big.test.\n")
	for i := range 60 {
		fmt.Fprintf(&big, "@ 300 IN MX 10 a-rather-long-mail-exchanger-name-number-%02d\n", i)
	}
	big.WriteString("a-rather-long-mail-exchanger-name-number-00 300 IN A 192.0.2.1\n")
	d := testpeer.NewDNS(t, cacheZone+big.String())
	d.Set("pos.cache.test", peer.ModeTruncate)
	for _, domain := range []string{"pos.cache.test", "big.test"} {
		t.Run(domain, func(t *testing.T) {
			r := newResolver(t, resolver.Config{Servers: []string{d.Addr()}})
			rt, err := r.Route(t.Context(), domain)
			if err != nil && !errors.Is(err, resolver.ErrNoHost) {
				t.Fatal(err)
			}
			var trace []resolver.Exchange
			if rt != nil {
				trace = rt.Trace
			} else {
				trace = err.(*resolver.Error).Trace
			}
			if len(trace) < 2 || trace[0].Proto != "udp" || !trace[0].Truncated || trace[1].Proto != "tcp" || trace[1].Truncated {
				t.Fatalf("trace starts %+v, want truncated udp then tcp", trace[:min(2, len(trace))])
			}
			if domain == "big.test" && len(trace[1].Answer)+trace[1].Omitted != 60 {
				t.Errorf("TCP answer has %d+%d records, want 60", len(trace[1].Answer), trace[1].Omitted)
			}
			var protos []string
			for _, q := range d.Queries() {
				if q.Name == domain+"." && q.Type == "MX" {
					protos = append(protos, q.Proto)
				}
			}
			if !slices.Equal(protos, []string{"udp", "tcp"}) {
				t.Errorf("server saw MX over %v, want [udp tcp]", protos)
			}
		})
	}
	rt, err := newResolver(t, resolver.Config{Servers: []string{d.Addr()}}).Route(t.Context(), "pos.cache.test")
	if err != nil || len(rt.Hosts) != 1 {
		t.Fatalf("route after TCP fallback: %v, %v", rt, err)
	}
}

// TestRouteNextServer checks that a server that does not answer, or
// answers SERVFAIL, is followed by the next one.
func TestRouteNextServer(t *testing.T) {
	good := testpeer.NewDNSAt(t, "127.0.0.1:0", cacheZone)
	silent := testpeer.NewDNSAt(t, "127.0.0.2:0", cacheZone)
	silent.SetAll(peer.ModeSilent)
	failing := testpeer.NewDNSAt(t, "127.0.0.3:0", cacheZone)
	failing.SetAll(peer.ModeServfail)
	for name, first := range map[string]*testpeer.DNS{"dead_first_server": silent, "SERVFAIL_first_server": failing} {
		t.Run(name, func(t *testing.T) {
			r := newResolver(t, resolver.Config{Servers: []string{first.Addr(), good.Addr()}, Timeout: 200 * time.Millisecond})
			rt, err := r.Route(t.Context(), "pos.cache.test")
			if err != nil {
				t.Fatal(err)
			}
			if len(rt.Trace) < 2 || rt.Trace[0].Server != first.Addr() || rt.Trace[1].Server != good.Addr() || rt.Trace[1].Rcode != "NOERROR" {
				t.Errorf("trace starts %+v, want the first server then %s", rt.Trace[:min(2, len(rt.Trace))], good.Addr())
			}
			if rt.Trace[0].Rcode == "NOERROR" {
				t.Errorf("first server's exchange shows %s", rt.Trace[0].Rcode)
			}
		})
	}
}

// TestRouteContextBound checks that the caller's context bounds a lookup
// even when Config.Timeout is long.
func TestRouteContextBound(t *testing.T) {
	d := testpeer.NewDNS(t, cacheZone)
	d.SetAll(peer.ModeSilent)
	r := newResolver(t, resolver.Config{Servers: []string{d.Addr()}, Timeout: time.Hour})
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	_, err := r.Route(ctx, "pos.cache.test")
	var re *resolver.Error
	if !errors.As(err, &re) || !errors.Is(err, resolver.ErrDNS) || re.Permanent {
		t.Fatalf("error = %v, want temporary ErrDNS", err)
	}
}

// ptrZone has reverse names for 192.0.2.0/24: two for .1, one through an
// RFC 2317 CNAME for .5, and no PTR at .9.
const ptrZone = `$ORIGIN 2.0.192.in-addr.arpa.
1 300 IN PTR mx1.plain.test.
1 300 IN PTR Other.Plain.Test.
5 300 IN CNAME 5.0-25.2.0.192.in-addr.arpa.
5.0-25 300 IN PTR classless.test.
9 300 IN TXT "no PTR"
`

// TestLookupPTR checks reverse lookups, including an RFC 2317 CNAME.
func TestLookupPTR(t *testing.T) {
	d := testpeer.NewDNS(t, ptrZone)
	r := newResolver(t, resolver.Config{Servers: []string{d.Addr()}})
	cases := []struct {
		name string
		ip   string
		want []string
		err  error
	}{
		{"two_names", "192.0.2.1", []string{"mx1.plain.test", "other.plain.test"}, nil},
		{"RFC_2317_CNAME", "192.0.2.5", []string{"classless.test"}, nil},
		{"mapped_address", "::ffff:192.0.2.5", []string{"classless.test"}, nil},
		{"no_PTR", "192.0.2.9", nil, resolver.ErrNoData},
		{"NXDOMAIN", "192.0.2.200", nil, resolver.ErrNXDomain},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := r.LookupPTR(t.Context(), netip.MustParseAddr(tc.ip))
			if !errors.Is(err, tc.err) || !slices.Equal(got, tc.want) {
				t.Errorf("LookupPTR(%s) = %q, %v; want %q, %v", tc.ip, got, err, tc.want, tc.err)
			}
		})
	}
}

// CachedPTR answers only what LookupPTR put in the cache, sends nothing,
// and leaves a CNAME chain to LookupPTR.
func TestCachedPTR(t *testing.T) {
	d := testpeer.NewDNS(t, ptrZone)
	r := newResolver(t, resolver.Config{Servers: []string{d.Addr()}})
	cases := []struct {
		ip   string
		want []string
		ok   bool // after LookupPTR
		seen bool // cached already, by an earlier case
	}{
		{"192.0.2.1", []string{"mx1.plain.test", "other.plain.test"}, true, false},
		{"::ffff:192.0.2.1", []string{"mx1.plain.test", "other.plain.test"}, true, true},
		{"192.0.2.9", nil, true, false},   // NODATA: no name, for sure
		{"192.0.2.200", nil, true, false}, // NXDOMAIN
		{"192.0.2.5", nil, false, false},  // a CNAME: LookupPTR follows it
	}
	for _, tc := range cases {
		ip := netip.MustParseAddr(tc.ip)
		if names, ok := r.CachedPTR(ip); ok && !tc.seen {
			t.Errorf("CachedPTR(%s) before any lookup = %q, true; want a miss", tc.ip, names)
		}
		_, _ = r.LookupPTR(t.Context(), ip) // the answers are TestLookupPTR's
		before := len(d.Queries())
		names, ok := r.CachedPTR(ip)
		if ok != tc.ok || !slices.Equal(names, tc.want) {
			t.Errorf("CachedPTR(%s) = %q, %v; want %q, %v", tc.ip, names, ok, tc.want, tc.ok)
		}
		if n := len(d.Queries()) - before; n != 0 {
			t.Errorf("CachedPTR(%s) sent %d queries", tc.ip, n)
		}
	}
}

// TestLookupAddrs checks the daemon's own-name lookup.
func TestLookupAddrs(t *testing.T) {
	d := testpeer.NewDNS(t, cacheZone+`
both.cache.test. 300 IN A 127.0.0.1
both.cache.test. 300 IN AAAA ::1
sf.cache.test. 300 IN A 192.0.2.7
`)
	d.Set("sf.cache.test", peer.ModeServfail)
	r := newResolver(t, resolver.Config{Servers: []string{d.Addr()}})
	cases := []struct {
		name, host string
		want       []string
		err        error
	}{
		{"both_families_private_kept", "Both.Cache.Test.", []string{"127.0.0.1", "::1"}, nil},
		{"no_addresses", "cache.test", nil, resolver.ErrNoData},
		{"NXDOMAIN", "missing.cache.test", nil, resolver.ErrNXDomain},
		{"SERVFAIL", "sf.cache.test", nil, resolver.ErrDNS},
		{"dotless", "localhost", nil, resolver.ErrInvalidDomain},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			addrs, err := r.LookupAddrs(t.Context(), tc.host)
			var got []string
			for _, a := range addrs {
				got = append(got, a.String())
			}
			if !errors.Is(err, tc.err) || !slices.Equal(got, tc.want) {
				t.Errorf("LookupAddrs(%s) = %q, %v; want %q, %v", tc.host, got, err, tc.want, tc.err)
			}
		})
	}
}

// TestNewConfig checks configuration errors and server forms.
func TestNewConfig(t *testing.T) {
	for name, tc := range map[string]struct {
		cfg resolver.Config
		ok  bool
	}{
		"no_servers":       {resolver.Config{}, false},
		"bad_server":       {resolver.Config{Servers: []string{"dns.example"}}, false},
		"negative_timeout": {resolver.Config{Servers: []string{"192.0.2.53"}, Timeout: -1}, false},
		"ip_only":          {resolver.Config{Servers: []string{"192.0.2.53", "2001:db8::53"}}, true},
		"ip_and_port":      {resolver.Config{Servers: []string{"192.0.2.53:5353", "[2001:db8::53]:53"}}, true},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := resolver.New(tc.cfg); (err == nil) != tc.ok {
				t.Errorf("New: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

// countingObserver counts Observer calls by "qtype result cached".
type countingObserver struct {
	mu sync.Mutex
	n  map[string]int
}

func (o *countingObserver) Lookup(qtype, result string, cached bool, _ time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.n[fmt.Sprintf("%s %s %v", qtype, result, cached)]++
}

// TestObserver checks that every exchange and cache answer is counted.
func TestObserver(t *testing.T) {
	d := testpeer.NewDNS(t, cacheZone)
	obs := &countingObserver{n: map[string]int{}}
	r := newResolver(t, resolver.Config{Servers: []string{d.Addr()}, Observer: obs})
	for range 2 {
		if _, err := r.Route(t.Context(), "pos.cache.test"); err != nil {
			t.Fatal(err)
		}
	}
	_, _ = r.Route(t.Context(), "missing.cache.test") // NXDOMAIN, counted below
	want := map[string]int{
		"MX ok false": 1, "A ok false": 1, "AAAA ok false": 1,
		"MX ok true": 1, "A ok true": 1, "AAAA ok true": 1,
		"MX nxdomain false": 1,
	}
	if fmt.Sprint(obs.n) != fmt.Sprint(want) {
		t.Errorf("observer counts %v, want %v", obs.n, want)
	}
}

// TestLogger checks the Debug line of each exchange and cache answer.
func TestLogger(t *testing.T) {
	d := testpeer.NewDNS(t, cacheZone)
	var buf strings.Builder
	var mu sync.Mutex
	w := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return buf.Write(p) })
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r := newResolver(t, resolver.Config{Servers: []string{d.Addr()}, Logger: log, Now: newClock().Now})
	for range 2 {
		if _, err := r.Route(t.Context(), "pos.cache.test"); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, want := range []string{
		"msg=\"dns exchange\" name=pos.cache.test. type=MX server=" + d.Addr() + " proto=udp rcode=NOERROR answers=1 ttl=300 cached=false",
		"msg=\"dns exchange\" name=pos.cache.test. type=MX server=\"\" proto=\"\" rcode=NOERROR answers=1 ttl=300 cached=true",
	} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, buf.String())
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
