package spool

import (
	"errors"
	"fmt"
	"strings"
	"syscall"

	berrors "go.etcd.io/bbolt/errors"
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
	// ErrDuplicate: a live or retired message already has that ID.
	ErrDuplicate = errors.New("spool: message id already used")
	// ErrInvalid: a malformed ID, envelope, body writer or result (a bug in
	// the caller, not a condition to retry).
	ErrInvalid = errors.New("spool: invalid argument")
	// ErrLocked: another process holds the spool file (the daemon is
	// running, or a second daemon was started on the same directory).
	ErrLocked = errors.New("spool: in use by another process")
)

// cleanError marks an error an operation returned before it changed
// anything in the transaction, so the rest of the batch may still commit.
type cleanError struct{ err error }

func (e cleanError) Error() string { return e.err.Error() }
func (e cleanError) Unwrap() error { return e.err }

// clean wraps err as a cleanError.
func clean(err error) error { return cleanError{err} }

// corrupt is ErrCorrupt with context.
func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
}

// ioError maps a storage error to the sentinel a caller branches on: a
// full disk (or file system quota) is ErrNoSpace.
func ioError(context string, err error) error {
	if err == nil {
		return nil
	}
	// bbolt formats some file errors with %s, losing the errno: match its
	// text too.
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) ||
		errors.Is(err, berrors.ErrMaxSizeReached) || strings.Contains(err.Error(), syscall.ENOSPC.Error()) {
		return fmt.Errorf("%s: %w (%w)", context, ErrNoSpace, err)
	}
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return fmt.Errorf("%s: %w", context, ErrClosed)
	}
	// The spool's data buckets hold values only: a nested bucket where a
	// value is read, written or deleted is a damaged page.
	if errors.Is(err, berrors.ErrIncompatibleValue) {
		return fmt.Errorf("%s: %w (%w)", context, ErrCorrupt, err)
	}
	return fmt.Errorf("%s: %w", context, err)
}

// openError maps what bbolt says about a file it cannot open.
func openError(path string, err error) error {
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return fmt.Errorf("open %s: %w", path, ErrLocked)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum),
		errors.Is(err, berrors.ErrVersionMismatch), errors.Is(err, berrors.ErrInvalidMapping):
		return fmt.Errorf("open %s: %w (%w)", path, ErrCorrupt, err)
	}
	return ioError("open "+path, err)
}
