package spool

import (
	"bytes"
	"encoding/binary"

	bolt "go.etcd.io/bbolt"
)

// class is where a recipient is counted: pending, deferred or held while
// live (held wins), nowhere once final.
func (r *rstate) class() (counter, bool) {
	switch {
	case r.State.Final():
		return 0, false
	case r.Held:
		return cHeld, true
	case r.State == Pending:
		return cPending, true
	}
	return cDeferred, true
}

// isDue reports whether the recipient has a key in the due index: Claim
// may take it once its time comes.
func (r *rstate) isDue() bool { return !r.State.Final() && !r.Held && !r.Leased }

// isLeased reports whether the recipient has a key in the leases index.
func (r *rstate) isLeased() bool { return !r.State.Final() && r.Leased }

// index is the bucket that holds the recipient's key at Next (due or
// leases), or nil when it has none.
func (t *txn) index(r *rstate) *bolt.Bucket {
	switch {
	case r == nil || r.State.Final():
		return nil
	case r.Leased:
		return t.leases
	case r.Held:
		return nil
	}
	return t.due
}

// getState reads a recipient's state; ok is false when it does not exist.
func getState(b bk, id string, rcpt int) (st rstate, ok bool, err error) {
	v := b.rcpts.Get(rcptKey(id, rcpt))
	if v == nil {
		return rstate{}, false, nil
	}
	st, err = decodeState(v)
	return st, err == nil, err
}

// setRcpt writes recipient (id, rcpt)'s new state, keeping in step with
// it everything derived from states: the due index, the domain index and
// the counters. old is nil for a new recipient, new nil to remove it.
// Every change of a recipient's state goes through here; that is what
// keeps Check's invariants.
func (t *txn) setRcpt(id string, rcpt int, old, new *rstate) error {
	if err := t.setDue(id, rcpt, old, new); err != nil {
		return err
	}
	if old != nil {
		if c, ok := old.class(); ok {
			t.count(c, old.Domain, -1)
		}
	}
	if new != nil {
		if c, ok := new.class(); ok {
			t.count(c, new.Domain, 1)
		}
	}
	// A recipient's domain and arrival never change: only entering or
	// leaving the live states touches the domain index.
	oldLive := old != nil && !old.State.Final()
	newLive := new != nil && !new.State.Final()
	if oldLive && !newLive {
		if err := t.del(t.byDomain, byDomainKey(old.Domain, old.Arrival, id, rcpt)); err != nil {
			return err
		}
	}
	if newLive && !oldLive {
		if err := t.put(t.byDomain, byDomainKey(new.Domain, new.Arrival, id, rcpt), nil); err != nil {
			return err
		}
	}
	if new == nil {
		return t.del(t.rcpts, rcptKey(id, rcpt))
	}
	return t.put(t.rcpts, rcptKey(id, rcpt), encodeState(new))
}

// setDue moves the recipient's key in the due and leases indexes.
func (t *txn) setDue(id string, rcpt int, old, new *rstate) error {
	from, to := t.index(old), t.index(new)
	if from != nil && from == to && old.Next.Equal(new.Next) {
		return nil
	}
	if from != nil {
		if err := t.del(from, dueKey(old.Next, id, rcpt)); err != nil {
			return err
		}
	}
	if to == nil {
		return nil
	}
	if to == t.due && !new.Next.After(t.now) {
		t.dueNow = true
	}
	return t.put(to, dueKey(new.Next, id, rcpt), nil)
}

// count changes a recipient counter and its domain's.
func (t *txn) count(c counter, domain string, n int64) {
	t.delta[c] += n
	d := t.domain[domain]
	if d == nil {
		d = new([3]int64)
		t.domain[domain] = d
	}
	d[c-cPending] += n
}

// states reads every recipient state of a live message, n being its
// recipient count.
func states(b bk, id string, n int) ([]rstate, error) {
	out := make([]rstate, n)
	seen := 0
	prefix := msgPrefix(id)
	c := b.rcpts.Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if len(k) != len(prefix)+2 {
			return nil, corrupt("recipient key %q", k)
		}
		i := int(binary.BigEndian.Uint16(k[len(prefix):]))
		if i >= n {
			return nil, corrupt("message %s: recipient %d of %d", id, i, n)
		}
		st, err := decodeState(v)
		if err != nil {
			return nil, err
		}
		out[i] = st
		seen++
	}
	if seen != n {
		return nil, corrupt("message %s: %d recipient states for %d recipients", id, seen, n)
	}
	return out, nil
}

// attempts reads the kept attempt log of a recipient, oldest first.
func attempts(b bk, id string, rcpt int) ([]Attempt, error) {
	var out []Attempt
	prefix := rcptKey(id, rcpt)
	c := b.attempts.Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if len(k) != len(prefix)+4 {
			return nil, corrupt("attempt key %q", k)
		}
		a, err := decodeAttempt(v)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// addAttempt appends attempt number seq to a recipient's log and drops
// entries older than the last MaxAttemptLog.
func (t *txn) addAttempt(id string, rcpt int, seq int, a *Attempt) error {
	if err := t.put(t.attempts, attemptKey(id, rcpt, uint32(seq)), encodeAttempt(a)); err != nil {
		return err
	}
	keep := t.s.opts.MaxAttemptLog
	if seq <= keep {
		return nil
	}
	limit := attemptKey(id, rcpt, uint32(seq-keep))
	var old [][]byte
	prefix := rcptKey(id, rcpt)
	c := t.attempts.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.Compare(k, limit) <= 0; k, _ = c.Next() {
		old = append(old, bytes.Clone(k))
	}
	return t.delAll(t.attempts, old)
}

// delAttempts deletes a recipient's whole attempt log.
func (t *txn) delAttempts(id string, rcpt int) error {
	var keys [][]byte
	prefix := rcptKey(id, rcpt)
	c := t.attempts.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	return t.delAll(t.attempts, keys)
}

func (t *txn) delAll(b *bolt.Bucket, keys [][]byte) error {
	for _, k := range keys {
		if err := t.del(b, k); err != nil {
			return err
		}
	}
	return nil
}
