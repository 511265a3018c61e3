package delivery

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"mta/internal/mailaddr"
	"mta/resolver"
	"mta/spool"
)

// Resolver finds routes; *resolver.Resolver satisfies it.
type Resolver interface {
	// Route is the MX route of a recipient domain.
	Route(ctx context.Context, domain string) (*resolver.Route, error)
	// LookupAddrs is the A and AAAA addresses of a configured route's host.
	LookupAddrs(ctx context.Context, host string) ([]netip.Addr, error)
}

// TLSPolicy says how a next hop must be secured.
type TLSPolicy string

const (
	// TLSNone never starts TLS.
	TLSNone TLSPolicy = "none"
	// TLSOpportunistic starts TLS when offered, without verifying the
	// certificate, and falls back to plain text after a failed handshake.
	TLSOpportunistic TLSPolicy = "opportunistic"
	// TLSRequire needs TLS, without verifying the certificate.
	TLSRequire TLSPolicy = "require"
	// TLSVerify needs TLS with a certificate valid for the host name.
	TLSVerify TLSPolicy = "verify"
)

// IPFamily chooses which addresses of a host are dialled.
type IPFamily string

const (
	FamilyAny        IPFamily = "any" // both, alternating, in the order DNS gave
	FamilyIPv4       IPFamily = "ipv4"
	FamilyIPv6       IPFamily = "ipv6"
	FamilyPreferIPv4 IPFamily = "prefer-ipv4"
)

// Auth is an AUTH PLAIN/LOGIN login for a configured route.
type Auth struct {
	Username string
	Password string
}

// NextHop is a configured route: where mail for some domains goes instead
// of their MX hosts.
type NextHop struct {
	// Hosts are tried in order, each "host:port", "[host]:port" or
	// "[192.0.2.1]:port" (port 25 when left out). A name is looked up for
	// its A/AAAA addresses, never for MX; private addresses are allowed.
	// Port 465 means implicit TLS.
	Hosts []string
	// TLS defaults to TLSVerify.
	TLS TLSPolicy
	// Auth, when set, is sent after TLS only.
	Auth *Auth
}

// Relayhost sends mail through a smarthost.
type Relayhost struct {
	NextHop
	// Domains limits the relayhost to these recipient domains; empty means
	// every domain without its own route.
	Domains []string
}

// Timeouts are the limits of each phase of a session (RFC 5321 §4.5.3.2).
type Timeouts struct {
	Connect   time.Duration // 30s
	Greeting  time.Duration // 300s
	Command   time.Duration // EHLO, MAIL, RCPT, RSET, AUTH: 300s
	StartTLS  time.Duration // the command and the handshake: 60s
	DataInit  time.Duration // the reply to DATA: 120s
	DataBlock time.Duration // each write of the message: 180s
	FinalDot  time.Duration // the reply to the final dot: 600s
}

// Backoff spaces the attempts of a deferred recipient.
type Backoff struct {
	Min time.Duration // 5m: after the first failure
	Max time.Duration // 70m: the ceiling
	// Jitter returns a number in [0, 1) (nil: math/rand/v2).
	Jitter func() float64
}

// Observer receives the engine's metrics; cmd/mta adapts it to Prometheus.
// Labels stay bounded: result is "delivered", "deferred" or "failed";
// phase is one of spool.Attempt's phases. Its methods are called from many
// goroutines at once.
type Observer interface {
	// Attempt is called once per recipient per attempt.
	Attempt(result, phase string, code int)
	// Delivered is called per delivered recipient with the time since the
	// message arrived.
	Delivered(latency time.Duration)
	// Connections reports the SMTP connections open now (busy and idle).
	Connections(open int)
	// Panic counts a panic recovered at a goroutine root.
	Panic()
	// Postponed counts recipients found due but left in the spool for
	// later, their destination holding DestinationEntries already.
	Postponed(n int)
}

// NopObserver is the default Observer.
type NopObserver struct{}

