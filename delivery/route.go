package delivery

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"mta/internal/mailaddr"
	"mta/resolver"
)

// staticRoute is a configured next hop (a route or the relayhost), parsed.
type staticRoute struct {
	key  string
	hops []hop
	tls  TLSPolicy
	auth *Auth
	next NextHop // as configured
	via  string  // "routes" or "relayhost"
}

func newStaticRoute(n NextHop, via string) *staticRoute {
	r := &staticRoute{tls: n.TLS, auth: n.Auth, next: n, via: via}
	if r.tls == "" {
		r.tls = TLSVerify
	}
	for _, h := range n.Hosts {
		if p, err := parseHop(h); err == nil { // Validate reported the others
			r.hops = append(r.hops, p)
		}
	}
	user := ""
	if n.Auth != nil {
		user = n.Auth.Username
	}
	r.key = "relay:" + strings.Join(n.Hosts, ",") + "|" + string(r.tls) + "|" + user
	return r
}

// routes maps recipient domains to configured next hops.
type routes struct {
	byDomain    map[string]*staticRoute
	relay       *staticRoute
	relayDomain map[string]bool // empty: every domain
}

// nextHops are the routes and TLS policies in force.
type nextHops struct {
	routes   *routes
	policies map[string]TLSPolicy
}

// SetNextHops replaces the configured routes, relayhost and per-domain TLS
// policies (SIGHUP). Attempts that start afterwards use them; one already
// queued for a destination keeps the next hop it was queued with. Invalid
// next hops are refused whole and the old ones stay.
func (e *Scheduler) SetNextHops(routes map[string]NextHop, relay *Relayhost, policies map[string]TLSPolicy) error {
	c := e.cfg
	c.Routes, c.Relayhost, c.TLSPolicies = routes, relay, policies
	if err := c.Validate(); err != nil {
		return fmt.Errorf("delivery next hops: %w", err)
	}
	e.storeHops(routes, relay, policies)
	return nil
}

func (e *Scheduler) storeHops(routes map[string]NextHop, relay *Relayhost, policies map[string]TLSPolicy) {
	h := &nextHops{routes: newRoutes(routes, relay), policies: normalizeKeys(policies)}
	for _, r := range h.routes.all() {
		if r.tls != TLSVerify && r.auth != nil {
			e.log.Warn("route sends AUTH without verifying the certificate", "route", r.key, "tls", string(r.tls))
		}
	}
	e.hops.Store(h)
}

func newRoutes(byDomain map[string]NextHop, relay *Relayhost) *routes {
	r := &routes{byDomain: make(map[string]*staticRoute)}
	for d, n := range byDomain {
		if nd, err := mailaddr.NormalizeDomain(d); err == nil {
			r.byDomain[nd] = newStaticRoute(n, "routes")
		}
	}
	if relay != nil {
		r.relay = newStaticRoute(relay.NextHop, "relayhost")
		r.relayDomain = make(map[string]bool)
		for _, d := range relay.Domains {
			if nd, err := mailaddr.NormalizeDomain(d); err == nil {
				r.relayDomain[nd] = true
			}
		}
	}
	return r
}

// lookup returns the configured route of domain, or nil for MX delivery.
func (r *routes) lookup(domain string) *staticRoute {
	if sr := r.byDomain[domain]; sr != nil {
		return sr
	}
	if r.relay != nil && (len(r.relayDomain) == 0 || r.relayDomain[domain]) {
		return r.relay
	}
	return nil
}

// ConfiguredHop is the configured next hop that takes the mail of
// domain, as the scheduler chooses it: the domain's own entry of routes,
// else relay when it covers the domain. via says which ("routes" or
// "relayhost"); it is "" when the domain's mail goes to its MX hosts.
func ConfiguredHop(routes map[string]NextHop, relay *Relayhost, domain string) (hop NextHop, via string) {
	nd, err := mailaddr.NormalizeDomain(domain)
	if err != nil {
		return NextHop{}, ""
	}
	sr := newRoutes(routes, relay).lookup(nd)
	if sr == nil {
		return NextHop{}, ""
	}
	hop = sr.next
	if hop.TLS == "" {
		hop.TLS = TLSVerify
	}
	return hop, sr.via
}

