package resolver

import (
	"fmt"
	"log/slog"
	"net/netip"
	"time"
)

// Config configures a Resolver. The zero value of every field has a sane
// default; nothing here is read from files or the environment by this
// package (cmd/mta reads /etc/resolv.conf and fills Servers).
type Config struct {
	// Servers are the DNS servers to ask, "ip:port", in order. A server that
	// does not answer within Timeout is skipped for the next one.
	Servers []string
	// Timeout bounds one exchange with one server (default 2s). The whole
	// lookup is also bounded by the caller's context.
	Timeout time.Duration

	// Hostname is our own host name; an MX host with this name is "self".
	Hostname string
	// SelfAddrs are the addresses we listen on (and any configured proxy
	// address); an MX host with one of them is "self".
	SelfAddrs []netip.Addr

	// AllowPrivate lets routes use loopback, private, link-local and other
	// non-global addresses. Labs set it; production must not.
	AllowPrivate bool

	// CacheEntries bounds the answer cache (default 10,000 entries).
	CacheEntries int
	// MaxTTL caps how long a positive answer is cached (default 24h).
	MaxTTL time.Duration

	// Now is the clock (nil means time.Now).
	Now func() time.Time
	// Shuffle shuffles hosts of equal preference in place (nil means
	// math/rand/v2). Tests pass a seeded source.
	Shuffle func(n int, swap func(i, j int))
	// Logger receives one Debug line per DNS exchange (nil discards).
	Logger *slog.Logger
	// Observer counts lookups and cache hits (nil is a no-op).
	Observer Observer
}

// Observer receives the resolver's metrics. cmd/mta adapts it to Prometheus.
type Observer interface {
	// Lookup is called once per exchange or cache answer: qtype is "MX",
	// "A", "AAAA"; result is "ok", "nxdomain", "nodata", "servfail",
	// "timeout" or "error".
	Lookup(qtype, result string, cached bool, d time.Duration)
}

// Route is how mail to one domain is to be delivered: the hosts to try, in
// order, and how they were found.
type Route struct {
	// Domain is the normalised (lowercase, A-label, no trailing dot)
	// recipient domain the route was asked for.
	Domain string
	// Implicit is true when the domain has no MX records and its own
	// address records serve as the only host (RFC 5321 §5.1).
	Implicit bool
	// Literal is true for an address literal ("[192.0.2.1]").
	Literal bool
	// Hosts are the usable hosts, best first. Every Host has at least one
	// address.
	Hosts []Host
	// Dropped are the hosts left out of Hosts and why (self, no address,
	// malformed name, prohibited addresses only, ...), in MX order.
	Dropped []Host
	// Trace is every DNS exchange made or answered from cache, in order.
	Trace []Exchange
}

// Host is one mail exchanger of a route.
type Host struct {
	Name string // normalised host name, or the literal itself
	Pref uint16 // MX preference (0 for implicit MX and literals)
	// Addrs are the usable addresses, in the order the server gave them.
	Addrs []netip.Addr
	// Skipped are addresses left out, each with the reason.
	Skipped []SkippedAddr
	// Reason says why the host is in Route.Dropped; empty for a usable host.
	Reason string
}

// SkippedAddr is an address of a host that will not be dialled.
type SkippedAddr struct {
	Addr   netip.Addr
	Reason string // e.g. "prohibited: loopback", "self"
}

// Exchange is one DNS query and its answer, as shown by `mta route`.
type Exchange struct {
	Name     string        // the name asked, with trailing dot
	Type     string        // "MX", "A", "AAAA", "CNAME"
	Server   string        // "ip:port"; empty when Cached
	Proto    string        // "udp" or "tcp"
	Rcode    string        // "NOERROR", "NXDOMAIN", "SERVFAIL", ... or "TIMEOUT"
	Answer   []Record      // answer-section records
	Duration time.Duration // zero when Cached
	Cached   bool
	Err      string // transport error, if any
	// Truncated is set when the reply had the TC bit; a truncated UDP
	// reply is followed by the same query over TCP.
	Truncated bool
	// NoEDNS is set on a query sent without the EDNS0 OPT record: asked
	// again so, because the server refused the OPT (FORMERR or NOTIMP
	// without an OPT in the reply, RFC 6891 §7).
	NoEDNS bool
	// Omitted counts answer records left out of Answer (at most 32 are
	// kept, so a hostile answer cannot bloat a trace).
	Omitted int
}

// Record is one resource record of an answer.
type Record struct {
	Name string
	Type string
	TTL  uint32
	Data string // "10 mx1.example.org.", "192.0.2.1", "target.example."
}

// Error is why a domain has no route. Permanent errors bounce the
// recipients; temporary ones defer them.
type Error struct {
	Permanent bool
	Enhanced  string // RFC 3463 code: "5.1.2", "5.1.10", "5.4.6", "5.4.4", "4.4.4", "4.4.3"
	Domain    string
	Reason    string // human text, e.g. "domain does not exist (NXDOMAIN)"
	Err       error  // the sentinel below, for errors.Is
	Trace     []Exchange
	// Dropped are the hosts left out and why, when the error is about
	// hosts (5.4.4, 4.4.4, 5.4.6), in MX order.
	Dropped []Host
}

func (e *Error) Error() string {
	kind := "temporary"
	if e.Permanent {
		kind = "permanent"
	}
	return fmt.Sprintf("route %s: %s: %s (%s)", e.Domain, kind, e.Reason, e.Enhanced)
}

func (e *Error) Unwrap() error { return e.Err }

// Sentinels carried by Error.Err.
const (
	ErrInvalidDomain = errorString("invalid domain")                   // 5.1.2 (dotless, bad IDNA, bad literal)
	ErrNXDomain      = errorString("domain does not exist")            // 5.1.2
	ErrNullMX        = errorString("domain accepts no mail (null MX)") // 5.1.10
	ErrLoopsToSelf   = errorString("mail loops back to myself")        // 5.4.6
	ErrNoHost        = errorString("no usable mail host")              // 5.4.4 or 4.4.4
	ErrCNAMELoop     = errorString("CNAME chain loops or is too long")
	ErrDNS           = errorString("DNS lookup failed") // 4.4.3: SERVFAIL, timeout
	// ErrNoData is from LookupPTR and LookupAddrs: the name exists but has
	// no records of the type asked.
	ErrNoData = errorString("no records of the requested type")
)

type errorString string

func (e errorString) Error() string { return string(e) }
