package spool

import (
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

type errCounter struct{ failed atomic.Int64 }

func (c *errCounter) Committed(cm Commit) {
	if cm.Err != nil {
		c.failed.Add(1)
	}
}

// TestUnclaimSurvivesFullDisk: a claim given back while the disk is full
// (its commit fails) is retried by the committer, so once space returns
// the recipient is due again without a restart.
func TestUnclaimSurvivesFullDisk(t *testing.T) {
	mnt := smallFS(t)
	obs := &errCounter{}
	clk := newClock()
	s := openIn(t, filepath.Join(mnt, "spool"), Options{Now: clk.Now, MinFreeBytes: -1, Observer: obs})
	enqueue(t, s, envelope("a@example.org", "b@example.net"), bodyOf("x", 100))
	tasks := claimAll(t, s, clk.Now(), time.Hour)
	if len(tasks) != 1 {
		t.Fatalf("claimed %d tasks", len(tasks))
	}

	// A long read transaction keeps the pages later commits free from
	// being reused, so once the file system is full every commit needs
	// new space and fails.
	reader, err := s.db.Begin(false)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = reader.Rollback() }() // read-only
	// Fill the file system, then churn the spool until a commit fails.
	filler := fill(t, mnt)
	for i := 0; obs.failed.Load() == 0 && i < 200; i++ {
		_ = tryEnqueue(s, NewID(), envelope("a@example.org", "c@example.net"), bodyOf("y", 50<<10))
	}
	if obs.failed.Load() == 0 {
		t.Fatal("no commit failed on a full file system")
	}
	before := obs.failed.Load()
	s.Unclaim(tasks)
	if _, ok, err := s.NextDue(); err != nil || ok {
		t.Fatalf("NextDue = %v, %v: the lease ended although its commit cannot succeed", ok, err)
	}
	if obs.failed.Load() == before {
		t.Fatal("the Unclaim's commit did not fail: the test proves nothing")
	}

	_ = reader.Rollback() // read-only
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		at, ok, err := s.NextDue()
		if err != nil && !errors.Is(err, ErrNoSpace) {
			t.Fatal(err)
		}
		if ok && !at.After(clk.Now().Add(time.Hour)) {
			break // given back: due at its lease, not stuck
		}
		if time.Now().After(deadline) {
			t.Fatal("the recipient stayed leased after space returned")
		}
		time.Sleep(50 * time.Millisecond)
	}
	got := claimAll(t, s, clk.Now().Add(2*time.Hour), time.Hour)
	if len(got) != 1 || got[0].ID != tasks[0].ID {
		t.Errorf("claimed %v after space returned, want the given-back task", got)
	}
}

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
