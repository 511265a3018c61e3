package spool

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"
)

// prunePerCommit bounds how many retired records one commit removes, so a
// lowered bound or a long stop is caught up over several commits.
const prunePerCommit = 512

// Record commits results (and the messages they cause) in one group commit.
// When a message's recipients are all final, the same transaction retires
// it (envelope, states and attempt logs move to the retired records),
// enqueues the DSN Options.Bounce builds for it, and its body is deleted.
//
// A result for a recipient that is already final or whose message is gone
// (deleted while it was being tried) is ignored and logged. Each result
// ends the recipient's claim.
func (s *Spool) Record(ctx context.Context, u Update) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for i := range u.Results {
		if err := checkResult(&u.Results[i]); err != nil {
			return err
		}
	}
	news := make([]*pendingMessage, len(u.Enqueue))
	for i := range u.Enqueue {
		m, err := prepareNew(&u.Enqueue[i], s.now)
		if err != nil {
			return err
		}
		news[i] = m
	}
	var delay *pendingDelay
	if u.Delay != nil {
		for _, r := range u.Delay.Recipients {
			if !validID(r.ID) || r.Rcpt < 0 || r.Rcpt >= maxRecipients {
				return fmt.Errorf("%w: delay notice for %q/%d", ErrInvalid, r.ID, r.Rcpt)
			}
		}
		m, err := prepareNew(&u.Delay.DSN, s.now)
		if err != nil {
			return err
		}
		delay = &pendingDelay{rcpts: u.Delay.Recipients, dsn: m}
	}
	r := newRequest(false, func(t *txn) error { return t.record(u.Results, news, delay) })
	return s.submit(r)
}

type pendingDelay struct {
	rcpts []RcptRef
	dsn   *pendingMessage
}

func checkResult(r *Result) error {
	switch {
	case !validID(r.ID):
		return fmt.Errorf("%w: result for message id %q", ErrInvalid, r.ID)
	case r.Rcpt < 0 || r.Rcpt >= maxRecipients:
		return fmt.Errorf("%w: result for recipient %d", ErrInvalid, r.Rcpt)
	case r.State != Deferred && r.State != Delivered && r.State != Failed:
		return fmt.Errorf("%w: result state %v", ErrInvalid, r.State)
	case r.State == Deferred && r.NextAttempt.IsZero():
		return fmt.Errorf("%w: deferred result without a next attempt", ErrInvalid)
	}
	return nil
}

func (t *txn) record(results []Result, news []*pendingMessage, delay *pendingDelay) error {
	all := news
	if delay != nil {
		all = append(all[:len(all):len(all)], delay.dsn)
	}
	if err := t.checkNewIDs(all); err != nil {
		return err
	}
	// Whether the delay DSN is owed is decided on the states before this
	// update: one of its recipients live and not yet notified.
	delayOwed := false
	if delay != nil {
		for _, r := range delay.rcpts {
			st, ok, err := getState(t.bk, r.ID, r.Rcpt)
			if err != nil {
				return err
			}
			if ok && !st.State.Final() && !st.DelayNotified {
				delayOwed = true
				break
			}
		}
	}
	var touched []string
	for i := range results {
		res := &results[i]
		old, ok, err := getState(t.bk, res.ID, res.Rcpt)
		if err != nil {
			return err
		}
		if !ok || old.State.Final() {
			t.stale = append(t.stale, rkey{res.ID, res.Rcpt})
			continue
		}
		if err := t.apply(res, &old); err != nil {
			return err
		}
		if len(touched) == 0 || touched[len(touched)-1] != res.ID {
			touched = append(touched, res.ID)
		}
	}
	for _, m := range news {
		if err := t.enqueue(m); err != nil {
			return err
		}
	}
	if delay != nil {
		if err := t.markDelayNotified(delay.rcpts); err != nil {
			return err
		}
		if delayOwed {
			if err := t.enqueue(delay.dsn); err != nil {
				return err
			}
		}
	}
	for _, id := range touched {
		if err := t.retireIfDone(id); err != nil {
			return err
		}
	}
	return nil
}

// checkNewIDs fails cleanly when a message to enqueue has a taken ID.
func (t *txn) checkNewIDs(news []*pendingMessage) error {
	seen := make(map[string]bool, len(news))
	for _, m := range news {
		if seen[m.id] {
			return clean(fmt.Errorf("%w: %s twice in one update", ErrDuplicate, m.id))
		}
		seen[m.id] = true
		if err := t.checkNewID(m.id); err != nil {
			return err
		}
	}
	return nil
}

// markDelayNotified marks the live recipients in rcpts as covered by a
// delay DSN.
func (t *txn) markDelayNotified(rcpts []RcptRef) error {
	for _, r := range rcpts {
		old, ok, err := getState(t.bk, r.ID, r.Rcpt)
		if err != nil {
			return err
		}
		if !ok || old.State.Final() || old.DelayNotified {
			continue
		}
		st := old
		st.DelayNotified = true
		if err := t.setRcpt(r.ID, r.Rcpt, &old, &st); err != nil {
			return err
		}
	}
	return nil
}

