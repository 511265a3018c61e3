package spool

import "time"

// Observer receives the spool's measurements; cmd/mta adapts it to
// Prometheus. Calls come from the committer goroutine and must not block.
type Observer interface {
	// Committed is called after each write transaction: how many
	// operations it carried (enqueues, results, claims, admin operations),
	// how long it took from its start to the end of its fsync, and its
	// error (nil when it committed). A batch that changed nothing is
	// rolled back and reported with ops but no fsync.
	Committed(c Commit)
}

// Commit describes one write transaction.
type Commit struct {
	Ops      int
	Synced   bool // the transaction was committed (and fsynced unless UnsafeNoSync)
	Duration time.Duration
	Err      error
}

type nopObserver struct{}

func (nopObserver) Committed(Commit) {}
