package spool

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// spoolWith makes a closed spool in a new directory holding n messages.
func spoolWith(t *testing.T, n int) (dir string, ids []string) {
	t.Helper()
	dir = t.TempDir()
	s, err := Open(dir, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		ids = append(ids, enqueue(t, s, envelope("a@o.test", "b@d.example"), bodyOf("x", 3000)))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return dir, ids
}

// rawUpdate changes the spool file under the spool's feet.
func rawUpdate(t *testing.T, dir string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, dbName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestOpenErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, dir string)
		want   error
	}{
		{"garbage file", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, dbName), bodyOf("garbage", 64<<10))
		}, ErrCorrupt},
		{"file shorter than a page", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, dbName), []byte("short"))
		}, ErrCorrupt},
		{"truncated file", func(t *testing.T, dir string) {
			// Cut the file inside the pages its meta page counts.
			var used int64
			rawUpdate(t, dir, func(tx *bolt.Tx) error { used = tx.Size(); return nil })
			if err := os.Truncate(filepath.Join(dir, dbName), used/2); err != nil {
				t.Fatal(err)
			}
		}, ErrCorrupt},
		{"unknown schema version", func(t *testing.T, dir string) {
			rawUpdate(t, dir, func(tx *bolt.Tx) error {
				return tx.Bucket([]byte(bucketMeta)).Put([]byte(keyVersion), encodeVersion(99))
			})
		}, ErrVersion},
		{"bucket missing", func(t *testing.T, dir string) {
			rawUpdate(t, dir, func(tx *bolt.Tx) error { return tx.DeleteBucket([]byte(bucketDue)) })
		}, ErrCorrupt},
		{"foreign bbolt file", func(t *testing.T, dir string) {
			rawUpdate(t, dir, func(tx *bolt.Tx) error { return tx.DeleteBucket([]byte(bucketMeta)) })
		}, ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, _ := spoolWith(t, 50)
			tc.damage(t, dir)
			s, err := Open(dir, Options{Logger: testLogger(t)})
			if err == nil {
				_ = s.Close() // the test has failed already
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Open: %v, want %v", err, tc.want)
			}
			if _, err := Check(dir); !errors.Is(err, tc.want) {
				t.Errorf("Check: %v, want %v", err, tc.want)
			}
		})
	}
}

// TestOpenUpgradesVersion1: a file of schema version 1 (no leases bucket)
// is refused by Check, and upgraded by Open with its messages intact.
func TestOpenUpgradesVersion1(t *testing.T) {
	dir, ids := spoolWith(t, 3)
	rawUpdate(t, dir, func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket([]byte(bucketLeases)); err != nil {
			return err
		}
		return tx.Bucket([]byte(bucketMeta)).Put([]byte(keyVersion), encodeVersion(1))
	})
	if _, err := Check(dir); !errors.Is(err, ErrVersion) {
		t.Errorf("Check of a version 1 file: %v, want ErrVersion", err)
	}
	s := openIn(t, dir, Options{})
	verifyNow(t, s)
	tasks := claimAll(t, s, farFuture, time.Hour)
	if got, want := sortedIDs(tasks), sortedIDs([]Task{{ID: ids[0]}, {ID: ids[1]}, {ID: ids[2]}}); !slices.Equal(got, want) {
		t.Errorf("claimed %v after the upgrade, want %v", got, want)
	}
}

