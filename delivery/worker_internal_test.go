package delivery

import (
	"context"
	"log/slog"
	"testing"
	"time"
)

// Functions run one after the other reuse one worker goroutine; a panic
// is recovered and the worker goes on; the workers end with the hard
// context.
func TestBackgroundReusesWorkers(t *testing.T) {
	hard, cancel := context.WithCancel(context.Background())
	e := &Scheduler{work: make(chan func()), hard: hard, cancel: cancel,
		log: slog.New(slog.DiscardHandler), obs: NopObserver{}}
	waitIdle := func(n int32) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for e.idle.Load() != n {
			if time.Now().After(deadline) {
				t.Fatalf("%d idle workers, want %d", e.idle.Load(), n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	e.background(func() { panic("in an attempt") })
	waitIdle(1)
	// A new goroutine for each would leave more and more idle ones.
	for range 20 {
		done := make(chan struct{})
		e.background(func() { close(done) })
		<-done
		waitIdle(1)
	}
	// Two at once: the busy worker cannot take the second.
	release := make(chan struct{})
	e.background(func() { <-release })
	waitIdle(0)
	ran := make(chan struct{})
	e.background(func() { close(ran) })
	<-ran
	close(release)
	waitIdle(2)
	cancel()
	done := make(chan struct{})
	go func() { e.bg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("idle workers did not end with the hard context")
	}
	if n := e.idle.Load(); n != 0 {
		t.Errorf("%d workers idle after the end", n)
	}
}
