package spool

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	berrors "go.etcd.io/bbolt/errors"
)

func TestNewID(t *testing.T) {
	const n = 20000
	seen := make(map[string]bool, n)
	prev := ""
	for range n {
		id := NewID()
		if len(id) != idTimeChars+idRandChars || !validID(id) {
			t.Fatalf("NewID() = %q: not a valid 25-character ID", id)
		}
		if strings.Trim(id, idAlphabet) != "" {
			t.Fatalf("NewID() = %q: outside the alphabet", id)
		}
		if seen[id] {
			t.Fatalf("NewID() repeated %q", id)
		}
		seen[id] = true
		if id[:idTimeChars] < prev {
			t.Fatalf("NewID() = %q sorts before the previous time part %q", id, prev)
		}
		prev = id[:idTimeChars]
	}
}

func TestValidID(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"01jh2k3m4n5p6q7r8s9tvwxyz0", true},
		{"DSN-abc_1", true},
		{"", false},
		{"../etc", false},
		{"a/b", false},
		{".hidden", false},
		{"a\x00b", false},
		{"a b", false},
		{strings.Repeat("a", 65), false},
	} {
		if got := validID(tc.id); got != tc.ok {
			t.Errorf("validID(%q) = %v, want %v", tc.id, got, tc.ok)
		}
	}
}

func TestEnqueue(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int
		file bool
	}{
		{"empty body", 0, false},
		{"small body inline", 2048, false},
		{"64 KiB inline", 64 << 10, false},
		{"one byte past inline goes to a file", 64<<10 + 1, true},
		{"large body streams to a file", 3 << 20, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newClock()
			s, dir := openSpool(t, Options{Now: clk.Now})
			env := envelope("alice@origin.test", "bob@dest.example", "carol@Other.Example")
			env.EnvID = "env-1"
			env.Ret = RetHeaders
			env.SMTPUTF8 = true
			env.Origin.AuthUser, env.Origin.UID = "alice", 1000
			env.Recipients[0].Notify = NotifyFailure | NotifyDelay
			env.Recipients[0].ORcpt = "rfc822;bob@dest.example"
			body := bodyOf("m", tc.size)
			id := enqueue(t, s, env, body)

			m := message(t, s, id)
			if m.Retired || m.ID != id {
				t.Errorf("message %+v: want live %s", m, id)
			}
			e := m.Envelope
			if e.Sender != env.Sender || e.EnvID != "env-1" || e.Ret != RetHeaders || e.Size != int64(tc.size) ||
				!e.Arrival.Equal(clk.Now()) || e.Origin != env.Origin || e.Has8Bit || !e.SMTPUTF8 || e.DSN {
				t.Errorf("stored envelope %+v, want %+v with size %d arrival %v", e, env, tc.size, clk.Now())
			}
			if len(e.Recipients) != 2 {
				t.Fatalf("stored %d recipients, want 2", len(e.Recipients))
			}
			r := e.Recipients[0]
			if r.Addr != "bob@dest.example" || r.Domain != "dest.example" || r.Notify != NotifyFailure|NotifyDelay ||
				r.ORcpt != "rfc822;bob@dest.example" || r.State != Pending || !r.NextAttempt.Equal(clk.Now()) || r.Held {
				t.Errorf("stored recipient %+v", r)
			}
			if got := readBody(t, s, id); !bytes.Equal(got, body) {
				t.Errorf("Body: %d bytes, want the %d stored", len(got), len(body))
			}
			checkLoad(t, s, m, body)
			_, err := os.Stat(filepath.Join(dir, "bodies", id))
			if hasFile := err == nil; hasFile != tc.file {
				t.Errorf("body file exists: %v, want %v", hasFile, tc.file)
			}
			verifyNow(t, s)
		})
	}
}

