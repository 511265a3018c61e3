package spool

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkNextDue is NextDue with many recipients claimed (in flight) and
// one deferred recipient due after all their leases: the scheduler asks it
// on every loop, so its cost must not grow with the claims.
func BenchmarkNextDue(b *testing.B) {
	for _, n := range []int{1_000, 20_000} {
		b.Run(fmt.Sprintf("claimed=%d", n), func(b *testing.B) {
			now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
			dir := b.TempDir()
			prefill(b, dir, n+1, now)
			s, err := Open(dir, Options{MinFreeBytes: -1, UnsafeNoSync: true, Now: func() time.Time { return now }})
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _ = s.Close() }()
			ctx := context.Background()
			// One recipient deferred to two hours on, the rest claimed with
			// leases of one hour.
			first, err := s.Claim(ctx, now, 1, func(Task) time.Time { return now })
			if err != nil || len(first) != 1 {
				b.Fatalf("Claim: %d tasks, %v", len(first), err)
			}
			later := now.Add(2 * time.Hour)
			res := result(first[0].ID, first[0].Rcpt, Deferred, now, later)
			if err := s.Record(ctx, Update{Results: []Result{res}}); err != nil {
				b.Fatal(err)
			}
			for claimed := 0; claimed < n; {
				tasks, err := s.Claim(ctx, now, 1000, func(Task) time.Time { return now.Add(time.Hour) })
				if err != nil || len(tasks) == 0 {
					b.Fatalf("Claim: %d tasks, %v", len(tasks), err)
				}
				claimed += len(tasks)
			}
			b.ReportAllocs()
			for b.Loop() {
				at, ok, err := s.NextDue()
				if err != nil || !ok || !at.Equal(later) {
					b.Fatalf("NextDue: %v %v %v, want %v", at, ok, err, later)
				}
			}
		})
	}
}

// BenchmarkEnqueueAfterDrain is BenchmarkEnqueue's 20 writers on a spool
// that held 100,000 messages and delivered them all: its file is mostly
// free pages, which commits must not pay for (bbolt writes and sorts the
// whole freelist in every commit that keeps it in the file).
func BenchmarkEnqueueAfterDrain(b *testing.B) {
	dir := drained(b, 100_000, 100_000)
	obs := &syncCounter{}
	s := openIn(b, dir, Options{MinFreeBytes: -1, Observer: obs})
	b.ReportMetric(float64(s.db.Stats().FreePageN), "free-pages")
	runWriters(b, s, obs, 20, 2048, &latencies{})
}

// BenchmarkReopenAfterCrashHalfDrained is Open after a crash of a spool
// that held 100,000 messages and delivered half: many pages in use and
// many free, so the file has no freelist and Open walks the pages in use.
func BenchmarkReopenAfterCrashHalfDrained(b *testing.B) {
	benchReopenAfterCrash(b, drained(b, 100_000, 50_000))
}

// drained makes a closed spool holding n messages of which the first
// delivered have been delivered (and retired).
func drained(b *testing.B, n, delivered int) string {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	dir := b.TempDir()
	prefill(b, dir, n, now)
	s, err := Open(dir, Options{MinFreeBytes: -1, UnsafeNoSync: true, Now: func() time.Time { return now }})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for delivered > 0 {
		tasks, err := s.Claim(ctx, now, min(1000, delivered), func(Task) time.Time { return now.Add(time.Hour) })
		if err != nil || len(tasks) == 0 {
			b.Fatalf("Claim: %d tasks, %v", len(tasks), err)
		}
		var u Update
		for _, t := range tasks {
			u.Results = append(u.Results, result(t.ID, t.Rcpt, Delivered, now, time.Time{}))
		}
		if err := s.Record(ctx, u); err != nil {
			b.Fatal(err)
		}
		delivered -= len(tasks)
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	return dir
}

// BenchmarkFlow is the spool's whole share of a message's life, as the
// daemon drives it: writers enqueue 2 KiB messages (durably), a scheduler
// goroutine claims what is due (as delivery does, asking NextDue on every
// round, holding up to 20,000 claimed), and workers read each message and
// its body and record it delivered, which retires it. msgs/s counts
// messages retired; commit-busy is the committer's share of the time spent
// inside commits.
func BenchmarkFlow(b *testing.B) {
	for _, workers := range []int{20, 4} {
		b.Run(fmt.Sprintf("writers=20/workers=%d", workers), func(b *testing.B) {
			benchFlow(b, 20, workers)
		})
	}
}

func benchFlow(b *testing.B, writers, workers int) {
	obs := &syncCounter{}
	kick := make(chan struct{}, 1)
	s, _ := openSpool(b, Options{Observer: obs, MinFreeBytes: -1, OnDue: func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}})
	f := &flow{s: s, kick: kick, tasks: make(chan Task, flowActive), finished: make(chan struct{}, flowActive)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() { f.work(b) })
	}
	sched := make(chan struct{})
	go func() { defer close(sched); f.schedule(ctx, b) }()

	body := bodyOf("flow", 2048)
	env := envelope("sender@origin.test", "rcpt@dest.example")
	work := make(chan struct{})
	var ew sync.WaitGroup
	for range writers {
		ew.Go(func() {
			for range work {
				if err := tryEnqueue(s, NewID(), env, body); err != nil {
					b.Error(err)
				}
			}
		})
	}
	c0, o0 := obs.commits.Load(), obs.ops.Load()
	tx0 := s.db.Stats().TxStats
	b.ReportAllocs()
	start := time.Now()
	n := int64(0)
	for b.Loop() {
		work <- struct{}{}
		n++
	}
	close(work)
	ew.Wait()
	deadline := time.Now().Add(2 * time.Minute)
	for f.done.Load() < n && time.Now().Before(deadline) && !b.Failed() {
		time.Sleep(time.Millisecond) // a benchmark waiting for its work, not a test synchronising
	}
	elapsed := time.Since(start)
	cancel()
	<-sched
	close(f.tasks)
	wg.Wait()
	if got := f.done.Load(); got < n {
		b.Fatalf("%d of %d messages delivered in time", got, n)
	}
	commits, ops := obs.commits.Load()-c0, obs.ops.Load()-o0
	tx := s.db.Stats().TxStats
	b.ReportMetric(float64(tx.GetWrite()-tx0.GetWrite())/float64(n), "pages/msg")
	b.ReportMetric(float64(tx.GetWrite()-tx0.GetWrite())/float64(commits), "writes/commit")
	b.ReportMetric(float64((tx.GetSpillTime()-tx0.GetSpillTime()).Microseconds())/float64(n), "spill-µs/msg")
	b.ReportMetric(float64(n)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(commits)/float64(n), "commits/msg")
	b.ReportMetric(float64(ops)/float64(max(commits, 1)), "ops/commit")
	b.ReportMetric(float64(obs.durations.mean().Microseconds())/1000, "commit-ms")
	b.ReportMetric(100*obs.durations.sum().Seconds()/elapsed.Seconds(), "commit-busy-%")
}

