package resolver

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Flags of one reply in a FuzzRoute input.
const (
	fuzzFixID       = 1 << iota // give the reply the query's ID
	fuzzFixQuestion             // give the reply the query's question (when it unpacks)
)

// Flags of a FuzzRoute input's first byte.
const (
	fuzzAllowPrivate = 1 << iota
)

// fuzzReply is one raw reply and how to adapt it to the query.
type fuzzReply struct {
	flags byte
	raw   []byte
}

// encodeFuzz is the inverse of parseFuzz: cfg, then per reply its flags,
// a two-octet length and the bytes.
func encodeFuzz(cfg byte, replies ...fuzzReply) []byte {
	out := []byte{cfg}
	for _, r := range replies {
		out = append(out, r.flags, byte(len(r.raw)>>8), byte(len(r.raw)))
		out = append(out, r.raw...)
	}
	return out
}

func parseFuzz(data []byte) (byte, []fuzzReply) {
	if len(data) == 0 {
		return 0, nil
	}
	cfg, data := data[0], data[1:]
	var replies []fuzzReply
	for len(data) >= 3 {
		n := int(data[1])<<8 | int(data[2])
		flags := data[0]
		data = data[3:]
		n = min(n, len(data))
		replies = append(replies, fuzzReply{flags: flags, raw: data[:n]})
		data = data[n:]
	}
	return cfg, replies
}

// fuzzTransport answers each query with the first reply whose question
// matches it, else with a reply picked by a hash of the question (so the
// answer does not depend on the order of concurrent queries), else a
// timeout.
type fuzzTransport struct {
	replies []fuzzReply
}

func (ft *fuzzTransport) exchange(ctx context.Context, server, proto string, q *dns.Msg) ([]byte, error) {
	if len(ft.replies) == 0 {
		return nil, os.ErrDeadlineExceeded
	}
	qq := q.Question[0]
	pick := -1
	for i, r := range ft.replies {
		m := new(dns.Msg)
		if m.Unpack(r.raw) == nil && len(m.Question) == 1 &&
			strings.EqualFold(m.Question[0].Name, qq.Name) && m.Question[0].Qtype == qq.Qtype {
			pick = i
			break
		}
	}
	if pick < 0 {
		h := int(qq.Qtype)
		for _, c := range []byte(strings.ToLower(qq.Name)) {
			h = h*31 + int(c)
		}
		pick = (h&0x7fffffff)%(len(ft.replies)+1) - 1
		if pick < 0 {
			return nil, os.ErrDeadlineExceeded
		}
	}
	r := ft.replies[pick]
	raw := append([]byte(nil), r.raw...)
	if r.flags&fuzzFixQuestion != 0 {
		m := new(dns.Msg)
		if m.Unpack(raw) == nil {
			m.Question = q.Question
			if b, err := m.Pack(); err == nil {
				raw = b
			}
		}
	}
	if r.flags&fuzzFixID != 0 && len(raw) >= 2 {
		raw[0], raw[1] = byte(q.Id>>8), byte(q.Id)
	}
	return raw, nil
}

// FuzzRoute builds routes from hostile replies: whatever the bytes (wrong
// IDs, mismatched questions, huge CNAME chains, MX targets that are IP
// literals, empty answers), Route must not panic, must return either an
// *Error carrying a sentinel and a code, or a route that keeps every
// invariant of the package.
func FuzzRoute(f *testing.F) {
	for _, seed := range fuzzSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfgFlags, replies := parseFuzz(data)
		self := netip.MustParseAddr("192.0.2.99")
		r, err := newResolver(Config{
			Servers:      []string{"192.0.2.53", "192.0.2.54:5353"},
			Timeout:      time.Second,
			Hostname:     "self.fuzz.test",
			SelfAddrs:    []netip.Addr{self},
			AllowPrivate: cfgFlags&fuzzAllowPrivate != 0,
		}, &fuzzTransport{replies: replies})
		if err != nil {
			t.Fatal(err)
		}
		rt, err := r.Route(context.Background(), "fuzz.test")
		if err != nil {
			checkFuzzError(t, err)
			return
		}
		checkFuzzRoute(t, rt, self, cfgFlags&fuzzAllowPrivate != 0)
	})
}

func checkFuzzError(t *testing.T, err error) {
	var re *Error
	if !errors.As(err, &re) {
		t.Fatalf("error %v (%T) is not an *Error", err, err)
	}
	known := false
	for _, s := range []error{ErrInvalidDomain, ErrNXDomain, ErrNullMX, ErrLoopsToSelf, ErrNoHost, ErrCNAMELoop, ErrDNS} {
		known = known || errors.Is(err, s)
	}
	if !known || re.Enhanced == "" || re.Permanent != strings.HasPrefix(re.Enhanced, "5.") {
		t.Fatalf("error %v: sentinel known %v, code %q, permanent %v", err, known, re.Enhanced, re.Permanent)
	}
}

