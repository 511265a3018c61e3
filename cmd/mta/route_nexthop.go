package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	"mta/delivery"
	"mta/resolver"
)

// nextHopQuery is a domain whose mail a configured route or the relayhost
// takes, as `mta route --config` shows it.
type nextHopQuery struct {
	domain string
	hop    delivery.NextHop
	via    string // "routes" or "relayhost"
	config string
	json   bool
}

// nextHopHost is one configured host and the addresses delivery would dial.
type nextHopHost struct {
	Host     string       `json:"host"`
	Port     int          `json:"port"`
	Implicit bool         `json:"implicit_tls"`
	Addrs    []netip.Addr `json:"addrs"`
	Err      string       `json:"error,omitempty"`
}

// showNextHop prints the configured next hop of q.domain instead of its MX
// route, since delivery never asks for the domain's MX records then: each
// host with the addresses it resolves to, in the order they are tried.
// Like a route, no usable host is a temporary failure.
func showNextHop(ctx context.Context, r *resolver.Resolver, q nextHopQuery, stdio Stdio) error {
	hosts := make([]nextHopHost, 0, len(q.hop.Hosts))
	usable := 0
	for _, h := range q.hop.Hosts {
		nh := lookupHop(ctx, r, h)
		if len(nh.Addrs) > 0 {
			usable++
		}
		hosts = append(hosts, nh)
	}
	var err error
	if q.json {
		err = printNextHopJSON(stdio, q, hosts)
	} else {
		err = printNextHop(stdio, q, hosts)
	}
	if err != nil {
		return exitf(exitFailure, "write: %v", err)
	}
	if usable == 0 {
		return exitf(exitTempFail, "temporary: no host of the %s next hop of %s has an address now, try later", q.via, q.domain)
	}
	return nil
}

// lookupHop reads the configured host s as delivery does and finds its
// addresses: a literal is its own address.
func lookupHop(ctx context.Context, r *resolver.Resolver, s string) nextHopHost {
	hh, err := delivery.ParseHopHost(s)
	if err != nil { // check-config refuses it; shown rather than hidden
		return nextHopHost{Host: s, Err: err.Error()}
	}
	nh := nextHopHost{Host: hh.Name, Port: hh.Port, Implicit: hh.Port == 465}
	if hh.Addr.IsValid() {
		nh.Host, nh.Addrs = hh.Addr.String(), []netip.Addr{hh.Addr}
		return nh
	}
	addrs, err := r.LookupAddrs(ctx, hh.Name)
	nh.Addrs = addrs
	if err != nil {
		nh.Err = err.Error()
	}
	return nh
}

func printNextHop(stdio Stdio, q nextHopQuery, hosts []nextHopHost) error {
	var b strings.Builder
	fmt.Fprintf(&b, "route to %s\n\n", q.domain)
	fmt.Fprintf(&b, "configured next hop: %s in %s (MX records are not consulted)\n", q.via, q.config)
	fmt.Fprintf(&b, "  tls %s", q.hop.TLS)
	if q.hop.Auth != nil {
		fmt.Fprintf(&b, ", AUTH as %s after TLS", q.hop.Auth.Username)
	}
	b.WriteString("\n\nhosts, in the order delivery tries them:\n")
	for i, h := range hosts {
		addrs := make([]string, 0, len(h.Addrs))
		for _, a := range h.Addrs {
			addrs = append(addrs, a.String())
		}
		how := "STARTTLS"
		switch {
		case h.Implicit:
			how = "implicit TLS"
		case q.hop.TLS == delivery.TLSNone:
			how = "no TLS"
		case q.hop.TLS == delivery.TLSOpportunistic:
			how = "STARTTLS when offered"
		}
		fmt.Fprintf(&b, "  %d. %s port %d (%s)  %s\n", i+1, h.Host, h.Port, how, strings.Join(addrs, " "))
		if h.Err != "" {
			fmt.Fprintf(&b, "       %s\n", h.Err)
		}
	}
	_, err := fmt.Fprint(stdio.Out, b.String())
	return err
}

func printNextHopJSON(stdio Stdio, q nextHopQuery, hosts []nextHopHost) error {
	out := struct {
		Domain  string `json:"domain"`
		NextHop struct {
			Via      string        `json:"via"`
			TLS      string        `json:"tls"`
			AuthUser string        `json:"auth_user,omitempty"`
			Hosts    []nextHopHost `json:"hosts"`
		} `json:"next_hop"`
	}{Domain: q.domain}
	out.NextHop.Via, out.NextHop.TLS, out.NextHop.Hosts = q.via, string(q.hop.TLS), hosts
	if q.hop.Auth != nil {
		out.NextHop.AuthUser = q.hop.Auth.Username
	}
	enc := json.NewEncoder(stdio.Out)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