// TestFreelistLeftOutWhenLarge: commits write bbolt's freelist while it
// is small, leave it out once many pages are free (after many messages
// have retired), and Close writes it, so that the next Open reads it
// instead of walking the pages.
func TestFreelistLeftOutWhenLarge(t *testing.T) {
	dir := t.TempDir()
	clk := newClock()
	s, err := Open(dir, Options{Logger: testLogger(t), Now: clk.Now, UnsafeNoSync: true, MinFreeBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	enqueue(t, s, envelope("a@o.test", "b@d.example"), bodyOf("x", 3000))
	if !metaFreelist(t, dir) {
		t.Errorf("a commit with few free pages left the freelist out")
	}
	// Bodies of 16 KiB take four pages each: retiring 400 frees more than
	// freelistSyncPages.
	for range 400 {
		enqueue(t, s, envelope("a@o.test", "b@d.example"), bodyOf("x", 16<<10))
	}
	var u Update
	for _, task := range claimAll(t, s, clk.Now(), time.Hour) {
		u.Results = append(u.Results, result(task.ID, task.Rcpt, Delivered, clk.Now(), time.Time{}))
	}
	if err := s.Record(t.Context(), u); err != nil {
		t.Fatal(err)
	}
	enqueue(t, s, envelope("a@o.test", "b@d.example"), bodyOf("x", 3000))
	if free := s.db.Stats().FreePageN; free <= freelistSyncPages {
		t.Fatalf("%d free pages, want more than %d", free, freelistSyncPages)
	}
	if metaFreelist(t, dir) {
		t.Errorf("a commit with many free pages wrote the freelist")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if !metaFreelist(t, dir) {
		t.Errorf("Close left the file without its freelist")
	}
	checkClean(t, dir)
}

// metaFreelist reads bbolt's newer meta page and reports whether it points
// to a freelist: a page header of 16 bytes, then magic, version, page
// size, flags (4 bytes each), the root bucket (16), the freelist page,
// the high water mark and the transaction id (8 each).
func metaFreelist(t *testing.T, dir string) bool {
	t.Helper()
	f, err := os.ReadFile(filepath.Join(dir, dbName))
	if err != nil {
		t.Fatal(err)
	}
	pageSize := int(binary.LittleEndian.Uint32(f[24:]))
	var freelist, txid uint64
	for _, off := range []int{0, pageSize} {
		if id := binary.LittleEndian.Uint64(f[off+64:]); id >= txid {
			freelist, txid = binary.LittleEndian.Uint64(f[off+48:]), id
		}
	}
	return freelist != ^uint64(0)
}

func TestOpenLocked(t *testing.T) {
	s, dir := openSpool(t, Options{})
	_ = s
	if _, err := Open(dir, Options{}); !errors.Is(err, ErrLocked) {
		t.Errorf("second Open: %v, want ErrLocked", err)
	}
	if _, err := Check(dir); !errors.Is(err, ErrLocked) {
		t.Errorf("Check of a spool in use: %v, want ErrLocked", err)
	}
	if err := Compact(dir); !errors.Is(err, ErrLocked) {
		t.Errorf("Compact of a spool in use: %v, want ErrLocked", err)
	}
}

func TestCorruptRecord(t *testing.T) {
	dir, ids := spoolWith(t, 3)
	rawUpdate(t, dir, func(tx *bolt.Tx) error {
		if err := tx.Bucket([]byte(bucketMsgs)).Put([]byte(ids[0]), []byte{recordFormat, 0xff, 0xff}); err != nil {
			return err
		}
		return tx.Bucket([]byte(bucketRcpts)).Put(rcptKey(ids[1], 0), []byte{7})
	})
	s, err := Open(dir, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer func() { _ = s.Close() }()
	for _, id := range ids[:2] {
		if _, err := s.Message(id); !errors.Is(err, ErrCorrupt) {
			t.Errorf("Message(%s) with a damaged record: %v, want ErrCorrupt", id, err)
		}
	}
	if _, err := s.Message(ids[2]); err != nil {
		t.Errorf("Message of an intact record: %v", err)
	}
	if _, err := s.Claim(t.Context(), farFuture, 10, func(Task) time.Time { return farFuture }); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Claim over a damaged state: %v, want ErrCorrupt", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := Check(dir)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	if len(rep.Problems) < 2 {
		t.Errorf("Check found %v, want both damaged records", rep.Problems)
	}
}

// farFuture is after every time the tests use.
var farFuture = time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestOpenWaitsForHolder: a holder that lets go within the lock wait (a
// daemon stopping as the next starts) is waited for, and the file is still
// walked before bbolt opens it.
func TestOpenWaitsForHolder(t *testing.T) {
	s, dir := openSpool(t, Options{})
	closed := make(chan error, 1)
	go func() {
		time.Sleep(200 * time.Millisecond) // the holder stopping; not a synchronisation
		closed <- s.Close()
	}()
	s2, err := Open(dir, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Open after the holder let go: %v", err)
	}
	if err := <-closed; err != nil {
		t.Errorf("first Close: %v", err)
	}
	if err := s2.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}
