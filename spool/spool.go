package spool

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Names inside the spool directory.
const (
	dbName   = "spool.db"
	bodyDir  = "bodies"
	lockWait = time.Second // how long Open waits for another holder of the file
)

// maxRecipients is the most recipients one message may have: a
// recipient's index is 2 bytes in keys.
const maxRecipients = math.MaxUint16

// Spool is the durable queue. Only the daemon opens it.
type Spool struct {
	dir     string
	bodyDir string
	db      *bolt.DB
	opts    Options
	log     *slog.Logger
	obs     Observer

	// mu guards closed and sends on reqs: submitters hold it shared, Close
	// exclusively, so nobody sends on a closed channel.
	mu     sync.RWMutex
	closed bool
	reqs   chan *request
	done   chan struct{} // closed when the committer has exited

	// broken is set by the committer when a failed commit could not be
	// rolled back (see errBroken); Close then leaves the file alone, and
	// Err reports it to health checks.
	broken atomic.Bool

	// noFreelist is set when the last commit left the freelist out of the
	// file (by the committer, or by Open before it starts); Close reads it
	// after the committer exits.
	noFreelist bool

	// unclaiming counts Unclaim requests not yet answered by the
	// committer; NextDue waits for them.
	unclaiming atomic.Int64

	// relet holds the recipients whose lease an Unclaim could not end
	// (its commit failed: a full disk). Owned by the committer, which
	// tries again with every batch, and every second while it is idle, so
	// they cannot stay leased, and out of Claim's reach, until a restart.
	relet map[rkey]bool
}

// rkey names one recipient of one message.
type rkey struct {
	id   string
	rcpt int
}

// withDefaults fills the zero fields of o.
func withDefaults(o Options) Options {
	def := func(v *int64, d int64) {
		if *v == 0 {
			*v = d
		}
	}
	defInt := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.MaxMessageBytes, 50<<20)
	def(&o.MinFreeBytes, 100<<20)
	defInt(&o.InlineBodyBytes, 64<<10)
	defInt(&o.MaxAttemptLog, 20)
	defInt(&o.RetiredMaxCount, 100_000)
	defInt(&o.BounceBodyBytes, 64<<10)
	if o.RetiredMaxAge <= 0 {
		o.RetiredMaxAge = 7 * 24 * time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Observer == nil {
		o.Observer = nopObserver{}
	}
	return o
}

// boltOptions are the bbolt settings: the hash-map freelist (fast to
// allocate from in a large file), a bounded wait for the file lock, and
// fsync on every commit unless UnsafeNoSync. Whether a commit writes the
// freelist is decided per commit (see beginWrite).
func boltOptions(noSync, readOnly bool) *bolt.Options {
	return &bolt.Options{
		Timeout:         lockWait,
		FreelistType:    bolt.FreelistMapType,
		NoSync:          noSync,
		ReadOnly:        readOnly,
		InitialMmapSize: 256 << 20,
	}
}

// Open opens (creating if needed) the spool in dir: dir/spool.db and the
// body files under dir/bodies. It removes body files no envelope refers to.
// A damaged or truncated file is ErrCorrupt, one of an unknown schema
// ErrVersion, one another process holds ErrLocked.
func Open(dir string, opts Options) (*Spool, error) { return open(dir, opts, walkAuto) }

// open is Open, walking the file's pages first as mode says: tests leave
// out the tree (as Open does for a large file whose freelist was kept) to
// reach the protections behind the walk.
func open(dir string, opts Options, mode walkMode) (*Spool, error) {
	// Reading a damaged page must become ErrCorrupt, not a crash.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	s := &Spool{
		dir:     dir,
		bodyDir: filepath.Join(dir, bodyDir),
		opts:    withDefaults(opts),
		reqs:    make(chan *request, 256),
		done:    make(chan struct{}),
	}
	s.log, s.obs = s.opts.Logger, s.opts.Observer
	if err := makeDirs(dir, s.bodyDir); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, dbName)
	// What bbolt walks as it opens the file is walked here first. Another
	// holder of the file is waited for (as bbolt would) by walking again,
	// so that bbolt never opens a file that was not walked.
	problems, err := checkPages(path, mode)
	for deadline := time.Now().Add(lockWait); errors.Is(err, ErrLocked) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond) // a stopping daemon lets go soon
		problems, err = checkPages(path, mode)
	}
	if errors.Is(err, ErrLocked) {
		return nil, err // says which file
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if len(problems) > 0 {
		return nil, damaged(path, problems)
	}
	db, err := openDB(path, opts.UnsafeNoSync, false)
	if err != nil {
		return nil, err
	}
	s.db = db
	if err := s.start(); err != nil {
		if !s.broken.Load() {
			_ = db.Close() // the open error is the one to report
		}
		return nil, err
	}
	go s.commitLoop()
	return s, nil
}

// start checks the schema (creating it in a new file), gives back the
// leases an earlier process left and removes orphan body files.
func (s *Spool) start() error {
	if err := initSchema(s.db); err != nil {
		return err
	}
	if err := s.releaseLeases(); err != nil {
		return err
	}
	return s.removeOrphans()
}

// releaseLeases ends every lease in the file before the committer starts:
// they are due again at the times they committed. A file without leases
// is not written.
func (s *Spool) releaseLeases() error {
	r := newRequest(false, func(t *txn) error { return t.releaseLeases() })
	// Nothing is left to do after this commit (no body file to remove),
	// and the scheduler, not started yet, claims what is due when it starts.
	_, errs, err := s.tryBatch([]*request{r}, false)
	if err == nil {
		err = errs[0]
	}
	if err != nil {
		var abort abortError
		if errors.As(err, &abort) {
			err = abort.err
		}
		return fmt.Errorf("give back leases: %w", err)
	}
	return nil
}

