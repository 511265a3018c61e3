package spool

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// syncCounter counts committed transactions for fsyncs per message, and
// their durations.
type syncCounter struct {
	commits, ops atomic.Int64
	durations    latencies
}

func (o *syncCounter) Committed(c Commit) {
	if c.Synced {
		o.commits.Add(1)
		o.ops.Add(int64(c.Ops))
		o.durations.add(c.Duration)
	}
}

// latencies collects operation latencies from many goroutines.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

// mean is the average latency.
func (l *latencies) mean() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range l.d {
		sum += d
	}
	return sum / time.Duration(len(l.d))
}

// sum is the total of the latencies.
func (l *latencies) sum() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var sum time.Duration
	for _, d := range l.d {
		sum += d
	}
	return sum
}

// quantile is the q-th percentile.
func (l *latencies) quantile(q int) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0
	}
	slices.Sort(l.d)
	return l.d[len(l.d)*q/100]
}

// runWriters runs one enqueue of a size-byte body per b.Loop iteration on
// writers goroutines and reports throughput, fsyncs per message and p99
// latency.
func runWriters(b *testing.B, s *Spool, obs *syncCounter, writers, size int, lat *latencies) {
	body := bodyOf("bench", size)
	env := envelope("sender@origin.test", "rcpt@dest.example")
	work := make(chan struct{})
	var wg sync.WaitGroup
	var failed atomic.Value
	for range writers {
		wg.Go(func() {
			for range work {
				start := time.Now()
				if err := tryEnqueue(s, NewID(), env, body); err != nil {
					failed.Store(err)
				}
				lat.add(time.Since(start))
			}
		})
	}
	c0 := obs.commits.Load()
	b.ReportAllocs()
	b.SetBytes(int64(size))
	start := time.Now()
	n := 0
	for b.Loop() {
		work <- struct{}{}
		n++
	}
	close(work)
	wg.Wait()
	elapsed := time.Since(start)
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	commits := obs.commits.Load() - c0
	b.ReportMetric(float64(n)/elapsed.Seconds(), "msgs/s")
	// bbolt fdatasyncs twice per commit: data pages, then the meta page.
	b.ReportMetric(float64(2*commits)/float64(n), "fsyncs/msg")
	b.ReportMetric(float64(n)/float64(max(commits, 1)), "msgs/commit")
	b.ReportMetric(float64(lat.quantile(50).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat.quantile(99).Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(obs.durations.quantile(99).Microseconds())/1000, "commit-p99-ms")
}

// BenchmarkEnqueue is durable enqueue of 2 KiB messages by 1, 20 and 64
// concurrent writers: every message fsynced before Enqueue returns.
func BenchmarkEnqueue(b *testing.B) {
	for _, writers := range []int{1, 20, 64} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			obs := &syncCounter{}
			s, _ := openSpool(b, Options{Observer: obs, MinFreeBytes: -1})
			runWriters(b, s, obs, writers, 2048, &latencies{})
		})
	}
}

// BenchmarkEnqueueBeside25MB is 20 writers of 2 KiB messages while another
// client streams 25 MB messages one after another: the large body's file
// is written and fsynced outside the committer, so the others' p99 should
// barely move.
func BenchmarkEnqueueBeside25MB(b *testing.B) {
	obs := &syncCounter{}
	s, _ := openSpool(b, Options{Observer: obs, MinFreeBytes: -1})
	ctx, cancel := context.WithCancel(context.Background())
	var big atomic.Int64
	done := make(chan error, 1)
	go func() { done <- enqueueLarge(ctx, s, 25<<20, &big) }()
	runWriters(b, s, obs, 20, 2048, &latencies{})
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(big.Load()), "25MB-msgs")
}

// enqueueLarge enqueues size-byte messages, written in 64 KiB chunks, until
// ctx ends.
func enqueueLarge(ctx context.Context, s *Spool, size int, n *atomic.Int64) error {
	chunk := bodyOf("large", 64<<10)
	for ctx.Err() == nil {
		id := NewID()
		w, err := s.NewBody(id)
		if err != nil {
			return err
		}
		for written := 0; written < size; written += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return err
			}
		}
		if err := s.Enqueue(ctx, id, envelope("big@origin.test", "rcpt@dest.example"), w); err != nil {
			_ = w.Abort() // reporting the enqueue error
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		n.Add(1)
	}
	return nil
}

