package spool

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// List bounds: a page holds at most maxListLimit messages and one read
// transaction examines at most listScanBudget, so a selective filter over
// a large queue returns short pages instead of holding a long transaction.
const (
	defaultListLimit = 100
	maxListLimit     = 10_000
	listScanBudget   = 20_000
)

// List returns up to limit live messages matching f, in ID order after the
// cursor after ("" starts at the beginning), and the cursor of the next
// page ("" at the end). Each page is one short read transaction.
//
// A page may hold fewer than limit messages (even none) with a non-empty
// cursor when the filter is selective: keep paging until the cursor is "".
// Listed messages carry recipient states but not attempt logs (Message
// has those).
func (s *Spool) List(ctx context.Context, f Filter, after string, limit int) ([]Message, string, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	match, err := f.matcher(s.now())
	if err != nil {
		return nil, "", err
	}
	if limit <= 0 {
		limit = defaultListLimit
	}
	limit = min(limit, maxListLimit)
	var out []Message
	var next string
	err = s.view(setMsgs|setRcpts, func(_ *bolt.Tx, b bk) error {
		out, next = nil, ""
		c := b.msgs.Cursor()
		k, v := c.First()
		if after != "" {
			if k, v = c.Seek([]byte(after)); k != nil && string(k) == after {
				k, v = c.Next()
			}
		}
		var last string
		for scanned := 0; k != nil; k, v = c.Next() {
			if len(out) >= limit || scanned >= listScanBudget {
				next = last
				break
			}
			scanned++
			last = string(k)
			m, err := loadLive(b, last, v, false)
			if err != nil {
				return err
			}
			if match(m) {
				out = append(out, *m)
			}
		}
		return nil
	})
	return out, next, err
}

// matcher turns a Filter into a test of a live message.
func (f Filter) matcher(now time.Time) (func(*Message) bool, error) {
	var state func(*Recipient) bool
	switch f.State {
	case "":
	case "pending", "deferred":
		want := map[string]State{"pending": Pending, "deferred": Deferred}[f.State]
		state = func(r *Recipient) bool { return r.State == want && !r.Held }
	case "held":
		state = func(r *Recipient) bool { return r.Held && !r.State.Final() }
	case "delivered", "failed":
		want := map[string]State{"delivered": Delivered, "failed": Failed}[f.State]
		state = func(r *Recipient) bool { return r.State == want }
	default:
		return nil, fmt.Errorf("%w: filter state %q", ErrInvalid, f.State)
	}
	return func(m *Message) bool {
		e := &m.Envelope
		if f.Sender != "" && e.Sender != f.Sender {
			return false
		}
		if f.OlderThan > 0 && now.Sub(e.Arrival) < f.OlderThan {
			return false
		}
		if f.Domain == "" && state == nil {
			return true
		}
		for i := range e.Recipients {
			r := &e.Recipients[i]
			if (f.Domain == "" || strings.EqualFold(r.Domain, f.Domain)) && (state == nil || state(r)) {
				return true
			}
		}
		return false
	}, nil
}

// Counts returns the totals by state and by destination domain. It reads
// the counters the transactions keep (and one index key per domain for its
// oldest message), never the queue itself.
func (s *Spool) Counts() (Counts, error) {
	c := Counts{ByState: make(map[string]int), ByDomain: make(map[string]DomainCount)}
	err := s.view(setCounters|setDomains|setByDomain, func(_ *bolt.Tx, b bk) error {
		var vals [numCounters]int64
		for n := counter(0); n < numCounters; n++ {
			v, err := getUint64(b.counters.Get(n.key()))
			if err != nil {
				return err
			}
			vals[n] = v
		}
		c.Messages, c.Retired = int(vals[cMessages]), int(vals[cRetired])
		for _, n := range []counter{cPending, cDeferred, cHeld} {
			c.ByState[string(n.key())] = int(vals[n])
		}
		return domainCounts(b, c.ByDomain)
	})
	return c, err
}

// domainCounts fills out with every domain's counters and oldest arrival.
func domainCounts(b bk, out map[string]DomainCount) error {
	idx := b.byDomain.Cursor()
	cur := b.domains.Cursor()
	for k, v := cur.First(); k != nil; k, v = cur.Next() {
		n, err := decodeDomainCount(v)
		if err != nil {
			return err
		}
		dc := DomainCount{Pending: int(n[0]), Deferred: int(n[1]), Held: int(n[2])}
		prefix := append(bytes.Clone(k), 0)
		if ik, _ := idx.Seek(prefix); ik != nil && bytes.HasPrefix(ik, prefix) {
			if _, dc.Oldest, _, _, err = parseByDomainKey(ik); err != nil {
				return err
			}
		}
		out[string(k)] = dc
	}
	return nil
}

