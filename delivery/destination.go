package delivery

import (
	"math"
	"time"

	"mta/spool"
)

// destination is one next hop's queue and health, owned by the Run
// goroutine. Workers read only its immutable fields (domain, static).
type destination struct {
	key    string
	domain string       // MX delivery: the recipient domain
	static *staticRoute // configured route or relayhost

	queue        []*job
	queuedTasks  int
	runningTasks int
	running      int // attempts dialling now
	spread       int // rotates equal-preference hosts

	// proven: an attempt got a session since the destination was created
	// or came back from dead; until then one attempt runs at a time (after
	// a death, that attempt is the probe).
	proven    bool
	failures  int // whole-destination failures in a row
	deadUntil time.Time
	why       *AttemptError // why it is dead
	idleSince time.Time

	// drain is how fast the destination's claimed recipients finish;
	// postponedTo is the last time a recipient claimed past
	// DestinationEntries was postponed to.
	drain       drainRate
	postponedTo time.Time
}

// drainRate estimates how many claimed recipients a destination finishes
// a second: a moving average that forgets with a time constant of
// drainWindow, read only once it has watched for a while.
type drainRate struct {
	perSec float64   // decayed to at, not corrected for a short watch
	at     time.Time // the last finish counted
	since  time.Time // the first finish counted
}

const (
	drainWindow = 10 * time.Second
	drainWarmup = time.Second
)

func (r *drainRate) add(now time.Time, n int) {
	if r.since.IsZero() {
		r.since, r.at = now, now
	}
	r.perSec = r.decayed(now) + float64(n)/drainWindow.Seconds()
	if now.After(r.at) {
		r.at = now
	}
}

func (r *drainRate) decayed(now time.Time) float64 {
	dt := now.Sub(r.at)
	if dt <= 0 {
		return r.perSec
	}
	return r.perSec * math.Exp(-dt.Seconds()/drainWindow.Seconds())
}

// rate is the estimate at now (zero once finishes have long stopped), or
// false when it has watched less than drainWarmup or seen nothing finish.
func (r *drainRate) rate(now time.Time) (float64, bool) {
	watched := now.Sub(r.since)
	if r.since.IsZero() || watched < drainWarmup {
		return 0, false
	}
	// An average that started from nothing is low until it has watched a
	// few windows: correct for the part of the window not yet watched.
	return r.decayed(now) / -math.Expm1(-watched.Seconds()/drainWindow.Seconds()), true
}

func (d *destination) dead(now time.Time) bool { return now.Before(d.deadUntil) }

// failed marks the destination dead for its backoff.
func (d *destination) failed(now time.Time, b Backoff, why *AttemptError) {
	if d.dead(now) {
		return // attempts that ran side by side died of the same cause
	}
	d.failures++
	d.deadUntil = now.Add(b.delay(d.failures))
	d.proven = false
	d.why = why
}

func (d *destination) alive() {
	d.failures, d.deadUntil, d.proven, d.why = 0, time.Time{}, true, nil
}

func (d *destination) slots(perDest int) int {
	if !d.proven {
		return 1 - d.running
	}
	return perDest - d.running
}

// enqueue groups claimed tasks into jobs (one message, one destination)
// and appends them to their destinations' queues.
func (e *Scheduler) enqueue(tasks []spool.Task) {
	type jobKey struct{ id, dest string }
	jobs := make(map[jobKey]*job)
	for _, t := range tasks {
		e.active++
		hops := e.hops.Load()
		key := hops.routes.destKey(t.Domain)
		d := e.dests[key]
		if d == nil {
			d = &destination{key: key, static: hops.routes.lookup(t.Domain)}
			if d.static == nil {
				d.domain = t.Domain
			}
			e.dests[key] = d
		}
		jk := jobKey{t.ID, key}
		j := jobs[jk]
		if j == nil {
			j = &job{id: t.ID, dest: d}
			jobs[jk] = j
			d.queue = append(d.queue, j)
		}
		j.tasks = append(j.tasks, t)
		d.queuedTasks++
	}
}

// dispatch starts attempts where a destination has work and a free slot,
// and defers the queues of dead destinations without dialling.
func (e *Scheduler) dispatch() {
	now := e.cfg.Now()
	for _, d := range e.dests {
		if len(d.queue) == 0 {
			continue
		}
		if d.dead(now) {
			e.deferDead(d, now)
			continue
		}
		for len(d.queue) > 0 && d.slots(e.cfg.PerDestinationConns) > 0 && e.busy < e.cfg.MaxConns {
			j := d.pop()
			d.spread++
			j.spread = d.spread
			d.running++
			e.busy++
			e.start(j)
		}
	}
}

func (d *destination) pop() *job {
	j := d.queue[0]
	d.queue[0] = nil
	d.queue = d.queue[1:]
	d.queuedTasks -= len(j.tasks)
	d.runningTasks += len(j.tasks)
	return j
}

// start runs one attempt on its own goroutine.
func (e *Scheduler) start(j *job) {
	e.pending++
	e.background(func() {
		w := workDone{dest: j.dest, tasks: len(j.tasks), dialled: true}
		defer func() {
			if p := recover(); p != nil {
				e.panicked("attempt", p)
				e.cfg.Spool.Unclaim(j.tasks)
			}
			e.done <- w
		}()
		w.whole, w.why, w.at = e.deliver(j)
		if w.at.IsZero() {
			w.at = e.cfg.Now() // for the drain rate: when it ended, not when Run hears of it
		}
	})
}

// deferDead records the queue of a dead destination as deferred, without
// dialling, on one goroutine per batch.
func (e *Scheduler) deferDead(d *destination, now time.Time) {
	jobs := d.queue
	n := d.queuedTasks
	d.queue, d.queuedTasks = nil, 0
	d.runningTasks += n
	why, until := d.why, d.deadUntil
	e.pending++
	e.background(func() {
		defer func() {
			if p := recover(); p != nil {
				e.panicked("defer", p)
			}
			e.done <- workDone{dest: d, tasks: n, at: e.cfg.Now()}
		}()
		e.deferJobs(jobs, why, until, now)
	})
}

// destIdleFor is how long an idle destination keeps its state.
const destIdleFor = time.Minute

// sweep drops destinations idle for a while and not dead, so the map stays
// bounded while a busy destination keeps its proven concurrency.
func (e *Scheduler) sweep(now time.Time) {
	for k, d := range e.dests {
		if len(d.queue) > 0 || d.running > 0 || d.runningTasks > 0 || d.dead(now) {
			d.idleSince = time.Time{}
			continue
		}
		if d.idleSince.IsZero() {
			d.idleSince = now
		} else if now.Sub(d.idleSince) >= destIdleFor {
			delete(e.dests, k)
		}
	}
}

// nextDeadEnd is when the first dead destination with waiting mail may be
// probed, if that is still to come.
func (e *Scheduler) nextDeadEnd(now time.Time) (time.Time, bool) {
	var first time.Time
	for _, d := range e.dests {
		if len(d.queue) > 0 && d.deadUntil.After(now) && (first.IsZero() || d.deadUntil.Before(first)) {
			first = d.deadUntil
		}
	}
	return first, !first.IsZero()
}

func (r *routes) all() []*staticRoute {
	var out []*staticRoute
	for _, sr := range r.byDomain {
		out = append(out, sr)
	}
	if r.relay != nil {
		out = append(out, r.relay)
	}
	return out
}
