package main

// The world the benchmark's daemon delivers into: an authoritative DNS
// server for the bench domains (internal/peer) and a sink host per domain
// on its own loopback address, all on one port.

import (
	"fmt"
	"strings"
	"time"

	"mta/internal/peer"
)

const (
	benchZone   = "bench.test"
	benchSender = "bench@src.bench.test"
	benchHelo   = "client.bench.test"
	// deferIP is the MX of the defer domain; it greets with 421 so mail to
	// it stays deferred (the --prefill queue).
	deferIP     = "127.0.0.250"
	deferDomain = "defer." + benchZone
)

// worldOptions say what to start.
type worldOptions struct {
	Domains int           // d1.bench.test … on 127.0.0.2 …
	Delay   time.Duration // before each sink reply
	Port    int           // sink port (0 picks one)
	Arrive  func(tag string, seq, k int, t time.Time)
	// Zone is added to the bench zone (absolute names), e.g. an MX that
	// points at another peer on the sink port.
	Zone string
}

// world is the DNS server and the sinks.
type world struct {
	DNS     *peer.DNS
	Sinks   *sinks
	Domains []string // the bench domains, in generator order
	IPs     []string // the sink address of each domain
}

// startWorld starts the sinks, then the DNS server that points the bench
// domains at them.
func startWorld(opts worldOptions) (*world, error) {
	if opts.Domains < 1 || opts.Domains > 200 {
		return nil, fmt.Errorf("bench domains: %d is not between 1 and 200", opts.Domains)
	}
	w := &world{}
	for i := range opts.Domains {
		w.Domains = append(w.Domains, fmt.Sprintf("d%d.%s", i+1, benchZone))
		w.IPs = append(w.IPs, fmt.Sprintf("127.0.0.%d", i+2))
	}
	s, err := startSinks(sinkOptions{IPs: append(append([]string(nil), w.IPs...), deferIP), Port: opts.Port, Delay: opts.Delay, Arrive: opts.Arrive})
	if err != nil {
		return nil, err
	}
	w.Sinks = s
	if err := s.SetMode(deferIP, sinkGreet421); err != nil {
		s.Close()
		return nil, err
	}
	d, err := peer.NewDNS(peer.DNSOptions{Zone: w.zone() + opts.Zone})
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("bench DNS: %w", err)
	}
	w.DNS = d
	return w, nil
}

// zone is the bench zone: an MX per bench domain and for the defer
// domain, and a PTR for the generator's address.
func (w *world) zone() string {
	var b strings.Builder
	fmt.Fprintf(&b, "$ORIGIN %s.\n$TTL 3600\n", benchZone)
	fmt.Fprintf(&b, "@ IN SOA ns.%s. hostmaster.%s. 1 3600 600 86400 60\n", benchZone, benchZone)
	for i, d := range w.Domains {
		name := strings.TrimSuffix(d, "."+benchZone)
		fmt.Fprintf(&b, "%s IN MX 10 mx.%s\nmx.%s IN A %s\n", name, name, name, w.IPs[i])
	}
	fmt.Fprintf(&b, "defer IN MX 10 mx.defer\nmx.defer IN A %s\n", deferIP)
	fmt.Fprintf(&b, "client IN A 127.0.0.1\n1.0.0.127.in-addr.arpa. IN PTR client.%s.\n", benchZone)
	return b.String()
}

// Close stops the DNS server and the sinks.
func (w *world) Close() {
	_ = w.DNS.Close() // nothing waits on a clean DNS shutdown
	w.Sinks.Close()
}
