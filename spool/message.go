package spool

import (
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Message returns a live or retired message with every recipient's state
// and attempt log.
func (s *Spool) Message(id string) (*Message, error) {
	if !validID(id) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	var m *Message
	err := s.view(func(_ *bolt.Tx, b bk) error {
		var err error
		m, err = loadMessage(b, id, true)
		return err
	})
	return m, err
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
