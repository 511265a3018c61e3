package resolver

import (
	"context"
	"errors"
	"strings"

	"github.com/miekg/dns"
)

// status is the outcome of looking up one (name, type), CNAMEs followed.
type status int

const (
	statusOK       status = iota // records found
	statusNoData                 // the name exists without records of the type
	statusNXDomain               // the name (or the end of its chain) does not exist
	statusFailed                 // no server gave NOERROR or NXDOMAIN
	statusLoop                   // the CNAME chain loops or is too long
)

// temporary reports whether the outcome may change on a later try.
func (s status) temporary() bool { return s == statusFailed || s == statusLoop }

// result is the outcome of resolve.
type result struct {
	status  status
	records []dns.RR // of the asked type, at the end of the chain
	detail  string   // for statusFailed: the last rcode or transport error
}

// resolve looks up (name, qtype), following CNAMEs: first through the
// answer itself, then by asking for the end of the chain when the answer
// stops there without data and without an SOA that covers the end. Every exchange and cache answer is appended to
// tr.
func (r *Resolver) resolve(ctx context.Context, name string, qtype uint16, tr *[]Exchange) result {
	cur := strings.ToLower(dns.Fqdn(name))
	seen := map[string]bool{cur: true}
	hops := 0
	for {
		a := r.query(ctx, cur, qtype, tr)
		if a.rcode != dns.RcodeSuccess && a.rcode != dns.RcodeNameError {
			detail := rcodeText(a.rcode)
			if a.err != "" {
				detail += ": " + a.err
			}
			return result{status: statusFailed, detail: detail}
		}
		data, chain := follow(a.rrs, cur, qtype)
		for _, c := range chain {
			hops++
			cur = strings.ToLower(dns.Fqdn(c.Target))
			if seen[cur] || hops > maxCNAMEHops {
				return result{status: statusLoop, detail: "CNAME chain loops or is too long at " + cur}
			}
			seen[cur] = true
		}
		switch {
		case a.rcode == dns.RcodeNameError:
			// RFC 6604: the rcode speaks of the last name of the chain.
			return result{status: statusNXDomain}
		case len(data) > 0:
			return result{status: statusOK, records: data}
		case len(chain) == 0:
			return result{status: statusNoData}
		case a.soa != nil && dns.IsSubDomain(a.soa.Hdr.Name, cur):
			// RFC 2308 §2.2: a NODATA answer for the end of the chain,
			// from a server that holds the end's zone.
			return result{status: statusNoData}
		}
		// The chain ended without data and without a word on its end (an
		// authoritative-only server that does not hold the end's zone):
		// ask for the end.
	}
}

// query answers one (name, qtype) from the cache or by exchanges shared
// with concurrent callers, and appends what it used to tr.
func (r *Resolver) query(ctx context.Context, name string, qtype uint16, tr *[]Exchange) *answer {
	key := cacheKey{name: name, qtype: qtype}
	for {
		if a, age, ok := r.cache.get(key, r.cfg.Now()); ok {
			ex := Exchange{Name: name, Type: dns.TypeToString[qtype], Rcode: rcodeText(a.rcode), Cached: true, Err: a.err}
			ex.Answer, ex.Omitted = aged(a.recs, uint32(age.Seconds())), a.omitted
			*tr = append(*tr, ex)
			r.report(ctx, ex, a, 0)
			return a
		}
		err := ctx.Err() // a caller that has given up starts no exchange
		var exs []Exchange
		var a *answer
		if err == nil {
			a, exs, err = r.flights.do(ctx, r.log, key, func() bool { return r.cache.has(key, r.cfg.Now()) }, r.fetch(key))
		}
		if errors.Is(err, errCachedMeanwhile) {
			continue
		}
		if err != nil {
			a = &answer{rcode: rcodeError, err: "lookup abandoned: " + err.Error()}
			if isTimeout(err) {
				a.rcode = rcodeTimeout
			}
			*tr = append(*tr, Exchange{Name: name, Type: dns.TypeToString[qtype], Rcode: rcodeText(a.rcode), Err: a.err})
			return a
		}
		*tr = append(*tr, exs...)
		return a
	}
}

// fetch is the flight for key: the exchanges, then the cache.
func (r *Resolver) fetch(key cacheKey) func(context.Context) (*answer, []Exchange) {
	return func(ctx context.Context) (*answer, []Exchange) {
		a, exs := r.exchangeAll(ctx, key.name, key.qtype)
		r.cache.put(key, a, r.cfg.Now(), ttlFor(a, r.cfg.MaxTTL))
		return a, exs
	}
}
