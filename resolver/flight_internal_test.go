package resolver

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

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
			a, exs, err := g.do(t.Context(), log, key, fn)
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
	if _, _, err := g.do(ctx, log, key, fn); err == nil {
		t.Fatal("cancelled caller got no error")
	}
	done := make(chan error, 1)
	go func() { _, _, err := g.do(t.Context(), log, key, fn); done <- err }()
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("second caller: %v", err)
	}
}

// TestFlightPanic checks that a panic in a flight becomes an error answer.
func TestFlightPanic(t *testing.T) {
	var g flightGroup
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, _, err := g.do(t.Context(), log, cacheKey{name: "p.test."}, func(context.Context) (*answer, []Exchange) {
		panic("boom")
	})
	if err != nil || a == nil || a.rcode != rcodeError {
		t.Fatalf("got %+v, %v; want an error answer", a, err)
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
