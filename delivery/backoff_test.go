package delivery

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	const m = time.Minute
	tests := []struct {
		name string
		n    int
		j    float64
		want time.Duration
	}{
		{"first_failure_waits_min", 1, 0.5, 5 * m},
		{"second_doubles", 2, 0.5, 10 * m},
		{"third", 3, 0.5, 20 * m},
		{"fourth", 4, 0.5, 40 * m},
		{"fifth_hits_the_ceiling", 5, 0.5, 70 * m},
		{"stays_at_the_ceiling", 40, 0.5, 70 * m},
		{"zero_counts_as_first", 0, 0.5, 5 * m},
		{"low_jitter", 1, 0, 4*m + 30*time.Second},
		{"high_jitter_below_110_percent", 1, 0.999999, 5*m + 30*time.Second - 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := backoff(5*m, 70*m, tc.n, tc.j)
			if d := got - tc.want; d < -time.Millisecond || d > time.Millisecond {
				t.Errorf("backoff(%d, %v) = %v, want %v", tc.n, tc.j, got, tc.want)
			}
		})
	}
}
