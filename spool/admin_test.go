package spool

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestHoldRelease(t *testing.T) {
	clk := newClock()
	s, _ := openSpool(t, Options{Now: clk.Now})
	id := enqueue(t, s, envelope("a@o.test", "b@d.example", "c@e.example"), nil)
	now := clk.Now()
	if err := s.Hold(t.Context(), id); err != nil {
		t.Fatalf("Hold: %v", err)
	}
	verifyNow(t, s)
	if tasks := claimAll(t, s, now.Add(time.Hour), time.Hour); len(tasks) != 0 {
		t.Fatalf("claimed %d held recipients", len(tasks))
	}
	if _, ok, _ := s.NextDue(); ok {
		t.Errorf("NextDue reports a held message")
	}
	c, err := s.Counts()
	if err != nil {
		t.Fatal(err)
	}
	if c.ByState["held"] != 2 || c.ByState["pending"] != 0 || c.ByDomain["d.example"].Held != 1 {
		t.Errorf("counts while held: %+v", c)
	}
	for _, r := range message(t, s, id).Envelope.Recipients {
		if !r.Held {
			t.Errorf("recipient %s not held", r.Addr)
		}
	}

	later := clk.Advance(time.Hour)
	if err := s.Release(t.Context(), id); err != nil {
		t.Fatalf("Release: %v", err)
	}
	verifyNow(t, s)
	if next, ok, _ := s.NextDue(); !ok || !next.Equal(later) {
		t.Errorf("NextDue after Release = %v, %v; want now %v (the old time passed)", next, ok, later)
	}
	if tasks := claimAll(t, s, later, time.Hour); len(tasks) != 2 {
		t.Errorf("claimed %d after Release, want 2", len(tasks))
	}
	for _, op := range []func() error{
		func() error { return s.Hold(t.Context(), NewID()) },
		func() error { return s.Release(t.Context(), NewID()) },
	} {
		if err := op(); !errors.Is(err, ErrNotFound) {
			t.Errorf("Hold/Release of an unknown message: %v, want ErrNotFound", err)
		}
	}
}

func TestHoldDuringAttempt(t *testing.T) {
	clk := newClock()
	s, _ := openSpool(t, Options{Now: clk.Now})
	id := enqueue(t, s, envelope("a@o.test", "b@d.example"), nil)
	now := clk.Now()
	claimAll(t, s, now, time.Hour)
	if err := s.Hold(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	record(t, s, result(id, 0, Deferred, now, now))
	verifyNow(t, s)
	if tasks := claimAll(t, s, now.Add(time.Hour), time.Hour); len(tasks) != 0 {
		t.Fatalf("a recipient deferred while held was claimed")
	}
	if r := message(t, s, id).Envelope.Recipients[0]; !r.Held || r.State != Deferred {
		t.Errorf("recipient %v held %v, want deferred and held", r.State, r.Held)
	}
}

func TestRetry(t *testing.T) {
	clk := newClock()
	s, _ := openSpool(t, Options{Now: clk.Now})
	now := clk.Now()
	var ids []string
	for range 3 {
		id := enqueue(t, s, envelope("a@o.test", "b@d.example"), nil)
		ids = append(ids, id)
	}
	for _, task := range claimAll(t, s, now, time.Hour) {
		record(t, s, result(task.ID, 0, Deferred, now, now.Add(2*time.Hour)))
	}
	if err := s.Hold(t.Context(), ids[2]); err != nil {
		t.Fatal(err)
	}

	n, err := s.Retry(t.Context(), ids[0], now)
	if err != nil || n != 1 {
		t.Fatalf("Retry(one) = %d, %v; want 1", n, err)
	}
	if tasks := claimAll(t, s, now, time.Hour); len(tasks) != 1 || tasks[0].ID != ids[0] {
		t.Fatalf("after Retry(one) claimed %+v, want %s", tasks, ids[0])
	}
	n, err = s.Retry(t.Context(), "", now)
	if err != nil || n != 1 {
		t.Fatalf("Retry(all) = %d, %v; want 1 (one claimed, one held)", n, err)
	}
	if tasks := claimAll(t, s, now, time.Hour); len(tasks) != 1 || tasks[0].ID != ids[1] {
		t.Fatalf("after Retry(all) claimed %+v, want %s", tasks, ids[1])
	}
	if _, err := s.Retry(t.Context(), NewID(), now); !errors.Is(err, ErrNotFound) {
		t.Errorf("Retry of an unknown message: %v, want ErrNotFound", err)
	}
	verifyNow(t, s)
}

func TestDelete(t *testing.T) {
	for _, tc := range []struct {
		name    string
		bounce  bool
		bounces int
		text    string
	}{
		{"with bounce", true, 1, "deleted by the administrator: spam"},
		{"silently", false, 0, "deleted by the administrator without notice: spam"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newClock()
			bounces := 0
			bounce := func(m *Message, _ func() ([]byte, error)) (*NewMessage, error) { bounces++; return nil, nil }
			s, _ := openSpool(t, Options{Now: clk.Now, Bounce: bounce, InlineBodyBytes: 100})
			id := enqueue(t, s, envelope("a@o.test", "b@d.example", "c@d.example"), bodyOf("d", 1000))
			now := clk.Now()
			claimAll(t, s, now, time.Hour)
			record(t, s, result(id, 0, Delivered, now, time.Time{}))
			if err := s.Delete(t.Context(), id, tc.bounce, "spam"); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			m := message(t, s, id)
			if !m.Retired || bounces != tc.bounces {
				t.Fatalf("retired %v after %d bounces, want retired after %d", m.Retired, bounces, tc.bounces)
			}
			r0, r1 := m.Envelope.Recipients[0], m.Envelope.Recipients[1]
			if r0.State != Delivered || r1.State != Failed || r1.Attempts[len(r1.Attempts)-1].Text != tc.text {
				t.Errorf("recipients after Delete: %v, %v %+v", r0.State, r1.State, r1.Attempts)
			}
			if _, err := s.Body(id); !errors.Is(err, ErrNotFound) {
				t.Errorf("Body after Delete: %v", err)
			}
			if err := s.Delete(t.Context(), id, false, ""); !errors.Is(err, ErrNotFound) {
				t.Errorf("second Delete: %v, want ErrNotFound", err)
			}
			// The attempt in flight reports after the delete: ignored.
			record(t, s, result(id, 1, Delivered, now, time.Time{}))
			if tasks := claimAll(t, s, now.Add(2*time.Hour), time.Hour); len(tasks) != 0 {
				t.Errorf("claimed %d recipients of a deleted message", len(tasks))
			}
		})
	}
}

