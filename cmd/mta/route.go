package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	"mta/delivery"
	"mta/resolver"
)

// resolvConf is where the system's DNS servers are read from when no
// --server is given. Only cmd/mta reads it; search and ndots are ignored.
const resolvConf = "/etc/resolv.conf"

// routeOptions are the flags of `mta route`.
type routeOptions struct {
	json         bool
	servers      []string
	allowPrivate bool
	hostname     string
	selfAddrs    []netip.Addr // from --config: the daemon's listeners and proxy_addresses
	timeout      time.Duration
	config       string
	// from --config: the next hops that take some domains instead of
	// their MX hosts (AUTH passwords not read)
	routes map[string]delivery.NextHop
	relay  *delivery.Relayhost
}

func runRoute(ctx context.Context, args []string, stdio Stdio) error {
	fs := newFlagSet("route", "DOMAIN [--json] [--server ADDR:PORT]... [--allow-private] [--hostname NAME] [--config FILE]", stdio)
	var o routeOptions
	fs.BoolVar(&o.json, "json", false, "print the route as JSON")
	fs.Func("server", "ask this DNS server (ip or ip:port; repeat for several) instead of those in "+resolvConf,
		func(s string) error { o.servers = append(o.servers, s); return nil })
	fs.BoolVar(&o.allowPrivate, "allow-private", false, "allow loopback and private addresses (lab zones)")
	fs.StringVar(&o.hostname, "hostname", "", "our host name, so that an MX naming us counts as self")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Second, "timeout of one DNS exchange")
	fs.StringVar(&o.config, "config", "", "take dns servers and timeout, hostname, allow_private_mx, the listener and proxy addresses that count as self, and routes and relayhost, from this config file (flags win)")
	pos, done, err := parseInterspersed(fs, args, stdio)
	if done {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errUsage
	}
	if o.config != "" {
		if err := o.applyConfig(fs); err != nil {
			return exitf(exitConfig, "%v", err)
		}
	}
	if len(o.servers) == 0 {
		if o.servers, err = systemServers(resolvConf); err != nil {
			return exitf(exitConfig, "%v (use --server ADDR:PORT)", err)
		}
	}
	r, err := resolver.New(resolver.Config{Servers: o.servers, Timeout: o.timeout,
		Hostname: o.hostname, SelfAddrs: o.selfAddrs, AllowPrivate: o.allowPrivate})
	if err != nil {
		return exitf(exitUsage, "%v", err)
	}
	if hop, via := delivery.ConfiguredHop(o.routes, o.relay, pos[0]); via != "" {
		return showNextHop(ctx, r, nextHopQuery{domain: pos[0], hop: hop, via: via, config: o.config, json: o.json}, stdio)
	}
	rt, err := r.Route(ctx, pos[0])
	var re *resolver.Error
	if err != nil && !errors.As(err, &re) {
		return exitf(exitSoftware, "route %s: %v", pos[0], err)
	}
	if o.json {
		err = printRouteJSON(stdio.Out, rt, re)
	} else {
		err = printRoute(stdio.Out, rt, re)
	}
	if err != nil {
		return exitf(exitFailure, "write: %v", err)
	}
	return routeExit(re)
}

