package spool

// This file is the contract the rest of the project codes against. Every
// method here is a stub until the spool lands (issue 3): the spool work
// replaces these bodies and may move them into spool.go, due.go, body.go,
// commit.go, admin.go; the signatures and their meaning stay.

import (
	"context"
	"errors"
	"io"
	"time"
)

// Errors a caller branches on.
var (
	// ErrNoSpace: the disk is full or below Options.MinFreeBytes
	// (smtpd answers 452 4.3.1).
	ErrNoSpace = errors.New("spool: insufficient disk space")
	// ErrTooBig: the body passed Options.MaxMessageBytes (552 5.3.4).
	ErrTooBig = errors.New("spool: message too big")
	// ErrNotFound: no live or retired message has that ID.
	ErrNotFound = errors.New("spool: no such message")
	// ErrClosed: the spool is closed or shutting down (451 4.3.0).
	ErrClosed = errors.New("spool: closed")
	// ErrVersion: the file has a schema version this binary does not know.
	ErrVersion = errors.New("spool: unknown schema version")
	// ErrCorrupt: the file is damaged; `mta spool check` tells more.
	ErrCorrupt = errors.New("spool: file is corrupt")
)

var errStub = errors.New("spool: not built yet")

// Spool is the durable queue. Only the daemon opens it.
type Spool struct{}

// Open opens (creating if needed) the spool in dir: dir/spool.db and the
// body files under dir/bodies. It removes body files no envelope refers to.
func Open(dir string, opts Options) (*Spool, error) { return nil, errStub }

// Close stops the committer after the waiting commits and closes the file.
func (s *Spool) Close() error { return errStub }

// NewID returns a new unique message ID. IDs sort by creation time; they
// are safe in file names, log lines and SMTP replies.
func NewID() string { return "" }

// BodyWriter receives a message body as it arrives. Up to
// Options.InlineBodyBytes it buffers in memory; past that it streams to a
// body file, so the whole message is never held in memory.
type BodyWriter struct{}

// NewBody starts the body of message id.
func (s *Spool) NewBody(id string) (*BodyWriter, error) { return nil, errStub }

// Write appends p. It fails with ErrTooBig past MaxMessageBytes and with
// ErrNoSpace when the disk fills.
func (w *BodyWriter) Write(p []byte) (int, error) { return 0, errStub }

// Size is the number of octets written so far.
func (w *BodyWriter) Size() int64 { return 0 }

// Abort discards the body (removes its file). Safe after Enqueue failed.
func (w *BodyWriter) Abort() error { return errStub }

// Enqueue stores envelope and body durably: it returns nil only after the
// commit that holds them is fsynced (and the body file and its directory
// before it). Every recipient starts Pending, due at once.
func (s *Spool) Enqueue(ctx context.Context, id string, env *Envelope, body *BodyWriter) error {
	return errStub
}

// Claim takes up to limit recipients due at now (NextAttempt ≤ now, not
// held, not final, not already claimed) and, before returning, commits for
// each a NextAttempt of lease(task): the time it is due again if the
// attempt never reports (a crash). A claimed recipient is not returned
// again until its result is recorded or it is unclaimed.
func (s *Spool) Claim(ctx context.Context, now time.Time, limit int, lease func(Task) time.Time) ([]Task, error) {
	return nil, errStub
}

// Unclaim gives claimed tasks back without a result; they keep the
// NextAttempt their claim committed.
func (s *Spool) Unclaim(tasks []Task) {}

// NextDue is the earliest NextAttempt among unclaimed, unheld, live
// recipients; ok is false when there is none.
func (s *Spool) NextDue() (t time.Time, ok bool, err error) { return time.Time{}, false, errStub }

// Record commits results (and the messages they cause) in one group commit.
// When a message's recipients are all final, the same transaction retires
// it (envelope, states and attempt logs move to the retired records),
// enqueues the DSN Options.Bounce builds for it, and its body is deleted.
func (s *Spool) Record(ctx context.Context, u Update) error { return errStub }

// Message returns a live or retired message with every recipient's state
// and attempt log.
func (s *Spool) Message(id string) (*Message, error) { return nil, errStub }

// Body opens the body of a live message.
func (s *Spool) Body(id string) (io.ReadCloser, error) { return nil, errStub }

// List returns up to limit live messages matching f, in ID order after the
// cursor after ("" starts at the beginning), and the cursor of the next
// page ("" at the end). Each page is one short read transaction.
func (s *Spool) List(ctx context.Context, f Filter, after string, limit int) ([]Message, string, error) {
	return nil, "", errStub
}

// Counts returns the totals by state and by destination domain.
func (s *Spool) Counts() (Counts, error) { return Counts{}, errStub }

// Retry makes the deferred (and pending) recipients of message id due at
// now; id "" means every message. It returns how many recipients moved.
func (s *Spool) Retry(ctx context.Context, id string, now time.Time) (int, error) { return 0, errStub }

// Hold stops delivery of message id's live recipients until Release.
func (s *Spool) Hold(ctx context.Context, id string) error { return errStub }

// Release makes a held message's recipients due again at their
// NextAttempt (or now, if that passed).
func (s *Spool) Release(ctx context.Context, id string) error { return errStub }

// Delete removes a live message. With bounce, its live recipients fail
// with reason and Options.Bounce may owe the sender a DSN; without, the
// message is retired silently (the record says it was deleted).
func (s *Spool) Delete(ctx context.Context, id string, bounce bool, reason string) error {
	return errStub
}

// CheckReport is what an offline consistency check found.
type CheckReport struct {
	Messages int
	Problems []string
}

// Check verifies the spool in dir offline (the daemon must be stopped):
// every due entry points at a live recipient, counters match, no body file
// is orphaned or missing.
func Check(dir string) (CheckReport, error) { return CheckReport{}, errStub }

// Compact rewrites the spool file in dir offline to reclaim free pages.
func Compact(dir string) error { return errStub }
