package main

// End-to-end mode: the bench world, the daemon as a child process, the
// load, and the measurements around it.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

func benchEndToEnd(ctx context.Context, o benchOptions, stdio Stdio) (*benchReport, error) {
	bin, err := os.Executable()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "mta-bench-")
	if err != nil {
		return nil, err
	}
	if o.keep {
		fmt.Fprintf(stdio.Err, "bench: keeping %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	r := &benchReport{Params: o.params()}
	led := newLedger(newBenchTag(), o.messages, o.rcpts)
	w, err := startWorld(worldOptions{Domains: o.domains, Delay: o.slowSink, Arrive: led.arrive})
	if err != nil {
		return nil, err
	}
	defer w.Close()
	dopts := daemonOptions{Bin: bin, Dir: dir, DNS: w.DNS.Addr(), SinkPort: w.Sinks.Port()}
	if o.profileDir != "" {
		if dopts.ProfileDir, err = filepath.Abs(o.profileDir); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(dopts.ProfileDir, 0o755); err != nil {
			return nil, err
		}
		// A profile left by an earlier run would pass for this one's.
		for _, f := range []string{cpuProfileFile, heapProfileFile} {
			if err := os.Remove(filepath.Join(dopts.ProfileDir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, err
			}
		}
	}
	d, err := newDaemon(dopts)
	if err != nil {
		return nil, err
	}
	if err := d.Start(ctx); err != nil {
		return nil, err
	}
	err = measure(ctx, o, w, d, led, r)
	if serr := d.Stop(30 * time.Second); serr != nil && err == nil {
		err = fmt.Errorf("%w: %s", serr, d.LogTail(2000))
	}
	return r, err
}

// measure runs the (optional) prefill and the measured load against a
// started daemon and fills r.
func measure(ctx context.Context, o benchOptions, w *world, d *childDaemon, led *ledger, r *benchReport) error {
	if o.prefill > 0 {
		start := time.Now()
		if err := prefill(ctx, o, d); err != nil {
			return err
		}
		r.PrefillSecs = time.Since(start).Seconds()
	}
	spoolDir := filepath.Join(d.opts.StateDir, spoolSubdir)
	s := startSampler(ctx, d, spoolDir)
	cpu0, err1 := procCPU(d.PID())
	self0, err2 := procCPU(os.Getpid())
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	mt0, ms0, mErr := machineCPU() // a machine without /proc/stat steal gets no steal row

	if o.profileDir != "" {
		if err := d.Signal(syscall.SIGUSR1); err != nil {
			return err
		}
	}
	g := generate(ctx, o.genOptions(d.SMTP, w.Domains), led)
	r.addGenerator(g)
	waitErr := waitArrivals(ctx, led, g.Accepted*o.rcpts, d.exited)
	cpu1, err1 := procCPU(d.PID())
	self1, err2 := procCPU(os.Getpid())
	if mt1, ms1, err := machineCPU(); err == nil && mErr == nil {
		r.StealPct = stealPercent(mt0, ms0, mt1, ms1)
		r.StealKnown = true
	}
	if o.profileDir != "" {
		r.ProfileFiles, err1 = collectProfiles(ctx, d, o.profileDir)
	}
	peaks := s.stop()
	r.addArrivals(led.tally(10))
	r.DaemonCPU = (cpu1 - cpu0).Seconds()
	r.BenchCPU = (self1 - self0).Seconds()
	r.RSSAnon, _ = procStatus(d.PID(), "RssAnon") // zero if unreadable: shown as such
	heap, _ := scrapeMetric(ctx, d.Metrics, "go_memstats_heap_inuse_bytes")
	r.HeapBytes = int64(heap)
	r.SpoolBytes = dirBytes(spoolDir)
	r.SpoolFS = fsName(spoolDir)
	r.RSSAnonPeak = max(peaks.rss, r.RSSAnon)
	r.HeapPeak = max(peaks.heap, r.HeapBytes)
	r.SpoolPeak = max(peaks.spool, r.SpoolBytes)
	return errors.Join(waitErr, err1, err2)
}

// waitArrivals waits until want distinct recipients have arrived, giving
// up when ctx ends or exited (the daemon's) is closed.
func waitArrivals(ctx context.Context, led *ledger, want int, exited <-chan struct{}) error {
	for {
		ch := led.Changed()
		if led.Distinct() >= want {
			return nil
		}
		select {
		case <-ch:
		case <-exited:
			return fmt.Errorf("the daemon exited with %d of %d recipients arrived", led.Distinct(), want)
		case <-ctx.Done():
			return fmt.Errorf("%d of %d recipients arrived before giving up: %w", led.Distinct(), want, ctx.Err())
		}
	}
}

// prefill queues o.prefill messages to the defer domain, whose MX greets
// with 421, and waits until the daemon has deferred them all.
func prefill(ctx context.Context, o benchOptions, d *childDaemon) error {
	led := newLedger(newBenchTag(), o.prefill, 1)
	gopts := o.genOptions(d.SMTP, []string{deferDomain})
	gopts.Messages, gopts.Rcpts, gopts.PerSession = o.prefill, 1, 100
	g := generate(ctx, gopts, led)
	if g.Accepted < o.prefill {
		return fmt.Errorf("prefill: %d of %d messages accepted (first error %q, refused %v)", g.Accepted, o.prefill, g.FirstErr, g.Replies)
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		resp, err := adminCall(ctx, d.Admin, adminRequest{Op: "list", Limit: 1})
		if err == nil && resp.Counts != nil && resp.Counts.ByState["deferred"] >= o.prefill {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("prefill: waiting for %d deferred messages: %w (last: %v)", o.prefill, ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// collectProfiles ends the daemon's CPU profile and waits for it to write
// the heap profile.
func collectProfiles(ctx context.Context, d *childDaemon, dir string) ([]string, error) {
	if err := d.Signal(syscall.SIGUSR2); err != nil {
		return nil, err
	}
	files := []string{filepath.Join(dir, cpuProfileFile), filepath.Join(dir, heapProfileFile)}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(files[1]); err == nil {
			return files, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("daemon wrote no %s (is %s honoured by serve?)", files[1], profileDirEnv)
		}
		time.Sleep(20 * time.Millisecond) // polling a file the child writes
	}
}

// sampler records the peaks of the daemon's anonymous memory, Go heap and
// spool size while the load runs.
type sampler struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	peaks  samplePeaks
}

type samplePeaks struct{ rss, heap, spool int64 }

func startSampler(ctx context.Context, d *childDaemon, spoolDir string) *sampler {
	ctx, cancel := context.WithCancel(ctx)
	s := &sampler{cancel: cancel}
	pid := d.PID()
	s.wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			if v, err := procStatus(pid, "RssAnon"); err == nil {
				s.peaks.rss = max(s.peaks.rss, v)
			}
			if i%10 == 0 { // a scrape and a directory walk cost more: once a second
				if v, err := scrapeMetric(ctx, d.Metrics, "go_memstats_heap_inuse_bytes"); err == nil {
					s.peaks.heap = max(s.peaks.heap, int64(v))
				}
				s.peaks.spool = max(s.peaks.spool, dirBytes(spoolDir))
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})
	return s
}

func (s *sampler) stop() samplePeaks {
	s.cancel()
	s.wg.Wait()
	return s.peaks
}
