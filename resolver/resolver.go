package resolver

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/idna"
)

// Limits of the resolver; see doc.go for why each is what it is.
const (
	defaultTimeout      = 2 * time.Second
	defaultCacheEntries = 10000
	defaultMaxTTL       = 24 * time.Hour
	maxNegativeTTL      = 3 * time.Hour   // RFC 2308 §5 suggests 1 to 3 hours
	failureTTL          = 1 * time.Minute // RFC 2308 §7.1, RFC 9520: at most 5 minutes
	maxCNAMEHops        = 8
	maxHosts            = 16 // MX hosts resolved per route
	maxFamilyAddrs      = 16 // A, and AAAA, addresses kept per host
	maxCachedRecords    = 64 // larger answers are used but not cached
	maxTraceRecords     = 32 // answer records kept per Exchange
	ednsBufferBytes     = 1232
)

// Resolver builds routes. It is safe for concurrent use.
type Resolver struct {
	cfg       Config
	servers   []string
	transport transport
	cache     *cache
	flights   flightGroup
	idna      *idna.Profile
	selfName  string
	self      map[netip.Addr]bool
	log       *slog.Logger
	obs       Observer

	shuffleMu sync.Mutex // Config.Shuffle need not be safe for concurrent use
}

// New returns a Resolver for cfg. Config.Servers must name at least one
// server ("ip" or "ip:port").
func New(cfg Config) (*Resolver, error) {
	return newResolver(cfg, &netTransport{})
}

func newResolver(cfg Config, t transport) (*Resolver, error) {
	servers, err := parseServers(cfg.Servers)
	if err != nil {
		return nil, err
	}
	if cfg.Timeout < 0 || cfg.MaxTTL < 0 || cfg.CacheEntries < 0 {
		return nil, errors.New("resolver config: negative Timeout, MaxTTL or CacheEntries")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = defaultTimeout
	}
	if cfg.CacheEntries == 0 {
		cfg.CacheEntries = defaultCacheEntries
	}
	if cfg.MaxTTL == 0 {
		cfg.MaxTTL = defaultMaxTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Shuffle == nil {
		cfg.Shuffle = rand.Shuffle
	}
	r := &Resolver{
		cfg:       cfg,
		servers:   servers,
		transport: t,
		cache:     newCache(cfg.CacheEntries),
		idna:      newIDNA(),
		self:      make(map[netip.Addr]bool),
		log:       cfg.Logger,
		obs:       cfg.Observer,
	}
	if r.log == nil {
		r.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if r.obs == nil {
		r.obs = NopObserver{}
	}
	if cfg.Hostname != "" {
		r.selfName = hostKey(cfg.Hostname)
		if n, lit, err := normalizeDomain(r.idna, cfg.Hostname); err == nil && !lit.IsValid() {
			r.selfName = n // an IDN host name compares in A-label form
		}
	}
	for _, a := range cfg.SelfAddrs {
		r.self[a.Unmap().WithZone("")] = true
	}
	return r, nil
}

// parseServers turns "ip" and "ip:port" into "ip:port" (port 53 by default).
func parseServers(in []string) ([]string, error) {
	if len(in) == 0 {
		return nil, errors.New("resolver config: no DNS servers")
	}
	out := make([]string, 0, len(in))
	for _, s := range in {
		if ap, err := netip.ParseAddrPort(s); err == nil {
			out = append(out, ap.String())
			continue
		}
		a, err := netip.ParseAddr(strings.Trim(s, "[]"))
		if err != nil {
			return nil, fmt.Errorf("resolver config: DNS server %q: want ip or ip:port", s)
		}
		out = append(out, netip.AddrPortFrom(a, 53).String())
	}
	return out, nil
}

// hostKey is how a host name from config or DNS is compared: lowercase,
// without the trailing dot.
func hostKey(s string) string {
	return strings.ToLower(strings.TrimSuffix(s, "."))
}

// shuffle calls Config.Shuffle, one caller at a time.
func (r *Resolver) shuffle(n int, swap func(i, j int)) {
	r.shuffleMu.Lock()
	defer r.shuffleMu.Unlock()
	r.cfg.Shuffle(n, swap)
}

// NopObserver is an Observer that records nothing; a nil Config.Observer
// means this.
type NopObserver struct{}

// Lookup does nothing.
func (NopObserver) Lookup(qtype, result string, cached bool, d time.Duration) {}
