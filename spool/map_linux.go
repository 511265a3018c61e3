package spool

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// mapFile maps the file at path read-only for walkPages, holding a shared
// lock on it so that no bbolt writer (which locks it exclusively) changes
// it meanwhile: ErrLocked when one holds it. A missing or empty file maps
// to nil. release unmaps it and drops the lock.
func mapFile(path string) (data []byte, release func(), err error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, ioError("open spool file", err)
	}
	fail := func(err error) ([]byte, func(), error) {
		closeQuietly(f)
		return nil, nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fail(fmt.Errorf("open %s: %w", path, ErrLocked))
		}
		return fail(ioError("lock spool file", err))
	}
	fi, err := f.Stat()
	if err != nil {
		return fail(ioError("stat spool file", err))
	}
	if fi.Size() == 0 {
		return fail(nil)
	}
	if int64(int(fi.Size())) != fi.Size() {
		return fail(corrupt("%s: %d bytes, too large to map", path, fi.Size()))
	}
	data, err = syscall.Mmap(int(f.Fd()), 0, int(fi.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return fail(ioError("map spool file", err))
	}
	return data, func() {
		_ = syscall.Munmap(data) // read-only: nothing to lose
		closeQuietly(f)          // closing drops the lock
	}, nil
}
