package spool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
)

// fileChunk is how much a file body buffers between writes; writeBehind
// is how much written data may wait for the disk before Write waits for
// it. Pacing a large body this way keeps its final fsync short, and keeps
// the device queue short for the committer's fsyncs that run beside it.
const (
	fileChunk   = 64 << 10
	writeBehind = 128 << 10
)

// firstBufBytes is the buffer a body starts with (or InlineBodyBytes when
// smaller): most messages fit, so their lines are appended without the
// buffer growing and being copied a dozen times on the way.
const firstBufBytes = 4 << 10

// BodyWriter receives a message body as it arrives. Up to
// Options.InlineBodyBytes it buffers in memory; past that it streams to a
// body file, so the whole message is never held in memory. It is not safe
// for concurrent use.
type BodyWriter struct {
	s       *Spool
	id      string
	buf     []byte
	f       *os.File // nil while the body fits inline
	size    int64
	flushed int64 // bytes written to the file
	settled int64 // bytes known to be on disk (write-behind)
	has8Bit bool
	err     error // sticky: the first write failure
	// synced: the file (if any) is complete, fsynced and closed.
	// committed: an Enqueue stored it; Abort no longer touches it.
	synced, committed, aborted bool
}

// NewBody starts the body of message id.
func (s *Spool) NewBody(id string) (*BodyWriter, error) {
	if !validID(id) {
		return nil, fmt.Errorf("%w: message id %q", ErrInvalid, id)
	}
	s.mu.RLock()
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		return nil, ErrClosed
	}
	return &BodyWriter{s: s, id: id}, nil
}

