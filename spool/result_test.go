package spool

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestRecordTransitions(t *testing.T) {
	for _, tc := range []struct {
		name    string
		results []State // recorded in order for recipient 0 of a one-recipient message
		want    State
		retired bool
	}{
		{"pending to deferred", []State{Deferred}, Deferred, false},
		{"pending to delivered retires", []State{Delivered}, Delivered, true},
		{"pending to failed retires", []State{Failed}, Failed, true},
		{"deferred to deferred", []State{Deferred, Deferred}, Deferred, false},
		{"deferred to delivered retires", []State{Deferred, Delivered}, Delivered, true},
		{"deferred to failed retires", []State{Deferred, Deferred, Failed}, Failed, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newClock()
			s, dir := openSpool(t, Options{Now: clk.Now, InlineBodyBytes: 1024})
			id := enqueue(t, s, envelope("a@o.test", "b@d.example"), bodyOf("r", 5000))
			for _, st := range tc.results {
				now := clk.Advance(time.Minute)
				tasks := claimAll(t, s, now, time.Hour)
				if len(tasks) != 1 {
					t.Fatalf("claimed %d, want 1", len(tasks))
				}
				record(t, s, result(id, 0, st, now, now.Add(time.Minute)))
				verifyNow(t, s)
			}
			m := message(t, s, id)
			r := m.Envelope.Recipients[0]
			if r.State != tc.want || m.Retired != tc.retired {
				t.Errorf("state %v retired %v, want %v retired %v", r.State, m.Retired, tc.want, tc.retired)
			}
			if r.AttemptCount != len(tc.results) || len(r.Attempts) != len(tc.results) {
				t.Errorf("AttemptCount %d with %d logged, want %d", r.AttemptCount, len(r.Attempts), len(tc.results))
			}
			last := r.Attempts[len(r.Attempts)-1]
			if last.Host != "mx.example.test" || last.IP != "192.0.2.25" || last.Code == 0 || last.Duration != time.Second {
				t.Errorf("last attempt %+v", last)
			}
			_, err := os.Stat(filepath.Join(dir, "bodies", id))
			if tc.retired {
				if !errors.Is(err, os.ErrNotExist) {
					t.Errorf("body file of a retired message: %v", err)
				}
				if _, err := s.Body(id); !errors.Is(err, ErrNotFound) {
					t.Errorf("Body of a retired message: %v, want ErrNotFound", err)
				}
				if !r.Done.Equal(clk.Now()) || !m.RetiredAt.Equal(clk.Now()) {
					t.Errorf("Done %v RetiredAt %v, want %v", r.Done, m.RetiredAt, clk.Now())
				}
			} else if !r.NextAttempt.Equal(clk.Now().Add(time.Minute)) {
				t.Errorf("deferred recipient due at %v, want %v", r.NextAttempt, clk.Now().Add(time.Minute))
			}
		})
	}
}

func TestRecordRetiresOnlyWhenAllFinal(t *testing.T) {
	clk := newClock()
	s, _ := openSpool(t, Options{Now: clk.Now})
	id := enqueue(t, s, envelope("a@o.test", "b@d.example", "c@e.example", "d@d.example"), nil)
	now := clk.Now()
	claimAll(t, s, now, time.Hour)
	record(t, s, result(id, 0, Delivered, now, time.Time{}), result(id, 1, Deferred, now, now.Add(time.Hour)))
	if m := message(t, s, id); m.Retired {
		t.Fatalf("retired with recipients 1 and 2 still live")
	}
	record(t, s, result(id, 2, Failed, now, time.Time{}))
	if m := message(t, s, id); m.Retired {
		t.Fatalf("retired with recipient 1 deferred")
	}
	later := clk.Advance(time.Hour)
	claimAll(t, s, later, time.Hour)
	record(t, s, result(id, 1, Delivered, later, time.Time{}))
	m := message(t, s, id)
	if !m.Retired {
		t.Fatalf("not retired with every recipient final")
	}
	want := []State{Delivered, Delivered, Failed}
	for i, r := range m.Envelope.Recipients {
		if r.State != want[i] {
			t.Errorf("recipient %d: %v, want %v", i, r.State, want[i])
		}
	}
	if n := len(m.Envelope.Recipients[1].Attempts); n != 2 {
		t.Errorf("retired recipient 1 kept %d attempts, want 2", n)
	}
}

