package spool

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"
)

// maxBatch bounds how many waiting operations one transaction carries, so
// that one commit's latency stays bounded under any load.
const maxBatch = 1024

// request is one operation waiting for the committer. apply runs inside a
// write transaction and must have no side effects outside it: it may run
// more than once (see runBatch), and anything to do after the commit goes
// into the txn's effects. Results for the caller are assigned (not
// appended) by apply, so a second run overwrites the first.
type request struct {
	apply func(t *txn) error
	// enqueue marks a new message from outside, refused when space is low.
	enqueue bool
	// async marks a request nobody waits for (Unclaim): answering it
	// lowers Spool.unclaiming.
	async bool
	// unlease lists the recipients an Unclaim gives back; when its commit
	// fails they go to Spool.relet.
	unlease []rkey
	done    chan error
}

func newRequest(enqueue bool, apply func(t *txn) error) *request {
	return &request{apply: apply, enqueue: enqueue, done: make(chan error, 1)}
}

// submit hands r to the committer and waits for its answer. Once handed
// over, the operation runs to the end whatever the caller's context says:
// its outcome must be known.
func (s *Spool) submit(r *request) error {
	if err := s.send(r); err != nil {
		return err
	}
	return <-r.done
}

// send hands r to the committer without waiting for its answer.
func (s *Spool) send(r *request) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	s.reqs <- r
	return nil
}

// answer gives r its outcome.
func (s *Spool) answer(r *request, err error) {
	r.done <- err
	if r.async {
		s.unclaiming.Add(-1)
	}
}

// commitLoop is the committer: the one goroutine that writes. It takes
// whatever operations are waiting (group commit: no timer, the batch is
// what queued while the previous commit was being fsynced), applies them in
// one transaction, fsyncs once and answers each caller.
func (s *Spool) commitLoop() {
	defer close(s.done)
	// Reading a damaged page must become an error, not a crash.
	debug.SetPanicOnFault(true)
	batch := make([]*request, 0, maxBatch+1)
	for {
		var retry <-chan time.Time
		if len(s.relet) > 0 && !s.broken.Load() {
			retry = time.After(reletRetry)
		}
		batch = batch[:0]
		select {
		case r, ok := <-s.reqs:
			if !ok {
				return // leases still held are given back at the next Open
			}
			batch = append(batch, r)
		case <-retry:
		}
	drain:
		for len(batch) < maxBatch {
			select {
			case r, ok := <-s.reqs:
				if !ok {
					break drain
				}
				batch = append(batch, r)
			default:
				break drain
			}
		}
		if r := s.reletRequest(); r != nil {
			batch = append(batch, r)
		}
		s.runBatch(batch)
		clear(batch)
	}
}

// reletRetry is how often the committer, when idle, tries again to end
// leases a failed commit left.
const reletRetry = time.Second

// reletRequest is an unlease of every recipient in s.relet, or nil.
func (s *Spool) reletRequest() *request {
	if len(s.relet) == 0 {
		return nil
	}
	keys := make([]rkey, 0, len(s.relet))
	for k := range s.relet {
		keys = append(keys, k)
	}
	clear(s.relet)
	r := newRequest(false, func(t *txn) error { return t.unlease(keys) })
	r.unlease = keys
	return r
}

// keepUnleased remembers the recipients of a failed unlease.
func (s *Spool) keepUnleased(r *request) {
	if len(r.unlease) == 0 {
		return
	}
	if s.relet == nil {
		s.relet = make(map[rkey]bool)
	}
	for _, k := range r.unlease {
		s.relet[k] = true
	}
}