func (NopObserver) Attempt(string, string, int) {}
func (NopObserver) Delivered(time.Duration)     {}
func (NopObserver) Connections(int)             {}
func (NopObserver) Panic()                      {}
func (NopObserver) Postponed(int)               {}

// Config configures a Scheduler. Zero values take the defaults shown.
type Config struct {
	Spool    *spool.Spool
	Resolver Resolver
	// Hostname is our FQDN: said in EHLO, and the Reporting-MTA of DSNs.
	Hostname string
	// Port is dialled on MX hosts (25).
	Port int
	// Dial, when set, opens connections (source addresses are then its
	// business); otherwise a net.Dialer bound to SourceIPv4/SourceIPv6.
	Dial                   func(ctx context.Context, network, addr string) (net.Conn, error)
	SourceIPv4, SourceIPv6 netip.Addr
	IPFamily               IPFamily // FamilyAny

	MaxConns              int // concurrent sessions in all (100)
	PerDestinationConns   int // concurrent sessions per destination (20)
	ActiveEntries         int // claimed recipients held in memory (20,000)
	DestinationEntries    int // of which one destination may hold (ActiveEntries/2)
	MaxAddrsPerAttempt    int // addresses dialled per attempt (5)
	MaxSessionsPerAttempt int // completed sessions per attempt (2)
	MaxRcptsPerTxn        int // recipients per transaction (50)

	Timeouts Timeouts
	Backoff  Backoff
	// Lifetime: a recipient still deferred this long after arrival fails (5 days).
	Lifetime time.Duration
	// DelayWarning: a delay DSN goes out once a recipient is deferred this
	// long after arrival (4h); negative disables delay DSNs.
	DelayWarning time.Duration

	// Routes override the MX lookup per recipient domain.
	Routes map[string]NextHop
	// Relayhost, when set, takes every domain (or its Domains) without a route.
	Relayhost *Relayhost
	// Aliases rewrite the recipient of a DSN whose sender is in a local
	// domain (see DSNConfig.Aliases).
	Aliases AliasTable
	// TLSPolicies per recipient domain for MX delivery (default opportunistic).
	TLSPolicies map[string]TLSPolicy
	// RootCAs verify certificates (nil: the system pool).
	RootCAs *x509.CertPool

	// Connection reuse: messages per connection (100), connection age
	// (300s), idle time before closing (5s), idle connections kept (100).
	ReuseMessages int
	ReuseAge      time.Duration
	IdleTimeout   time.Duration
	MaxIdleConns  int
	// BrokenTLSFor is how long a host whose handshake failed is spoken to
	// in plain text (24h).
	BrokenTLSFor time.Duration

	Now      func() time.Time
	Logger   *slog.Logger
	Observer Observer
}

func (c *Config) setDefaults() {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.Port, 25)
	def(&c.MaxConns, 100)
	def(&c.PerDestinationConns, 20)
	def(&c.ActiveEntries, 20000)
	def(&c.DestinationEntries, max(c.ActiveEntries/2, 1))
	def(&c.MaxAddrsPerAttempt, 5)
	def(&c.MaxSessionsPerAttempt, 2)
	def(&c.MaxRcptsPerTxn, 50)
	def(&c.ReuseMessages, 100)
	def(&c.MaxIdleConns, 100)
	t := &c.Timeouts
	defDur(&t.Connect, 30*time.Second)
	defDur(&t.Greeting, 300*time.Second)
	defDur(&t.Command, 300*time.Second)
	defDur(&t.StartTLS, 60*time.Second)
	defDur(&t.DataInit, 120*time.Second)
	defDur(&t.DataBlock, 180*time.Second)
	defDur(&t.FinalDot, 600*time.Second)
	defDur(&c.Backoff.Min, 5*time.Minute)
	defDur(&c.Backoff.Max, 70*time.Minute)
	defDur(&c.Lifetime, 5*24*time.Hour)
	if c.DelayWarning == 0 {
		c.DelayWarning = 4 * time.Hour
	}
	defDur(&c.ReuseAge, 300*time.Second)
	defDur(&c.IdleTimeout, 5*time.Second)
	defDur(&c.BrokenTLSFor, 24*time.Hour)
	if c.IPFamily == "" {
		c.IPFamily = FamilyAny
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Observer == nil {
		c.Observer = NopObserver{}
	}
}