// apply writes one result over the recipient's state old.
func (t *txn) apply(res *Result, old *rstate) error {
	st := *old
	st.State = res.State
	st.Leased = false
	st.Count++
	st.DelayNotified = st.DelayNotified || res.DelayNotified
	if res.State == Deferred {
		st.Next = res.NextAttempt
	} else {
		st.Next = time.Time{}
		st.Done = res.Attempt.Time
		if st.Done.IsZero() {
			st.Done = t.now
		}
	}
	if err := t.addAttempt(res.ID, res.Rcpt, st.Count, &res.Attempt); err != nil {
		return err
	}
	return t.setRcpt(res.ID, res.Rcpt, old, &st)
}

// retireIfDone retires message id when all its recipients are final.
func (t *txn) retireIfDone(id string) error {
	v := t.msgs.Get([]byte(id))
	if v == nil {
		return nil // retired already in this transaction
	}
	se, err := decodeEnv(v)
	if err != nil {
		return err
	}
	sts, err := states(t.bk, id, len(se.env.Recipients))
	if err != nil {
		return err
	}
	for i := range sts {
		if !sts[i].State.Final() {
			return nil
		}
	}
	return t.retire(id, &se, sts, true)
}

// retire moves a message whose recipients are all final to the retired
// records: envelope, states and attempt logs in one record, the live keys
// deleted, the body deleted (a body file after the commit). With notify,
// Options.Bounce may owe the sender a DSN, enqueued in this transaction.
func (t *txn) retire(id string, se *storedEnv, sts []rstate, notify bool) error {
	m := &Message{ID: id, Envelope: se.env, Retired: true, RetiredAt: t.now}
	m.Envelope.Recipients = append([]Recipient(nil), se.env.Recipients...)
	for i := range m.Envelope.Recipients {
		r := &m.Envelope.Recipients[i]
		applyState(r, &sts[i])
		var err error
		if r.Attempts, err = attempts(t.bk, id, i); err != nil {
			return err
		}
	}
	if notify {
		if err := t.bounce(m, se.file); err != nil {
			return err
		}
	}
	if err := t.put(t.retired, []byte(id), encodeRetired(m, false)); err != nil {
		return err
	}
	if err := t.put(t.retiredAt, retiredAtKey(t.now, id), nil); err != nil {
		return err
	}
	for i := range sts {
		if err := t.setRcpt(id, i, &sts[i], nil); err != nil {
			return err
		}
		if err := t.delAttempts(id, i); err != nil {
			return err
		}
	}
	if err := t.del(t.msgs, []byte(id)); err != nil {
		return err
	}
	if se.file {
		t.removeFiles = append(t.removeFiles, id)
	} else if err := t.del(t.bodies, []byte(id)); err != nil {
		return err
	}
	t.delta[cMessages]--
	t.delta[cRetired]++
	return nil
}

// bounce asks Options.Bounce for the DSN a retiring message owes and
// enqueues it. DSNs and null-sender messages never get one.
func (t *txn) bounce(m *Message, file bool) error {
	f := t.s.opts.Bounce
	if f == nil || m.Envelope.DSN || m.Envelope.Sender == "" {
		return nil
	}
	body := func() ([]byte, error) { return t.bodyPrefix(m.ID, file, t.s.opts.BounceBodyBytes) }
	nm, err := f(m, body)
	if err != nil {
		return fmt.Errorf("bounce for %s: %w", m.ID, err)
	}
	if nm == nil {
		return nil
	}
	pm, err := prepareNew(nm, func() time.Time { return t.now })
	if err != nil {
		return fmt.Errorf("bounce for %s: %w", m.ID, err)
	}
	if err := t.checkNewID(pm.id); err != nil {
		return fmt.Errorf("bounce for %s: %w", m.ID, err)
	}
	return t.enqueue(pm)
}

// pruneRetired keeps the retired records within Options.RetiredMaxCount
// and RetiredMaxAge, oldest first.
func (t *txn) pruneRetired() error {
	n, err := t.counter(cRetired)
	if err != nil {
		return err
	}
	maxN := int64(t.s.opts.RetiredMaxCount)
	oldest := t.now.Add(-t.s.opts.RetiredMaxAge)
	var keys [][]byte
	c := t.retiredAt.Cursor()
	for k, _ := c.First(); k != nil && len(keys) < prunePerCommit; k, _ = c.Next() {
		if len(k) < 8 {
			return corrupt("retired_at key %q", k)
		}
		if n-int64(len(keys)) <= maxN && !keyTime(binary.BigEndian.Uint64(k)).Before(oldest) {
			break
		}
		keys = append(keys, bytes.Clone(k))
	}
	for _, k := range keys {
		if err := t.del(t.retiredAt, k); err != nil {
			return err
		}
		if err := t.del(t.retired, k[8:]); err != nil {
			return err
		}
		t.delta[cRetired]--
	}
	return nil
}