// applyConfig takes the daemon's resolver settings from o.config for every
// flag not given, so that `mta route` sees what the daemon would.
func (o *routeOptions) applyConfig(fs *flag.FlagSet) error {
	c, err := LoadConfig(o.config)
	if err != nil {
		return err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if !given["server"] {
		o.servers = c.DNS.Servers
	}
	if !given["timeout"] && c.DNS.Timeout > 0 {
		o.timeout = time.Duration(c.DNS.Timeout)
	}
	if !given["hostname"] {
		o.hostname = c.Hostname
	}
	if !given["allow-private"] {
		o.allowPrivate = c.Delivery.AllowPrivateMX
	}
	o.selfAddrs = configSelfAddrs(c)
	o.routes = make(map[string]delivery.NextHop, len(c.Routes))
	for dom, r := range c.Routes {
		o.routes[dom] = hopOf(r)
	}
	if c.Relayhost != nil {
		o.relay = &delivery.Relayhost{NextHop: hopOf(c.Relayhost.Route), Domains: c.Relayhost.Domains}
	}
	return nil
}

// configSelfAddrs are the addresses the daemon of c counts as its own, as
// selfAddrs finds them once it has bound its listeners: each listener's
// address (every interface address for a wildcard one) and
// delivery.proxy_addresses.
func configSelfAddrs(c *Config) []netip.Addr {
	var out []netip.Addr
	wildcard := false
	for _, l := range slices.Concat(c.Listeners.Relay, c.Listeners.Submission, c.Listeners.Submissions) {
		host, _, err := net.SplitHostPort(l)
		if err != nil {
			continue // refused by LoadConfig already
		}
		ip, err := netip.ParseAddr(host)
		switch {
		case host == "" || (err == nil && ip.IsUnspecified()):
			wildcard = true
		case err == nil:
			out = append(out, ip.Unmap())
		}
	}
	if wildcard {
		if addrs, err := net.InterfaceAddrs(); err == nil {
			for _, a := range addrs {
				if p, err := netip.ParsePrefix(a.String()); err == nil {
					out = append(out, p.Addr().Unmap())
				}
			}
		}
	}
	for _, p := range c.Delivery.ProxyAddrs {
		if ip, err := netip.ParseAddr(p); err == nil {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

// routeExit turns a route error into the exit status a script branches on:
// EX_NOHOST for a permanent failure, EX_TEMPFAIL for a temporary one.
func routeExit(re *resolver.Error) error {
	if re == nil {
		return nil
	}
	if re.Permanent {
		return exitf(exitNoHost, "permanent: no route to %s: %s (%s)", re.Domain, re.Reason, re.Enhanced)
	}
	return exitf(exitTempFail, "temporary: no route to %s now, try later: %s (%s)", re.Domain, re.Reason, re.Enhanced)
}

// parseInterspersed parses flags that may come before or after the
// positional arguments ("mta route example.org --json").
func parseInterspersed(fs *flag.FlagSet, args []string, stdio Stdio) (pos []string, done bool, err error) {
	for {
		if done, err := parseFlags(fs, args, stdio); done {
			return nil, true, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, false, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// systemServers reads the nameserver lines of a resolv.conf file.
func systemServers(path string) ([]string, error) {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("read DNS servers: %w", err)
	}
	if len(cc.Servers) == 0 {
		return nil, fmt.Errorf("read DNS servers: no nameserver in %s", path)
	}
	var out []string
	for _, s := range cc.Servers {
		a, err := netip.ParseAddr(s)
		if err != nil {
			continue // a scoped or malformed entry; the others may do
		}
		out = append(out, netip.AddrPortFrom(a, 53).String())
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("read DNS servers: no usable nameserver in %s", path)
	}
	return out, nil
}

// printRoute writes the route for a person: each DNS step, the hosts in
// the order delivery tries them, and what was dropped and why.
func printRoute(w io.Writer, rt *resolver.Route, re *resolver.Error) error {
	domain, trace, dropped := routeParts(rt, re)
	var b strings.Builder
	fmt.Fprintf(&b, "route to %s\n\nDNS steps:\n", domain)
	width := 0
	for _, ex := range trace {
		width = max(width, len(ex.Name))
	}
	for i, ex := range trace {
		writeExchange(&b, i+1, width, ex)
	}
	if len(trace) == 0 {
		b.WriteString("  " + noSteps(domain, re) + "\n")
	}
	if rt != nil {
		writeHosts(&b, rt)
	}
	if len(dropped) > 0 {
		b.WriteString("\ndropped:\n")
		width = hostWidth(dropped)
		for _, h := range dropped {
			fmt.Fprintf(&b, "  %-*s  pref %-5d %s\n", width, h.Name, h.Pref, h.Reason)
			writeSkipped(&b, h.Skipped)
		}
	}
	if re != nil {
		fmt.Fprintf(&b, "\nno route: %s (%s, %s)\n", re.Reason, kind(re.Permanent), re.Enhanced)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// noSteps says why a route was found or refused without DNS.
func noSteps(domain string, re *resolver.Error) string {
	switch {
	case re != nil && errors.Is(re, resolver.ErrInvalidDomain):
		return "none (not a domain that can be looked up)"
	case strings.HasPrefix(domain, "["):
		return "none (address literal)"
	}
	return "none"
}

func routeParts(rt *resolver.Route, re *resolver.Error) (string, []resolver.Exchange, []resolver.Host) {
	if rt != nil {
		return rt.Domain, rt.Trace, rt.Dropped
	}
	return re.Domain, re.Trace, re.Dropped
}

func kind(permanent bool) string {
	if permanent {
		return "permanent"
	}
	return "temporary"
}

// writeExchange writes one DNS step and its answer records, like
// "  2  A     mx1.example.  NOERROR   192.0.2.53:53 udp  0.5ms".
func writeExchange(b *strings.Builder, n, width int, ex resolver.Exchange) {
	via := "from cache"
	if !ex.Cached {
		via = fmt.Sprintf("%s %s  %s", ex.Server, ex.Proto, fmtDuration(ex.Duration))
	}
	if ex.Truncated {
		via += "  truncated"
	}
	if ex.NoEDNS {
		via += "  without EDNS0"
	}
	fmt.Fprintf(b, "  %2d  %-5s %-*s  %-8s  %s\n", n, ex.Type, width, ex.Name, ex.Rcode, via)
	if ex.Err != "" {
		fmt.Fprintf(b, "        error: %s\n", ex.Err)
	}
	for _, r := range ex.Answer {
		fmt.Fprintf(b, "        %s %d %s %s\n", r.Name, r.TTL, r.Type, r.Data)
	}
	if ex.Omitted > 0 {
		fmt.Fprintf(b, "        ... and %d more records\n", ex.Omitted)
	}
}

func fmtDuration(d time.Duration) string {
	return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
}

func hostWidth(hs []resolver.Host) int {
	w := 0
	for _, h := range hs {
		w = max(w, len(h.Name))
	}
	return w
}

func writeHosts(b *strings.Builder, rt *resolver.Route) {
	what := "MX"
	switch {
	case rt.Literal:
		what = "address literal"
	case rt.Implicit:
		what = "implicit MX: no MX records, the domain's own addresses"
	}
	fmt.Fprintf(b, "\nhosts, in the order delivery tries them (%s):\n", what)
	width := hostWidth(rt.Hosts)
	for i, h := range rt.Hosts {
		var addrs []string
		for _, a := range h.Addrs {
			addrs = append(addrs, a.String())
		}
		fmt.Fprintf(b, "  %d. %-*s  pref %-5d %s\n", i+1, width, h.Name, h.Pref, strings.Join(addrs, " "))
		writeSkipped(b, h.Skipped)
	}
}

func writeSkipped(b *strings.Builder, sk []resolver.SkippedAddr) {
	for _, s := range sk {
		fmt.Fprintf(b, "       skipped %s: %s\n", s.Addr, s.Reason)
	}
}

// routeJSON is the --json form of a route or of its failure.
type routeJSON struct {
	Domain   string         `json:"domain"`
	Implicit bool           `json:"implicit"`
	Literal  bool           `json:"literal"`
	Hosts    []hostJSON     `json:"hosts"`
	Dropped  []hostJSON     `json:"dropped"`
	Trace    []exchangeJSON `json:"trace"`
	Error    *errorJSON     `json:"error,omitempty"`
}

type hostJSON struct {
	Name    string        `json:"name"`
	Pref    uint16        `json:"pref"`
	Addrs   []netip.Addr  `json:"addrs"`
	Skipped []skippedJSON `json:"skipped,omitempty"`
	Reason  string        `json:"reason,omitempty"`
}

type skippedJSON struct {
	Addr   netip.Addr `json:"addr"`
	Reason string     `json:"reason"`
}

type exchangeJSON struct {
	Name       string       `json:"name"`
	Type       string       `json:"type"`
	Server     string       `json:"server,omitempty"`
	Proto      string       `json:"proto,omitempty"`
	Rcode      string       `json:"rcode"`
	Answer     []recordJSON `json:"answer"`
	Omitted    int          `json:"omitted,omitempty"`
	DurationMS float64      `json:"duration_ms"`
	Cached     bool         `json:"cached"`
	Truncated  bool         `json:"truncated,omitempty"`
	NoEDNS     bool         `json:"no_edns,omitempty"`
	Err        string       `json:"error,omitempty"`
}

type recordJSON struct {
	Name string `json:"name"`
	Type string `json:"type"`
	TTL  uint32 `json:"ttl"`
	Data string `json:"data"`
}

type errorJSON struct {
	Permanent bool   `json:"permanent"`
	Enhanced  string `json:"enhanced"`
	Reason    string `json:"reason"`
}

func printRouteJSON(w io.Writer, rt *resolver.Route, re *resolver.Error) error {
	domain, trace, dropped := routeParts(rt, re)
	out := routeJSON{Domain: domain, Hosts: []hostJSON{}, Dropped: hostsJSON(dropped), Trace: []exchangeJSON{}}
	if rt != nil {
		out.Implicit, out.Literal, out.Hosts = rt.Implicit, rt.Literal, hostsJSON(rt.Hosts)
	}
	if re != nil {
		out.Error = &errorJSON{Permanent: re.Permanent, Enhanced: re.Enhanced, Reason: re.Reason}
	}
	for _, ex := range trace {
		ans := []recordJSON{}
		for _, r := range ex.Answer {
			ans = append(ans, recordJSON(r))
		}
		out.Trace = append(out.Trace, exchangeJSON{Name: ex.Name, Type: ex.Type, Server: ex.Server,
			Proto: ex.Proto, Rcode: ex.Rcode, Answer: ans, Omitted: ex.Omitted,
			DurationMS: float64(ex.Duration) / float64(time.Millisecond), Cached: ex.Cached,
			Truncated: ex.Truncated, NoEDNS: ex.NoEDNS, Err: ex.Err})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func hostsJSON(hs []resolver.Host) []hostJSON {
	out := []hostJSON{}
	for _, h := range hs {
		j := hostJSON{Name: h.Name, Pref: h.Pref, Addrs: h.Addrs, Reason: h.Reason}
		if j.Addrs == nil {
			j.Addrs = []netip.Addr{}
		}
		for _, s := range h.Skipped {
			j.Skipped = append(j.Skipped, skippedJSON(s))
		}
		out = append(out, j)
	}
	return out
}