// runBatch commits batch in one transaction. An operation that fails
// cleanly (before changing anything) gets its error and the others still
// commit; one that fails after changing something spoils the transaction,
// so the batch is rolled back and each operation is run alone.
func (s *Spool) runBatch(batch []*request) {
	lowSpace := false
	for _, r := range batch {
		if r.enqueue {
			lowSpace = s.lowSpace()
			break
		}
	}
	start := time.Now()
	t, errs, err := s.tryBatch(batch, lowSpace)
	var abort abortError
	if errors.As(err, &abort) && len(batch) > 1 && !s.broken.Load() {
		s.log.Warn("spool batch rolled back, committing its operations one by one", "err", err)
		for _, r := range batch {
			s.runBatch([]*request{r})
		}
		return
	}
	s.obs.Committed(Commit{Ops: len(batch), Synced: err == nil && t.dirty, Duration: time.Since(start), Err: err})
	if err != nil {
		if errors.As(err, &abort) {
			err = abort.err
		}
		s.log.Error("spool commit", "err", err)
		for _, r := range batch {
			s.keepUnleased(r)
			s.answer(r, err)
		}
		return
	}
	s.afterCommit(t)
	for i, r := range batch {
		s.answer(r, errs[i])
	}
}

// abortError is an operation's failure that spoils the transaction.
type abortError struct{ err error }

func (e abortError) Error() string { return e.err.Error() }
func (e abortError) Unwrap() error { return e.err }

// tryBatch applies batch in one transaction and commits it. errs holds
// each operation's clean error; err is what stopped the whole batch.
func (s *Spool) tryBatch(batch []*request, lowSpace bool) (t *txn, errs []error, err error) {
	if s.broken.Load() {
		return nil, nil, errBroken
	}
	var tx *bolt.Tx
	defer func() {
		if r := recover(); r != nil {
			t, errs, err = nil, nil, abortError{corrupt("applying operations: %v", r)}
			if tx != nil && !rollbackAfterPanic(tx) {
				s.broken.Store(true)
				s.log.Error("spool file damaged: a commit and its rollback failed; refusing every write until restart", "err", r)
				err = errBroken
			}
		}
	}()
	tx, err = s.beginWrite()
	if err != nil {
		return nil, nil, err
	}
	b, err := buckets(tx)
	if err != nil {
		_ = tx.Rollback() // reporting the damage
		return nil, nil, err
	}
	t = newTxn(s, tx, b)
	errs = make([]error, len(batch))
	for i, r := range batch {
		if r.enqueue && lowSpace {
			errs[i] = fmt.Errorf("%w: free space below %d bytes", ErrNoSpace, s.opts.MinFreeBytes)
			continue
		}
		e := r.apply(t)
		var ce cleanError
		if e != nil && !errors.As(e, &ce) {
			_ = tx.Rollback() // the operation's error is the one to report
			return nil, nil, abortError{e}
		}
		errs[i] = e
	}
	if err := t.finish(); err != nil {
		_ = tx.Rollback() // the finishing error is the one to report
		return nil, nil, abortError{err}
	}
	if !t.dirty {
		return t, errs, tx.Rollback()
	}
	if err := tx.Commit(); err != nil {
		return nil, nil, ioError("commit", err)
	}
	s.noFreelist = s.db.NoFreelistSync
	return t, errs, nil
}

// errBroken answers every write once a commit has failed in a way bbolt
// cannot roll back (a damaged page met while writing): its writer lock is
// still held, so nothing more can be written until the process restarts,
// and the file needs checking first.
var errBroken = corrupt("a commit failed on a damaged page and could not be rolled back: stop the daemon and run mta spool check")

// rollbackAfterPanic rolls back tx after a panic inside it. It reports
// false when the rollback panicked too (bbolt's freelist disagreeing with
// the damaged pages), which leaves the transaction, and bbolt's writer
// lock, open for good.
func rollbackAfterPanic(tx *bolt.Tx) (ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	_ = tx.Rollback() // the panic is the error to report
	return true
}

// freelistSyncPages is how many free pages bbolt's freelist may list for
// commits to write it. bbolt writes the whole freelist in every commit
// that keeps it in the file, 8 bytes per free page, sorted first: once a
// large queue has drained, that is megabytes per commit. Past this size
// commits leave it out (Close writes it), and after a crash Open rebuilds
// it by walking the pages in use: cheap while they are few, and when they
// are many the file has grown to hold them, so few pages are free.
const freelistSyncPages = 1024