// makeDirs creates the spool directory and its body directory, fsyncing
// the parents of any it made so the entries survive a crash.
func makeDirs(dir, bodies string) error {
	for _, d := range []string{dir, bodies} {
		if _, err := os.Stat(d); err == nil {
			continue
		}
		if err := os.MkdirAll(d, 0o700); err != nil {
			return ioError("create spool directory", err)
		}
		if err := syncDir(filepath.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}

// openDB opens the bbolt file and checks it is whole: bbolt validates the
// meta pages, and a file shorter than the meta page says was truncated.
func openDB(path string, noSync, readOnly bool) (db *bolt.DB, err error) {
	defer catchFault(&err)
	db, err = bolt.Open(path, 0o600, boltOptions(noSync, readOnly))
	if err != nil {
		return nil, openError(path, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		_ = db.Close() // reporting the stat error
		return nil, ioError("stat spool file", err)
	}
	var size int64
	if err := db.View(func(tx *bolt.Tx) error { size = tx.Size(); return nil }); err != nil {
		_ = db.Close() // reporting the view error
		return nil, openError(path, err)
	}
	if size > fi.Size() {
		_ = db.Close() // reporting the truncation
		return nil, corrupt("%s is truncated: %d bytes, its pages need %d", path, fi.Size(), size)
	}
	return db, nil
}

// initSchema creates the buckets and version of a new file, upgrades a
// version 1 file, or checks an existing file's version and buckets (in a
// read transaction: opening a current spool writes nothing here).
func initSchema(db *bolt.DB) (err error) {
	defer catchFault(&err)
	empty, old := false, false
	err = db.View(func(tx *bolt.Tx) error {
		if tx.Bucket([]byte(bucketMeta)) != nil {
			if v, err := fileVersion(tx); err == nil && v == 1 {
				old = true
				return nil
			}
			if err := checkVersion(tx); err != nil {
				return err
			}
			_, err := buckets(tx)
			return err
		}
		empty = true
		_ = tx.ForEach(func([]byte, *bolt.Bucket) error { empty = false; return nil })
		if !empty {
			return corrupt("bucket %q missing", bucketMeta)
		}
		return nil
	})
	switch {
	case err != nil:
		return err
	case empty:
		return db.Update(createSchema)
	case old:
		return db.Update(upgradeV1)
	}
	return nil
}

func createSchema(tx *bolt.Tx) error {
	for _, name := range allBuckets() {
		if _, err := tx.CreateBucket([]byte(name)); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	return tx.Bucket([]byte(bucketMeta)).Put([]byte(keyVersion), encodeVersion(schemaVersion))
}

// upgradeV1 brings a version 1 file to this version: it adds the leases
// bucket, empty (version 1 kept claims in memory only).
func upgradeV1(tx *bolt.Tx) error {
	if _, err := tx.CreateBucket([]byte(bucketLeases)); err != nil {
		return fmt.Errorf("upgrade spool: create bucket %s: %w", bucketLeases, err)
	}
	if err := tx.Bucket([]byte(bucketMeta)).Put([]byte(keyVersion), encodeVersion(schemaVersion)); err != nil {
		return fmt.Errorf("upgrade spool: %w", err)
	}
	_, err := buckets(tx)
	return err
}

// damaged is ErrCorrupt for a file whose pages checkPages found damaged.
func damaged(path string, problems []string) error {
	return corrupt("%s has damaged pages (%s, %d problems in all): run mta spool check", path, problems[0], len(problems))
}

// catchFault turns a panic or memory fault while reading a damaged file
// into ErrCorrupt. bbolt reads the file through a memory map and panics on
// pages it cannot make sense of; this is the one place those are caught.
func catchFault(err *error) {
	if r := recover(); r != nil {
		*err = corrupt("reading the spool file: %v", r)
	}
}

// view runs fn in a read transaction with the buckets of set open,
// turning faults into ErrCorrupt.
func (s *Spool) view(set bucketSet, fn func(tx *bolt.Tx, b bk) error) (err error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer catchFault(&err)
	return s.db.View(func(tx *bolt.Tx) error {
		b, err := openBuckets(tx, set)
		if err != nil {
			return err
		}
		return fn(tx, b)
	})
}

// Err is ErrCorrupt once a commit failed on a damaged page and could not be
// rolled back: every write is refused from then on, so the daemon is not
// healthy and must be stopped for mta spool check. Nil otherwise.
func (s *Spool) Err() error {
	if s.broken.Load() {
		return errBroken
	}
	return nil
}

// Close stops the committer after the waiting commits and closes the file.
// Calls after the first return nil.
func (s *Spool) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.reqs)
	s.mu.Unlock()
	<-s.done
	if s.broken.Load() {
		// bbolt's writer lock is held by the transaction that could not be
		// rolled back: closing the file would wait for it forever. The
		// process exiting releases it.
		return errBroken
	}
	if s.noFreelist {
		s.db.NoFreelistSync = false
		if err := s.db.Update(func(*bolt.Tx) error { return nil }); err != nil {
			// Only the freelist is lost: the next Open rebuilds it.
			s.log.Warn("write the spool's freelist at close", "err", err)
		}
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close spool file: %w", err)
	}
	return nil
}

// now is the spool's clock.
func (s *Spool) now() time.Time { return s.opts.Now() }

// syncDir fsyncs a directory so that entries made in it survive a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return ioError("open directory", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil && !errors.Is(err, os.ErrInvalid) {
		return ioError("sync directory "+dir, err)
	}
	return nil
}

// closeQuietly closes c when its error cannot matter (a read-only file).
func closeQuietly(c io.Closer) { _ = c.Close() } // read-only: nothing to lose
