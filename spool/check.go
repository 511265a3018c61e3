package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"

	bolt "go.etcd.io/bbolt"
)

// maxProblems bounds a check report; the rest are counted.
const maxProblems = 100

// CheckReport is what an offline consistency check found.
type CheckReport struct {
	Messages int
	Problems []string
}

// Check verifies the spool in dir offline (the daemon must be stopped):
// every due entry points at a live recipient, counters match, no body file
// is orphaned or missing.
//
// In full: every page reachable from the root lies in the file and is
// reached once, and the freelist lists none of them (checkPages; when
// this fails the rest is not attempted, as it would walk into the
// damage); bbolt's own page check; every record decodes; every live
// message has a state per recipient, not all final; every recipient that
// is neither final, held nor leased has exactly one due key, at its next
// attempt, every leased one that is not final one lease key, and no other
// recipient has either; the domain index holds exactly the live
// recipients; the counters by state and domain match a recount; every
// attempt, body and retired record belongs to a message; every body file
// belongs to a live message that refers to it, and every such message's
// body exists with its size. The error is for a file that cannot be
// checked at all (ErrLocked, ErrCorrupt, ErrVersion).
func Check(dir string) (CheckReport, error) {
	path := filepath.Join(dir, dbName)
	if _, err := os.Stat(path); err != nil {
		return CheckReport{}, fmt.Errorf("check spool: %w", err)
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	var rep CheckReport
	problems, err := checkPages(path, walkFull)
	if err != nil {
		return CheckReport{}, fmt.Errorf("check spool: %w", err)
	}
	if len(problems) > 0 {
		// bbolt's own check, and reading the records, would walk into the
		// damage.
		for _, p := range problems {
			rep.add("bbolt: %s", p)
		}
		rep.add("records not checked: the file's pages are damaged")
		return rep, nil
	}
	db, err := openDB(path, false, true)
	if err != nil {
		return CheckReport{}, err
	}
	defer closeQuietly(db)
	err = db.View(func(tx *bolt.Tx) (err error) {
		defer catchFault(&err)
		if err := checkVersion(tx); err != nil {
			return err
		}
		for e := range tx.Check() {
			rep.add("bbolt: %v", e)
		}
		b, err := buckets(tx)
		if err != nil {
			return err
		}
		rep.Messages, rep.Problems = checkTx(b, filepath.Join(dir, bodyDir))
		return nil
	})
	return rep, err
}

func checkVersion(tx *bolt.Tx) error {
	v, err := fileVersion(tx)
	if err != nil {
		return err
	}
	if v == 1 {
		return fmt.Errorf("%w: file has 1, this binary knows %d (the daemon upgrades it when it opens it)", ErrVersion, schemaVersion)
	}
	if v != schemaVersion {
		return fmt.Errorf("%w: file has %d, this binary knows %d", ErrVersion, v, schemaVersion)
	}
	return nil
}

// fileVersion is the schema version the file says it has.
func fileVersion(tx *bolt.Tx) (uint32, error) {
	meta := tx.Bucket([]byte(bucketMeta))
	if meta == nil {
		return 0, corrupt("bucket %q missing", bucketMeta)
	}
	return decodeVersion(meta.Get([]byte(keyVersion)))
}

func (r *CheckReport) add(format string, args ...any) {
	r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
}

// checker collects problems and the recount.
type checker struct {
	b        bk
	problems []string
	extra    int
	count    [numCounters]int64
	domains  map[string][3]int64
}

func (c *checker) bad(format string, args ...any) {
	if len(c.problems) >= maxProblems {
		c.extra++
		return
	}
	c.problems = append(c.problems, fmt.Sprintf(format, args...))
}

// checkTx checks a transaction's view of the spool and the body files
// in bodyDir; it returns the live message count and the problems.
func checkTx(b bk, bodyDir string) (int, []string) {
	c := &checker{b: b, domains: make(map[string][3]int64)}
	c.messages(bodyDir)
	c.dueIndex()
	c.domainIndex()
	c.orphanKeys()
	c.counters()
	c.retiredRecords()
	c.bodyFiles(bodyDir)
	if c.extra > 0 {
		c.problems = append(c.problems, fmt.Sprintf("and %d more problems", c.extra))
	}
	return int(c.count[cMessages]), c.problems
}

// messages checks each live message and recounts.
func (c *checker) messages(bodyDir string) {
	cur := c.b.msgs.Cursor()
	for k, v := cur.First(); k != nil; k, v = cur.Next() {
		id := string(k)
		c.count[cMessages]++
		se, err := decodeEnv(v)
		if err != nil {
			c.bad("message %s: %v", id, err)
			continue
		}
		sts, err := states(c.b, id, len(se.env.Recipients))
		if err != nil {
			c.bad("message %s: %v", id, err)
			continue
		}
		live := false
		for i := range sts {
			live = c.recipient(id, i, &se, &sts[i]) || live
		}
		if !live {
			c.bad("message %s: every recipient is final but it is not retired", id)
		}
		c.body(id, &se, bodyDir)
	}
}

// recipient checks one recipient's indexes and counts it; it reports
// whether the recipient is live.
func (c *checker) recipient(id string, i int, se *storedEnv, st *rstate) bool {
	if st.Domain != se.env.Recipients[i].Domain || !st.Arrival.Equal(se.env.Arrival) {
		c.bad("recipient %s/%d: state disagrees with envelope on domain or arrival", id, i)
	}
	hasDue := c.b.due.Get(dueKey(st.Next, id, i)) != nil
	if st.isDue() && !hasDue {
		c.bad("recipient %s/%d: %v, not held, but no due key at %v", id, i, st.State, st.Next)
	}
	if st.State.Final() {
		return false
	}
	if c.b.byDomain.Get(byDomainKey(st.Domain, st.Arrival, id, i)) == nil {
		c.bad("recipient %s/%d: live but missing from the domain index", id, i)
	}
	class, _ := st.class()
	c.count[class]++
	d := c.domains[st.Domain]
	d[class-cPending]++
	c.domains[st.Domain] = d
	return true
}

// body checks that a live message's body exists with its size.
func (c *checker) body(id string, se *storedEnv, bodyDir string) {
	inline := c.b.bodies.Get([]byte(id))
	if !se.file {
		if inline == nil {
			c.bad("message %s: inline body missing", id)
		} else if int64(len(inline)) != se.env.Size {
			c.bad("message %s: body of %d bytes, envelope says %d", id, len(inline), se.env.Size)
		}
		return
	}
	if inline != nil {
		c.bad("message %s: has a body file and an inline body", id)
	}
	fi, err := os.Stat(filepath.Join(bodyDir, id))
	switch {
	case err != nil:
		c.bad("message %s: body file: %v", id, err)
	case fi.Size() != se.env.Size:
		c.bad("message %s: body file of %d bytes, envelope says %d", id, fi.Size(), se.env.Size)
	}
}

// dueIndex checks that every due and lease key is its recipient's only
// one.
func (c *checker) dueIndex() {
	for _, x := range []struct {
		name string
		b    *bolt.Bucket
		want func(*rstate) bool
	}{{"due", c.b.due, (*rstate).isDue}, {"lease", c.b.leases, (*rstate).isLeased}} {
		cur := x.b.Cursor()
		for k, _ := cur.First(); k != nil; k, _ = cur.Next() {
			at, id, i, err := parseDueKey(k)
			if err != nil {
				c.bad("%s index: %v", x.name, err)
				continue
			}
			st, ok, err := getState(c.b, id, i)
			switch {
			case err != nil:
				c.bad("%s key %s/%d: %v", x.name, id, i, err)
			case !ok:
				c.bad("%s key %s/%d: no such live recipient", x.name, id, i)
			case !x.want(&st):
				c.bad("%s key %s/%d: recipient is %v, held %v, leased %v", x.name, id, i, st.State, st.Held, st.Leased)
			case !st.Next.Equal(at):
				c.bad("%s key %s/%d at %v: recipient is due at %v", x.name, id, i, at, st.Next)
			}
		}
	}
}

// domainIndex checks that every domain index key is a live recipient's.
func (c *checker) domainIndex() {
	cur := c.b.byDomain.Cursor()
	for k, _ := cur.First(); k != nil; k, _ = cur.Next() {
		d, arrival, id, i, err := parseByDomainKey(k)
		if err != nil {
			c.bad("domain index: %v", err)
			continue
		}
		st, ok, err := getState(c.b, id, i)
		switch {
		case err != nil:
			c.bad("domain key %s/%d: %v", id, i, err)
		case !ok || st.State.Final():
			c.bad("domain key %s/%d: no such live recipient", id, i)
		case st.Domain != d || !st.Arrival.Equal(arrival):
			c.bad("domain key %s/%d: recipient has domain %q arrival %v", id, i, st.Domain, st.Arrival)
		}
	}
}

// orphanKeys checks that states, attempts and inline bodies belong to live
// messages.
func (c *checker) orphanKeys() {
	for _, x := range []struct {
		name   string
		b      *bolt.Bucket
		suffix int
	}{{"recipient state", c.b.rcpts, 3}, {"attempt", c.b.attempts, 7}, {"inline body", c.b.bodies, 0}} {
		cur := x.b.Cursor()
		for k, _ := cur.First(); k != nil; k, _ = cur.Next() {
			if len(k) <= x.suffix || (x.suffix > 0 && k[len(k)-x.suffix] != 0) {
				c.bad("%s key %q malformed", x.name, k)
				continue
			}
			id := k[:len(k)-x.suffix]
			if c.b.msgs.Get(id) == nil {
				c.bad("%s of %s: no such live message", x.name, id)
			}
		}
	}
	c.attemptNumbers()
}

// attemptNumbers checks no attempt is numbered past its recipient's count.
func (c *checker) attemptNumbers() {
	cur := c.b.attempts.Cursor()
	for k, _ := cur.First(); k != nil; k, _ = cur.Next() {
		if len(k) < 8 {
			continue // reported as malformed
		}
		id, i, err := parseIDRcpt(k[:len(k)-4])
		if err != nil {
			continue
		}
		st, ok, err := getState(c.b, id, i)
		if err == nil && ok && int(binary.BigEndian.Uint32(k[len(k)-4:])) > st.Count {
			c.bad("attempt of %s/%d numbered past its count %d", id, i, st.Count)
		}
	}
}

// counters compares the stored counters with the recount.
func (c *checker) counters() {
	for n := counter(0); n < numCounters; n++ {
		if n == cRetired {
			continue // retiredRecords
		}
		v, err := getUint64(c.b.counters.Get(n.key()))
		if err != nil || v != c.count[n] {
			c.bad("counter %s is %d (%v), recount %d", n.key(), v, err, c.count[n])
		}
	}
	cur := c.b.domains.Cursor()
	for k, v := cur.First(); k != nil; k, v = cur.Next() {
		got, err := decodeDomainCount(v)
		if want := c.domains[string(k)]; err != nil || got != want {
			c.bad("domain %s counts %v (%v), recount %v", k, got, err, want)
		}
		delete(c.domains, string(k))
	}
	for d, want := range c.domains {
		c.bad("domain %s has no counter, recount %v", d, want)
	}
}

// retiredRecords checks the retired records, their age index and counter.
func (c *checker) retiredRecords() {
	var n int64
	cur := c.b.retired.Cursor()
	for k, v := cur.First(); k != nil; k, v = cur.Next() {
		n++
		if _, err := decodeRetired(string(k), v); err != nil {
			c.bad("retired %s: %v", k, err)
		}
		if c.b.msgs.Get(k) != nil {
			c.bad("retired %s is also live", k)
		}
	}
	var ages int64
	cur = c.b.retiredAt.Cursor()
	for k, _ := cur.First(); k != nil; k, _ = cur.Next() {
		ages++
		if len(k) <= 8 || c.b.retired.Get(k[8:]) == nil {
			c.bad("retired_at key %q: no such retired record", k)
		}
	}
	v, err := getUint64(c.b.counters.Get(cRetired.key()))
	if err != nil || v != n || ages != n {
		c.bad("retired counter %d (%v), %d records, %d age keys", v, err, n, ages)
	}
}

// bodyFiles checks that every body file belongs to a live message.
func (c *checker) bodyFiles(bodyDir string) {
	entries, err := os.ReadDir(bodyDir)
	if err != nil {
		c.bad("body directory: %v", err)
		return
	}
	for _, e := range entries {
		if !isLiveFile(c.b, e.Name()) {
			c.bad("body file %s: no live message refers to it", e.Name())
		}
	}
}

// verify checks a running spool (tests call it between operations, when
// no body is being written).
func (s *Spool) verify() []string {
	var problems []string
	err := s.view(setAll, func(_ *bolt.Tx, b bk) error {
		_, problems = checkTx(b, s.bodyDir)
		return nil
	})
	if err != nil {
		problems = append(problems, err.Error())
	}
	return problems
}

// Compact rewrites the spool file in dir offline to reclaim free pages.
// The copy is written beside it, fsynced, and renamed over it, so a crash
// leaves either file whole. A damaged file is refused (ErrCorrupt).
func Compact(dir string) (err error) {
	path := filepath.Join(dir, dbName)
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("compact spool: %w", err)
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer catchFault(&err)
	src, err := openIntact(path)
	if err != nil {
		return err
	}
	defer closeQuietly(src)
	tmp := path + ".compact"
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("compact spool: %w", err)
	}
	dst, err := bolt.Open(tmp, 0o600, boltOptions(true, false))
	if err != nil {
		return ioError("compact spool", err)
	}
	err = bolt.Compact(dst, src, 64<<20)
	if err == nil {
		err = dst.Sync()
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp) // the compaction error is the one to report
		return ioError("compact spool", err)
	}
	return syncDir(dir)
}

// openIntact opens the spool file at path for Compact, refusing it unless
// its pages, bbolt's own check and its schema version pass: copying a
// damaged file would hide the damage in a file bbolt calls sound.
func openIntact(path string) (*bolt.DB, error) {
	problems, err := checkPages(path, walkFull)
	if err != nil {
		return nil, fmt.Errorf("compact spool: %w", err)
	}
	if len(problems) > 0 {
		return nil, damaged(path, problems)
	}
	db, err := openDB(path, false, false)
	if err != nil {
		return nil, err
	}
	err = db.View(func(tx *bolt.Tx) error {
		if err := checkVersion(tx); err != nil {
			return err
		}
		for e := range tx.Check() {
			problems = append(problems, e.Error())
		}
		return nil
	})
	if err == nil && len(problems) > 0 {
		err = damaged(path, problems)
	}
	if err != nil {
		closeQuietly(db)
		return nil, err
	}
	return db, nil
}
