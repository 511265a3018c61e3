package delivery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"mta/spool"
)

// claimBatch bounds the recipients one Claim takes.
const claimBatch = 1000

// Scheduler is the delivery engine: it claims due recipients from the
// spool, queues them per destination and runs the attempts.
type Scheduler struct {
	cfg Config
	// hops are the configured routes and TLS policies; SetNextHops swaps
	// them while running.
	hops   atomic.Pointer[nextHops]
	pool   *pool
	broken *brokenTLS
	dsn    DSNConfig
	log    *slog.Logger
	obs    Observer

	kick     chan struct{}
	done     chan workDone
	draining chan struct{} // closed by Shutdown
	stopped  chan struct{} // closed when Run returns
	started  atomic.Bool
	stopOnce sync.Once
	hard     context.Context // ends in-flight connections
	cancel   context.CancelFunc
	bg       sync.WaitGroup // workers and background quits
	work     chan func()    // hands a function to an idle worker
	idle     atomic.Int32   // workers waiting on work
	conns    atomic.Int64

	// Owned by the Run goroutine.
	dests   map[string]*destination
	active  int // claimed recipients held
	busy    int // attempts running (bounded by MaxConns)
	pending int // goroutines that will report on done
}

// New checks cfg and returns a scheduler; Run starts it.
func New(cfg Config) (*Scheduler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("delivery config: %w", err)
	}
	cfg.setDefaults()
	hard, cancel := context.WithCancel(context.Background())
	e := &Scheduler{
		cfg:      cfg,
		broken:   newBrokenTLS(10000),
		dsn:      DSNConfig{Hostname: cfg.Hostname, Lifetime: cfg.Lifetime, Now: cfg.Now, Aliases: cfg.Aliases},
		log:      cfg.Logger,
		obs:      cfg.Observer,
		kick:     make(chan struct{}, 1),
		done:     make(chan workDone, 64),
		draining: make(chan struct{}),
		stopped:  make(chan struct{}),
		hard:     hard,
		cancel:   cancel,
		dests:    make(map[string]*destination),
		work:     make(chan func()),
	}
	e.dsn = e.dsn.withDefaults()
	e.pool = newPool(e)
	e.storeHops(cfg.Routes, cfg.Relayhost, cfg.TLSPolicies)
	return e, nil
}

// Kick wakes the scheduler to claim due work now; it never blocks. Wire it
// to spool.Options.OnDue.
func (e *Scheduler) Kick() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// Run schedules deliveries until Shutdown is called or ctx ends (which
// abandons in-flight transactions at once, as a Shutdown past its deadline).
func (e *Scheduler) Run(ctx context.Context) (err error) {
	if !e.started.CompareAndSwap(false, true) {
		return errors.New("delivery: Run called twice")
	}
	defer close(e.stopped)
	stop := context.AfterFunc(ctx, e.cancel)
	defer stop()
	defer func() {
		if p := recover(); p != nil {
			e.panicked("scheduler", p)
			err = fmt.Errorf("delivery scheduler panic: %v", p)
			e.cancel()
			e.drain()
		}
	}()
	e.loop()
	return nil
}

// Shutdown stops claiming, lets in-flight attempts finish until ctx ends,
// then closes their connections. Recipients not resolved are given back to
// the spool, due again at their committed next attempt time.
func (e *Scheduler) Shutdown(ctx context.Context) error {
	e.stopOnce.Do(func() { close(e.draining) })
	if e.started.Load() {
		select {
		case <-e.stopped:
		case <-ctx.Done():
			e.cancel()
			<-e.stopped
		}
	}
	// Idle sessions say QUIT first; a host that does not answer is cut
	// off when ctx ends.
	stop := context.AfterFunc(ctx, e.cancel)
	e.pool.close()
	stop()
	e.cancel()
	e.bg.Wait()
	return ctx.Err()
}

func (e *Scheduler) loop() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	draining, wantClaim := false, true
	var swept time.Time
	for {
		if draining || e.hard.Err() != nil {
			e.drain()
			return
		}
		if now := e.cfg.Now(); now.Sub(swept) >= destIdleFor/4 || now.Before(swept) {
			e.sweep(now)
			swept = now
		}
		more := false
		if wantClaim {
			more = e.claim()
		}
		wantClaim = more
		e.dispatch()
		timer.Reset(e.nextWake(more))
		select {
		case <-e.kick:
			wantClaim = true
		case <-timer.C:
			wantClaim = true
		case d := <-e.done:
			// Room was made: claim again if the queues were full.
			wantClaim = e.active >= e.cfg.ActiveEntries
			e.finished(d)
		case <-e.draining:
			draining = true
		case <-e.hard.Done():
		}
	}
}