// Validate returns every problem of c at once, each with its field.
func (c *Config) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if c.Spool == nil {
		add("spool: not set")
	}
	if c.Resolver == nil {
		add("resolver: not set")
	}
	if !strings.Contains(strings.Trim(c.Hostname, "."), ".") {
		add("hostname: %q is not a fully qualified domain name", c.Hostname)
	}
	switch c.IPFamily {
	case "", FamilyAny, FamilyIPv4, FamilyIPv6, FamilyPreferIPv4:
	default:
		add("ip_family: unknown %q", c.IPFamily)
	}
	for d, p := range c.TLSPolicies {
		if !p.valid() {
			add("tls_policies.%s: unknown policy %q", d, p)
		}
	}
	for d, r := range c.Routes {
		if _, err := mailaddr.NormalizeDomain(d); err != nil {
			add("routes.%s: %v", d, err)
		}
		errs = append(errs, r.check("routes."+d)...)
	}
	if c.Relayhost != nil {
		errs = append(errs, c.Relayhost.check("relayhost")...)
	}
	return errors.Join(errs...)
}

func (p TLSPolicy) valid() bool {
	switch p {
	case "", TLSNone, TLSOpportunistic, TLSRequire, TLSVerify:
		return true
	}
	return false
}

func (n NextHop) check(key string) []error {
	var errs []error
	if len(n.Hosts) == 0 {
		errs = append(errs, fmt.Errorf("%s.hosts: empty", key))
	}
	for _, h := range n.Hosts {
		if _, err := parseHop(h); err != nil {
			errs = append(errs, fmt.Errorf("%s.hosts: %w", key, err))
		}
	}
	if !n.TLS.valid() {
		errs = append(errs, fmt.Errorf("%s.tls: unknown policy %q", key, n.TLS))
	}
	if n.Auth != nil && n.TLS == TLSNone {
		errs = append(errs, fmt.Errorf("%s.auth: AUTH needs TLS, but tls is none", key))
	}
	return errs
}

// hop is one configured host of a NextHop.
type hop struct {
	name string     // host name, or "" for an address
	addr netip.Addr // set for an address
	port int
}

// HopHost is one entry of NextHop.Hosts as delivery dials it: a host name
// to look up, or an address, and the port.
type HopHost struct {
	Name string     // normalised host name, or "" for an address
	Addr netip.Addr // set for an address
	Port int
}

// ParseHopHost reads one entry of NextHop.Hosts as delivery does
// ("host:port", "[host]:port", "[192.0.2.1]:port", "[IPv6:2001:db8::1]",
// port 25 when left out).
func ParseHopHost(s string) (HopHost, error) {
	h, err := parseHop(s)
	return HopHost{Name: h.name, Addr: h.addr, Port: h.port}, err
}

func parseHop(s string) (hop, error) {
	host, port := s, 25
	if h, p, err := net.SplitHostPort(s); err == nil {
		n, err := strconv.Atoi(p)
		if err != nil || n <= 0 || n > 65535 {
			return hop{}, fmt.Errorf("%q: bad port", s)
		}
		host, port = h, n
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	host = strings.TrimPrefix(strings.TrimPrefix(host, "IPv6:"), "ipv6:")
	if a, err := netip.ParseAddr(host); err == nil {
		return hop{addr: a.Unmap(), port: port}, nil
	}
	name, err := mailaddr.NormalizeDomain(host)
	if err != nil {
		return hop{}, fmt.Errorf("%q: %w", s, err)
	}
	return hop{name: name, port: port}, nil
}

// String is the hop as a host name ("mx.example.org" or the address).
func (h hop) String() string {
	if h.name != "" {
		return h.name
	}
	return h.addr.String()
}
