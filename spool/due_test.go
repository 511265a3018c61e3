package spool

import (
	"slices"
	"sync"
	"testing"
	"time"
)

func TestClaim(t *testing.T) {
	clk := newClock()
	s, _ := openSpool(t, Options{Now: clk.Now})
	now := clk.Now()
	var ids []string
	for range 3 {
		ids = append(ids, enqueue(t, s, envelope("a@o.test", "b@d.example"), nil))
		clk.Advance(time.Second)
	}
	now = clk.Now()
	lease := func(Task) time.Time { return now.Add(10 * time.Minute) }

	t.Run("oldest first, up to the limit", func(t *testing.T) {
		tasks, err := s.Claim(t.Context(), now, 2, lease)
		if err != nil {
			t.Fatal(err)
		}
		if got := sortedIDs(tasks); !slices.Equal(got, ids[:2]) {
			t.Fatalf("claimed %v, want %v", got, ids[:2])
		}
		if tasks[0].Domain != "d.example" || tasks[0].Attempts != 0 || tasks[0].Rcpt != 0 {
			t.Errorf("task %+v", tasks[0])
		}
		if r := message(t, s, ids[0]).Envelope.Recipients[0]; !r.NextAttempt.Equal(now.Add(10 * time.Minute)) {
			t.Errorf("claimed recipient due at %v, want the lease %v", r.NextAttempt, now.Add(10*time.Minute))
		}
	})
	t.Run("a claimed recipient is not claimed again", func(t *testing.T) {
		tasks := claimAll(t, s, now.Add(time.Hour), time.Hour)
		if got := sortedIDs(tasks); !slices.Equal(got, ids[2:]) {
			t.Fatalf("claimed %v, want only %v", got, ids[2:])
		}
		if tasks := claimAll(t, s, now.Add(2*time.Hour), time.Hour); len(tasks) != 0 {
			t.Fatalf("claimed %d already claimed recipients", len(tasks))
		}
	})
	t.Run("unclaimed is due again at its lease", func(t *testing.T) {
		s.Unclaim([]Task{{ID: ids[0], Rcpt: 0}})
		if tasks := claimAll(t, s, now.Add(time.Minute), time.Hour); len(tasks) != 0 {
			t.Fatalf("claimed %d before the lease ended", len(tasks))
		}
		tasks := claimAll(t, s, now.Add(10*time.Minute), time.Hour)
		if got := sortedIDs(tasks); !slices.Equal(got, ids[:1]) {
			t.Fatalf("claimed %v at the lease, want %v", got, ids[:1])
		}
	})
	verifyNow(t, s)
}

// TestClaimOrPostpone: a postponed recipient stays unclaimed, is due at
// the time decide gave (never sooner), and counts as seen, so a caller
// can tell a full pass from the end of what is due.
func TestClaimOrPostpone(t *testing.T) {
	clk := newClock()
	s, _ := openSpool(t, Options{Now: clk.Now})
	var ids []string
	for range 4 {
		ids = append(ids, enqueue(t, s, envelope("a@o.test", "b@d.example"), nil))
		clk.Advance(time.Second)
	}
	now := clk.Now()
	lease, later := now.Add(10*time.Minute), now.Add(3*time.Minute)
	decide := func(t Task) (time.Time, bool) {
		switch t.ID {
		case ids[0]:
			return lease, true
		case ids[1]:
			return now.Add(-time.Hour), false // earlier than due: stays as it was
		}
		return later, false
	}
	due1 := message(t, s, ids[1]).Envelope.Recipients[0].NextAttempt
	tasks, seen, err := s.ClaimOrPostpone(t.Context(), now, 3, decide)
	if err != nil {
		t.Fatal(err)
	}
	if got := sortedIDs(tasks); !slices.Equal(got, ids[:1]) || seen != 3 {
		t.Fatalf("claimed %v and saw %d, want %v and 3", got, seen, ids[:1])
	}
	// ids[1] was "postponed" to before it was due: it keeps its time.
	wantNext := []time.Time{lease, due1, later}
	for i, want := range wantNext {
		if got := message(t, s, ids[i]).Envelope.Recipients[0].NextAttempt; !got.Equal(want) {
			t.Errorf("recipient %d due at %v, want %v", i, got, want)
		}
	}
	// Postponed means unclaimed: due again at its time without an Unclaim.
	tasks, seen, err = s.ClaimOrPostpone(t.Context(), now, 10, func(Task) (time.Time, bool) { return lease, true })
	if err != nil {
		t.Fatal(err)
	}
	if got := sortedIDs(tasks); !slices.Equal(got, []string{ids[1], ids[3]}) || seen != 2 {
		t.Fatalf("claimed %v and saw %d now, want %v and 2", got, seen, []string{ids[1], ids[3]})
	}
	if tasks := claimAll(t, s, later, time.Hour); len(tasks) != 1 || tasks[0].ID != ids[2] {
		t.Fatalf("claimed %v at the postponed time, want %s", sortedIDs(tasks), ids[2])
	}
	verifyNow(t, s)
}