// prefill makes a closed spool in dir holding n messages of 2 KiB, all
// due at now, written in large unsynced transactions (a fixture, not a
// measurement).
func prefill(b *testing.B, dir string, n int, now time.Time) {
	b.Helper()
	s, err := Open(dir, Options{UnsafeNoSync: true, MinFreeBytes: -1, Now: func() time.Time { return now }})
	if err != nil {
		b.Fatal(err)
	}
	body := bodyOf("queued", 2048)
	for done := 0; done < n; {
		var u Update
		for range min(1000, n-done) {
			env := envelope("sender@origin.test", fmt.Sprintf("rcpt@d%d.example", done%1000))
			u.Enqueue = append(u.Enqueue, NewMessage{ID: NewID(), Envelope: *env, Body: body})
			done++
		}
		if err := s.Record(context.Background(), u); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkQueued measures the operations whose cost must not grow with
// the queue: a durable Claim of one recipient plus the Record of its
// deferral, reopening the spool, and the Go heap, with 100,000 and
// 1,000,000 messages queued. The 1,000,000 case writes a 3 GB fixture and
// is skipped with -short.
func BenchmarkQueued(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("queued=%d", n), func(b *testing.B) {
			if n > 100_000 && testing.Short() {
				b.Skip("large fixture: run without -short")
			}
			now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
			dir := b.TempDir()
			start := time.Now()
			prefill(b, dir, n, now)
			b.Logf("prefilled %d messages in %v", n, time.Since(start))
			b.Run("ClaimRecord", func(b *testing.B) { benchClaimRecord(b, dir, now, false) })
			// Without fsync: the cost of the index work alone.
			b.Run("ClaimRecordNoSync", func(b *testing.B) { benchClaimRecord(b, dir, now, true) })
			b.Run("Reopen", func(b *testing.B) { benchReopen(b, dir) })
			b.Run("ReopenAfterCrash", func(b *testing.B) { benchReopenAfterCrash(b, dir) })
			b.Run("Heap", func(b *testing.B) { benchHeap(b, dir) })
		})
	}
}

func benchClaimRecord(b *testing.B, dir string, now time.Time, noSync bool) {
	s, err := Open(dir, Options{MinFreeBytes: -1, UnsafeNoSync: noSync, Now: func() time.Time { return now }})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		lease := func(Task) time.Time { return now.Add(time.Hour) }
		tasks, err := s.Claim(ctx, now, 1, lease)
		if err == nil && len(tasks) == 0 {
			// Everything was tried once: the deferrals are due 2 hours on.
			now = now.Add(3 * time.Hour)
			tasks, err = s.Claim(ctx, now, 1, lease)
		}
		if err != nil || len(tasks) != 1 {
			b.Fatalf("Claim: %d tasks, %v", len(tasks), err)
		}
		res := result(tasks[0].ID, tasks[0].Rcpt, Deferred, now, now.Add(2*time.Hour))
		if err := s.Record(ctx, Update{Results: []Result{res}}); err != nil {
			b.Fatal(err)
		}
	}
}

func benchReopen(b *testing.B, dir string) {
	b.ReportAllocs()
	for b.Loop() {
		s, err := Open(dir, Options{MinFreeBytes: -1})
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(fileBytes(b, dir))/(1<<20), "file-MB")
}

// benchReopenAfterCrash opens copies of the spool file taken while it was
// open, after a commit: what a crash leaves. When more than
// freelistSyncPages pages are free the file has no freelist, and Open
// rebuilds it by walking the pages in use; it reports how many were free.
func benchReopenAfterCrash(b *testing.B, dir string) {
	s, err := Open(dir, Options{MinFreeBytes: -1})
	if err != nil {
		b.Fatal(err)
	}
	// A commit, so that the file's meta is one written while running.
	if err := tryEnqueue(s, NewID(), envelope("a@o.test", "b@d.example"), bodyOf("crash", 100)); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(s.db.Stats().FreePageN), "free-pages")
	image := filepath.Join(b.TempDir(), dbName)
	err = copyFile(image, filepath.Join(dir, dbName))
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		crashed := b.TempDir()
		if err := copyFile(filepath.Join(crashed, dbName), image); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		s, err := Open(crashed, Options{MinFreeBytes: -1})
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer func() { _ = in.Close() }() // read only
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

func benchHeap(b *testing.B, dir string) {
	s, err := Open(dir, Options{MinFreeBytes: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	var ms runtime.MemStats
	for b.Loop() {
		if _, err := s.Counts(); err != nil {
			b.Fatal(err)
		}
		if _, _, err := s.NextDue(); err != nil {
			b.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "heap-MB")
}

func fileBytes(b *testing.B, dir string) int64 {
	fi, err := os.Stat(filepath.Join(dir, dbName))
	if err != nil {
		b.Fatal(err)
	}
	return fi.Size()
}
