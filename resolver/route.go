package resolver

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

// Enhanced status codes (RFC 3463) of route errors.
const (
	codeBadDomain = "5.1.2"
	codeNullMX    = "5.1.10"
	codeLoop      = "5.4.6"
	codeNoHostP   = "5.4.4"
	codeNoHostT   = "4.4.4"
	codeDNS       = "4.4.3"
)

// candidate is a host while its route is being built.
type candidate struct {
	Host
	selfName bool       // named Config.Hostname
	selfAddr bool       // has an address in Config.SelfAddrs
	temp     bool       // left out for a reason that may change
	trace    []Exchange // its address lookups
}

// Route returns the route to domain (see the package documentation for
// every rule it follows). A nil error comes with at least one host; an
// error is always an *Error, whose Trace and Dropped say how it was found.
func (r *Resolver) Route(ctx context.Context, domain string) (*Route, error) {
	name, lit, err := normalizeDomain(r.idna, domain)
	if err != nil {
		return nil, &Error{Permanent: true, Enhanced: codeBadDomain, Domain: domain,
			Reason: err.Error(), Err: ErrInvalidDomain}
	}
	if lit.IsValid() {
		return r.literalRoute(name, lit)
	}
	rt := &Route{Domain: name}
	cands, rerr := r.mxCandidates(ctx, rt)
	if rerr != nil {
		return nil, rerr
	}
	r.resolveHosts(ctx, rt, cands)
	if rerr := r.finish(rt, cands); rerr != nil {
		return nil, rerr
	}
	return rt, nil
}

func routeError(rt *Route, permanent bool, enhanced string, sentinel error, reason string) *Error {
	return &Error{Permanent: permanent, Enhanced: enhanced, Domain: rt.Domain, Reason: reason,
		Err: sentinel, Trace: rt.Trace, Dropped: rt.Dropped}
}

// literalRoute is the route to an address literal: that address, unless it
// is ours or prohibited.
func (r *Resolver) literalRoute(name string, ip netip.Addr) (*Route, error) {
	rt := &Route{Domain: name, Literal: true}
	h := Host{Name: name}
	if r.self[ip.Unmap()] {
		h.Skipped = []SkippedAddr{{Addr: ip, Reason: "self"}}
		h.Reason = "self"
		rt.Dropped = append(rt.Dropped, h)
		return nil, routeError(rt, true, codeLoop, ErrLoopsToSelf, "address literal is one of our addresses")
	}
	if why := prohibited(ip); why != "" && !r.cfg.AllowPrivate {
		h.Skipped = []SkippedAddr{{Addr: ip, Reason: why}}
		h.Reason = "no usable address (" + why + ")"
		rt.Dropped = append(rt.Dropped, h)
		return nil, routeError(rt, true, codeNoHostP, ErrNoHost, "address literal is "+why)
	}
	h.Addrs = []netip.Addr{ip}
	rt.Hosts = []Host{h}
	return rt, nil
}

// mxCandidates makes the MX query and returns the hosts to resolve, in
// order, or the error that ends routing.
func (r *Resolver) mxCandidates(ctx context.Context, rt *Route) ([]*candidate, *Error) {
	res := r.resolve(ctx, rt.Domain, dns.TypeMX, &rt.Trace)
	switch res.status {
	case statusNXDomain:
		return nil, routeError(rt, true, codeBadDomain, ErrNXDomain, "domain does not exist (NXDOMAIN)")
	case statusFailed:
		return nil, routeError(rt, false, codeDNS, ErrDNS, "MX lookup failed: "+res.detail)
	case statusLoop:
		return nil, routeError(rt, false, codeDNS, ErrCNAMELoop, "MX lookup: "+res.detail)
	case statusNoData:
		rt.Implicit = true
		return []*candidate{{Host: Host{Name: rt.Domain}}}, nil
	}
	return r.mxHosts(rt, res.records)
}

// mxHosts turns MX records into candidates: null MX recognised, malformed
// targets dropped, duplicates merged at their best preference, sorted by
// preference with equal preferences shuffled, at most maxHosts kept.
func (r *Resolver) mxHosts(rt *Route, rrs []dns.RR) ([]*candidate, *Error) {
	var mxs []*dns.MX
	null := true
	for _, rr := range rrs {
		if mx, ok := rr.(*dns.MX); ok {
			mxs = append(mxs, mx)
			null = null && mx.Mx == "."
		}
	}
	if null {
		return nil, routeError(rt, true, codeNullMX, ErrNullMX, "domain accepts no mail (null MX, RFC 7505)")
	}
	var cands []*candidate
	byName := make(map[string]*candidate)
	for _, mx := range mxs {
		name, why := mxTarget(mx.Mx)
		if why != "" {
			rt.Dropped = append(rt.Dropped, Host{Name: cmp.Or(name, "."), Pref: mx.Preference, Reason: why})
			continue
		}
		if c, ok := byName[name]; ok {
			c.Pref = min(c.Pref, mx.Preference)
			continue
		}
		c := &candidate{Host: Host{Name: name, Pref: mx.Preference}}
		byName[name] = c
		cands = append(cands, c)
	}
	slices.SortStableFunc(cands, func(a, b *candidate) int { return cmp.Compare(a.Pref, b.Pref) })
	for i := 0; i < len(cands); {
		j := i + 1
		for j < len(cands) && cands[j].Pref == cands[i].Pref {
			j++
		}
		if j-i > 1 {
			group := cands[i:j]
			r.shuffle(len(group), func(a, b int) { group[a], group[b] = group[b], group[a] })
		}
		i = j
	}
	if len(cands) > maxHosts {
		for _, c := range cands[maxHosts:] {
			rt.Dropped = append(rt.Dropped, Host{Name: c.Name, Pref: c.Pref,
				Reason: fmt.Sprintf("beyond the first %d hosts", maxHosts)})
		}
		cands = cands[:maxHosts]
	}
	return cands, nil
}

