package spool

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestCheckFindsDamage(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, dir string, ids []string)
		want   string
	}{
		{"orphan body file", func(t *testing.T, dir string, _ []string) {
			writeFile(t, filepath.Join(dir, bodyDir, NewID()), []byte("x"))
		}, "no live message refers to it"},
		{"missing body file", func(t *testing.T, dir string, ids []string) {
			if err := os.Remove(filepath.Join(dir, bodyDir, ids[0])); err != nil {
				t.Fatal(err)
			}
		}, "body file"},
		{"missing due key", func(t *testing.T, dir string, ids []string) {
			rawUpdate(t, dir, func(tx *bolt.Tx) error {
				c := tx.Bucket([]byte(bucketDue)).Cursor()
				k, _ := c.First()
				return tx.Bucket([]byte(bucketDue)).Delete(k)
			})
		}, "no due key"},
		{"extra due key", func(t *testing.T, dir string, ids []string) {
			rawUpdate(t, dir, func(tx *bolt.Tx) error {
				return tx.Bucket([]byte(bucketDue)).Put(dueKey(farFuture, ids[1], 0), nil)
			})
		}, "is due at"},
		{"due key of a gone message", func(t *testing.T, dir string, ids []string) {
			rawUpdate(t, dir, func(tx *bolt.Tx) error {
				return tx.Bucket([]byte(bucketDue)).Put(dueKey(farFuture, NewID(), 0), nil)
			})
		}, "no such live recipient"},
		{"counter off", func(t *testing.T, dir string, ids []string) {
			rawUpdate(t, dir, func(tx *bolt.Tx) error {
				return tx.Bucket([]byte(bucketCounters)).Put(cPending.key(), putUint64(7))
			})
		}, "counter pending"},
		{"domain counter off", func(t *testing.T, dir string, ids []string) {
			rawUpdate(t, dir, func(tx *bolt.Tx) error {
				return tx.Bucket([]byte(bucketDomains)).Put([]byte("d.example"), encodeDomainCount([3]int64{9, 0, 0}))
			})
		}, "domain d.example"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(dir, Options{InlineBodyBytes: 100, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for range 3 {
				ids = append(ids, enqueue(t, s, envelope("a@o.test", "b@d.example"), bodyOf("c", 500)))
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if rep, err := Check(dir); err != nil || len(rep.Problems) != 0 || rep.Messages != 3 {
				t.Fatalf("Check before damage: %+v, %v", rep, err)
			}
			tc.damage(t, dir, ids)
			rep, err := Check(dir)
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			if !strings.Contains(strings.Join(rep.Problems, "\n"), tc.want) {
				t.Errorf("Check found %q, want a problem mentioning %q", rep.Problems, tc.want)
			}
		})
	}
}

func TestCompact(t *testing.T) {
	clk := newClock()
	dir := t.TempDir()
	s := openIn(t, dir, Options{Now: clk.Now, RetiredMaxCount: 10})
	var kept []string
	for i := range 200 {
		id := enqueue(t, s, envelope("a@o.test", "b@d.example"), bodyOf("p", 4000))
		if i%20 == 0 {
			kept = append(kept, id)
		}
	}
	for _, task := range claimAll(t, s, clk.Now(), time.Hour) {
		st := Delivered
		if i := slicesIndex(kept, task.ID); i >= 0 {
			st = Deferred
		}
		record(t, s, result(task.ID, task.Rcpt, st, clk.Now(), clk.Now().Add(time.Hour)))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	before := usedBytes(t, dir)
	if err := Compact(dir); err != nil {
		t.Fatalf("Compact: %v", err)
	}
	if after := usedBytes(t, dir); after >= before/2 {
		t.Errorf("Compact left %d bytes in use of %d", after, before)
	}
	checkClean(t, dir)
	s = openIn(t, dir, Options{Now: clk.Now, RetiredMaxCount: 10})
	for _, id := range kept {
		if got := readBody(t, s, id); string(got) != string(bodyOf("p", 4000)) {
			t.Errorf("body of %s changed by Compact", id)
		}
		if r := message(t, s, id).Envelope.Recipients[0]; r.State != Deferred || r.AttemptCount != 1 {
			t.Errorf("state of %s after Compact: %+v", id, r)
		}
	}
}

func slicesIndex(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// usedBytes is how much of the spool file its pages use (bbolt grows the
// file itself in large steps).
func usedBytes(t *testing.T, dir string) int64 {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, dbName), 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = db.Close() }() // read-only
	var n int64
	if err := db.View(func(tx *bolt.Tx) error { n = tx.Size(); return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}
