package spool

import (
	"fmt"
	"io"

	bolt "go.etcd.io/bbolt"
)

// Message returns a live or retired message with every recipient's state
// and attempt log.
func (s *Spool) Message(id string) (*Message, error) {
	if !validID(id) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	var m *Message
	err := s.view(setMsgs|setRcpts|setAttempts|setRetired, func(_ *bolt.Tx, b bk) error {
		var err error
		m, err = loadMessage(b, id, true)
		return err
	})
	return m, err
}

// Load returns a live message, with every recipient's state but not the
// attempt logs, and a reader of its body, both from one short read
// transaction: what a delivery attempt needs (Message and Body take one
// transaction each, and Message reads the attempt logs too). The caller
// closes the reader. ErrNotFound when the message is not live.
func (s *Spool) Load(id string) (*Message, io.ReadCloser, error) {
	if !validID(id) {
		return nil, nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	var m *Message
	var inline []byte
	var file bool
	err := s.view(setMsgs|setRcpts|setBodies, func(_ *bolt.Tx, b bk) error {
		v := b.msgs.Get([]byte(id))
		if v == nil {
			return fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		se, err := decodeEnv(v)
		if err != nil {
			return fmt.Errorf("message %s: %w", id, err)
		}
		if m, err = liveMessage(b, id, &se, false); err != nil {
			return err
		}
		if file = se.file; !file {
			inline, err = inlineBody(b, id)
		}
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	body, err := s.openBody(id, file, inline)
	if err != nil {
		return nil, nil, err
	}
	return m, body, nil
}

// loadMessage reads a live message (with its attempt logs when asked) or
// else a retired one.
func loadMessage(b bk, id string, withAttempts bool) (*Message, error) {
	if v := b.msgs.Get([]byte(id)); v != nil {
		return loadLive(b, id, v, withAttempts)
	}
	if v := b.retired.Get([]byte(id)); v != nil {
		return decodeRetired(id, v)
	}
	return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
}

// loadLive assembles a live message from its envelope record v.
func loadLive(b bk, id string, v []byte, withAttempts bool) (*Message, error) {
	se, err := decodeEnv(v)
	if err != nil {
		return nil, fmt.Errorf("message %s: %w", id, err)
	}
	return liveMessage(b, id, &se, withAttempts)
}

// liveMessage assembles a live message from its decoded envelope record.
func liveMessage(b bk, id string, se *storedEnv, withAttempts bool) (*Message, error) {
	sts, err := states(b, id, len(se.env.Recipients))
	if err != nil {
		return nil, err
	}
	m := &Message{ID: id, Envelope: se.env}
	for i := range m.Envelope.Recipients {
		r := &m.Envelope.Recipients[i]
		applyState(r, &sts[i])
		if !withAttempts {
			continue
		}
		if r.Attempts, err = attempts(b, id, i); err != nil {
			return nil, err
		}
	}
	return m, nil
}