func TestRecordStaleResultIgnored(t *testing.T) {
	clk := newClock()
	s, _ := openSpool(t, Options{Now: clk.Now})
	id := enqueue(t, s, envelope("a@o.test", "b@d.example"), nil)
	now := clk.Now()
	claimAll(t, s, now, time.Hour)
	record(t, s, result(id, 0, Delivered, now, time.Time{}))
	record(t, s, result(id, 0, Failed, now, time.Time{}))
	record(t, s, result(NewID(), 0, Failed, now, time.Time{}))
	if r := message(t, s, id).Envelope.Recipients[0]; r.State != Delivered || r.AttemptCount != 1 {
		t.Errorf("a second result changed a final recipient: %v after %d attempts", r.State, r.AttemptCount)
	}
}

func TestRecordInvalid(t *testing.T) {
	s, _ := openSpool(t, Options{})
	now := time.Now()
	for _, tc := range []struct {
		name string
		res  Result
	}{
		{"pending is not a result", Result{ID: NewID(), State: Pending}},
		{"deferred without next attempt", Result{ID: NewID(), State: Deferred}},
		{"bad id", Result{ID: "../x", State: Delivered}},
		{"negative recipient", Result{ID: NewID(), Rcpt: -1, State: Delivered, NextAttempt: now}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.Record(t.Context(), Update{Results: []Result{tc.res}}); !errors.Is(err, ErrInvalid) {
				t.Errorf("Record: %v, want ErrInvalid", err)
			}
		})
	}
}

func TestAttemptLogBounded(t *testing.T) {
	clk := newClock()
	s, _ := openSpool(t, Options{Now: clk.Now, MaxAttemptLog: 3})
	id := enqueue(t, s, envelope("a@o.test", "b@d.example"), nil)
	for i := range 5 {
		now := clk.Advance(time.Minute)
		claimAll(t, s, now, time.Hour)
		res := result(id, 0, Deferred, now, now)
		res.Attempt.Text = fmt.Sprintf("try %d", i+1)
		record(t, s, res)
	}
	r := message(t, s, id).Envelope.Recipients[0]
	if r.AttemptCount != 5 || len(r.Attempts) != 3 {
		t.Fatalf("AttemptCount %d with %d logged, want 5 with the last 3", r.AttemptCount, len(r.Attempts))
	}
	for i, a := range r.Attempts {
		if want := fmt.Sprintf("try %d", i+3); a.Text != want {
			t.Errorf("attempt %d: %q, want %q", i, a.Text, want)
		}
	}
}

func TestDelayNotified(t *testing.T) {
	clk := newClock()
	s, _ := openSpool(t, Options{Now: clk.Now})
	id := enqueue(t, s, envelope("a@o.test", "b@d.example"), nil)
	now := clk.Now()
	claimAll(t, s, now, time.Hour)
	res := result(id, 0, Deferred, now, now.Add(time.Hour))
	res.DelayNotified = true
	dsn := NewMessage{ID: NewID(), Envelope: *envelope("", "a@o.test"), Body: []byte("delay report")}
	dsn.Envelope.DSN = true
	if err := s.Record(t.Context(), Update{Results: []Result{res}, Enqueue: []NewMessage{dsn}}); err != nil {
		t.Fatal(err)
	}
	if r := message(t, s, id).Envelope.Recipients[0]; !r.DelayNotified {
		t.Errorf("DelayNotified not kept")
	}
	m := message(t, s, dsn.ID)
	if !m.Envelope.DSN || m.Envelope.Sender != "" || m.Envelope.Recipients[0].State != Pending {
		t.Errorf("delay DSN stored as %+v", m.Envelope)
	}
	if got := readBody(t, s, dsn.ID); string(got) != "delay report" {
		t.Errorf("delay DSN body %q", got)
	}
	// The next result without the flag keeps it.
	later := clk.Advance(time.Hour)
	claimAll(t, s, later, time.Hour)
	record(t, s, result(id, 0, Deferred, later, later.Add(time.Hour)))
	if r := message(t, s, id).Envelope.Recipients[0]; !r.DelayNotified {
		t.Errorf("DelayNotified lost by a later result")
	}
}