func TestClaimNothingDueCommitsNothing(t *testing.T) {
	clk := newClock()
	obs := &countingObserver{}
	s, _ := openSpool(t, Options{Now: clk.Now, Observer: obs})
	enqueue(t, s, envelope("a@o.test", "b@d.example"), nil)
	before := obs.synced()
	if tasks := claimAll(t, s, clk.Now().Add(-time.Second), time.Hour); len(tasks) != 0 {
		t.Fatalf("claimed %d recipients not yet due", len(tasks))
	}
	if obs.synced() != before {
		t.Errorf("a Claim that found nothing committed a transaction")
	}
}

func TestLeaseSurvivesRestart(t *testing.T) {
	clk := newClock()
	dir := t.TempDir()
	s := openIn(t, dir, Options{Now: clk.Now})
	id := enqueue(t, s, envelope("a@o.test", "b@d.example", "c@e.example"), nil)
	now := clk.Now()
	if tasks := claimAll(t, s, now, 10*time.Minute); len(tasks) != 2 {
		t.Fatalf("claimed %d, want 2", len(tasks))
	}
	// A crash here: the attempt never reports.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openIn(t, dir, Options{Now: clk.Now})
	if tasks := claimAll(t, s, now.Add(time.Minute), time.Hour); len(tasks) != 0 {
		t.Fatalf("after a restart, claimed %d recipients before their lease ended (hot retry)", len(tasks))
	}
	next, ok, err := s.NextDue()
	if err != nil || !ok || !next.Equal(now.Add(10*time.Minute)) {
		t.Errorf("NextDue after restart = %v, %v, %v; want the lease %v", next, ok, err, now.Add(10*time.Minute))
	}
	tasks := claimAll(t, s, now.Add(10*time.Minute), time.Hour)
	if len(tasks) != 2 || tasks[0].ID != id {
		t.Fatalf("at the lease, claimed %+v, want both recipients of %s", tasks, id)
	}
}

