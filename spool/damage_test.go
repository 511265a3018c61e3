package spool

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// damagedFixture makes a closed spool of 300 messages in a few states
// and returns its file and the IDs. (Which page holds what still varies
// from run to run: bbolt's freelist hands out pages in map order.)
func damagedFixture(t *testing.T) ([]byte, []string) {
	t.Helper()
	dir := t.TempDir()
	clk := newClock()
	s, err := Open(dir, Options{Logger: testLogger(t), Now: clk.Now, UnsafeNoSync: true, MinFreeBytes: -1, InlineBodyBytes: 1024})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range 300 {
		id := fmt.Sprintf("m%04d", i)
		if err := tryEnqueue(s, id, envelope("a@o.test", fmt.Sprintf("b@d%d.example", i%7), "c@e.example"), bodyOf(id, 200+i*13)); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	now := clk.Now()
	var u Update
	for i, task := range claimAll(t, s, now, time.Hour) {
		u.Results = append(u.Results, result(task.ID, task.Rcpt, []State{Deferred, Delivered}[i%2], now, now.Add(time.Minute)))
	}
	if err := s.Record(t.Context(), u); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, dbName))
	if err != nil {
		t.Fatal(err)
	}
	return raw, ids
}

// inUse lists the pages of the bbolt file in data that are in use (the
// tree and the freelist page), and of them those whose damage cannot make
// a cycle of pages: leaves holding no bucket. (A damaged freelist can:
// bbolt hands out a page in use and overwrites it.)
func inUse(t *testing.T, data []byte) (all, noCycle []int) {
	t.Helper()
	m, _ := fileMeta(data)
	size := int(m.pageSize)
	w := &pageWalk{data: data, pageSize: uint64(m.pageSize), hwm: m.hwm, seen: make([]bool, m.hwm)}
	w.seen[0], w.seen[1] = true, true
	w.freelist(m.freelist)
	w.tree(m.root, 0)
	if len(w.problems) > 0 {
		t.Fatalf("walk of an intact file: %v", w.problems)
	}
	for id := 2; id < len(w.seen); id++ {
		p := data[id*size:]
		if !w.seen[id] || ne.Uint64(p) != uint64(id) {
			continue // not in use, or an overflow page
		}
		all = append(all, id)
		if ne.Uint16(p[8:]) != boltLeaf {
			continue
		}
		buckets := false
		for i := range int(ne.Uint16(p[10:])) {
			buckets = buckets || ne.Uint32(p[boltPageHeader+i*boltElement:])&boltBucketLeaf != 0
		}
		if !buckets {
			noCycle = append(noCycle, id)
		}
	}
	return all, noCycle
}

// damagePages overwrites one to three of pages in img: random bytes,
// zeroed elements, or a few flipped bits. With keepShape, each page's
// header and its elements' flags are put back afterwards: a leaf stays a
// leaf of values, so the damage cannot make a branch or a nested bucket
// that points elsewhere (a cycle bbolt would recurse around forever).
func damagePages(img []byte, pages []int, rng *rand.Rand, keepShape bool) {
	m, _ := fileMeta(img)
	size := int(m.pageSize)
	for range 1 + rng.IntN(3) {
		p := img[pages[rng.IntN(len(pages))]*size:][:size]
		orig := append([]byte(nil), p...)
		if keepShape {
			defer restoreShape(p, orig)
		}
		switch rng.IntN(3) {
		case 0:
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
		case 1:
			clear(p[boltPageHeader:])
		case 2:
			for range 8 {
				p[rng.IntN(size)] ^= 1 << rng.IntN(8)
			}
		}
	}
}

// restoreShape puts orig's page header and element flags back into p.
func restoreShape(p, orig []byte) {
	copy(p[:boltPageHeader], orig[:boltPageHeader])
	for i := range int(ne.Uint16(orig[10:])) {
		at := boltPageHeader + i*boltElement
		if at+4 > len(p) {
			break
		}
		copy(p[at:at+4], orig[at:at+4])
	}
}

// TestDamagedPages: a spool file with damaged pages is refused at Open
// or read as ErrCorrupt; Check and Compact report the damage. No
// operation crashes the process, hangs, or fails with an untyped error.
// Without the page walk at Open (as for a large file whose freelist was
// kept), every operation still fails cleanly with ErrCorrupt. (There only
// pages whose damage cannot make a cycle are damaged: bbolt recursing
// around one kills the process, which only the walk prevents.)
func TestDamagedPages(t *testing.T) {
	raw, ids := damagedFixture(t)
	all, noCycle := inUse(t, raw)
	const seeds = 30
	for _, walk := range []bool{true, false} {
		pages := all
		if !walk {
			pages = noCycle
		}
		opened, corrupt := 0, 0
		for seed := range uint64(seeds) {
			t.Run(fmt.Sprintf("walk=%v/seed=%d", walk, seed), func(t *testing.T) {
				dir := t.TempDir()
				img := append([]byte(nil), raw...)
				damagePages(img, pages, rand.New(rand.NewPCG(seed, 9)), !walk)
				writeFile(t, filepath.Join(dir, dbName), img)
				o := exerciseDamaged(t, dir, ids, walk)
				opened, corrupt = opened+o.opened, corrupt+o.corrupt
				// A spool left broken (a commit on a damaged page that could
				// not be rolled back) keeps its file locked until the
				// process exits: Check and Compact must say so.
				want := ErrCorrupt
				if o.broken {
					want = ErrLocked
				}
				if _, err := Check(dir); err != nil && !errors.Is(err, want) {
					t.Errorf("Check: %v (want nil or %v)", err, want)
				}
				if err := Compact(dir); err != nil && !errors.Is(err, want) {
					t.Errorf("Compact: %v (want nil or %v)", err, want)
				}
			})
		}
		t.Logf("walk=%v: %d of %d damaged files opened, %d ErrCorrupt answers", walk, opened, seeds, corrupt)
		if corrupt == 0 {
			t.Errorf("walk=%v: no operation met the damage: the test proves nothing", walk)
		}
	}
}

