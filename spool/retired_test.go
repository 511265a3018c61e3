package spool

import (
	"errors"
	"slices"
	"testing"
	"time"
)

// retireOne enqueues a message to one recipient and records its delivery
// at the clock's time (advanced by a second first), so it retires then.
func retireOne(t *testing.T, s *Spool, clk *clock) string {
	t.Helper()
	id := enqueue(t, s, envelope("a@o.test", "b@d.example"), []byte("Subject: x\r\n\r\nx\r\n"))
	now := clk.Advance(time.Second)
	claimAll(t, s, now, time.Minute)
	r := result(id, 0, Delivered, now, time.Time{})
	r.Attempt.Route = []RouteStep{
		{Host: "mx1.example.test", IP: "192.0.2.24", Phase: "dial", Enhanced: "4.4.1", Text: "connect: connection refused"},
		{Host: "mx.example.test", IP: "192.0.2.25", Phase: "data", Code: 250, Enhanced: "2.0.0", Text: "ok"},
	}
	record(t, s, r)
	return id
}

func TestListRetired(t *testing.T) {
	clk := newClock()
	s, _ := openSpool(t, Options{Now: clk.Now})
	var ids []string
	for range 5 {
		ids = append(ids, retireOne(t, s, clk))
	}
	live := enqueue(t, s, envelope("a@o.test", "c@d.example"), nil)
	newestFirst := slices.Clone(ids)
	slices.Reverse(newestFirst)

	t.Run("pages newest first", func(t *testing.T) {
		var got []string
		cursor := ""
		for pages := 0; ; pages++ {
			if pages > 5 {
				t.Fatal("paging does not end")
			}
			page, next, err := s.ListRetired(t.Context(), cursor, 2)
			if err != nil {
				t.Fatalf("ListRetired: %v", err)
			}
			for _, m := range page {
				got = append(got, m.ID)
				if !m.Retired || m.Envelope.Recipients[0].State != Delivered {
					t.Errorf("%s: retired %v, state %v", m.ID, m.Retired, m.Envelope.Recipients[0].State)
				}
				if a := m.Envelope.Recipients[0].Attempts; len(a) != 1 || len(a[0].Route) != 2 || a[0].Route[0].Phase != "dial" {
					t.Errorf("%s: attempts %+v, want one with its two route steps", m.ID, a)
				}
			}
			if next == "" {
				break
			}
			cursor = next
		}
		if !slices.Equal(got, newestFirst) {
			t.Errorf("listed %v, want %v (newest first, no live %s)", got, newestFirst, live)
		}
	})
	t.Run("one page", func(t *testing.T) {
		page, next, err := s.ListRetired(t.Context(), "", 0)
		if err != nil || next != "" || len(page) != len(ids) {
			t.Errorf("default limit: %d messages, next %q, %v", len(page), next, err)
		}
	})
	t.Run("bad cursor", func(t *testing.T) {
		for _, c := range []string{"zz", "00"} {
			if _, _, err := s.ListRetired(t.Context(), c, 2); !errors.Is(err, ErrInvalid) {
				t.Errorf("cursor %q: %v, want ErrInvalid", c, err)
			}
		}
	})
}

func TestListRetiredAfterPruning(t *testing.T) {
	clk := newClock()
	s, _ := openSpool(t, Options{Now: clk.Now, RetiredMaxCount: 3})
	for range 3 {
		retireOne(t, s, clk)
	}
	_, next, err := s.ListRetired(t.Context(), "", 2)
	if err != nil || next == "" {
		t.Fatalf("first page: next %q, %v", next, err)
	}
	var newer []string
	for range 3 {
		newer = append(newer, retireOne(t, s, clk)) // the first three are pruned
	}
	page, _, err := s.ListRetired(t.Context(), next, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(page) != 0 {
		t.Errorf("below a pruned cursor: %d messages, want none (all left are newer)", len(page))
	}
	all, _, err := s.ListRetired(t.Context(), "", 10)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range all {
		got = append(got, m.ID)
	}
	slices.Reverse(newer)
	if !slices.Equal(got, newer) {
		t.Errorf("after pruning: %v, want %v", got, newer)
	}
}