// checkLoad checks that Load gives live message want (without attempt
// logs) and its body.
func checkLoad(t *testing.T, s *Spool, want *Message, body []byte) {
	t.Helper()
	m, r, err := s.Load(want.ID)
	if err != nil {
		t.Fatalf("Load(%s): %v", want.ID, err)
	}
	got, err := io.ReadAll(r)
	if cerr := r.Close(); err == nil {
		err = cerr
	}
	if err != nil || !bytes.Equal(got, body) {
		t.Errorf("Load(%s) body: %d bytes, %v; want the %d stored", want.ID, len(got), err, len(body))
	}
	w := *want
	w.Envelope.Recipients = slices.Clone(want.Envelope.Recipients)
	for i := range w.Envelope.Recipients {
		w.Envelope.Recipients[i].Attempts = nil
	}
	if !reflect.DeepEqual(m, &w) {
		t.Errorf("Load(%s) = %+v, want %+v", want.ID, m, &w)
	}
}

func TestLoadNotLive(t *testing.T) {
	s, _ := openSpool(t, Options{})
	id := enqueue(t, s, envelope("a@o.test", "b@d.example"), bodyOf("x", 100))
	tasks := claimAll(t, s, farFuture, time.Hour)
	record(t, s, result(id, tasks[0].Rcpt, Delivered, farFuture, time.Time{}))
	for name, id := range map[string]string{"retired": id, "unknown": NewID(), "invalid": "../x"} {
		if _, _, err := s.Load(id); !errors.Is(err, ErrNotFound) {
			t.Errorf("Load of a %s message: %v, want ErrNotFound", name, err)
		}
	}
}

func TestEnqueueMarks8Bit(t *testing.T) {
	s, _ := openSpool(t, Options{})
	body := append(bodyOf("m", 100), "caf\xc3\xa9\r\n"...)
	id := enqueue(t, s, envelope("a@origin.test", "b@dest.example"), body)
	if !message(t, s, id).Envelope.Has8Bit {
		t.Errorf("Has8Bit false for a body with octets above 127")
	}
}

func TestEnqueueErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		env  *Envelope
		id   string
		size int
		want error
	}{
		{"invalid id", Options{}, envelope("a@o.test", "b@d.example"), "../x", 10, ErrInvalid},
		{"no recipients", Options{}, envelope("a@o.test"), "", 10, ErrInvalid},
		{"recipient without domain", Options{}, &Envelope{Recipients: []Recipient{{Addr: "postmaster"}}}, "", 10, ErrInvalid},
		{"too big inline", Options{MaxMessageBytes: 1000}, envelope("a@o.test", "b@d.example"), "", 1001, ErrTooBig},
		{"too big file", Options{MaxMessageBytes: 100 << 10, InlineBodyBytes: 1024}, envelope("a@o.test", "b@d.example"), "", 100<<10 + 1, ErrTooBig},
		{"low space inline", Options{MinFreeBytes: 1 << 62}, envelope("a@o.test", "b@d.example"), "", 10, ErrNoSpace},
		{"low space file", Options{MinFreeBytes: 1 << 62}, envelope("a@o.test", "b@d.example"), "", 200 << 10, ErrNoSpace},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, dir := openSpool(t, tc.opts)
			id := tc.id
			if id == "" {
				id = NewID()
			}
			var err error
			if validID(id) {
				err = tryEnqueue(s, id, tc.env, bodyOf(id, tc.size))
			} else {
				_, err = s.NewBody(id)
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Enqueue: %v, want %v", err, tc.want)
			}
			if validID(id) {
				if _, err := s.Message(id); !errors.Is(err, ErrNotFound) {
					t.Errorf("Message after a failed Enqueue: %v, want ErrNotFound", err)
				}
			}
			if files, _ := os.ReadDir(filepath.Join(dir, "bodies")); len(files) != 0 {
				t.Errorf("%d body files left after Abort", len(files))
			}
		})
	}
}