// drain gives back what waits in queues and waits for running attempts.
func (e *Scheduler) drain() {
	for key, d := range e.dests {
		for _, j := range d.queue {
			e.cfg.Spool.Unclaim(j.tasks)
			e.active -= len(j.tasks)
		}
		d.queue, d.queuedTasks = nil, 0
		delete(e.dests, key)
	}
	for e.pending > 0 {
		e.finished(<-e.done)
	}
}

// nextWake is how long to sleep: no time when the last claim was full, else
// until the earliest due recipient (capped, so a clock change is noticed).
//
// While the queues are full only a finished attempt (or a kick) wakes it.
func (e *Scheduler) nextWake(more bool) time.Duration {
	wait := time.Minute
	now := e.cfg.Now()
	if e.active < e.cfg.ActiveEntries {
		if more {
			return 0
		}
		if t, ok, err := e.cfg.Spool.NextDue(); err == nil && ok {
			wait = min(wait, max(t.Sub(now), time.Millisecond))
		}
	}
	if t, ok := e.nextDeadEnd(now); ok {
		wait = min(wait, t.Sub(now))
	}
	return wait
}

// claim takes due recipients into destination queues; it reports whether
// the spool may have more due now.
//
// A destination holds at most DestinationEntries claimed recipients, so
// that one with a backlog leaves room for the others. Its recipients due
// past that are postponed in the claim's commit (not claimed, one write
// each) to when the destination should have room: spread at twice the
// rate it has been finishing recipients, after what it holds, within
// [postponeMin, postponeMax] of now and rounded up to postponeGrain; at a
// minute (or the first backoff, if shorter) until that rate is known, and
// at postponeMax once nothing has finished for long. A backlog is then
// rewritten about once for each postponeMax it waits, not each time the
// scheduler claims.
func (e *Scheduler) claim() bool {
	limit := min(e.cfg.ActiveEntries-e.active, claimBatch)
	if limit <= 0 {
		return false
	}
	now := e.cfg.Now()
	held := make(map[string]int, len(e.dests))
	for k, d := range e.dests {
		held[k] = d.queuedTasks + d.runningTasks
	}
	// decide runs inside the commit, which may run it again for the same
	// tasks: each task's decision is made once and remembered, and nothing
	// outside reads held or slots until the claim has returned.
	decided := make(map[spool.Task]decision)
	slots := make(map[string]time.Time) // per destination: the last postponement
	decide := func(t spool.Task) (time.Time, bool) {
		if d, ok := decided[t]; ok {
			return d.at, d.take
		}
		key := e.hops.Load().routes.destKey(t.Domain)
		d := decision{at: now.Add(e.cfg.Backoff.delay(t.Attempts + 1)), take: true}
		if held[key] >= e.cfg.DestinationEntries {
			d = decision{at: e.postponeTo(now, key, held[key], slots), take: false}
		} else {
			held[key]++
		}
		decided[t] = d
		return d.at, d.take
	}
	tasks, seen, err := e.cfg.Spool.ClaimOrPostpone(e.hard, now, limit, decide)
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			e.log.Error("claim due recipients", "err", err)
		}
		return false
	}
	for key, at := range slots {
		if d := e.dests[key]; d != nil {
			d.postponedTo = at
		}
	}
	if n := seen - len(tasks); n > 0 {
		e.obs.Postponed(n)
		if e.log.Enabled(context.Background(), slog.LevelDebug) {
			e.logPostponed(now, decided, slots)
		}
	}
	e.enqueue(tasks)
	return seen == limit
}

// logPostponed says, per destination, how many recipients a claim
// postponed and until when (the queue shows them pending with a later
// next attempt; this says why).
func (e *Scheduler) logPostponed(now time.Time, decided map[spool.Task]decision, slots map[string]time.Time) {
	counts := make(map[string]int, len(slots))
	for t, d := range decided {
		if !d.take {
			counts[e.hops.Load().routes.destKey(t.Domain)]++
		}
	}
	for key, n := range counts {
		rate, known := 0.0, false
		if d := e.dests[key]; d != nil {
			rate, known = d.drain.rate(now)
		}
		e.log.Debug("recipients postponed: destination holds its share", "destination", key, "count", n,
			"last_until", slots[key], "finishing_per_second", rate, "rate_known", known)
	}
}