// outcome counts what exerciseDamaged met.
type outcome struct {
	opened, corrupt int
	broken          bool // Close said the spool was left broken
}

// exerciseDamaged opens the spool in dir and runs every operation on it;
// each must succeed or fail with a typed error.
func exerciseDamaged(t *testing.T, dir string, ids []string, walk bool) outcome {
	t.Helper()
	var o outcome
	typed := func(what string, err error) {
		t.Helper()
		if errors.Is(err, ErrCorrupt) {
			o.corrupt++
		} else if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrDuplicate) {
			t.Errorf("%s: %v, want a typed error", what, err)
		}
	}
	mode := walkAuto
	if !walk {
		mode = walkNoTree
	}
	s, err := open(dir, Options{Logger: testLogger(t), Now: newClock().Now, UnsafeNoSync: true, MinFreeBytes: -1}, mode)
	if err != nil {
		typed("Open", err)
		return o
	}
	o.opened = 1
	for _, id := range ids {
		_, err := s.Message(id)
		typed("Message", err)
	}
	_, _, err = s.List(t.Context(), Filter{}, "", 1000)
	typed("List", err)
	_, err = s.Counts()
	typed("Counts", err)
	_, err = s.Claim(t.Context(), farFuture, 50, func(Task) time.Time { return farFuture })
	typed("Claim", err)
	typed("Enqueue", tryEnqueue(s, NewID(), envelope("a@o.test", "b@d.example"), bodyOf("y", 100)))
	for _, id := range ids[:50] {
		typed("Hold", s.Hold(t.Context(), id))
		typed("Delete", s.Delete(t.Context(), id, true, "damaged"))
	}
	_, err = s.Retry(t.Context(), "", farFuture)
	typed("Retry", err)
	err = s.Close()
	o.broken = errors.Is(err, errBroken)
	typed("Close", err)
	return o
}

// TestPageDamageFound: damage a page walk finds is refused by Open and
// Compact with ErrCorrupt and listed by Check, before bbolt could walk
// into it (a cycle of pages would recurse forever, a key past its page
// would read outside the file, a page the freelist lists while in use
// would be overwritten).
func TestPageDamageFound(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, img []byte, m boltMeta, all []int)
		want   string
	}{
		{"branch page pointing to itself", func(t *testing.T, img []byte, m boltMeta, all []int) {
			id := firstPage(t, img, m, all, boltBranch)
			ne.PutUint64(img[id*int(m.pageSize)+boltPageHeader+8:], uint64(id))
		}, "reached twice"},
		{"key past the end of its page", func(t *testing.T, img []byte, m boltMeta, all []int) {
			id := firstPage(t, img, m, all, boltLeaf)
			ne.PutUint32(img[id*int(m.pageSize)+boltPageHeader+8:], 1<<30)
		}, "past the end of the page"},
		{"freelist listing a page in use", func(t *testing.T, img []byte, m boltMeta, all []int) {
			p := img[m.freelist*uint64(m.pageSize):]
			if ne.Uint16(p[10:]) == 0 || ne.Uint16(p[10:]) == 0xFFFF {
				t.Fatalf("freelist of %d pages", ne.Uint16(p[10:]))
			}
			ne.PutUint64(p[boltPageHeader:], uint64(firstPage(t, img, m, all, boltLeaf)))
		}, "which is in use"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, _ := spoolWith(t, 50)
			path := filepath.Join(dir, dbName)
			img, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			m, _ := fileMeta(img)
			all, _ := inUse(t, img)
			tc.damage(t, img, m, all)
			writeFile(t, path, img)
			if s, err := Open(dir, Options{Logger: testLogger(t)}); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
				if err == nil {
					_ = s.Close() // the test has failed already
				}
				t.Errorf("Open: %v, want ErrCorrupt saying %q", err, tc.want)
			}
			if err := Compact(dir); !errors.Is(err, ErrCorrupt) {
				t.Errorf("Compact: %v, want ErrCorrupt", err)
			}
			rep, err := Check(dir)
			if err != nil || !strings.Contains(strings.Join(rep.Problems, "\n"), tc.want) {
				t.Errorf("Check: %v, %v; want a problem saying %q", rep.Problems, err, tc.want)
			}
		})
	}
}

// firstPage is the first page in use of the given kind.
func firstPage(t *testing.T, img []byte, m boltMeta, all []int, flags uint16) int {
	t.Helper()
	for _, id := range all {
		if ne.Uint16(img[id*int(m.pageSize)+8:]) == flags {
			return id
		}
	}
	t.Fatalf("no page with flags %#x", flags)
	return 0
}
