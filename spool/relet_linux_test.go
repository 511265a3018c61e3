package spool

import (
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
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
