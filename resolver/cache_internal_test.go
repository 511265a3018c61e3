package resolver

import (
	"fmt"
	"testing"
	"time"
)

// TestCacheBounded checks the LRU bound: the cache never holds more than
// its limit, and the least recently used entry is the one evicted.
func TestCacheBounded(t *testing.T) {
	c := newCache(3)
	now := time.Unix(1000, 0)
	a := &answer{}
	for i := range 5 {
		c.put(cacheKey{name: fmt.Sprintf("h%d.test.", i), qtype: 1}, a, now, time.Minute)
		if i == 2 {
			c.get(cacheKey{name: "h0.test.", qtype: 1}, now) // h0 becomes most recent
		}
	}
	if got := c.len(); got != 3 {
		t.Fatalf("len = %d, want 3", got)
	}
	for name, want := range map[string]bool{"h0.test.": true, "h1.test.": false, "h2.test.": false, "h3.test.": true, "h4.test.": true} {
		if _, _, ok := c.get(cacheKey{name: name, qtype: 1}, now); ok != want {
			t.Errorf("%s cached = %v, want %v", name, ok, want)
		}
	}
}