// destKey is the destination queue a recipient domain belongs to.
func (r *routes) destKey(domain string) string {
	if sr := r.lookup(domain); sr != nil {
		return sr.key
	}
	return domain
}

// mxHost is one host of an attempt's route, with how to reach it.
type mxHost struct {
	name     string
	pref     uint16
	addrs    []netip.Addr
	port     int
	implicit bool
	policy   TLSPolicy
	auth     *Auth
	err      *AttemptError // a configured host whose addresses could not be found
	skip     string        // why the resolver left this host out: not dialled
	skipped  []resolver.SkippedAddr
}

// hostsFor is the hosts an attempt on d tries, in order.
func (e *Scheduler) hostsFor(ctx context.Context, j *job) ([]mxHost, *AttemptError) {
	d := j.dest
	if d.static != nil {
		return e.staticHosts(ctx, d.static), nil
	}
	rt, err := e.cfg.Resolver.Route(ctx, d.domain)
	if err != nil {
		ae := classify(err, phaseDNS, "", "")
		ae.Phase = phaseDNS
		return nil, ae
	}
	policy := e.hops.Load().policies[d.domain]
	if policy == "" {
		policy = TLSOpportunistic
	}
	hosts := make([]mxHost, 0, len(rt.Hosts))
	for _, h := range rt.Hosts {
		hosts = append(hosts, mxHost{name: h.Name, pref: h.Pref, addrs: h.Addrs, skipped: h.Skipped, port: e.cfg.Port, policy: policy})
	}
	spreadBest(hosts, j.spread)
	return withDropped(hosts, rt.Dropped), nil
}

// spreadBest rotates the hosts of the best preference by n, so new
// connections are spread across equal-preference hosts.
func spreadBest(hosts []mxHost, n int) {
	k := 0
	for k < len(hosts) && hosts[k].pref == hosts[0].pref {
		k++
	}
	if k > 1 {
		r := n % k
		rotated := append(append([]mxHost(nil), hosts[r:k]...), hosts[:r]...)
		copy(hosts, rotated)
	}
}

func (e *Scheduler) staticHosts(ctx context.Context, sr *staticRoute) []mxHost {
	hosts := make([]mxHost, 0, len(sr.hops))
	for _, hp := range sr.hops {
		h := mxHost{name: hp.String(), port: hp.port, implicit: hp.port == 465, policy: sr.tls, auth: sr.auth}
		if hp.addr.IsValid() {
			h.addrs = []netip.Addr{hp.addr}
		} else if addrs, err := e.cfg.Resolver.LookupAddrs(ctx, hp.name); len(addrs) > 0 {
			h.addrs = addrs
		} else {
			if err == nil {
				err = errors.New("no addresses")
			}
			h.err = classify(err, phaseDNS, hp.name, "")
			h.err.Phase, h.err.Permanent = phaseDNS, false
		}
		hosts = append(hosts, h)
	}
	return hosts
}

// orderAddrs applies the IP family policy: "any" alternates families
// starting with the first DNS gave.
func orderAddrs(addrs []netip.Addr, fam IPFamily) []netip.Addr {
	var v4, v6 []netip.Addr
	for _, a := range addrs {
		if a.Unmap().Is4() {
			v4 = append(v4, a.Unmap())
		} else {
			v6 = append(v6, a)
		}
	}
	switch fam {
	case FamilyIPv4:
		return v4
	case FamilyIPv6:
		return v6
	case FamilyPreferIPv4:
		return append(v4, v6...)
	}
	first, second := v4, v6
	if len(addrs) > 0 && !addrs[0].Unmap().Is4() {
		first, second = v6, v4
	}
	out := make([]netip.Addr, 0, len(addrs))
	for i := 0; i < len(first) || i < len(second); i++ {
		if i < len(first) {
			out = append(out, first[i])
		}
		if i < len(second) {
			out = append(out, second[i])
		}
	}
	return out
}

// normalizeKeys returns m with its domain keys normalised; Validate has
// reported the keys that do not normalise.
func normalizeKeys[V any](m map[string]V) map[string]V {
	out := make(map[string]V, len(m))
	for k, v := range m {
		if nk, err := mailaddr.NormalizeDomain(k); err == nil {
			out[nk] = v
		}
	}
	return out
}
