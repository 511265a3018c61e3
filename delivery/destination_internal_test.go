package delivery

import (
	"math"
	"testing"
	"time"
)

// The drain rate reads the pace recipients finish at: unknown for the
// first drainWarmup, then close to the true rate however short the watch
// (the correction for a start from nothing), and it follows a change
// within a few drainWindows.
func TestDrainRate(t *testing.T) {
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	var r drainRate
	if _, ok := r.rate(t0); ok {
		t.Fatal("a rate before anything finished")
	}
	at := t0
	feed := func(perSec float64, d time.Duration) {
		tick := 10 * time.Millisecond
		for end := at.Add(d); at.Before(end); at = at.Add(tick) {
			r.add(at, int(perSec*tick.Seconds()))
		}
	}
	near := func(want float64) {
		t.Helper()
		got, ok := r.rate(at)
		if !ok || math.Abs(got-want) > want/10 {
			t.Errorf("after %v: rate %.1f (known %v), want %.0f ± 10%%", at.Sub(t0), got, ok, want)
		}
	}
	feed(100, drainWarmup/2)
	if _, ok := r.rate(at); ok {
		t.Errorf("a rate after watching only %v", at.Sub(t0))
	}
	feed(100, 2*time.Second)
	near(100)
	feed(100, 30*time.Second)
	near(100)
	feed(1000, 5*drainWindow)
	near(1000)
	// Nothing finishing: the estimate falls away.
	at = at.Add(10 * drainWindow)
	if got, _ := r.rate(at); got > 1000*math.Exp(-9) {
		t.Errorf("rate %.3f after %v without a finish", got, 10*drainWindow)
	}
}
