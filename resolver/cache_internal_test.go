package resolver

import (
	"fmt"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestCacheBounded checks the LRU bound: the cache never holds more than
// its limit, and the least recently used entry is the one evicted.
func TestCacheBounded(t *testing.T) {
	c := newCache(3)
	now := time.Unix(1000, 0)
	a := &answer{}
	for i := range 5 {
		c.put(cacheKey{name: fmt.Sprintf("h%d.test.", i), qtype: 1}, a, now, time.Minute)
		if i == 2 {
			c.get(cacheKey{name: "h0.test.", qtype: 1}, now) // h0 becomes most recent
		}
	}
	if got := c.len(); got != 3 {
		t.Fatalf("len = %d, want 3", got)
	}
	for name, want := range map[string]bool{"h0.test.": true, "h1.test.": false, "h2.test.": false, "h3.test.": true, "h4.test.": true} {
		if _, _, ok := c.get(cacheKey{name: name, qtype: 1}, now); ok != want {
			t.Errorf("%s cached = %v, want %v", name, ok, want)
		}
	}
}

// TestTTLFor checks how long each kind of answer is cached (RFC 2308).
func TestTTLFor(t *testing.T) {
	rr := func(s string) dns.RR {
		r, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	soa := rr("test. 600 IN SOA ns.test. h.test. 1 3600 600 86400 120").(*dns.SOA)
	mx := rr("a.test. 300 IN MX 10 mx.a.test.")
	cname := rr("a.test. 60 IN CNAME b.test.")
	many := make([]dns.RR, maxCachedRecords+1)
	for i := range many {
		many[i] = mx
	}
	cases := []struct {
		name string
		a    *answer
		max  time.Duration
		want time.Duration
	}{
		{"positive", &answer{rrs: []dns.RR{mx}}, time.Hour, 300 * time.Second},
		{"positive_capped", &answer{rrs: []dns.RR{mx}}, time.Minute, time.Minute},
		{"chain_smallest_TTL", &answer{rrs: []dns.RR{cname, mx}}, time.Hour, 60 * time.Second},
		{"chain_to_follow", &answer{rrs: []dns.RR{cname}, noData: true}, time.Hour, 60 * time.Second},
		{"NODATA_SOA_minimum", &answer{noData: true, soa: soa}, time.Hour, 120 * time.Second},
		{"NXDOMAIN_SOA_minimum", &answer{rcode: dns.RcodeNameError, noData: true, soa: soa}, time.Hour, 120 * time.Second},
		{"NODATA_after_chain", &answer{rrs: []dns.RR{cname}, noData: true, soa: soa}, time.Hour, 60 * time.Second},
		{"NXDOMAIN_without_SOA", &answer{rcode: dns.RcodeNameError, noData: true}, time.Hour, 0},
		{"NODATA_without_SOA", &answer{noData: true}, time.Hour, 0},
		{"SERVFAIL", &answer{rcode: dns.RcodeServerFailure}, time.Hour, failureTTL},
		{"REFUSED", &answer{rcode: dns.RcodeRefused}, time.Hour, failureTTL},
		{"timeout", &answer{rcode: rcodeTimeout}, time.Hour, 0},
		{"too_many_records", &answer{rrs: many}, time.Hour, 0},
		{"TTL_zero", &answer{rrs: []dns.RR{rr("a.test. 0 IN A 192.0.2.1")}}, time.Hour, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := ttlFor(tc.a, tc.max); got != tc.want {
				t.Errorf("ttlFor = %s, want %s", got, tc.want)
			}
		})
	}
	if failureTTL > 5*time.Minute {
		t.Errorf("failureTTL %s is over RFC 2308's 5 minutes", failureTTL)
	}
}
