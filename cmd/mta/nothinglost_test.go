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

// TestMXOutagesNothingLost: mail keeps flowing in while every MX host
// refuses connections, then greets with 421, then hangs (accepts and never
// greets, until the daemon's own session timeout gives up on it), and
// comes back after each. The daemon defers while the hosts are away,
// retries, and delivers everything once: the queue ends empty.
func TestMXOutagesNothingLost(t *testing.T) {
	if testing.Short() {
		t.Skip("MX outage rounds take a while; not in -short")
	}
	const perOutage = 150
	outages := []sinkMode{sinkRefuse, sinkGreet421, sinkHang}
	r := newRig(t, rigOptions{Messages: perOutage * len(outages), Domains: 3,
		Daemon: daemonOptions{RetryMin: time.Second, RetryMax: 2 * time.Second, SessionTimeout: 2 * time.Second}})
	r.start()
	for i, mode := range outages {
		t.Run(mode.String(), func(t *testing.T) {
			deferredBefore, gaveUpBefore, arrivedBefore := r.deferredAttempts(), r.w.Sinks.GaveUp(), r.led.Distinct()
			r.setSinks(mode)
			done := make(chan genResult, 1)
			go func() { done <- generate(t.Context(), r.gen(i*perOutage, perOutage, 4), r.led) }()
			if mode == sinkHang {
				// Nothing closes these connections but the daemon itself.
				r.waitFor("the daemon to give up on a silent MX", time.Minute, func() bool { return r.w.Sinks.GaveUp() > gaveUpBefore })
			}
			r.waitFor("a deferral while the MX hosts are away", time.Minute, func() bool { return r.deferredAttempts() > deferredBefore })
			r.setSinks(sinkAccept)
			g := <-done
			if g.Accepted != perOutage {
				t.Errorf("accepted %d of %d while the MX hosts were away: %+v", g.Accepted, perOutage, g)
			}
			r.waitFor("deliveries to resume", time.Minute, func() bool { return r.led.Distinct() > arrivedBefore })
			t.Logf("%d deferred attempts so far, %d connections given up", int(r.deferredAttempts()), r.w.Sinks.GaveUp())
		})
	}
	r.waitDelivered(2 * time.Minute)
	r.waitQueueEmpty(time.Minute)
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
