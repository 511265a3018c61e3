package spool

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// clock is a settable clock for Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

// testLogger writes to the test's output.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// openSpool opens a spool in a new directory. When the test ends it is
// closed and checked offline: any inconsistency fails the test.
func openSpool(t testing.TB, opts Options) (*Spool, string) {
	t.Helper()
	dir := t.TempDir()
	return openIn(t, dir, opts), dir
}

// openIn opens the spool in dir, with the same end-of-test check.
func openIn(t testing.TB, dir string, opts Options) *Spool {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		checkClean(t, dir)
	})
	return s
}

// checkClean fails the test when Check finds a problem in dir.
func checkClean(t testing.TB, dir string) {
	t.Helper()
	rep, err := Check(dir)
	if err != nil {
		t.Errorf("Check: %v", err)
		return
	}
	for _, p := range rep.Problems {
		t.Errorf("Check: %s", p)
	}
}

// verifyNow checks a running spool between operations.
func verifyNow(t testing.TB, s *Spool) {
	t.Helper()
	for _, p := range s.verify() {
		t.Errorf("verify: %s", p)
	}
}

// envelope is a message from sender to rcpts, each with its domain.
func envelope(sender string, rcpts ...string) *Envelope {
	env := &Envelope{Sender: sender, Origin: Origin{Listener: "submission", ClientIP: "192.0.2.1", HELO: "client.test", UID: -1}}
	for _, r := range rcpts {
		env.Recipients = append(env.Recipients, Recipient{Addr: r, Domain: strings.ToLower(r[strings.LastIndexByte(r, '@')+1:])})
	}
	return env
}

// bodyOf is a deterministic body of n bytes for id.
func bodyOf(id string, n int) []byte {
	var b bytes.Buffer
	b.WriteString("Subject: " + id + "\r\n\r\n")
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "%s line %d\r\n", id, i)
	}
	return b.Bytes()[:n]
}

// enqueue stores a message with body, writing it in small chunks as DATA
// would arrive.
func enqueue(t testing.TB, s *Spool, env *Envelope, body []byte) string {
	t.Helper()
	id := NewID()
	if err := tryEnqueue(s, id, env, body); err != nil {
		t.Fatalf("Enqueue %s: %v", id, err)
	}
	return id
}

func tryEnqueue(s *Spool, id string, env *Envelope, body []byte) error {
	w, err := s.NewBody(id)
	if err != nil {
		return err
	}
	defer func() { _ = w.Abort() }() // no-op once enqueued
	for p := body; len(p) > 0; {
		n := min(len(p), 1000)
		if _, err := w.Write(p[:n]); err != nil {
			return err
		}
		p = p[n:]
	}
	return s.Enqueue(context.Background(), id, env, w)
}

// message reads a message or fails the test.
func message(t testing.TB, s *Spool, id string) *Message {
	t.Helper()
	m, err := s.Message(id)
	if err != nil {
		t.Fatalf("Message(%s): %v", id, err)
	}
	return m
}

// readBody reads a live message's body.
func readBody(t testing.TB, s *Spool, id string) []byte {
	t.Helper()
	r, err := s.Body(id)
	if err != nil {
		t.Fatalf("Body(%s): %v", id, err)
	}
	defer func() { _ = r.Close() }() // read-only
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read body of %s: %v", id, err)
	}
	return b
}

// claimAll claims everything due at now with the lease at now+d.
func claimAll(t testing.TB, s *Spool, now time.Time, d time.Duration) []Task {
	t.Helper()
	tasks, err := s.Claim(t.Context(), now, 1000, func(Task) time.Time { return now.Add(d) })
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	return tasks
}

// record commits results or fails the test.
func record(t testing.TB, s *Spool, results ...Result) {
	t.Helper()
	if err := s.Record(t.Context(), Update{Results: results}); err != nil {
		t.Fatalf("Record: %v", err)
	}
}

// result is an attempt outcome for one recipient.
func result(id string, rcpt int, st State, at time.Time, next time.Time) Result {
	code, enh := 250, "2.0.0"
	switch st {
	case Deferred:
		code, enh = 451, "4.4.1"
	case Failed:
		code, enh = 550, "5.1.1"
	}
	return Result{ID: id, Rcpt: rcpt, State: st, NextAttempt: next, Attempt: Attempt{
		Time: at, Host: "mx.example.test", IP: "192.0.2.25", TLS: "none", Phase: "rcpt",
		Code: code, Enhanced: enh, Text: st.String(), Duration: time.Second,
	}}
}