// resolveHosts looks up the addresses of every candidate that could be
// used, concurrently, and appends their traces to rt in host order. A host
// named like us is not looked up, nor is any host it makes unusable.
func (r *Resolver) resolveHosts(ctx context.Context, rt *Route, cands []*candidate) {
	nameSelf := math.MaxInt
	for _, c := range cands {
		if r.selfName != "" && c.Name == r.selfName {
			c.selfName = true
			nameSelf = min(nameSelf, int(c.Pref))
		}
	}
	var wg sync.WaitGroup
	for _, c := range cands {
		if int(c.Pref) < nameSelf {
			wg.Go(func() { r.resolveHost(ctx, c) })
		}
	}
	wg.Wait()
	for _, c := range cands {
		rt.Trace = append(rt.Trace, c.trace...)
	}
}

// resolveHost fills c's addresses (A, then AAAA unless A said NXDOMAIN),
// marks it self, and gives the reason when it has no usable address.
func (r *Resolver) resolveHost(ctx context.Context, c *candidate) {
	a := r.resolve(ctx, c.Name, dns.TypeA, &c.trace)
	aaaa := a
	if a.status != statusNXDomain {
		aaaa = r.resolve(ctx, c.Name, dns.TypeAAAA, &c.trace)
	}
	all := hostAddrs(a.records, aaaa.records)
	for _, ip := range all {
		switch why := prohibited(ip); {
		case r.self[ip]:
			c.selfAddr = true
			c.Skipped = append(c.Skipped, SkippedAddr{Addr: ip, Reason: "self"})
		case why != "" && !r.cfg.AllowPrivate:
			c.Skipped = append(c.Skipped, SkippedAddr{Addr: ip, Reason: why})
		default:
			c.Addrs = append(c.Addrs, ip)
		}
	}
	switch {
	case c.selfAddr || len(c.Addrs) > 0:
	case len(all) > 0:
		c.Reason = "no usable address (all prohibited)"
	case a.status.temporary() || aaaa.status.temporary():
		c.temp = true
		c.Reason = "address lookup failed: " + strings.Trim(a.detail+"; "+aaaa.detail, "; ")
	case a.status == statusNXDomain:
		c.Reason = "host does not exist (NXDOMAIN)"
	default:
		c.Reason = "no A or AAAA records"
	}
}

// hostAddrs are the addresses of A and AAAA records, unmapped, without
// duplicates, in the order given, at most maxFamilyAddrs of each record
// type: a hostile answer of thousands of records costs no more than a
// normal one.
func hostAddrs(as, aaaas []dns.RR) []netip.Addr {
	var out []netip.Addr
	for _, rrs := range [][]dns.RR{as, aaaas} {
		n := 0
		for _, rr := range rrs {
			var ip netip.Addr
			switch rr := rr.(type) {
			case *dns.A:
				ip, _ = netip.AddrFromSlice(rr.A)
			case *dns.AAAA:
				ip, _ = netip.AddrFromSlice(rr.AAAA)
			}
			ip = ip.Unmap()
			if ip.IsValid() && !slices.Contains(out, ip) {
				out = append(out, ip)
				if n++; n == maxFamilyAddrs {
					break
				}
			}
		}
	}
	return out
}

// finish applies the self rule (RFC 5321 §5.1: drop ourselves and every
// host of equal or worse preference), moves hosts to rt.Hosts or
// rt.Dropped, and returns the error when no host is usable.
func (r *Resolver) finish(rt *Route, cands []*candidate) *Error {
	selfPref := math.MaxInt
	for _, c := range cands {
		if c.selfName || c.selfAddr {
			selfPref = min(selfPref, int(c.Pref))
		}
	}
	left, temp := 0, false
	for _, c := range cands {
		switch {
		case c.selfName:
			c.Reason = "self: our host name"
		case c.selfAddr:
			c.Reason = "self: one of our addresses"
		case int(c.Pref) >= selfPref:
			c.Reason = fmt.Sprintf("preference %d is not better than ours (%d)", c.Pref, selfPref)
		default:
			left++
			temp = temp || c.temp
		}
		if c.Reason == "" {
			rt.Hosts = append(rt.Hosts, c.Host)
		} else {
			rt.Dropped = append(rt.Dropped, c.Host)
		}
	}
	slices.SortStableFunc(rt.Dropped, func(a, b Host) int { return cmp.Compare(a.Pref, b.Pref) })
	switch {
	case len(rt.Hosts) > 0:
		return nil
	case selfPref != math.MaxInt && left == 0:
		return routeError(rt, true, codeLoop, ErrLoopsToSelf, "mail loops back to myself")
	case temp:
		return routeError(rt, false, codeNoHostT, ErrNoHost, "no usable mail host: "+dropSummary(rt.Dropped))
	}
	return routeError(rt, true, codeNoHostP, ErrNoHost, "no usable mail host: "+dropSummary(rt.Dropped))
}

// dropSummary names the first few dropped hosts and why.
func dropSummary(hs []Host) string {
	var parts []string
	for i, h := range hs {
		if i == 3 {
			parts = append(parts, fmt.Sprintf("and %d more", len(hs)-i))
			break
		}
		parts = append(parts, h.Name+": "+h.Reason)
	}
	if len(parts) == 0 {
		return "no MX host"
	}
	return strings.Join(parts, "; ")
}
