package spool

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// smallFS mounts a 4 MiB tmpfs for the test, so that its disk can really
// fill. It skips the test when it cannot (not root).
func smallFS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	mnt := t.TempDir()
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=4m,mode=0755"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(mnt, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	return mnt
}

// fill writes a file in dir until its file system is full, and returns
// the file's path.
func fill(t *testing.T, dir string) string {
	t.Helper()
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			break
		}
	}
	_ = f.Close() // it filled the disk: its end is lost anyway
	return filler
}

// TestEnqueueFullDisk: when the disk is full (ENOSPC, with no minimum
// free space configured), Enqueue fails with ErrNoSpace, whether the
// commit or the body file hits it, and stores nothing; once space
// returns, enqueues succeed and what was stored before is intact.
func TestEnqueueFullDisk(t *testing.T) {
	mnt := smallFS(t)
	dir := filepath.Join(mnt, "spool")
	s := openIn(t, dir, Options{MinFreeBytes: -1, InlineBodyBytes: 64 << 10})
	before := enqueue(t, s, envelope("a@example.org", "b@example.net"), bodyOf("before", 5000))
	// A long read transaction keeps commits from reusing pages, so once
	// the file system is full every commit needs new space.
	reader, err := s.db.Begin(false)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = reader.Rollback() }() // read-only
	filler := fill(t, mnt)

	for _, tc := range []struct {
		name string
		size int
	}{
		{"inline body: the commit fails", 60 << 10},
		{"body file: its writes fail", 1 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			var id string
			for i := 0; err == nil && i < 100; i++ {
				id = NewID()
				err = tryEnqueue(s, id, envelope("a@example.org", "c@example.net"), bodyOf(id, tc.size))
			}
			if !errors.Is(err, ErrNoSpace) {
				t.Fatalf("Enqueue on a full disk: %v, want ErrNoSpace", err)
			}
			t.Logf("refused: %v", err)
			if _, err := s.Message(id); !errors.Is(err, ErrNotFound) {
				t.Errorf("Message of the refused enqueue: %v, want ErrNotFound", err)
			}
			if _, err := os.Stat(filepath.Join(dir, bodyDir, id)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("body file of the refused enqueue: %v", err)
			}
			verifyNow(t, s)
		})
	}

	_ = reader.Rollback() // read-only
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	after := enqueue(t, s, envelope("a@example.org", "d@example.net"), bodyOf("after", 100<<10))
	for id, size := range map[string]int{before: 5000, after: 100 << 10} {
		if got := readBody(t, s, id); len(got) != size {
			t.Errorf("body of %s: %d bytes, want %d", id, len(got), size)
		}
	}
}