// TestNoSizeLimit: a negative MaxMessageBytes leaves the limit to the
// caller (smtpd enforces its own, and the header fix-ups make the stored
// copy larger than what the client sent).
func TestNoSizeLimit(t *testing.T) {
	s, _ := openSpool(t, Options{MaxMessageBytes: -1, InlineBodyBytes: 1024})
	body := bodyOf("big", 51<<20)
	id := enqueue(t, s, envelope("a@o.test", "b@d.example"), body)
	m, err := s.Message(id)
	if err != nil {
		t.Fatal(err)
	}
	if m.Envelope.Size != int64(len(body)) {
		t.Errorf("stored size %d, want %d", m.Envelope.Size, len(body))
	}
}

func TestEnqueueDuplicate(t *testing.T) {
	clk := newClock()
	s, _ := openSpool(t, Options{Now: clk.Now})
	id := enqueue(t, s, envelope("a@o.test", "b@d.example"), bodyOf("x", 10))
	if err := tryEnqueue(s, id, envelope("a@o.test", "b@d.example"), nil); !errors.Is(err, ErrDuplicate) {
		t.Errorf("second Enqueue of a live ID: %v, want ErrDuplicate", err)
	}
	record(t, s, result(id, 0, Delivered, clk.Now(), time.Time{}))
	if err := tryEnqueue(s, id, envelope("a@o.test", "b@d.example"), nil); !errors.Is(err, ErrDuplicate) {
		t.Errorf("Enqueue of a retired ID: %v, want ErrDuplicate", err)
	}
}

func TestBodyWriterAbort(t *testing.T) {
	s, dir := openSpool(t, Options{InlineBodyBytes: 100})
	id := NewID()
	w, err := s.NewBody(id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(bodyOf(id, 5000)); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "bodies", id)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("body past InlineBodyBytes not in a file: %v", err)
	}
	if w.Size() != 5000 {
		t.Errorf("Size() = %d, want 5000", w.Size())
	}
	if err := w.Abort(); err != nil {
		t.Fatalf("Abort: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("body file after Abort: %v", err)
	}
	if err := s.Enqueue(t.Context(), id, envelope("a@o.test", "b@d.example"), w); !errors.Is(err, ErrInvalid) {
		t.Errorf("Enqueue of an aborted body: %v, want ErrInvalid", err)
	}

	id2 := enqueue(t, s, envelope("a@o.test", "b@d.example"), bodyOf("y", 5000))
	if _, err := os.Stat(filepath.Join(dir, "bodies", id2)); err != nil {
		t.Errorf("body file of an enqueued message: %v", err)
	}
}

