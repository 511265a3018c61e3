package resolver

import (
	"container/list"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// cacheKey names one question. name is lowercase and fully qualified.
type cacheKey struct {
	name  string
	qtype uint16
}

type cacheEntry struct {
	key     cacheKey
	ans     *answer
	stored  time.Time
	expires time.Time
}

// cache is a least-recently-used map of answers with expiry times. Answers
// are immutable, so they are handed out without copying.
type cache struct {
	mu  sync.Mutex
	max int
	ll  *list.List // front: most recently used; values are *cacheEntry
	m   map[cacheKey]*list.Element
}

func newCache(max int) *cache {
	return &cache{max: max, ll: list.New(), m: make(map[cacheKey]*list.Element)}
}

// get returns the answer for k if it has not expired, with its age.
func (c *cache) get(k cacheKey, now time.Time) (*answer, time.Duration, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.m[k]
	if !ok {
		return nil, 0, false
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expires) {
		c.ll.Remove(el)
		delete(c.m, k)
		return nil, 0, false
	}
	c.ll.MoveToFront(el)
	return e.ans, max(now.Sub(e.stored), 0), true
}

// has reports whether k has an answer that has not expired, without
// touching the order of use.
func (c *cache) has(k cacheKey, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.m[k]
	return ok && now.Before(el.Value.(*cacheEntry).expires)
}

// put stores a for ttl, evicting the least recently used entry when full.
func (c *cache) put(k cacheKey, a *answer, now time.Time, ttl time.Duration) {
	if ttl <= 0 {
		return
	}
	e := &cacheEntry{key: k, ans: a, stored: now, expires: now.Add(ttl)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.m[k]; ok {
		el.Value = e
		c.ll.MoveToFront(el)
		return
	}
	c.m[k] = c.ll.PushFront(e)
	for c.ll.Len() > c.max {
		old := c.ll.Back()
		c.ll.Remove(old)
		delete(c.m, old.Value.(*cacheEntry).key)
	}
}

// len is the number of entries, expired or not.
func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}

// ttlFor is how long a may be cached: positive answers (including a CNAME
// chain left for the caller to follow) for the smallest TTL of the records
// used, capped by maxTTL; NXDOMAIN and NODATA for min(SOA TTL, SOA
// MINIMUM) and the chain's TTLs, capped at maxNegativeTTL, and not at all
// without an SOA (RFC 2308 §5); server failures for failureTTL; no reply
// at all (timeouts, errors) not at all. Answers with more than
// maxCachedRecords records are not cached, which bounds memory.
func ttlFor(a *answer, maxTTL time.Duration) time.Duration {
	switch {
	case len(a.rrs) > maxCachedRecords || a.rcode < 0:
		return 0
	case a.rcode != dns.RcodeSuccess && a.rcode != dns.RcodeNameError:
		return failureTTL
	case a.rcode == dns.RcodeNameError || (a.noData && a.soa != nil):
		if a.soa == nil {
			return 0
		}
		ttl := min(seconds(a.soa.Hdr.Ttl), seconds(a.soa.Minttl), maxNegativeTTL, maxTTL)
		if len(a.rrs) > 0 {
			ttl = min(ttl, seconds(minTTL(a.rrs)))
		}
		return ttl
	case len(a.rrs) == 0:
		return 0 // NODATA without an SOA
	}
	return min(seconds(minTTL(a.rrs)), maxTTL)
}

func seconds(s uint32) time.Duration { return time.Duration(s) * time.Second }