// TestDelayNotice: a delay notice marks every recipient it reports, and
// its DSN is stored only if one of them had none yet, so attempts to two
// destinations of one message that both owe a delay warning send one.
func TestDelayNotice(t *testing.T) {
	clk := newClock()
	s, _ := openSpool(t, Options{Now: clk.Now})
	id := enqueue(t, s, envelope("a@o.test", "b@d.example", "c@e.example", "d@f.example"), nil)
	now := clk.Now()
	claimAll(t, s, now, time.Hour)
	dsn := func() NewMessage {
		m := NewMessage{ID: NewID(), Envelope: *envelope("", "a@o.test"), Body: []byte("delay report")}
		m.Envelope.DSN = true
		return m
	}
	notice := func(rcpts ...int) *DelayNotice {
		n := &DelayNotice{DSN: dsn()}
		for _, r := range rcpts {
			n.Recipients = append(n.Recipients, RcptRef{id, r})
		}
		return n
	}
	stored := func(n *DelayNotice) bool {
		_, err := s.Message(n.DSN.ID)
		return err == nil
	}
	// The attempt to d.example reports b and c (deferred at e.example).
	first := notice(0, 1)
	res := result(id, 0, Deferred, now, now.Add(time.Hour))
	res.DelayNotified = true
	if err := s.Record(t.Context(), Update{Results: []Result{res}, Delay: first}); err != nil {
		t.Fatal(err)
	}
	if !stored(first) {
		t.Fatal("the first delay DSN was not stored")
	}
	rs := message(t, s, id).Envelope.Recipients
	if !rs[0].DelayNotified || !rs[1].DelayNotified || rs[2].DelayNotified {
		t.Errorf("notified %v %v %v, want the two reported only", rs[0].DelayNotified, rs[1].DelayNotified, rs[2].DelayNotified)
	}
	// The attempt to e.example, on the same snapshot, reports them again:
	// nothing new, no DSN.
	second := notice(1, 0)
	res = result(id, 1, Deferred, now, now.Add(time.Hour))
	res.DelayNotified = true
	if err := s.Record(t.Context(), Update{Results: []Result{res}, Delay: second}); err != nil {
		t.Fatal(err)
	}
	if stored(second) {
		t.Error("a second delay DSN for recipients already reported")
	}
	// One not reported yet makes the DSN go out.
	third := notice(0, 2)
	if err := s.Record(t.Context(), Update{Delay: third}); err != nil {
		t.Fatal(err)
	}
	if !stored(third) || !message(t, s, id).Envelope.Recipients[2].DelayNotified {
		t.Error("a delay DSN with a recipient not reported before was not stored, or did not mark it")
	}
	if err := s.Record(t.Context(), Update{Delay: &DelayNotice{Recipients: []RcptRef{{"bad id", 0}}, DSN: dsn()}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("notice for an invalid id: %v, want ErrInvalid", err)
	}
	verifyNow(t, s)
}

func TestBounce(t *testing.T) {
	clk := newClock()
	type call struct {
		m    *Message
		body []byte
	}
	var calls []call
	bounce := func(m *Message, readBody func() ([]byte, error)) (*NewMessage, error) {
		body, err := readBody()
		if err != nil {
			return nil, err
		}
		calls = append(calls, call{m, bytes.Clone(body)})
		env := envelope("", m.Envelope.Sender)
		env.DSN = true
		return &NewMessage{ID: "dsn-" + m.ID, Envelope: *env, Body: []byte("failure report for " + m.ID)}, nil
	}
	s, _ := openSpool(t, Options{Now: clk.Now, Bounce: bounce, BounceBodyBytes: 100, InlineBodyBytes: 1024})

	for _, size := range []int{50, 5000} {
		calls = nil
		body := bodyOf("b", size)
		id := enqueue(t, s, envelope("sender@o.test", "b@d.example", "c@d.example"), body)
		now := clk.Now()
		tasks := claimAll(t, s, now, time.Hour)
		record(t, s, result(id, 0, Failed, now, time.Time{}), result(id, 1, Delivered, now, time.Time{}))
		if len(calls) != 1 {
			t.Fatalf("size %d: Bounce called %d times, want once", size, len(calls))
		}
		if c := calls[0]; c.m.ID != id || !c.m.Retired || c.m.Envelope.Recipients[0].State != Failed ||
			len(c.m.Envelope.Recipients[0].Attempts) != 1 || !bytes.Equal(c.body, body[:min(size, 100)]) {
			t.Errorf("size %d: Bounce got %+v with body %q", size, c.m, c.body)
		}
		dsn := message(t, s, "dsn-"+id)
		if dsn.Retired || !dsn.Envelope.DSN || dsn.Envelope.Recipients[0].Addr != "sender@o.test" {
			t.Errorf("DSN stored as %+v", dsn)
		}
		// The DSN itself fails: it is never bounced.
		calls = nil
		dtasks := claimAll(t, s, now, time.Hour)
		if len(dtasks) != 1 || dtasks[0].ID != dsn.ID {
			t.Fatalf("claimed %+v, want the DSN (first claim had %d)", dtasks, len(tasks))
		}
		record(t, s, result(dsn.ID, 0, Failed, now, time.Time{}))
		if len(calls) != 0 {
			t.Errorf("Bounce called for a failed DSN")
		}
	}

	t.Run("null sender gets no bounce", func(t *testing.T) {
		calls = nil
		id := enqueue(t, s, envelope("", "b@d.example"), nil)
		claimAll(t, s, clk.Now(), time.Hour)
		record(t, s, result(id, 0, Failed, clk.Now(), time.Time{}))
		if len(calls) != 0 {
			t.Errorf("Bounce called for a null-sender message")
		}
	})
}

func TestBounceError(t *testing.T) {
	clk := newClock()
	fail := true
	bounce := func(m *Message, _ func() ([]byte, error)) (*NewMessage, error) {
		if fail {
			return nil, errors.New("cannot build report")
		}
		return nil, nil
	}
	s, _ := openSpool(t, Options{Now: clk.Now, Bounce: bounce})
	id := enqueue(t, s, envelope("a@o.test", "b@d.example"), nil)
	other := enqueue(t, s, envelope("a@o.test", "c@d.example"), nil)
	now := clk.Now()
	claimAll(t, s, now, time.Hour)

	// Two updates in flight: the one whose bounce fails is refused whole,
	// the other commits.
	errs := make(chan error, 2)
	go func() {
		errs <- s.Record(t.Context(), Update{Results: []Result{result(id, 0, Failed, now, time.Time{})}})
	}()
	go func() {
		errs <- s.Record(t.Context(), Update{Results: []Result{result(other, 0, Deferred, now, now.Add(time.Hour))}})
	}()
	var failed int
	for range 2 {
		if err := <-errs; err != nil {
			failed++
		}
	}
	if failed != 1 {
		t.Fatalf("%d updates failed, want the one whose bounce failed", failed)
	}
	if r := message(t, s, id).Envelope.Recipients[0]; r.State != Pending || r.AttemptCount != 0 {
		t.Errorf("refused result half-applied: %v after %d attempts", r.State, r.AttemptCount)
	}
	if r := message(t, s, other).Envelope.Recipients[0]; r.State != Deferred {
		t.Errorf("the other update was lost: %v", r.State)
	}
	fail = false
	record(t, s, result(id, 0, Failed, now, time.Time{}))
	if !message(t, s, id).Retired {
		t.Errorf("not retired once the bounce succeeded")
	}
}

func TestRetiredBounds(t *testing.T) {
	clk := newClock()
	s, _ := openSpool(t, Options{Now: clk.Now, RetiredMaxCount: 3, RetiredMaxAge: 24 * time.Hour})
	deliver := func() string {
		id := enqueue(t, s, envelope("a@o.test", "b@d.example"), nil)
		claimAll(t, s, clk.Now(), time.Hour)
		record(t, s, result(id, 0, Delivered, clk.Now(), time.Time{}))
		clk.Advance(time.Minute)
		return id
	}
	var ids []string
	for range 5 {
		ids = append(ids, deliver())
	}
	for i, id := range ids {
		_, err := s.Message(id)
		if gone := errors.Is(err, ErrNotFound); gone != (i < 2) {
			t.Errorf("retired %d: %v; want only the 2 oldest gone past the count bound", i, err)
		}
	}
	clk.Advance(25 * time.Hour)
	last := deliver()
	for _, id := range ids {
		if _, err := s.Message(id); !errors.Is(err, ErrNotFound) {
			t.Errorf("retired %s older than the age bound: %v", id, err)
		}
	}
	if m := message(t, s, last); !m.Retired {
		t.Errorf("newest retired record missing")
	}
}