func TestOrphanBodiesRemovedAtOpen(t *testing.T) {
	dir := t.TempDir()
	s := openIn(t, dir, Options{InlineBodyBytes: 100})
	kept := enqueue(t, s, envelope("a@o.test", "b@d.example"), bodyOf("k", 1000))
	// A body written but never enqueued, as a crash during DATA leaves it.
	w, err := s.NewBody(NewID())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(bodyOf("o", 1000)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"stray", NewID()} {
		if err := os.WriteFile(filepath.Join(dir, "bodies", name), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	s = openIn(t, dir, Options{InlineBodyBytes: 100})
	files, err := os.ReadDir(filepath.Join(dir, "bodies"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 1 || files[0].Name() != kept {
		t.Errorf("body files after reopen: %v, want only %s", files, kept)
	}
	if got := readBody(t, s, kept); !bytes.Equal(got, bodyOf("k", 1000)) {
		t.Errorf("kept body changed")
	}
}

func TestOnDue(t *testing.T) {
	clk := newClock()
	var mu sync.Mutex
	kicks := 0
	s, _ := openSpool(t, Options{Now: clk.Now, OnDue: func() { mu.Lock(); kicks++; mu.Unlock() }})
	kicked := func() int { mu.Lock(); defer mu.Unlock(); k := kicks; kicks = 0; return k }

	id := enqueue(t, s, envelope("a@o.test", "b@d.example"), nil)
	if k := kicked(); k != 1 {
		t.Errorf("OnDue after Enqueue called %d times, want 1", k)
	}
	claimAll(t, s, clk.Now(), time.Hour)
	if k := kicked(); k != 0 {
		t.Errorf("OnDue after a Claim leasing into the future called %d times", k)
	}
	record(t, s, result(id, 0, Deferred, clk.Now(), clk.Now().Add(time.Hour)))
	if k := kicked(); k != 0 {
		t.Errorf("OnDue after a deferral into the future called %d times", k)
	}
}

func TestGroupCommit(t *testing.T) {
	const writers = 40
	release := make(chan struct{})
	obs := &blockingObserver{release: release, commits: make(chan Commit, 100)}
	s, _ := openSpool(t, Options{Observer: obs})

	// The first commit is held in the observer until every other writer is
	// waiting, so they must all go in the next transaction.
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	enq := func() {
		defer wg.Done()
		errs <- tryEnqueue(s, NewID(), envelope("a@o.test", "b@d.example"), bodyOf("g", 2048))
	}
	wg.Add(1)
	go enq()
	first := <-obs.commits
	wg.Add(writers - 1)
	for range writers - 1 {
		go enq()
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(s.reqs) < writers-1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // polling a condition with a deadline
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Enqueue: %v", err)
		}
	}
	second := <-obs.commits
	if first.Ops != 1 || second.Ops != writers-1 || !second.Synced {
		t.Errorf("commits carried %d then %d operations (synced %v), want 1 then %d in one fsynced commit",
			first.Ops, second.Ops, second.Synced, writers-1)
	}
}

// blockingObserver holds the committer in its first Committed call until
// release is closed, and passes every commit on.
type blockingObserver struct {
	once    sync.Once
	release chan struct{}
	commits chan Commit
}

func (o *blockingObserver) Committed(c Commit) {
	o.commits <- c
	o.once.Do(func() { <-o.release })
}

func TestCloseRefusesWork(t *testing.T) {
	s, _ := openSpool(t, Options{})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tryEnqueue(s, NewID(), envelope("a@o.test", "b@d.example"), nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Enqueue after Close: %v, want ErrClosed", err)
	}
	if _, err := s.Claim(t.Context(), time.Now(), 1, func(Task) time.Time { return time.Now() }); !errors.Is(err, ErrClosed) {
		t.Errorf("Claim after Close: %v, want ErrClosed", err)
	}
	if _, err := s.Message(NewID()); !errors.Is(err, ErrClosed) {
		t.Errorf("Message after Close: %v, want ErrClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// sortedIDs returns the IDs of tasks in order.
func sortedIDs(tasks []Task) []string {
	var ids []string
	for _, task := range tasks {
		ids = append(ids, task.ID)
	}
	slices.Sort(ids)
	return ids
}

func TestHas8Bit(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"", false},
		{"plain ascii text, longer than eight bytes\r\n", false},
		{"\x80", true},
		{"0123456789abcde\xff", true},
		{"caf\xc3\xa9", true},
		{"01234567\x7f", false},
	} {
		if got := has8Bit([]byte(tc.in)); got != tc.want {
			t.Errorf("has8Bit(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestIOErrorSentinels(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"ENOSPC from a write", &os.PathError{Op: "write", Path: "spool.db", Err: syscall.ENOSPC}, ErrNoSpace},
		{"quota exceeded", &os.PathError{Op: "write", Path: "spool.db", Err: syscall.EDQUOT}, ErrNoSpace},
		{"errno lost in a message", fmt.Errorf("file resize error: %s", syscall.ENOSPC), ErrNoSpace},
		{"other error", &os.PathError{Op: "write", Path: "spool.db", Err: syscall.EIO}, syscall.EIO},
		{"a bucket where a value belongs", berrors.ErrIncompatibleValue, ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := ioError("commit", tc.err); !errors.Is(err, tc.want) {
				t.Errorf("ioError(%v) = %v, want %v", tc.err, err, tc.want)
			}
		})
	}
}