func TestCounts(t *testing.T) {
	clk := newClock()
	s, _ := openSpool(t, Options{Now: clk.Now})
	first := clk.Now()
	a := enqueue(t, s, envelope("a@o.test", "x@d.example", "y@d.example", "z@e.example"), nil)
	clk.Advance(time.Minute)
	b := enqueue(t, s, envelope("a@o.test", "x@e.example"), nil)
	now := clk.Now()
	claimAll(t, s, now, time.Hour)
	record(t, s, result(a, 0, Deferred, now, now.Add(time.Hour)), result(a, 2, Delivered, now, time.Time{}),
		result(b, 0, Delivered, now, time.Time{}))
	if err := s.Hold(t.Context(), a); err != nil {
		t.Fatal(err)
	}
	if err := s.Release(t.Context(), a); err != nil {
		t.Fatal(err)
	}
	c, err := s.Counts()
	if err != nil {
		t.Fatal(err)
	}
	want := Counts{Messages: 1, Retired: 1, ByState: map[string]int{"pending": 1, "deferred": 1, "held": 0},
		ByDomain: map[string]DomainCount{"d.example": {Pending: 1, Deferred: 1, Oldest: first}}}
	if c.Messages != want.Messages || c.Retired != want.Retired || len(c.ByDomain) != 1 ||
		!mapsEqual(c.ByState, want.ByState) || c.ByDomain["d.example"].Pending != 1 ||
		c.ByDomain["d.example"].Deferred != 1 || !c.ByDomain["d.example"].Oldest.Equal(first) {
		t.Errorf("Counts = %+v, want %+v", c, want)
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestList(t *testing.T) {
	clk := newClock()
	s, _ := openSpool(t, Options{Now: clk.Now})
	var all []string
	for i := range 25 {
		sender := "a@o.test"
		if i%5 == 0 {
			sender = "b@o.test"
		}
		rcpt := "x@d.example"
		if i%2 == 0 {
			rcpt = "x@e.example"
		}
		all = append(all, enqueue(t, s, envelope(sender, rcpt), nil))
		clk.Advance(time.Minute)
	}
	if err := s.Hold(t.Context(), all[3]); err != nil {
		t.Fatal(err)
	}
	pick := func(ok func(i int) bool) []string {
		var ids []string
		for i, id := range all {
			if ok(i) {
				ids = append(ids, id)
			}
		}
		return ids
	}
	for _, tc := range []struct {
		name string
		f    Filter
		want []string
	}{
		{"everything", Filter{}, all},
		{"by sender", Filter{Sender: "b@o.test"}, pick(func(i int) bool { return i%5 == 0 })},
		{"by domain", Filter{Domain: "E.example"}, pick(func(i int) bool { return i%2 == 0 })},
		{"held", Filter{State: "held"}, all[3:4]},
		{"pending", Filter{State: "pending"}, pick(func(i int) bool { return i != 3 })},
		{"older than", Filter{OlderThan: 20 * time.Minute}, all[:6]}, // the clock is 25 minutes past the first
		{"combined", Filter{Sender: "b@o.test", Domain: "e.example"}, pick(func(i int) bool { return i%10 == 0 })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			after := ""
			for pages := 0; ; pages++ {
				if pages > 30 {
					t.Fatalf("paging does not end")
				}
				msgs, next, err := s.List(t.Context(), tc.f, after, 4)
				if err != nil {
					t.Fatalf("List: %v", err)
				}
				if len(msgs) > 4 {
					t.Fatalf("page of %d, limit 4", len(msgs))
				}
				for _, m := range msgs {
					got = append(got, m.ID)
				}
				if next == "" {
					break
				}
				after = next
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("listed %d: %v\nwant %d: %v", len(got), got, len(tc.want), tc.want)
			}
		})
	}
	if _, _, err := s.List(t.Context(), Filter{State: "lost"}, "", 10); !errors.Is(err, ErrInvalid) {
		t.Errorf("List with an unknown state: %v, want ErrInvalid", err)
	}
	msgs, _, err := s.List(t.Context(), Filter{}, "", 1)
	if err != nil || len(msgs) != 1 || msgs[0].Envelope.Recipients[0].State != Pending ||
		!strings.HasPrefix(msgs[0].Envelope.Recipients[0].Addr, "x@") {
		t.Errorf("listed message %+v, %v", msgs, err)
	}
}
