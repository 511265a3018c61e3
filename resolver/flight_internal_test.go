package resolver

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"mta/internal/testpeer"
)

// noCache is a do cache check that finds nothing.
func noCache() bool { return false }

// TestFlightShared checks that callers arriving while a flight is under way
// share it: fn runs once, and every caller gets its answer.
func TestFlightShared(t *testing.T) {
	var g flightGroup
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	key := cacheKey{name: "shared.test.", qtype: 15}
	release := make(chan struct{})
	var calls atomic.Int32
	want := &answer{rcode: 0}
	fn := func(context.Context) (*answer, []Exchange) {
		calls.Add(1)
		<-release
		return want, []Exchange{{Name: key.name}}
	}
	const n = 8
	var wg sync.WaitGroup
	got := make([]*answer, n)
	for i := range n {
		wg.Go(func() {
			a, exs, err := g.do(t.Context(), log, key, noCache, fn)
			if err != nil || len(exs) != 1 {
				t.Errorf("do: %v, %d exchanges", err, len(exs))
			}
			got[i] = a
		})
	}
	waitFor(t, func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		f := g.m[key]
		return f != nil && f.waiters == n
	})
	close(release)
	wg.Wait()
	if c := calls.Load(); c != 1 {
		t.Errorf("fn ran %d times, want 1", c)
	}
	for i, a := range got {
		if a != want {
			t.Errorf("caller %d got %v", i, a)
		}
	}
}

// TestFlightCallerGivesUp checks that a caller whose context ends stops
// waiting, while the flight goes on for the others.
func TestFlightCallerGivesUp(t *testing.T) {
	var g flightGroup
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	key := cacheKey{name: "slow.test.", qtype: 1}
	release := make(chan struct{})
	fn := func(context.Context) (*answer, []Exchange) { <-release; return &answer{}, nil }
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, _, err := g.do(ctx, log, key, noCache, fn); err == nil {
		t.Fatal("cancelled caller got no error")
	}
	done := make(chan error, 1)
	go func() { _, _, err := g.do(t.Context(), log, key, noCache, fn); done <- err }()
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("second caller: %v", err)
	}
}

// TestFlightPanic checks that a panic in a flight becomes an error answer.
func TestFlightPanic(t *testing.T) {
	var g flightGroup
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, _, err := g.do(t.Context(), log, cacheKey{name: "p.test."}, noCache, func(context.Context) (*answer, []Exchange) {
		panic("boom")
	})
	if err != nil || a == nil || a.rcode != rcodeError {
		t.Fatalf("got %+v, %v; want an error answer", a, err)
	}
}

// TestFlightCachedMeanwhile checks that a caller finding no flight under
// way but the answer now cached (a flight ended between its cache miss and
// its call) starts no flight and is sent back to the cache.
func TestFlightCachedMeanwhile(t *testing.T) {
	var g flightGroup
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ran := false
	_, _, err := g.do(t.Context(), log, cacheKey{name: "c.test."}, func() bool { return true },
		func(context.Context) (*answer, []Exchange) { ran = true; return &answer{}, nil })
	if !errors.Is(err, errCachedMeanwhile) || ran {
		t.Fatalf("err %v, fn ran %v; want errCachedMeanwhile and no flight", err, ran)
	}
}

// TestRouteSharedQuery checks that concurrent routes to one domain send one
// query for each name: the MX answer is held at the server until all n
// routes wait on its flight, and each of their traces shows the exchange;
// the later A lookups join a flight or find its answer cached.
func TestRouteSharedQuery(t *testing.T) {
	d := testpeer.NewDNS(t, `$ORIGIN shared.test.
@  300 IN MX 10 mx
mx 300 IN A 192.0.2.1
`)
	release := d.Hold("shared.test")
	r, err := New(Config{Servers: []string{d.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	traces := make([][]Exchange, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			rt, err := r.Route(t.Context(), "shared.test")
			if err != nil {
				t.Errorf("Route: %v", err)
				return
			}
			traces[i] = rt.Trace
		})
	}
	key := cacheKey{name: "shared.test.", qtype: dns.TypeMX}
	waitFor(t, func() bool {
		r.flights.mu.Lock()
		defer r.flights.mu.Unlock()
		f := r.flights.m[key]
		return f != nil && f.waiters == n
	})
	release()
	wg.Wait()
	for name, qtype := range map[string]string{"shared.test": "MX", "mx.shared.test": "A", "mx.shared.test.": "AAAA"} {
		if got := d.Count(name, qtype); got != 1 {
			t.Errorf("%d concurrent routes sent %d %s queries for %s, want 1", n, got, qtype, name)
		}
	}
	for i, tr := range traces {
		if len(tr) == 0 || tr[0].Type != "MX" || tr[0].Cached || tr[0].Server != d.Addr() || tr[0].Rcode != "NOERROR" {
			t.Errorf("route %d: trace does not start with the shared MX exchange: %+v", i, tr)
		}
	}
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}