// TestLeasesGivenBackAtOpen: the leases a process left (killed, or closed
// with attempts unreported) are nobody's claims once the spool is opened
// again, held recipients' included: each is due at its lease, and a held
// one when it is released.
func TestLeasesGivenBackAtOpen(t *testing.T) {
	clk := newClock()
	dir := t.TempDir()
	s := openIn(t, dir, Options{Now: clk.Now})
	held := enqueue(t, s, envelope("a@o.test", "b@d.example"), nil)
	free := enqueue(t, s, envelope("a@o.test", "c@e.example"), nil)
	now := clk.Now()
	if tasks := claimAll(t, s, now, 10*time.Minute); len(tasks) != 2 {
		t.Fatalf("claimed %d, want 2", len(tasks))
	}
	if err := s.Hold(t.Context(), held); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	checkClean(t, dir)
	s = openIn(t, dir, Options{Now: clk.Now})
	verifyNow(t, s)
	if next, ok, err := s.NextDue(); err != nil || !ok || !next.Equal(now.Add(10*time.Minute)) {
		t.Errorf("NextDue after reopening = %v, %v, %v; want the lease", next, ok, err)
	}
	clk.Advance(time.Hour)
	if err := s.Release(t.Context(), held); err != nil {
		t.Fatal(err)
	}
	tasks := claimAll(t, s, clk.Now(), time.Hour)
	if got, want := sortedIDs(tasks), sortedIDs([]Task{{ID: held}, {ID: free}}); !slices.Equal(got, want) {
		t.Fatalf("claimed %v after reopening and releasing, want %v", got, want)
	}
}

func TestNextDue(t *testing.T) {
	clk := newClock()
	s, _ := openSpool(t, Options{Now: clk.Now})
	if _, ok, err := s.NextDue(); err != nil || ok {
		t.Fatalf("NextDue of an empty spool: ok %v, err %v", ok, err)
	}
	now := clk.Now()
	id := enqueue(t, s, envelope("a@o.test", "b@d.example"), nil)
	if next, ok, err := s.NextDue(); err != nil || !ok || !next.Equal(now) {
		t.Fatalf("NextDue after Enqueue = %v, %v, %v; want %v", next, ok, err, now)
	}
	tasks := claimAll(t, s, now, 5*time.Minute)
	if _, ok, err := s.NextDue(); err != nil || ok {
		t.Fatalf("NextDue with everything claimed: ok %v, err %v", ok, err)
	}
	s.Unclaim(tasks)
	if next, ok, _ := s.NextDue(); !ok || !next.Equal(now.Add(5*time.Minute)) {
		t.Fatalf("NextDue after Unclaim = %v, %v; want the lease", next, ok)
	}
	claimAll(t, s, now.Add(5*time.Minute), time.Minute)
	record(t, s, result(id, 0, Deferred, now, now.Add(time.Hour)))
	if next, ok, _ := s.NextDue(); !ok || !next.Equal(now.Add(time.Hour)) {
		t.Fatalf("NextDue after a deferral = %v, %v; want %v", next, ok, now.Add(time.Hour))
	}
}

// countingObserver counts committed transactions.
type countingObserver struct {
	mu      sync.Mutex
	commits []Commit
}

func (o *countingObserver) Committed(c Commit) {
	o.mu.Lock()
	o.commits = append(o.commits, c)
	o.mu.Unlock()
}

func (o *countingObserver) synced() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, c := range o.commits {
		if c.Synced {
			n++
		}
	}
	return n
}

// TestClaimExclusive: concurrent claims never hand out one recipient
// twice, and together they hand out every due recipient.
func TestClaimExclusive(t *testing.T) {
	clk := newClock()
	s, _ := openSpool(t, Options{Now: clk.Now, UnsafeNoSync: true})
	const msgs = 200
	for range msgs {
		enqueue(t, s, envelope("a@o.test", "b@d.example", "c@e.example"), nil)
	}
	now := clk.Now()
	var mu sync.Mutex
	claimed := make(map[Task]int)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				tasks, err := s.Claim(t.Context(), now, 7, func(Task) time.Time { return now.Add(time.Hour) })
				if err != nil {
					t.Error(err)
					return
				}
				if len(tasks) == 0 {
					return
				}
				mu.Lock()
				for _, task := range tasks {
					claimed[task]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(claimed) != 2*msgs {
		t.Errorf("claimed %d recipients, want %d", len(claimed), 2*msgs)
	}
	for task, n := range claimed {
		if n != 1 {
			t.Errorf("%s/%d claimed %d times", task.ID, task.Rcpt, n)
		}
	}
	verifyNow(t, s)
}
