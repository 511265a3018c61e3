package delivery

import (
	"math/rand/v2"
	"time"
)

// backoff is the delay before attempt n+1 after n failed attempts (n ≥ 1):
// Min doubled per attempt up to Max, then scaled by a jitter factor in
// [0.9, 1.1) drawn from j in [0, 1). It is a pure function so tables can
// test it.
func backoff(lo, hi time.Duration, n int, j float64) time.Duration {
	d := lo
	for i := 1; i < n && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	return time.Duration(float64(d) * (0.9 + 0.2*j))
}

// delay is backoff with the configured jitter source.
func (b Backoff) delay(n int) time.Duration {
	j := rand.Float64
	if b.Jitter != nil {
		j = b.Jitter
	}
	return backoff(b.Min, b.Max, n, j())
}