// Write appends p. It fails with ErrTooBig past MaxMessageBytes and with
// ErrNoSpace when the disk fills.
func (w *BodyWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.synced || w.aborted {
		return 0, fmt.Errorf("%w: write to a finished body", ErrInvalid)
	}
	if max := w.s.opts.MaxMessageBytes; max > 0 && w.size+int64(len(p)) > max {
		w.err = fmt.Errorf("%w: more than %d bytes", ErrTooBig, max)
		return 0, w.err
	}
	if !w.has8Bit {
		w.has8Bit = has8Bit(p)
	}
	if w.f == nil && len(w.buf)+len(p) > w.s.opts.InlineBodyBytes {
		if err := w.spill(); err != nil {
			w.err = err
			return 0, err
		}
	}
	if w.buf == nil {
		w.buf = make([]byte, 0, max(len(p), min(firstBufBytes, w.s.opts.InlineBodyBytes)))
	}
	w.buf = append(w.buf, p...)
	w.size += int64(len(p))
	if w.f != nil && len(w.buf) >= fileChunk {
		if err := w.flush(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// has8Bit reports whether p has an octet above 127, eight at a time.
func has8Bit(p []byte) bool {
	for len(p) >= 8 {
		if binary.LittleEndian.Uint64(p)&0x8080808080808080 != 0 {
			return true
		}
		p = p[8:]
	}
	for _, c := range p {
		if c >= 0x80 {
			return true
		}
	}
	return false
}

// spill moves the body to its file once it outgrows memory.
func (w *BodyWriter) spill() error {
	if w.s.lowSpace() {
		return fmt.Errorf("%w: free space below %d bytes", ErrNoSpace, w.s.opts.MinFreeBytes)
	}
	f, err := os.OpenFile(w.s.bodyPath(w.id), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%w: body file of %s exists", ErrDuplicate, w.id)
		}
		return ioError("create body file", err)
	}
	w.f = f
	return nil
}

// flush writes the buffer to the file and starts its writeback; once more
// than writeBehind is in flight, it waits for the older part.
func (w *BodyWriter) flush() error {
	if _, err := w.f.Write(w.buf); err != nil {
		w.err = ioError("write body file", err)
		return w.err
	}
	if !w.s.opts.UnsafeNoSync {
		startWriteback(w.f, w.flushed, int64(len(w.buf)))
	}
	w.flushed += int64(len(w.buf))
	w.buf = w.buf[:0]
	if !w.s.opts.UnsafeNoSync && w.flushed-w.settled > writeBehind {
		waitWriteback(w.f, w.settled, w.flushed-writeBehind/2-w.settled)
		w.settled = w.flushed - writeBehind/2
	}
	return nil
}

// Size is the number of octets written so far.
func (w *BodyWriter) Size() int64 { return w.size }

// Has8Bit reports whether the body so far has an octet above 127.
func (w *BodyWriter) Has8Bit() bool { return w.has8Bit }

// finish makes a file body durable: the rest written, the file fsynced and
// closed, the directory entry fsynced. It runs in the caller's goroutine,
// so large bodies are synced in parallel and never hold up the committer.
func (w *BodyWriter) finish() error {
	if w.err != nil {
		return w.err
	}
	if w.aborted || w.committed {
		return fmt.Errorf("%w: body of %s already aborted or enqueued", ErrInvalid, w.id)
	}
	if w.synced || w.f == nil {
		w.synced = true
		return nil
	}
	if len(w.buf) > 0 {
		if err := w.flush(); err != nil {
			return err
		}
	}
	w.buf = nil
	if !w.s.opts.UnsafeNoSync {
		if err := w.f.Sync(); err != nil {
			w.err = ioError("sync body file", err)
			return w.err
		}
	}
	if err := w.f.Close(); err != nil {
		w.err = ioError("close body file", err)
		return w.err
	}
	w.synced = true
	if w.s.opts.UnsafeNoSync {
		return nil
	}
	if err := syncDir(w.s.bodyDir); err != nil {
		w.err = err
		return err
	}
	return nil
}

// Abort discards the body (removes its file). Safe after Enqueue failed,
// and a no-op after Enqueue succeeded, so `defer w.Abort()` is the way to
// use it.
func (w *BodyWriter) Abort() error {
	if w.committed || w.aborted {
		return nil
	}
	w.aborted = true
	w.buf = nil
	if w.f == nil {
		return nil
	}
	if !w.synced {
		_ = w.f.Close() // the file is being removed
	}
	if err := os.Remove(w.s.bodyPath(w.id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove body file: %w", err)
	}
	return nil
}

func (s *Spool) bodyPath(id string) string { return filepath.Join(s.bodyDir, id) }

// Body opens the body of a live message.
func (s *Spool) Body(id string) (io.ReadCloser, error) {
	if !validID(id) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	var inline []byte
	var file bool
	err := s.view(setMsgs|setBodies, func(_ *bolt.Tx, b bk) error {
		v := b.msgs.Get([]byte(id))
		if v == nil {
			return fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		var err error
		if file, err = envFile(v); err != nil || file {
			return err
		}
		inline, err = inlineBody(b, id)
		return err
	})
	if err != nil {
		return nil, err
	}
	return s.openBody(id, file, inline)
}

// inlineBody copies the inline body of live message id out of the
// transaction.
func inlineBody(b bk, id string) ([]byte, error) {
	body := b.bodies.Get([]byte(id))
	if body == nil {
		return nil, corrupt("message %s: body missing", id)
	}
	return bytes.Clone(body), nil
}

// openBody is a reader of message id's body: inline, or its file.
func (s *Spool) openBody(id string, file bool, inline []byte) (io.ReadCloser, error) {
	if !file {
		return io.NopCloser(bytes.NewReader(inline)), nil
	}
	f, err := os.Open(s.bodyPath(id))
	if errors.Is(err, os.ErrNotExist) {
		// Retired between the lookup and the open.
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("open body of %s: %w", id, err)
	}
	return f, nil
}

// bodyPrefix reads the first n bytes of a live message's body inside a
// transaction (for Options.Bounce).
func (t *txn) bodyPrefix(id string, file bool, n int) ([]byte, error) {
	if !file {
		body := t.bodies.Get([]byte(id))
		return bytes.Clone(body[:min(n, len(body))]), nil
	}
	f, err := os.Open(t.s.bodyPath(id))
	if err != nil {
		return nil, fmt.Errorf("open body of %s: %w", id, err)
	}
	defer closeQuietly(f)
	buf := make([]byte, n)
	m, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read body of %s: %w", id, err)
	}
	return buf[:m], nil
}

// removeOrphans deletes body files that no live message refers to: left
// by a crash between writing a body and committing its envelope, or
// between retiring a message and removing its file.
func (s *Spool) removeOrphans() (err error) {
	entries, err := os.ReadDir(s.bodyDir)
	if err != nil {
		return ioError("read body directory", err)
	}
	if len(entries) == 0 {
		return nil
	}
	var orphans []string
	defer catchFault(&err)
	err = s.db.View(func(tx *bolt.Tx) error {
		b, err := buckets(tx)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if !isLiveFile(b, e.Name()) {
				orphans = append(orphans, e.Name())
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, name := range orphans {
		s.log.Info("removing orphan body file", "msg_id", name)
		if err := os.RemoveAll(filepath.Join(s.bodyDir, name)); err != nil {
			return fmt.Errorf("remove orphan body file: %w", err)
		}
	}
	return nil
}

// isLiveFile reports whether name is the body file of a live message.
func isLiveFile(b bk, name string) bool {
	if !validID(name) {
		return false
	}
	v := b.msgs.Get([]byte(name))
	if v == nil {
		return false
	}
	file, err := envFile(v)
	return err == nil && file
}

// lowSpace reports whether the spool's file system has less free space
// than Options.MinFreeBytes (a negative minimum turns the check off).
func (s *Spool) lowSpace() bool {
	if s.opts.MinFreeBytes < 0 {
		return false
	}
	free, ok := freeBytes(s.dir)
	return ok && free < s.opts.MinFreeBytes
}
