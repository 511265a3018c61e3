package main

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// mountTmpfs mounts a tmpfs of the given size option ("24m") on a fresh
// directory for the test and unmounts it in cleanup; it skips the test
// where mounting is not possible (not root, no CAP_SYS_ADMIN).
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("disk-full test: needs root to mount a small tmpfs for the spool")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0755"); err != nil {
		t.Skipf("disk-full test: cannot mount a tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		err := syscall.Unmount(dir, 0)
		if errors.Is(err, syscall.EBUSY) {
			err = syscall.Unmount(dir, syscall.MNT_DETACH)
		}
		if err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// TestFSName: the bench names the spool's file system, and knows a tmpfs
// (where its fsync figures would mean nothing).
func TestFSName(t *testing.T) {
	if got := fsName(t.TempDir()); got == "" {
		t.Errorf("no file system name for the test's directory")
	}
	if got := fsName(filepath.Join(t.TempDir(), "absent")); got != "" {
		t.Errorf("fsName of a missing directory = %q", got)
	}
	if got := fsName(mountTmpfs(t, "1m")); got != "tmpfs" {
		t.Errorf("fsName of a tmpfs = %q", got)
	}
}

// TestDiskFull: the spool lives on a small file system and no mail can
// leave (every MX refuses), so it fills up. Clients then get 452 4.3.1 —
// whether the disk is really full (ENOSPC) or below min_free_bytes — and
// nothing already accepted is lost: when space returns new mail is
// accepted again, and when the MX hosts return everything is delivered.
func TestDiskFull(t *testing.T) {
	if testing.Short() {
		t.Skip("disk-full rounds take a while; not in -short")
	}
	tests := []struct {
		name    string
		minFree int64
	}{
		{"ENOSPC", -1},                    // the check is off: writes fail
		{"below min_free_bytes", 4 << 20}, // refused before the disk is full
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mnt := mountTmpfs(t, "12m")
			const tries, probes = 100, 100
			r := newRig(t, rigOptions{Messages: tries + probes, Domains: 2, Daemon: daemonOptions{
				StateDir: filepath.Join(mnt, "state"), MinFreeBytes: tt.minFree, RetryMin: time.Second, RetryMax: 2 * time.Second}})
			r.setSinks(sinkRefuse)
			r.start()
			opts := r.gen(0, tries, 4)
			opts.SizeBytes, opts.PerSession = 200<<10, 2
			g := generate(t.Context(), opts, r.led)
			t.Logf("filling: %d accepted, refusals %v, %d connection errors (%s)", g.Accepted, g.Replies, g.Errors, g.FirstErr)
			if g.Accepted == 0 || g.Replies["452 4.3.1"] == 0 {
				t.Fatalf("want some messages accepted and then 452 4.3.1: %d accepted, refusals %v", g.Accepted, g.Replies)
			}
			if err := syscall.Mount("tmpfs", mnt, "tmpfs", syscall.MS_REMOUNT, "size=256m,mode=0755"); err != nil {
				t.Fatalf("grow the tmpfs: %v", err)
			}
			next := tries
			r.waitFor("a message accepted once space returns", time.Minute, func() bool {
				if next >= tries+probes {
					return false
				}
				o := r.gen(next, 1, 1)
				o.SizeBytes = 200 << 10
				next++
				return generate(t.Context(), o, r.led).Accepted == 1
			})
			r.setSinks(sinkAccept)
			r.waitDelivered(2 * time.Minute)
			r.waitQueueEmpty(time.Minute)
			r.checkNothingLost()
			r.checkSpool()
		})
	}
}
