package smtpd

import (
	"net/netip"
	"sync"
	"time"
)

// clientBlock is the key the per-address limits count a client under: its
// IPv4 address, or the /64 its IPv6 address is in. One subscriber is
// given a whole /64 (RFC 6177), so counting single IPv6 addresses would
// let one client take any number of them.
func clientBlock(ip netip.Addr) netip.Addr {
	ip = ip.Unmap()
	if !ip.Is6() {
		return ip
	}
	p, err := ip.WithZone("").Prefix(64)
	if err != nil {
		return ip
	}
	return p.Addr()
}

// maxTracked bounds the keys a rate or failure table holds, so a flood of
// distinct addresses or logins cannot grow memory without limit.
const maxTracked = 100_000

// rateTable holds one token bucket per key: capacity tokens, refilled
// evenly over per. It limits submission users' messages and recipients.
type rateTable struct {
	mu sync.Mutex
	m  map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateTable() *rateTable { return &rateTable{m: map[string]*bucket{}} }

// refill brings key's bucket up to now (a missing bucket is full).
func (t *rateTable) refill(key string, capacity int, per time.Duration, now time.Time) *bucket {
	b := t.m[key]
	if b == nil {
		if len(t.m) >= maxTracked {
			t.sweep(now, per)
		}
		b = &bucket{tokens: float64(capacity), last: now}
		t.m[key] = b
		return b
	}
	if el := now.Sub(b.last); el > 0 {
		b.tokens += float64(capacity) * el.Seconds() / per.Seconds()
		b.last = now
	}
	if b.tokens > float64(capacity) {
		b.tokens = float64(capacity)
	}
	return b
}

// sweep drops buckets that have refilled completely (they equal a missing
// one), or one arbitrary bucket when none has.
func (t *rateTable) sweep(now time.Time, per time.Duration) {
	for k, b := range t.m {
		if now.Sub(b.last) >= per {
			delete(t.m, k)
		}
	}
	for k := range t.m {
		if len(t.m) < maxTracked {
			break
		}
		delete(t.m, k)
	}
}

// allow reports whether n tokens are available, taking none.
func (t *rateTable) allow(key string, n, capacity int, per time.Duration, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.refill(key, capacity, per, now).tokens >= float64(n)
}

// take removes n tokens (the bucket may go below zero: a message already
// accepted is counted in full).
func (t *rateTable) take(key string, n, capacity int, per time.Duration, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.refill(key, capacity, per, now).tokens -= float64(n)
}

// failures counts failed logins per key in fixed windows.
type failures struct {
	mu sync.Mutex
	m  map[string]*window
}

type window struct {
	start time.Time
	count int
}

func newFailures() *failures { return &failures{m: map[string]*window{}} }

// blocked reports whether key has max or more failures in the window
// that is still running at now.
func (f *failures) blocked(key string, max int, span time.Duration, now time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.m[key]
	return w != nil && now.Sub(w.start) < span && w.count >= max
}

func (f *failures) add(key string, span time.Duration, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.m[key]
	if w != nil && now.Sub(w.start) < span {
		w.count++
		return
	}
	if w == nil && len(f.m) >= maxTracked {
		for k, old := range f.m {
			if now.Sub(old.start) >= span {
				delete(f.m, k)
			}
		}
		for k := range f.m {
			if len(f.m) < maxTracked {
				break
			}
			delete(f.m, k)
		}
	}
	f.m[key] = &window{start: now, count: 1}
}

// seen remembers when keys were last seen, for a span; it holds at most
// maxTracked keys: when full, the expired ones go, else the oldest.
type seen struct {
	mu sync.Mutex
	m  map[string]time.Time
}

func newSeen() *seen { return &seen{m: map[string]time.Time{}} }

func (s *seen) has(key string, span time.Duration, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.m[key]
	return ok && now.Sub(t) < span
}

func (s *seen) add(key string, span time.Duration, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[key]; !ok && len(s.m) >= maxTracked {
		var oldest string
		var at time.Time
		for k, t := range s.m {
			if now.Sub(t) >= span {
				delete(s.m, k)
			} else if oldest == "" || t.Before(at) {
				oldest, at = k, t
			}
		}
		if len(s.m) >= maxTracked {
			delete(s.m, oldest)
		}
	}
	s.m[key] = now
}
