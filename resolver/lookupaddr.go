package resolver

import (
	"context"
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// maxPTRNames bounds the names LookupPTR returns.
const maxPTRNames = 16

// LookupPTR returns the names an address maps back to (lowercase, without
// the trailing dot), following CNAMEs (RFC 2317 delegations use them). No
// PTR records is an *Error with ErrNXDomain or ErrNoData (permanent); a
// failed lookup is an *Error with ErrDNS or ErrCNAMELoop (temporary).
func (r *Resolver) LookupPTR(ctx context.Context, ip netip.Addr) ([]string, error) {
	ip = ip.Unmap().WithZone("")
	arpa, err := dns.ReverseAddr(ip.String())
	if err != nil {
		return nil, &Error{Permanent: true, Enhanced: codeBadDomain, Domain: ip.String(),
			Reason: "invalid address", Err: ErrInvalidDomain}
	}
	var tr []Exchange
	res := r.resolve(ctx, arpa, dns.TypePTR, &tr)
	if err := lookupError(res, ip.String(), "PTR", tr); err != nil {
		return nil, err
	}
	var names []string
	for _, rr := range res.records {
		if p, ok := rr.(*dns.PTR); ok && len(names) < maxPTRNames {
			names = append(names, hostKey(p.Ptr))
		}
	}
	return names, nil
}

// CachedPTR is LookupPTR answered from the cache alone: it never waits and
// never sends a query. ok is false when the answer is not cached or has a
// CNAME to follow; then call LookupPTR. A cached negative or failed answer
// is ok with no names. smtpd names its client with it before starting a
// lookup of its own.
func (r *Resolver) CachedPTR(ip netip.Addr) (names []string, ok bool) {
	ip = ip.Unmap().WithZone("")
	arpa, err := dns.ReverseAddr(ip.String())
	if err != nil {
		return nil, false
	}
	a, age, hit := r.cache.get(cacheKey{name: arpa, qtype: dns.TypePTR}, r.cfg.Now())
	if !hit {
		return nil, false
	}
	data, chain := follow(a.rrs, arpa, dns.TypePTR)
	if len(chain) > 0 {
		return nil, false
	}
	ex := Exchange{Name: arpa, Type: "PTR", Rcode: rcodeText(a.rcode), Cached: true, Err: a.err}
	ex.Answer, ex.Omitted = aged(a.recs, uint32(age.Seconds())), a.omitted
	r.report(context.Background(), ex, a, 0)
	for _, rr := range data {
		if p, isPTR := rr.(*dns.PTR); isPTR && len(names) < maxPTRNames {
			names = append(names, hostKey(p.Ptr))
		}
	}
	return names, true
}

// LookupAddrs returns the A and AAAA addresses of host (normalised like a
// domain; it must have a dot), as the server gave them, A first, without
// the prohibited-address rule: it is for checking our own name. When one
// family has addresses and the other fails, the addresses come back with
// the error.
func (r *Resolver) LookupAddrs(ctx context.Context, host string) ([]netip.Addr, error) {
	name, lit, err := normalizeDomain(r.idna, host)
	if err != nil || lit.IsValid() {
		return nil, &Error{Permanent: true, Enhanced: codeBadDomain, Domain: host,
			Reason: "not a host name", Err: ErrInvalidDomain}
	}
	var tr []Exchange
	a := r.resolve(ctx, name, dns.TypeA, &tr)
	aaaa := a
	if a.status != statusNXDomain {
		aaaa = r.resolve(ctx, name, dns.TypeAAAA, &tr)
	}
	addrs := hostAddrs(a.records, aaaa.records)
	for _, res := range []result{a, aaaa} {
		if res.status.temporary() {
			return addrs, lookupError(res, name, "A/AAAA", tr)
		}
	}
	if len(addrs) == 0 {
		if a.status == statusNXDomain {
			return nil, lookupError(a, name, "A/AAAA", tr)
		}
		return nil, lookupError(result{status: statusNoData}, name, "A/AAAA", tr)
	}
	return addrs, nil
}

// lookupError is the *Error for a result that has no records, or nil.
func lookupError(res result, name, what string, tr []Exchange) error {
	e := &Error{Domain: name, Trace: tr}
	switch res.status {
	case statusOK:
		return nil
	case statusNXDomain:
		e.Permanent, e.Enhanced, e.Err = true, codeBadDomain, ErrNXDomain
		e.Reason = "name does not exist (NXDOMAIN)"
	case statusNoData:
		e.Permanent, e.Enhanced, e.Err = true, codeBadDomain, ErrNoData
		e.Reason = "no " + what + " records"
	case statusLoop:
		e.Enhanced, e.Err, e.Reason = codeDNS, ErrCNAMELoop, res.detail
	default:
		e.Enhanced, e.Err = codeDNS, ErrDNS
		e.Reason = strings.TrimSpace(what + " lookup failed: " + res.detail)
	}
	return e
}
