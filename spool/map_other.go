//go:build !linux

package spool

import (
	"errors"
	"os"
)

// mapFile reads the file at path for walkPages (without a lock: this
// system's bbolt lock is not flock). A missing file reads as nil.
func mapFile(path string) (data []byte, release func(), err error) {
	data, err = os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) || (err == nil && len(data) == 0) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, ioError("read spool file", err)
	}
	return data, func() {}, nil
}
