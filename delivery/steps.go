package delivery

// The route an attempt went along: every host it passed over (and why),
// every host or address that failed (and how), and the host whose reply
// settled each recipient. It is stored in each recipient's spool.Attempt,
// so `mta queue show` and `mta lab status` show MX fallback as it happened.

import (
	"errors"
	"slices"

	"mta/resolver"
	"mta/spool"
)

// phaseSkip marks a route step for a host or address not dialled.
const phaseSkip = "skip"

func errStep(ae *AttemptError) spool.RouteStep {
	return spool.RouteStep{Host: ae.Host, IP: ae.IP, Phase: ae.Phase, Code: ae.Code, Enhanced: ae.Enhanced, Text: ae.Text}
}

func resultStep(r result) spool.RouteStep {
	return spool.RouteStep{Host: r.host, IP: r.ip, Phase: r.phase, Code: r.code, Enhanced: r.enhanced, Text: r.text}
}

// step notes one step of the route, up to what the spool keeps.
func (a *attempt) step(s spool.RouteStep) {
	if len(a.steps) < spool.MaxRouteSteps {
		a.steps = append(a.steps, s)
	}
}

// routeTo is the route that led to r, a reply in a session: the steps so
// far, then r.
func (a *attempt) routeTo(r result) []spool.RouteStep {
	return append(slices.Clip(a.steps), resultStep(r))
}

// skipHosts notes hosts the resolver left out of the route.
func (a *attempt) skipHosts(hosts []resolver.Host) {
	for _, h := range hosts {
		a.step(spool.RouteStep{Host: h.Name, Phase: phaseSkip, Text: h.Reason})
	}
}

// skipAddrs notes addresses of a usable host that are not dialled.
func (a *attempt) skipAddrs(h mxHost) {
	for _, s := range h.skipped {
		a.step(spool.RouteStep{Host: h.name, IP: s.Addr.String(), Phase: phaseSkip, Text: s.Reason})
	}
}

// routeFailed notes a route that could not be had: the hosts the resolver
// dropped, when that is why, and the failure itself, under the domain's
// name.
func (a *attempt) routeFailed(ae *AttemptError, domain string) {
	var re *resolver.Error
	if errors.As(ae, &re) {
		a.skipHosts(re.Dropped)
	}
	a.fail(ae)
	if n := len(a.steps); n > 0 && a.steps[n-1].Host == "" {
		a.steps[n-1].Host = domain
	}
}

// withDropped puts the hosts the resolver dropped among the usable ones,
// in MX preference order, so the route shows them where they would have
// been tried.
func withDropped(hosts []mxHost, dropped []resolver.Host) []mxHost {
	if len(dropped) == 0 {
		return hosts
	}
	out := make([]mxHost, 0, len(hosts)+len(dropped))
	i := 0
	for _, d := range dropped {
		for i < len(hosts) && hosts[i].pref <= d.Pref {
			out = append(out, hosts[i])
			i++
		}
		out = append(out, mxHost{name: d.Name, pref: d.Pref, skip: d.Reason})
	}
	return append(out, hosts[i:]...)
}
