package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Mode is a set of behaviours of the DNS server for one name.
type Mode uint32

// Per-name behaviours, combinable with |.
const (
	ModeServfail  Mode = 1 << iota // answer SERVFAIL
	ModeSilent                     // never answer (the client times out)
	ModeTruncate                   // over UDP, answer empty with TC set (forces TCP)
	ModeNXDomain                   // answer NXDOMAIN, whatever the zone says
	ModeNoData                     // answer NOERROR without records, whatever the zone says
	ModeCNAMEOnly                  // at this name's CNAME, stop: do not chase the target
)

// maxQueryLog bounds the queries the server remembers (the oldest go first).
const maxQueryLog = 10000

// defaultSOA is served for negative answers when the zone has no SOA.
const defaultSOA = "@ 60 IN SOA ns.invalid. hostmaster.invalid. 1 3600 600 86400 60"

// DNSOptions configures a DNS server.
type DNSOptions struct {
	// Addr is the "ip:port" to serve UDP and TCP on; port 0 picks a port
	// free for both. Empty means "127.0.0.1:0".
	Addr string
	// Zone is master-file text ($ORIGIN and $TTL supported, no $INCLUDE).
	Zone string
	// Origin is the origin for relative names in Zone (default ".").
	Origin string
	// Logger gets one Debug line per query (nil discards).
	Logger *slog.Logger
}

// Query is one query the server received.
type Query struct {
	Name  string // lowercase, with trailing dot
	Type  string // "MX", "A", ...
	Proto string // "udp" or "tcp"
}

// DNS is a running authoritative DNS server. Its methods are safe for
// concurrent use.
type DNS struct {
	addr string
	udp  *dns.Server
	tcp  *dns.Server
	log  *slog.Logger

	closed chan struct{} // closed by Close: held queries give up

	mu      sync.Mutex
	zone    *zone
	holds   map[string]chan struct{}
	modes   map[string]Mode
	allMode Mode
	queries []Query // ring of the last maxQueryLog
	next    int     // ring position once full
	counts  map[Query]int
}

// NewDNS parses opts.Zone and starts serving it. It returns once both the
// UDP and the TCP listener are ready.
func NewDNS(opts DNSOptions) (*DNS, error) {
	z, err := parseZone(opts.Zone, opts.Origin)
	if err != nil {
		return nil, err
	}
	d := &DNS{log: opts.Logger, zone: z, closed: make(chan struct{}),
		modes: make(map[string]Mode), holds: make(map[string]chan struct{}), counts: make(map[Query]int)}
	if d.log == nil {
		d.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	addr := opts.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	pc, l, err := listenBoth(addr)
	if err != nil {
		return nil, err
	}
	d.addr = pc.LocalAddr().String()
	d.udp = &dns.Server{PacketConn: pc, Handler: d}
	d.tcp = &dns.Server{Listener: l, Handler: d}
	if err := startAll(d.udp, d.tcp); err != nil {
		_ = pc.Close()
		_ = l.Close()
		return nil, fmt.Errorf("dns peer %s: %w", d.addr, err)
	}
	return d, nil
}

// listenBoth binds UDP and TCP on one address and port.
func listenBoth(addr string) (net.PacketConn, net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("dns peer address %q: %w", addr, err)
	}
	var lastErr error
	for range 20 { // port 0: the UDP port may be taken for TCP; pick again
		pc, err := net.ListenPacket("udp", net.JoinHostPort(host, port))
		if err != nil {
			return nil, nil, fmt.Errorf("dns peer: %w", err)
		}
		l, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, l, nil
		}
		_ = pc.Close()
		lastErr = err
		if port != "0" {
			break
		}
	}
	return nil, nil, fmt.Errorf("dns peer: %w", lastErr)
}

// startAll starts each server and waits until all are ready or one fails.
func startAll(servers ...*dns.Server) error {
	errc := make(chan error, len(servers))
	for _, s := range servers {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go func() {
			if err := s.ActivateAndServe(); err != nil {
				errc <- err
			}
		}()
		select {
		case <-started:
		case err := <-errc:
			return err
		}
	}
	return nil
}

// Addr is the "ip:port" the server answers on, UDP and TCP.
func (d *DNS) Addr() string { return d.addr }

// Close stops both listeners.
func (d *DNS) Close() error {
	select {
	case <-d.closed:
	default:
		close(d.closed)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return errors.Join(d.udp.ShutdownContext(ctx), d.tcp.ShutdownContext(ctx))
}

// SetZone replaces the records served.
func (d *DNS) SetZone(text, origin string) error {
	z, err := parseZone(text, origin)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.zone = z
	d.mu.Unlock()
	return nil
}

// Set gives name (any case, trailing dot optional) the behaviours m; 0
// restores normal answers.
func (d *DNS) Set(name string, m Mode) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if m == 0 {
		delete(d.modes, canonical(name))
		return
	}
	d.modes[canonical(name)] = m
}

// Hold makes queries for name wait, unanswered, until release is called
// (or the server closes); they are recorded on arrival. It lets a test
// have several lookups in flight at once without timing.
func (d *DNS) Hold(name string) (release func()) {
	ch := make(chan struct{})
	d.mu.Lock()
	d.holds[canonical(name)] = ch
	d.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			d.mu.Lock()
			delete(d.holds, canonical(name))
			d.mu.Unlock()
			close(ch)
		})
	}
}

// SetAll gives every name the behaviours m, on top of any per-name ones.
func (d *DNS) SetAll(m Mode) {
	d.mu.Lock()
	d.allMode = m
	d.mu.Unlock()
}

// Queries returns the queries received, oldest first (at most the last
// 10,000).
func (d *DNS) Queries() []Query {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append(append([]Query(nil), d.queries[d.next:]...), d.queries[:d.next]...)
}

// Count is how many queries for (name, qtype) arrived, over UDP and TCP;
// an empty qtype counts every type.
func (d *DNS) Count(name, qtype string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	name = canonical(name)
	n := 0
	for q, c := range d.counts {
		if q.Name == name && (qtype == "" || q.Type == qtype) {
			n += c
		}
	}
	return n
}

// ResetQueries forgets the queries received so far.
func (d *DNS) ResetQueries() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.queries, d.next = nil, 0
	d.counts = make(map[Query]int)
}

func (d *DNS) record(q Query) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.queries) < maxQueryLog {
		d.queries = append(d.queries, q)
	} else {
		d.queries[d.next] = q
		d.next = (d.next + 1) % maxQueryLog
	}
	if _, ok := d.counts[q]; ok || len(d.counts) < maxQueryLog {
		d.counts[q]++
	}
}

func canonical(name string) string { return strings.ToLower(dns.Fqdn(name)) }
