package main

import (
	"sync/atomic"
	"time"
)

// ledger is the benchmark's record of every message: when the generator
// got its 250 and when each of its recipients first reached a sink. It is
// the single source for the rates, the latencies and the "nothing lost"
// checks. Messages are numbered 0..size-1 (their seq); recipient k of
// message seq is slot seq*rcpts+k. All methods are safe for concurrent use.
type ledger struct {
	tag   string // in every X-Bench-Id, so stray mail is told apart
	rcpts int
	epoch time.Time // offsets below are nanoseconds since epoch, plus 1

	accepted []atomic.Int64 // per seq: when the 250 to the final dot arrived
	nAccept  atomic.Int64   // messages accepted so far
	arrived  []atomic.Int64 // per slot: first arrival at a sink

	arrivals atomic.Int64 // every recipient arrival, duplicates included
	distinct atomic.Int64 // slots that have arrived at least once
	dups     atomic.Int64 // arrivals of a slot that had already arrived
	foreign  atomic.Int64 // arrivals that name no slot of this ledger
	changed  atomic.Pointer[chan struct{}]
}

func newLedger(tag string, messages, rcpts int) *ledger {
	l := &ledger{tag: tag, rcpts: rcpts, epoch: time.Now(),
		accepted: make([]atomic.Int64, messages),
		arrived:  make([]atomic.Int64, messages*rcpts)}
	ch := make(chan struct{})
	l.changed.Store(&ch)
	return l
}

func (l *ledger) offset(t time.Time) int64 { return int64(t.Sub(l.epoch)) + 1 }

func (l *ledger) at(off int64) time.Time {
	return l.epoch.Add(time.Duration(off - 1))
}

// accept records the 250 for message seq.
func (l *ledger) accept(seq int, t time.Time) {
	if seq >= 0 && seq < len(l.accepted) {
		if l.accepted[seq].CompareAndSwap(0, l.offset(t)) {
			l.nAccept.Add(1)
		}
	}
}

// Accepted is how many messages have had their 250.
func (l *ledger) Accepted() int { return int(l.nAccept.Load()) }

// arrive records that recipient k of message seq reached a sink at t. A
// tag of another run or an unknown slot counts as foreign.
func (l *ledger) arrive(tag string, seq, k int, t time.Time) {
	l.arrivals.Add(1)
	slot := seq*l.rcpts + k
	if tag != l.tag || seq < 0 || k < 0 || k >= l.rcpts || slot >= len(l.arrived) {
		l.foreign.Add(1)
		return
	}
	if l.arrived[slot].CompareAndSwap(0, l.offset(t)) {
		l.distinct.Add(1)
		l.notify()
		return
	}
	l.dups.Add(1)
}

// notify wakes everyone waiting in Changed.
func (l *ledger) notify() {
	next := make(chan struct{})
	old := l.changed.Swap(&next)
	close(*old)
}

// Changed returns a channel closed at the next first arrival of a slot.
func (l *ledger) Changed() <-chan struct{} { return *l.changed.Load() }

// Distinct is how many recipient slots have arrived at least once.
func (l *ledger) Distinct() int { return int(l.distinct.Load()) }

// ledgerTally is what a ledger holds at one moment.
type ledgerTally struct {
	Accepted     int // messages with a 250
	Expected     int // recipients of those messages
	Delivered    int // recipients of accepted messages that arrived
	Missing      []int
	Unaccepted   int // recipients that arrived without a 250 seen (in flight at a kill)
	Duplicates   int
	Foreign      int
	FirstAccept  time.Time
	LastAccept   time.Time
	LastArrival  time.Time
	DeliveryLats []time.Duration // accept → first arrival, per delivered recipient
}

// tally reads the ledger; Missing lists at most maxMissing seqs that got a
// 250 and have a recipient that never arrived.
func (l *ledger) tally(maxMissing int) ledgerTally {
	var t ledgerTally
	var first, last, lastArr int64
	for seq := range l.accepted {
		acc := l.accepted[seq].Load()
		missing := false
		for k := range l.rcpts {
			arr := l.arrived[seq*l.rcpts+k].Load()
			lastArr = max(lastArr, arr)
			switch {
			case acc == 0 && arr != 0:
				t.Unaccepted++
			case acc != 0 && arr == 0:
				missing = true
			case acc != 0:
				t.Delivered++
				t.DeliveryLats = append(t.DeliveryLats, time.Duration(max(arr-acc, 0)))
			}
		}
		if acc == 0 {
			continue
		}
		t.Accepted++
		t.Expected += l.rcpts
		if first == 0 || acc < first {
			first = acc
		}
		last = max(last, acc)
		if missing && len(t.Missing) < maxMissing {
			t.Missing = append(t.Missing, seq)
		}
	}
	if first != 0 {
		t.FirstAccept, t.LastAccept = l.at(first), l.at(last)
	}
	if lastArr != 0 {
		t.LastArrival = l.at(lastArr)
	}
	t.Duplicates = int(l.dups.Load())
	t.Foreign = int(l.foreign.Load())
	return t
}