const (
	postponeMin = time.Second
	postponeMax = 10 * time.Minute
	// postponeGrain: postponed times are rounded up to it, so that a
	// spread backlog comes due a batch at a time, not one recipient (and
	// one claim) at a time.
	postponeGrain = 250 * time.Millisecond
)

// postponeTo is when a recipient claimed past DestinationEntries for the
// destination key, which holds held recipients, is due again. slots holds
// this claim's last postponement per destination.
func (e *Scheduler) postponeTo(now time.Time, key string, held int, slots map[string]time.Time) time.Time {
	d := e.dests[key]
	r, known := 0.0, false
	if d != nil {
		r, known = d.drain.rate(now)
	}
	if !known {
		return now.Add(min(e.cfg.Backoff.Min, time.Minute))
	}
	// In seconds from now, clamped before any conversion to a Duration:
	// a rate that has decayed towards zero must give postponeMax, not an
	// overflow.
	step := postponeMax.Seconds()
	if r > 0 {
		step = 1 / (2 * r)
	}
	at := float64(held) * step // after what it holds
	last, ok := slots[key]
	if !ok {
		last = d.postponedTo
	}
	if s := last.Sub(now).Seconds(); s > at {
		at = s // after what was postponed before
	}
	at = min(max(at+step, postponeMin.Seconds()), postponeMax.Seconds())
	t := now.Add(time.Duration(at * float64(time.Second)))
	slots[key] = t
	// The slot order is kept unrounded; the due time is rounded up.
	if rem := t.UnixNano() % int64(postponeGrain); rem != 0 {
		return t.Add(postponeGrain - time.Duration(rem))
	}
	return t
}

// decision is what a claim decided for one due recipient: claim it
// (take) with a lease until at, or postpone it to at.
type decision struct {
	at   time.Time
	take bool
}

// workDone is a finished attempt (or a batch deferred without dialling).
type workDone struct {
	dest    *destination
	tasks   int
	dialled bool // counted in busy
	whole   bool // the whole destination failed
	why     *AttemptError
	at      time.Time // when the attempt was recorded (or ended, if it recorded nothing)
}

func (e *Scheduler) finished(w workDone) {
	e.pending--
	e.active -= w.tasks
	d := w.dest
	d.runningTasks -= w.tasks
	d.drain.add(w.at, w.tasks)
	if w.dialled {
		e.busy--
		d.running--
	}
	switch {
	case w.whole:
		d.failed(w.at, e.cfg.Backoff, w.why) // the backoff counts from the recorded attempt, as its recipients' does
	case w.dialled:
		d.alive()
	}
}

func (e *Scheduler) panicked(where string, p any) {
	e.obs.Panic()
	e.log.Error("panic recovered", "where", where, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
}

// workerIdle is how long a worker goroutine with nothing to do waits for
// more before it ends.
const workerIdle = 10 * time.Second

// background runs f on a tracked goroutine (Shutdown waits for it). The
// goroutines are reused: one that is done waits up to workerIdle for the
// next function, so that under load an attempt does not start a goroutine
// and grow its stack from nothing each time.
func (e *Scheduler) background(f func()) {
	select {
	case e.work <- f: // an idle worker took it
		return
	default:
	}
	e.bg.Go(func() { e.worker(f) })
}

// worker runs f, then what background hands it, until it has been idle
// for workerIdle or the scheduler's hard context ends.
func (e *Scheduler) worker(f func()) {
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		e.runRecovered(f)
		idle.Reset(workerIdle)
		e.idle.Add(1)
		select {
		case f = <-e.work:
			e.idle.Add(-1)
		case <-idle.C:
			e.idle.Add(-1)
			return
		case <-e.hard.Done():
			e.idle.Add(-1)
			return
		}
	}
}

func (e *Scheduler) runRecovered(f func()) {
	defer func() {
		if p := recover(); p != nil {
			e.panicked("background", p)
		}
	}()
	f()
}

func (e *Scheduler) connOpened() { e.obs.Connections(int(e.conns.Add(1))) }
func (e *Scheduler) connClosed() { e.obs.Connections(int(e.conns.Add(-1))) }

// OpenConnections is the number of SMTP connections open now.
func (e *Scheduler) OpenConnections() int { return int(e.conns.Load()) }
