package spool

import (
	"context"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Claim takes up to limit recipients due at now (NextAttempt ≤ now, not
// held, not final, not already claimed) and, before returning, commits for
// each a NextAttempt of lease(task): the time it is due again if the
// attempt never reports (a crash). A claimed recipient is not returned
// again until its result is recorded or it is unclaimed.
//
// lease runs inside the commit and must have no side effects. The due
// index is ordered by next attempt time, so Claim reads only the keys it
// returns (and any claimed ones whose lease has already passed).
func (s *Spool) Claim(ctx context.Context, now time.Time, limit int, lease func(Task) time.Time) ([]Task, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if limit <= 0 {
		return nil, nil
	}
	var tasks []Task
	r := newRequest(false, func(t *txn) error {
		var err error
		tasks, err = t.claim(now, limit, lease)
		return err
	})
	if err := s.submit(r); err != nil {
		return nil, err
	}
	return tasks, nil
}

func (t *txn) claim(now time.Time, limit int, lease func(Task) time.Time) ([]Task, error) {
	var found []rkey
	c := t.due.Cursor()
	for k, _ := c.First(); k != nil && len(found) < limit; k, _ = c.Next() {
		at, id, rcpt, err := parseDueKey(k)
		if err != nil {
			return nil, err
		}
		if at.After(now) {
			break
		}
		if !t.isClaimed(rkey{id, rcpt}) {
			found = append(found, rkey{id, rcpt})
		}
	}
	tasks := make([]Task, 0, len(found))
	for _, d := range found {
		old, ok, err := getState(t.bk, d.id, d.rcpt)
		if err != nil {
			return nil, err
		}
		if !ok || !old.isDue() {
			return nil, corrupt("due key of %s/%d points to no due recipient", d.id, d.rcpt)
		}
		task := Task{ID: d.id, Rcpt: d.rcpt, Domain: old.Domain, Attempts: old.Count}
		st := old
		st.Next = lease(task)
		if st.Next.IsZero() {
			st.Next = now
		}
		if err := t.setRcpt(d.id, d.rcpt, &old, &st); err != nil {
			return nil, err
		}
		t.claims[d] = struct{}{}
		tasks = append(tasks, task)
	}
	return tasks, nil
}

// Unclaim gives claimed tasks back without a result; they keep the
// NextAttempt their claim committed.
func (s *Spool) Unclaim(tasks []Task) {
	s.claimMu.Lock()
	defer s.claimMu.Unlock()
	for _, task := range tasks {
		delete(s.claimed, rkey{task.ID, task.Rcpt})
	}
}

// NextDue is the earliest NextAttempt among unclaimed, unheld, live
// recipients; ok is false when there is none.
func (s *Spool) NextDue() (t time.Time, ok bool, err error) {
	err = s.view(func(_ *bolt.Tx, b bk) error {
		c := b.due.Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			at, id, rcpt, err := parseDueKey(k)
			if err != nil {
				return err
			}
			if !s.isClaimed(rkey{id, rcpt}) {
				t, ok = at, true
				return nil
			}
		}
		return nil
	})
	return t, ok, err
}

func (s *Spool) isClaimed(k rkey) bool {
	s.claimMu.Lock()
	_, ok := s.claimed[k]
	s.claimMu.Unlock()
	return ok
}