// flowActive is how many claimed recipients the flow's scheduler holds,
// as delivery's ActiveEntries.
const flowActive = 20_000

// flow is a stand-in for delivery driving the spool.
type flow struct {
	s        *Spool
	kick     chan struct{}
	tasks    chan Task
	finished chan struct{}
	active   int // owned by schedule
	done     atomic.Int64
}

// schedule claims due recipients into tasks until ctx ends: the loop of
// delivery's scheduler without destinations.
func (f *flow) schedule(ctx context.Context, b *testing.B) {
	for ctx.Err() == nil {
		more := false
		if limit := min(flowActive-f.active, 1000); limit > 0 {
			now := time.Now()
			tasks, err := f.s.Claim(ctx, now, limit, func(Task) time.Time { return now.Add(5 * time.Minute) })
			if err != nil && ctx.Err() == nil {
				b.Error(err)
				return
			}
			for _, t := range tasks {
				f.tasks <- t
			}
			f.active += len(tasks)
			more = len(tasks) == limit
		}
		if more {
			continue
		}
		if _, _, err := f.s.NextDue(); err != nil {
			b.Error(err)
			return
		}
		select {
		case <-f.kick:
		case <-f.finished:
			f.active--
		case <-ctx.Done():
		}
		for drained := false; !drained; {
			select {
			case <-f.finished:
				f.active--
			default:
				drained = true
			}
		}
	}
}

// work reads each task's message and body and records it delivered.
func (f *flow) work(b *testing.B) {
	for t := range f.tasks {
		if _, err := f.s.Message(t.ID); err != nil {
			b.Error(err)
			return
		}
		r, err := f.s.Body(t.ID)
		if err != nil {
			b.Error(err)
			return
		}
		_, err = io.Copy(io.Discard, r)
		_ = r.Close() // read only
		if err != nil {
			b.Error(err)
			return
		}
		now := time.Now()
		res := result(t.ID, t.Rcpt, Delivered, now, time.Time{})
		if err := f.s.Record(context.Background(), Update{Results: []Result{res}}); err != nil {
			b.Error(err)
			return
		}
		f.done.Add(1)
		f.finished <- struct{}{}
	}
}

// BenchmarkRead is what a delivery attempt reads of a live one-recipient
// message with a 2 KiB body: the message (Message) and its body (Body),
// each in its own read transaction, or both at once (Load).
func BenchmarkRead(b *testing.B) {
	s, _ := openSpool(b, Options{MinFreeBytes: -1, UnsafeNoSync: true})
	var ids []string
	for range 1000 {
		ids = append(ids, enqueue(b, s, envelope("sender@origin.test", "rcpt@dest.example"), bodyOf("read", 2048)))
	}
	b.Run("MessageBody", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			id := ids[i%len(ids)]
			i++
			if _, err := s.Message(id); err != nil {
				b.Fatal(err)
			}
			r, err := s.Body(id)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, r); err != nil {
				b.Fatal(err)
			}
			_ = r.Close() // read only
		}
	})
	b.Run("Load", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			id := ids[i%len(ids)]
			i++
			_, r, err := s.Load(id)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, r); err != nil {
				b.Fatal(err)
			}
			_ = r.Close() // read only
		}
	})
}
