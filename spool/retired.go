package spool

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// ListRetired returns up to limit retired messages, the most recently
// retired first, each with every recipient's final state and attempt log,
// and the cursor of the next (older) page: "" at the end. after is ""
// for the newest, or a cursor an earlier call returned. Each page is one
// short read transaction over the retired_at index.
//
// Records the bounds remove between pages are simply not listed; a
// message retired after the first page was read shows on no later page.
func (s *Spool) ListRetired(ctx context.Context, after string, limit int) ([]Message, string, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	var from []byte
	if after != "" {
		var err error
		if from, err = hex.DecodeString(after); err != nil || len(from) < 8 {
			return nil, "", fmt.Errorf("%w: retired cursor %q", ErrInvalid, after)
		}
	}
	if limit <= 0 {
		limit = defaultListLimit
	}
	limit = min(limit, maxListLimit)
	var out []Message
	var next string
	err := s.view(setRetired|setRetiredAt, func(_ *bolt.Tx, b bk) error {
		out, next = nil, ""
		c := b.retiredAt.Cursor()
		k, _ := c.Last()
		if from != nil {
			// The page goes on below the cursor's key, whether or not that
			// key is still there.
			if k, _ = c.Seek(from); k == nil {
				k, _ = c.Last()
			}
			for k != nil && bytes.Compare(k, from) >= 0 {
				k, _ = c.Prev()
			}
		}
		var last []byte
		for ; k != nil; k, _ = c.Prev() {
			if len(out) >= limit {
				next = hex.EncodeToString(last)
				break
			}
			m, err := retiredAt(b, k)
			if err != nil {
				return err
			}
			out = append(out, *m)
			last = k
		}
		return nil
	})
	return out, next, err
}

// retiredAt reads the retired record a retired_at key points to.
func retiredAt(b bk, k []byte) (*Message, error) {
	if len(k) < 8 || !validID(string(k[8:])) {
		return nil, corrupt("retired_at key %q", k)
	}
	id := string(k[8:])
	v := b.retired.Get([]byte(id))
	if v == nil {
		return nil, corrupt("retired_at key of %s points to no retired record", id)
	}
	return decodeRetired(id, v)
}
