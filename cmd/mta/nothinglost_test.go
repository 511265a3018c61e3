package main

import (
	"context"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"
)

// seededRand returns a random source whose seed is logged, so a failing
// round can be replayed.
func seededRand(t *testing.T) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	t.Logf("random seed %d", seed)
	return rand.New(rand.NewPCG(seed, seed>>1))
}

// TestKill9NothingLost: the daemon under continuous load is killed with
// SIGKILL at random moments — while it accepts, while it delivers, right
// after it starts — and restarted on the same spool, round after round.
// At the end every message that got a 250 has reached the sinks at least
// once (duplicates are counted and logged, never losses) and the queue is
// empty.
func TestKill9NothingLost(t *testing.T) {
	if testing.Short() {
		t.Skip("kill -9 rounds take a while; not in -short")
	}
	const rounds, perRound, sessions = 15, 150, 4
	r := newRig(t, rigOptions{Messages: rounds * perRound, Domains: 3,
		Daemon: daemonOptions{RetryMin: time.Second, RetryMax: 2 * time.Second}})
	rng := seededRand(t)
	for round := range rounds {
		r.start()
		acceptedBefore := r.led.Accepted()
		opts := r.gen(round*perRound, perRound, sessions)
		opts.StopOnError = true
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan genResult, 1)
		go func() { done <- generate(ctx, opts, r.led) }()
		var moment string
		switch k := rng.IntN(perRound + perRound/2); {
		case k < perRound:
			moment = "after " + strconv.Itoa(k) + " accepts"
			r.waitFor(moment, time.Minute, func() bool { return r.led.Accepted()-acceptedBefore >= k || len(done) > 0 })
		default:
			// The load of the round is over; the kill lands among deliveries.
			j := k - perRound
			moment = "while delivering, after the load and " + strconv.Itoa(j) + " more arrivals"
			g := <-done
			done <- g
			base := r.led.Distinct()
			r.waitFor(moment, time.Minute, func() bool { return r.led.Distinct()-base >= j || r.led.Distinct() >= r.led.Accepted()*r.led.rcpts })
		}
		if err := r.d.Kill(); err != nil {
			t.Fatal(err)
		}
		cancel()
		g := <-done
		t.Logf("round %2d: killed %s; this round: %d accepted, %d connection errors; arrivals so far %d", round, moment, g.Accepted, g.Errors, r.led.Distinct())
	}
	r.start()
	r.waitDelivered(2 * time.Minute)
	r.waitQueueEmpty(time.Minute)
	r.checkNothingLost()
	r.checkSpool()
}

// TestMXOutagesNothingLost: while mail flows, every MX host refuses
// connections, then greets with 421, then hangs, each time until the
// daemon has felt it; the mail is deferred, retried and delivered, and the
// queue ends empty.
func TestMXOutagesNothingLost(t *testing.T) {
	if testing.Short() {
		t.Skip("MX outage rounds take a while; not in -short")
	}
	const messages = 600
	r := newRig(t, rigOptions{Messages: messages, Domains: 3,
		Daemon: daemonOptions{RetryMin: time.Second, RetryMax: 2 * time.Second}})
	r.start()
	opts := r.gen(0, messages, 4)
	opts.PerSession = 1
	done := make(chan genResult, 1)
	go func() { done <- generate(t.Context(), opts, r.led) }()
	for _, mode := range []sinkMode{sinkRefuse, sinkGreet421, sinkHang} {
		t.Run(mode.String(), func(t *testing.T) {
			deferredBefore := r.deferredAttempts()
			conns := r.w.Sinks.Connections()
			r.setSinks(mode)
			switch mode {
			case sinkHang:
				// The daemon has a connection hanging on a silent host; the
				// outage ends by closing it, which is an attempt failure.
				r.waitFor("a connection to a hanging MX", time.Minute, func() bool { return r.w.Sinks.Connections() > conns })
			default:
				r.waitFor("a deferral", time.Minute, func() bool { return r.deferredAttempts() > deferredBefore })
			}
			arrived := r.led.Distinct()
			r.setSinks(sinkAccept)
			if mode == sinkHang {
				r.waitFor("a deferral after the hang", time.Minute, func() bool { return r.deferredAttempts() > deferredBefore })
			}
			r.waitFor("deliveries to resume", time.Minute, func() bool {
				return r.led.Distinct() > arrived || r.led.Distinct() >= messages
			})
		})
	}
	g := <-done
	if g.Accepted != messages {
		t.Errorf("accepted %d of %d: %+v", g.Accepted, messages, g)
	}
	r.waitDelivered(2 * time.Minute)
	r.waitQueueEmpty(time.Minute)
	t.Logf("deferred attempts in all: %.0f", r.deferredAttempts())
	r.checkNothingLost()
	r.checkSpool()
}

func (r *rig) setSinks(m sinkMode) {
	r.t.Helper()
	for _, ip := range r.w.IPs {
		if err := r.w.Sinks.SetMode(ip, m); err != nil {
			r.t.Fatal(err)
		}
	}
}

// deferredAttempts is the sum of the daemon's
// mta_delivery_attempts_total{result="deferred"} series.
func (r *rig) deferredAttempts() float64 {
	r.t.Helper()
	v, err := scrapeSum(r.t.Context(), r.d.Metrics, "mta_delivery_attempts_total", `result="deferred"`)
	if err != nil {
		r.t.Logf("metrics: %v", err)
	}
	return v
}
