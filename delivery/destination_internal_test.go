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

// postponeTo spreads recipients after what the destination holds, at
// twice its rate, rounded up to postponeGrain; a rate decayed towards
// zero gives postponeMax (not an overflowed Duration), an unknown one the
// fallback.
func TestPostponeTo(t *testing.T) {
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	d := &destination{key: "k"}
	for i := range 3000 { // 100 a second for 30 s
		d.drain.add(t0.Add(time.Duration(i)*10*time.Millisecond), 1)
	}
	e := &Scheduler{dests: map[string]*destination{"k": d}}
	e.cfg.Backoff.Min = 5 * time.Minute
	now := t0.Add(30 * time.Second)
	slots := map[string]time.Time{}
	// 1000 held at 100/s, spread at 200/s: 5 s, then 5 ms each, rounded up.
	for i, want := range []time.Duration{5250 * time.Millisecond, 5250 * time.Millisecond} {
		if got := e.postponeTo(now, "k", 1000, slots).Sub(now); got != want {
			t.Errorf("postponement %d: %v from now, want %v", i, got, want)
		}
	}
	if got := slots["k"].Sub(now); got < 5010*time.Millisecond || got > 5020*time.Millisecond {
		t.Errorf("last slot %v from now, want about 5.01s (unrounded)", got)
	}
	for _, later := range []time.Duration{4 * time.Minute, 10 * time.Minute, time.Hour, 1000 * time.Hour} {
		at := now.Add(later)
		got := e.postponeTo(at, "k", 10000, map[string]time.Time{}).Sub(at)
		if got < postponeMax || got > postponeMax+postponeGrain {
			t.Errorf("%v without a finish: postponed %v, want %v", later, got, postponeMax)
		}
	}
	if got := e.postponeTo(now, "unknown", 10, slots).Sub(now); got != time.Minute {
		t.Errorf("destination without a rate: postponed %v, want the 1 min fallback", got)
	}
}
