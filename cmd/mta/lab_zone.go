package main

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	"mta/internal/peer"
)

// labHostSpec is one lab host: a loopback address an MX record leads to
// (or a name lab.yaml lists), its names, and how it answers.
type labHostSpec struct {
	Addr  netip.Addr
	Names []string // sorted; the first names the host in greetings
	Conf  labHostConfig
}

// labZoneView is what the lab needs to know of a zone: the addresses and
// CNAMEs of its names, and the MX targets.
type labZoneView struct {
	addrs   map[string][]netip.Addr
	cnames  map[string]string
	ptrs    map[string]string // reverse name ("1.0.0.127.in-addr.arpa") → PTR target
	targets []string          // MX targets, in zone order, without duplicates
}

func newLabZoneView(text string) (*labZoneView, error) {
	rrs, err := peer.ParseZone(text, "")
	if err != nil {
		return nil, err
	}
	z := &labZoneView{addrs: map[string][]netip.Addr{}, cnames: map[string]string{}, ptrs: map[string]string{}}
	for _, rr := range rrs {
		name := labName(rr.Header().Name)
		switch r := rr.(type) {
		case *dns.A:
			if a, ok := netip.AddrFromSlice(r.A.To4()); ok {
				z.addrs[name] = append(z.addrs[name], a)
			}
		case *dns.AAAA:
			if a, ok := netip.AddrFromSlice(r.AAAA); ok {
				z.addrs[name] = append(z.addrs[name], a)
			}
		case *dns.CNAME:
			z.cnames[name] = labName(r.Target)
		case *dns.PTR:
			if _, ok := z.ptrs[name]; !ok {
				z.ptrs[name] = labName(r.Ptr)
			}
		case *dns.MX:
			if t := labName(r.Mx); t != "" && !slices.Contains(z.targets, t) {
				z.targets = append(z.targets, t)
			}
		}
	}
	return z, nil
}

// labName is a zone name as mail uses it: lowercase, no trailing dot.
func labName(n string) string { return strings.TrimSuffix(strings.ToLower(n), ".") }

// resolve follows name's CNAMEs inside the zone to its addresses.
func (z *labZoneView) resolve(name string) []netip.Addr {
	for range 16 {
		if a := z.addrs[name]; len(a) > 0 {
			return a
		}
		next, ok := z.cnames[name]
		if !ok {
			return nil
		}
		name = next
	}
	return nil // a CNAME loop or a long chain
}

// reverseName is what a receiving host's reverse lookup of ip finds in the
// zone: the PTR name, when that name's addresses include ip (forward-
// confirmed, as Postfix checks before it writes a name into Received);
// else "".
func (z *labZoneView) reverseName(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ""
	}
	rev, err := dns.ReverseAddr(a.Unmap().String())
	if err != nil {
		return ""
	}
	name := z.ptrs[labName(rev)]
	if name == "" || !slices.Contains(z.resolve(name), a.Unmap()) {
		return ""
	}
	return name
}

// labHosts finds the lab hosts: every loopback address of every MX target
// and of every name lab.yaml lists, but not the MTA's own addresses. The
// notes say what was left out and why.
func labHosts(z *labZoneView, conf map[string]labHostConfig, mta []netip.Addr) (hosts []labHostSpec, notes []string, err error) {
	byAddr := map[netip.Addr]*labHostSpec{}
	names := append(slices.Clone(z.targets), sortedKeys(conf)...)
	for _, name := range names {
		addrs := z.resolve(name)
		_, listed := conf[name]
		if len(addrs) == 0 && listed {
			return nil, nil, fmt.Errorf("lab config: hosts.%s: the zone gives it no address", name)
		}
		for _, a := range addrs {
			switch {
			case slices.Contains(mta, a):
				if listed {
					return nil, nil, fmt.Errorf("lab config: hosts.%s: %s is the MTA's own address", name, a)
				}
				notes = append(notes, fmt.Sprintf("%s (%s) is the MTA's own address: no lab host there (the MTA drops it as itself)", name, a))
				continue
			case !a.Is4() || !a.IsLoopback():
				notes = append(notes, fmt.Sprintf("%s (%s) is not a 127.0.0.x address: no lab host there", name, a))
				continue
			}
			h := byAddr[a]
			if h == nil {
				h = &labHostSpec{Addr: a}
				byAddr[a] = h
			}
			if !slices.Contains(h.Names, name) {
				h.Names = append(h.Names, name)
			}
		}
	}
	for _, h := range byAddr {
		slices.Sort(h.Names)
		if h.Conf, err = hostConf(h.Names, conf); err != nil {
			return nil, nil, err
		}
		hosts = append(hosts, *h)
	}
	slices.SortFunc(hosts, func(a, b labHostSpec) int { return a.Addr.Compare(b.Addr) })
	return hosts, notes, nil
}

// hostConf is the behaviour lab.yaml gives a host under any of its names.
func hostConf(names []string, conf map[string]labHostConfig) (labHostConfig, error) {
	var found labHostConfig
	from := ""
	for _, n := range names {
		c, ok := conf[n]
		if !ok {
			continue
		}
		if from != "" {
			return found, fmt.Errorf("lab config: hosts.%s and hosts.%s are one host (one address): give only one", from, n)
		}
		found, from = c, n
	}
	if found.Behaviour == "" {
		found.Behaviour = "accept"
	}
	return found, nil
}

// behaviour is the SMTP peer's script for a host.
func (h labHostSpec) behaviour() peer.Behaviour {
	b := peer.Behaviour{Domain: h.Names[0]}
	c := h.Conf
	switch c.Behaviour {
	case "refuse":
		b.Refuse = true
	case "greet421":
		b.Greeting = &peer.Reply{Code: 421, Enhanced: "4.3.2", Text: "busy, try another host"}
	case "reject":
		b.RcptReplies = map[string]peer.Reply{}
		for rcpt, code := range c.Reject {
			r := rejectReply(code)
			if rcpt == "*" {
				b.Rcpt = &r
			} else {
				b.RcptReplies[rcpt] = r
			}
		}
	case "slow":
		b.Delay = time.Duration(c.Delay)
	case "hang":
		b.Hang = c.Hang
	}
	return b
}

// rejectReply is the reply of a host rejecting a recipient with code.
func rejectReply(code int) peer.Reply {
	switch {
	case code == 550:
		return peer.Reply{Code: code, Enhanced: "5.1.1", Text: "no such mailbox here"}
	case code == 450:
		return peer.Reply{Code: code, Enhanced: "4.2.1", Text: "mailbox busy, try again later"}
	case code >= 500:
		return peer.Reply{Code: code, Enhanced: "5.0.0", Text: "rejected by the lab"}
	}
	return peer.Reply{Code: code, Enhanced: "4.0.0", Text: "deferred by the lab"}
}

// describe is the behaviour in a few words, for the lab's table.
func (c labHostConfig) describe() string {
	switch c.Behaviour {
	case "reject":
		var parts []string
		for _, rcpt := range sortedKeys(c.Reject) {
			parts = append(parts, fmt.Sprintf("%s %d", rcpt, c.Reject[rcpt]))
		}
		return "reject " + strings.Join(parts, ", ")
	case "slow":
		return "slow (" + time.Duration(c.Delay).String() + " per reply)"
	case "hang":
		return "hang at " + c.Hang
	case "refuse":
		return "refuse connections"
	case "greet421":
		return "greet 421"
	}
	return "accept"
}
