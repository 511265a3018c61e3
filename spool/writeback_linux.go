package spool

import (
	"os"
	"syscall"
)

// sync_file_range(2) flags.
const (
	syncRangeWaitBefore = 1
	syncRangeWrite      = 2
	syncRangeWaitAfter  = 4
)

// startWriteback asks the kernel to start writing [off, off+n) of f to
// disk without waiting.
func startWriteback(f *os.File, off, n int64) {
	// Only a hint: the final fsync is what makes the body durable.
	_ = syscall.SyncFileRange(int(f.Fd()), off, n, syncRangeWrite)
}

// waitWriteback waits until [off, off+n) of f has been written to disk.
func waitWriteback(f *os.File, off, n int64) {
	// Only pacing: the final fsync is what makes the body durable.
	_ = syscall.SyncFileRange(int(f.Fd()), off, n, syncRangeWaitBefore|syncRangeWrite|syncRangeWaitAfter)
}
