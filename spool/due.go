package spool

import (
	"context"
	"errors"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Claim takes up to limit recipients due at now (NextAttempt ≤ now, not
// held, not final, not already claimed) and, before returning, commits for
// each a NextAttempt of lease(task): the time it is due again if the
// attempt never reports (a crash). A claimed recipient is not returned
// again until its result is recorded or it is unclaimed.
//
// lease runs inside the commit and must have no side effects. Claimed
// recipients leave the due index for the leases index, so Claim reads
// only the keys it returns, however many claims are outstanding.
func (s *Spool) Claim(ctx context.Context, now time.Time, limit int, lease func(Task) time.Time) ([]Task, error) {
	tasks, _, err := s.ClaimOrPostpone(ctx, now, limit, func(t Task) (time.Time, bool) { return lease(t), true })
	return tasks, err
}

// ClaimOrPostpone is Claim with a choice for each recipient: decide
// returns its lease and true to claim it, or a later NextAttempt and false
// to leave it unclaimed and postpone it, in the same commit (one write
// where claiming and unclaiming take two). It returns the claimed tasks
// and how many due recipients it looked at, claimed or postponed (at most
// limit): fewer than limit means nothing more was due.
//
// decide runs inside the commit and must have no side effects; the commit
// may run it again for the same tasks.
func (s *Spool) ClaimOrPostpone(ctx context.Context, now time.Time, limit int, decide func(Task) (time.Time, bool)) ([]Task, int, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	if limit <= 0 {
		return nil, 0, nil
	}
	var (
		tasks []Task
		seen  int
	)
	r := newRequest(false, func(t *txn) error {
		var err error
		tasks, seen, err = t.claim(now, limit, decide)
		return err
	})
	if err := s.submit(r); err != nil {
		return nil, 0, err
	}
	return tasks, seen, nil
}

func (t *txn) claim(now time.Time, limit int, decide func(Task) (time.Time, bool)) ([]Task, int, error) {
	var found []rkey
	c := t.due.Cursor()
	for k, _ := c.First(); k != nil && len(found) < limit; k, _ = c.Next() {
		at, id, rcpt, err := parseDueKey(k)
		if err != nil {
			return nil, 0, err
		}
		if at.After(now) {
			break
		}
		found = append(found, rkey{id, rcpt})
	}
	tasks := make([]Task, 0, len(found))
	for _, d := range found {
		old, ok, err := getState(t.bk, d.id, d.rcpt)
		if err != nil {
			return nil, 0, err
		}
		if !ok || !old.isDue() {
			return nil, 0, corrupt("due key of %s/%d points to no due recipient", d.id, d.rcpt)
		}
		task := Task{ID: d.id, Rcpt: d.rcpt, Domain: old.Domain, Attempts: old.Count}
		at, take := decide(task)
		st := old
		if take {
			st.Leased = true
			st.Next = at
			if st.Next.IsZero() {
				st.Next = now
			}
		} else {
			if at.After(old.Next) { // a postponement never makes it due sooner
				st.Next = at
			}
		}
		if err := t.setRcpt(d.id, d.rcpt, &old, &st); err != nil {
			return nil, 0, err
		}
		if take {
			tasks = append(tasks, task)
		}
	}
	return tasks, len(found), nil
}

// Unclaim gives claimed tasks back without a result; they keep the
// NextAttempt their claim committed. It does not wait for the commit that
// ends the leases (a scheduler giving back thousands at shutdown would
// wait for one commit each), but Claim and NextDue called after it see
// them ended, and OnDue is called when that commit made any due again.
func (s *Spool) Unclaim(tasks []Task) {
	if len(tasks) == 0 {
		return
	}
	keys := make([]rkey, len(tasks))
	for i, task := range tasks {
		keys[i] = rkey{task.ID, task.Rcpt}
	}
	r := newRequest(false, func(t *txn) error { return t.unlease(keys) })
	r.async = true
	r.unlease = keys
	s.unclaiming.Add(1)
	if err := s.send(r); err != nil {
		// Closed: the next Open gives every lease back.
		s.unclaiming.Add(-1)
	}
}

// unlease ends the leases of keys: each recipient goes back to the due
// index at its lease (or stays out of it while held). Recipients that are
// gone, final or not leased are left alone.
func (t *txn) unlease(keys []rkey) error {
	for _, k := range keys {
		old, ok, err := getState(t.bk, k.id, k.rcpt)
		if err != nil {
			return err
		}
		if !ok || !old.isLeased() {
			continue
		}
		st := old
		st.Leased = false
		if err := t.setRcpt(k.id, k.rcpt, &old, &st); err != nil {
			return err
		}
		t.dueNow = t.dueNow || !st.Held
	}
	return nil
}

// releaseLeases ends every lease in the file: at Open, the leases of an
// earlier process (killed, or closed with attempts unreported) are nobody's.
func (t *txn) releaseLeases() error {
	var keys []rkey
	c := t.leases.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		_, id, rcpt, err := parseDueKey(k)
		if err != nil {
			return err
		}
		keys = append(keys, rkey{id, rcpt})
	}
	return t.unlease(keys)
}

// NextDue is the earliest NextAttempt among unclaimed, unheld, live
// recipients; ok is false when there is none. It reads one key: the first
// of the due index, which holds exactly those recipients.
func (s *Spool) NextDue() (t time.Time, ok bool, err error) {
	if s.unclaiming.Load() > 0 {
		// An Unclaim before this call may not be committed yet: wait for
		// the committer to pass it.
		err := s.submit(newRequest(false, func(*txn) error { return nil }))
		if errors.Is(err, ErrClosed) {
			return time.Time{}, false, err
		}
		// Another error is the failed batch's (a full disk): its Unclaim
		// is retried by the committer; what is committed is the answer.
	}
	err = s.view(setDue, func(_ *bolt.Tx, b bk) error {
		k, _ := b.due.Cursor().First()
		if k == nil {
			return nil
		}
		at, _, _, err := parseDueKey(k)
		t, ok = at, err == nil
		return err
	})
	return t, ok, err
}