// beginWrite starts a write transaction, first deciding whether its commit
// writes the freelist.
func (s *Spool) beginWrite() (*bolt.Tx, error) {
	st := s.db.Stats()
	s.db.NoFreelistSync = st.FreePageN+st.PendingPageN > freelistSyncPages
	tx, err := s.db.Begin(true)
	if err != nil {
		return nil, ioError("begin transaction", err)
	}
	return tx, nil
}

// afterCommit carries out what the committed transaction left to do:
// body files of retired messages, log lines, the due kick.
func (s *Spool) afterCommit(t *txn) {
	for _, id := range t.removeFiles {
		if err := os.Remove(s.bodyPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
			// Open removes it as an orphan next time.
			s.log.Warn("remove body file of retired message", "msg_id", id, "err", err)
		}
	}
	for _, k := range t.stale {
		s.log.Info("result for a recipient that is final or gone, ignored", "msg_id", k.id, "rcpt", k.rcpt)
	}
	if t.dueNow && s.opts.OnDue != nil {
		s.opts.OnDue()
	}
}

// txn is one write transaction of the committer, with the counter changes
// and after-commit effects its operations collect.
type txn struct {
	bk
	s   *Spool
	tx  *bolt.Tx
	now time.Time

	delta  [numCounters]int64
	domain map[string]*[3]int64 // pending, deferred, held changes by domain
	dirty  bool                 // something was written

	removeFiles []string // body files of messages it retired
	dueNow      bool     // it made a recipient due now (or gave claims back)
	stale       []rkey   // results it ignored, logged after the commit
}

// appendFill is the page fill for buckets whose keys are mostly added at
// the end (message IDs and due times grow with time): bbolt's default of
// one half would leave every page of them half empty.
const appendFill = 0.9

func newTxn(s *Spool, tx *bolt.Tx, b bk) *txn {
	for _, bucket := range []*bolt.Bucket{b.msgs, b.rcpts, b.attempts, b.bodies, b.due, b.retired, b.retiredAt} {
		bucket.FillPercent = appendFill
	}
	return &txn{bk: b, s: s, tx: tx, now: s.now(), domain: make(map[string]*[3]int64)}
}

// put and del write through the txn so it knows it is dirty; their errors
// spoil the transaction.
func (t *txn) put(b *bolt.Bucket, k, v []byte) error {
	t.dirty = true
	if err := b.Put(k, v); err != nil {
		return abortError{ioError("put", err)}
	}
	return nil
}

func (t *txn) del(b *bolt.Bucket, k []byte) error {
	t.dirty = true
	if err := b.Delete(k); err != nil {
		return abortError{ioError("delete", err)}
	}
	return nil
}

// counter is a counter's value in this transaction.
func (t *txn) counter(c counter) (int64, error) {
	v, err := getUint64(t.counters.Get(c.key()))
	return v + t.delta[c], err
}

// finish writes the counter changes and keeps the retired records in
// their bounds.
func (t *txn) finish() error {
	if err := t.pruneRetired(); err != nil {
		return err
	}
	for c := counter(0); c < numCounters; c++ {
		if t.delta[c] == 0 {
			continue
		}
		v, err := getUint64(t.counters.Get(c.key()))
		if err != nil {
			return err
		}
		if err := t.put(t.counters, c.key(), putUint64(v+t.delta[c])); err != nil {
			return err
		}
	}
	for d, delta := range t.domain {
		if *delta == ([3]int64{}) {
			continue
		}
		if err := t.addDomain(d, delta); err != nil {
			return err
		}
	}
	return nil
}

// addDomain adds delta to a domain's counter record.
func (t *txn) addDomain(d string, delta *[3]int64) error {
	var c [3]int64
	if v := t.domains.Get([]byte(d)); v != nil {
		var err error
		if c, err = decodeDomainCount(v); err != nil {
			return err
		}
	}
	for i := range c {
		c[i] += delta[i]
	}
	if c == ([3]int64{}) {
		return t.del(t.domains, []byte(d))
	}
	return t.put(t.domains, []byte(d), encodeDomainCount(c))
}
