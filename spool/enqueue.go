package spool

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Enqueue stores envelope and body durably: it returns nil only after the
// commit that holds them is fsynced (and the body file and its directory
// before it). Every recipient starts Pending, due at once.
//
// The stored envelope gets Size from the body, Has8Bit also when the body
// has an octet above 127, and Arrival the spool's clock when it is zero;
// the caller's env is not modified. Errors: ErrInvalid (bad id, envelope or
// writer), ErrDuplicate, ErrTooBig, ErrNoSpace, ErrClosed or a storage
// error; on any error nothing is stored and the caller should Abort body.
// ctx is checked before the commit is asked for; once asked, Enqueue waits
// for its outcome, so that nil always means stored and an error not stored.
func (s *Spool) Enqueue(ctx context.Context, id string, env *Envelope, body *BodyWriter) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !validID(id) {
		return fmt.Errorf("%w: message id %q", ErrInvalid, id)
	}
	if body == nil || body.s != s || body.id != id {
		return fmt.Errorf("%w: body writer is not for message %s", ErrInvalid, id)
	}
	stored := *env
	stored.Recipients = append([]Recipient(nil), env.Recipients...)
	if err := checkEnvelope(&stored); err != nil {
		return err
	}
	if err := body.finish(); err != nil {
		return err
	}
	stored.Size = body.size
	stored.Has8Bit = stored.Has8Bit || body.has8Bit
	if stored.Arrival.IsZero() {
		stored.Arrival = s.now()
	}
	m := pendingMessage{id: id, env: &stored, rec: encodeEnv(&stored, body.f != nil), file: body.f != nil}
	if body.f == nil {
		m.body = body.buf
		if m.body == nil {
			m.body = []byte{}
		}
	}
	r := newRequest(true, func(t *txn) error {
		if err := t.checkNewID(id); err != nil {
			return err
		}
		return t.enqueue(&m)
	})
	if err := s.submit(r); err != nil {
		return err
	}
	body.committed = true
	s.log.Debug("enqueued", "msg_id", id)
	return nil
}

// pendingMessage is a message ready for its transaction: its envelope
// record encoded outside the committer, and its body inline or in a file.
type pendingMessage struct {
	id   string
	env  *Envelope
	rec  []byte
	body []byte // inline body, nil for a file body
	file bool
}

// checkEnvelope refuses envelopes the spool cannot keep.
func checkEnvelope(env *Envelope) error {
	if len(env.Recipients) == 0 {
		return fmt.Errorf("%w: no recipients", ErrInvalid)
	}
	if len(env.Recipients) > maxRecipients {
		return fmt.Errorf("%w: %d recipients, at most %d", ErrInvalid, len(env.Recipients), maxRecipients)
	}
	for i := range env.Recipients {
		r := &env.Recipients[i]
		if r.Domain == "" || strings.IndexByte(r.Domain, 0) >= 0 {
			return fmt.Errorf("%w: recipient %d (%q) has no usable domain", ErrInvalid, i, r.Addr)
		}
		// Enqueue ignores the stored-state fields a caller may have set.
		*r = Recipient{Addr: r.Addr, Domain: r.Domain, Notify: r.Notify, ORcpt: r.ORcpt}
	}
	return nil
}

// checkNewID fails cleanly when id is taken by a live or retired message.
func (t *txn) checkNewID(id string) error {
	if t.msgs.Get([]byte(id)) != nil || t.retired.Get([]byte(id)) != nil {
		return clean(fmt.Errorf("%w: %s", ErrDuplicate, id))
	}
	return nil
}

// enqueue stores a new message: envelope, body, and every recipient
// Pending and due now. The caller has checked the ID is free.
func (t *txn) enqueue(m *pendingMessage) error {
	if err := t.put(t.msgs, []byte(m.id), m.rec); err != nil {
		return err
	}
	if !m.file {
		if err := t.put(t.bodies, []byte(m.id), m.body); err != nil {
			return err
		}
	}
	for i := range m.env.Recipients {
		st := rstate{State: Pending, Next: t.now, Arrival: m.env.Arrival, Domain: m.env.Recipients[i].Domain}
		if err := t.setRcpt(m.id, i, nil, &st); err != nil {
			return err
		}
	}
	t.delta[cMessages]++
	return nil
}

// prepareNew readies a message the MTA made itself (a DSN): checked and
// encoded, its body inline whatever its size.
func prepareNew(nm *NewMessage, now func() time.Time) (*pendingMessage, error) {
	if !validID(nm.ID) {
		return nil, fmt.Errorf("%w: message id %q", ErrInvalid, nm.ID)
	}
	env := nm.Envelope
	env.Recipients = append([]Recipient(nil), nm.Envelope.Recipients...)
	if err := checkEnvelope(&env); err != nil {
		return nil, err
	}
	env.Size = int64(len(nm.Body))
	env.Has8Bit = env.Has8Bit || has8Bit(nm.Body)
	if env.Arrival.IsZero() {
		env.Arrival = now()
	}
	body := nm.Body
	if body == nil {
		body = []byte{}
	}
	return &pendingMessage{id: nm.ID, env: &env, rec: encodeEnv(&env, false), body: body}, nil
}