func checkFuzzRoute(t *testing.T, rt *Route, self netip.Addr, allowPrivate bool) {
	if len(rt.Hosts) == 0 {
		t.Fatal("route without hosts and without error")
	}
	for i, h := range rt.Hosts {
		if len(h.Addrs) == 0 || h.Reason != "" {
			t.Fatalf("host %d %+v: no addresses or a reason", i, h)
		}
		if n := len(h.Addrs) + len(h.Skipped); n > 2*maxFamilyAddrs {
			t.Fatalf("host %s keeps %d addresses, more than %d per family", h.Name, n, maxFamilyAddrs)
		}
		if i > 0 && h.Pref < rt.Hosts[i-1].Pref {
			t.Fatalf("hosts not sorted by preference: %+v", rt.Hosts)
		}
		if h.Name == "self.fuzz.test" {
			t.Fatalf("self in route: %+v", h)
		}
		for _, a := range h.Addrs {
			if a == self || (!allowPrivate && prohibited(a) != "") {
				t.Fatalf("host %s has address %s that must have been skipped", h.Name, a)
			}
		}
	}
	if len(rt.Hosts) > maxHosts {
		t.Fatalf("%d hosts, more than %d", len(rt.Hosts), maxHosts)
	}
	for _, ex := range rt.Trace {
		if len(ex.Answer) > maxTraceRecords {
			t.Fatalf("exchange keeps %d records", len(ex.Answer))
		}
	}
}

// FuzzNormalize checks domain normalisation: it never panics, and what it
// accepts is lowercase, dotted, without trailing dot, at most 253 octets,
// valid as a host name, and normalises to itself.
func FuzzNormalize(f *testing.F) {
	for _, s := range []string{"example.test", "Example.TEST.", "bücher.example", "xn--bcher-kva.example",
		"[192.0.2.1]", "[IPv6:2001:db8::1]", "[IPv6:::ffff:192.0.2.1]", "localhost", "a..b", "192.0.2.1",
		"ｅｘａｍｐｌｅ．ｔｅｓｔ", "\u200d.test", "-a.test", "a_b.test", "[", "[]", strings.Repeat("a.", 130)} {
		f.Add(s)
	}
	p := newIDNA()
	f.Fuzz(func(t *testing.T, s string) {
		name, lit, err := normalizeDomain(p, s)
		if err != nil {
			if !errors.Is(err, ErrInvalidDomain) {
				t.Fatalf("%q: error %v does not wrap ErrInvalidDomain", s, err)
			}
			return
		}
		again, lit2, err := normalizeDomain(p, name)
		if err != nil || again != name || lit2 != lit {
			t.Fatalf("%q -> %q -> %q, %v: not idempotent", s, name, again, err)
		}
		if lit.IsValid() {
			return
		}
		if name != strings.ToLower(name) || strings.HasSuffix(name, ".") || !strings.Contains(name, ".") ||
			len(name) > maxDomainOctets || checkHostName(name) != nil {
			t.Fatalf("%q -> %q breaks the normal form", s, name)
		}
	})
}

// TestRouteHostileReplies pins what the fuzz seeds lead to: a reply that
// is not ours (wrong ID, other question, garbage) counts as no answer.
func TestRouteHostileReplies(t *testing.T) {
	seeds := fuzzSeeds()
	cases := []struct {
		name string
		seed int
		err  error
		want int // hosts, when err is nil
	}{
		{"two_MX", 0, nil, 2},
		{"null_MX", 1, ErrNullMX, 0},
		{"null_MX_mixed", 2, nil, 1},
		{"NXDOMAIN", 3, ErrNXDomain, 0},
		{"MX_to_IP_literal", 4, ErrNoHost, 0},
		{"huge_CNAME_chain", 5, ErrCNAMELoop, 0},
		{"CNAME_loop_in_answer", 6, ErrCNAMELoop, 0},
		{"CNAME_loop_across_answers", 7, ErrCNAMELoop, 0},
		{"wrong_ID", 8, ErrDNS, 0},
		{"mismatched_question", 9, ErrDNS, 0},
		{"SERVFAIL", 12, ErrDNS, 0},
		{"MX_localhost", 13, ErrNoHost, 0},
		{"MX_localhost_allowed", 14, nil, 1},
		{"self_address_and_better_host", 15, nil, 1},
		{"garbage", 16, ErrDNS, 0},
		{"no_reply", 17, ErrDNS, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfgFlags, replies := parseFuzz(seeds[tc.seed])
			r, err := newResolver(Config{Servers: []string{"192.0.2.53"}, Hostname: "self.fuzz.test",
				SelfAddrs: []netip.Addr{netip.MustParseAddr("192.0.2.99")}, AllowPrivate: cfgFlags&fuzzAllowPrivate != 0},
				&fuzzTransport{replies: replies})
			if err != nil {
				t.Fatal(err)
			}
			rt, err := r.Route(t.Context(), "fuzz.test")
			if !errors.Is(err, tc.err) {
				t.Fatalf("error = %v, want %v", err, tc.err)
			}
			if err == nil && len(rt.Hosts) != tc.want {
				t.Errorf("%d hosts, want %d: %+v", len(rt.Hosts), tc.want, rt.Hosts)
			}
		})
	}
}