// Retry makes the deferred (and pending) recipients of message id due at
// now; id "" means every message. It returns how many recipients moved.
// Held recipients stay held, and recipients being attempted (claimed) are
// left alone.
func (s *Spool) Retry(ctx context.Context, id string, now time.Time) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var n int
	r := newRequest(false, func(t *txn) error {
		var err error
		if id == "" {
			n, err = t.retryAll(now)
		} else {
			n, err = t.retry(id, now)
		}
		return err
	})
	return n, s.submit(r)
}

func (t *txn) retry(id string, now time.Time) (int, error) {
	_, sts, err := t.live(id)
	if err != nil {
		return 0, err
	}
	n := 0
	for i := range sts {
		old := sts[i]
		if !old.isDue() || !old.Next.After(now) {
			continue
		}
		st := old
		st.Next = now
		if err := t.setRcpt(id, i, &old, &st); err != nil {
			return 0, err
		}
		n++
	}
	return n, nil
}

// retryAll moves every due key after now to now.
func (t *txn) retryAll(now time.Time) (int, error) {
	var found []rkey
	c := t.due.Cursor()
	for k, _ := c.Seek(dueKey(now, "", 0)[:8]); k != nil; k, _ = c.Next() {
		at, id, rcpt, err := parseDueKey(k)
		if err != nil {
			return 0, err
		}
		if at.After(now) {
			found = append(found, rkey{id, rcpt})
		}
	}
	for _, k := range found {
		old, ok, err := getState(t.bk, k.id, k.rcpt)
		if err != nil {
			return 0, err
		}
		if !ok {
			return 0, corrupt("due key of %s/%d points to no recipient", k.id, k.rcpt)
		}
		st := old
		st.Next = now
		if err := t.setRcpt(k.id, k.rcpt, &old, &st); err != nil {
			return 0, err
		}
	}
	return len(found), nil
}

// live reads a live message's envelope and states; ErrNotFound (clean)
// when it is not live.
func (t *txn) live(id string) (*storedEnv, []rstate, error) {
	v := t.msgs.Get([]byte(id))
	if v == nil {
		return nil, nil, clean(fmt.Errorf("%w: %s", ErrNotFound, id))
	}
	se, err := decodeEnv(v)
	if err != nil {
		return nil, nil, err
	}
	sts, err := states(t.bk, id, len(se.env.Recipients))
	return &se, sts, err
}

// Hold stops delivery of message id's live recipients until Release.
// A recipient being attempted finishes its attempt; if deferred it then
// waits for Release.
func (s *Spool) Hold(ctx context.Context, id string) error {
	return s.setHeld(ctx, id, true)
}

// Release makes a held message's recipients due again at their
// NextAttempt (or now, if that passed).
func (s *Spool) Release(ctx context.Context, id string) error {
	return s.setHeld(ctx, id, false)
}

func (s *Spool) setHeld(ctx context.Context, id string, held bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.submit(newRequest(false, func(t *txn) error {
		_, sts, err := t.live(id)
		if err != nil {
			return err
		}
		for i := range sts {
			old := sts[i]
			if old.State.Final() || old.Held == held {
				continue
			}
			st := old
			st.Held = held
			if !held && st.Next.Before(t.now) {
				st.Next = t.now
			}
			if err := t.setRcpt(id, i, &old, &st); err != nil {
				return err
			}
		}
		return nil
	}))
}

// Delete removes a live message. With bounce, its live recipients fail
// with reason and Options.Bounce may owe the sender a DSN; without, the
// message is retired silently (the record says it was deleted).
func (s *Spool) Delete(ctx context.Context, id string, bounce bool, reason string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	text := "deleted by the administrator"
	if !bounce {
		text += " without notice"
	}
	if reason != "" {
		text += ": " + reason
	}
	return s.submit(newRequest(false, func(t *txn) error {
		se, sts, err := t.live(id)
		if err != nil {
			return err
		}
		a := Attempt{Time: t.now, Phase: "local", Enhanced: "5.0.0", Text: text}
		for i := range sts {
			old := sts[i]
			if old.State.Final() {
				continue
			}
			st := old
			st.State, st.Held, st.Leased, st.Next, st.Done = Failed, false, false, time.Time{}, t.now
			st.Count++
			if err := t.addAttempt(id, i, st.Count, &a); err != nil {
				return err
			}
			if err := t.setRcpt(id, i, &old, &st); err != nil {
				return err
			}
			sts[i] = st
		}
		return t.retire(id, se, sts, bounce)
	}))
}
