package spool

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"
)

// TestProperties runs random sequences of every operation against a
// model of what each recipient's state should be. After every step the
// spool must agree with the model and keep its invariants (verify), and
// when the test ends the offline Check must find nothing.
func TestProperties(t *testing.T) {
	steps := 300
	if testing.Short() {
		steps = 150
	}
	for seed := range uint64(4) {
		t.Run(fmt.Sprintf("seed_%d", seed), func(t *testing.T) {
			p := newProp(t, seed)
			for step := range steps {
				op := p.step()
				if t.Failed() {
					t.Fatalf("step %d (%s) broke the spool", step, op)
				}
			}
		})
	}
}

type mRcpt struct {
	state   State
	held    bool
	count   int
	next    time.Time
	claimed bool
}

type mMsg struct {
	sender  string
	dsn     bool
	rcpts   []mRcpt
	retired bool
}

type prop struct {
	t     *testing.T
	rng   *rand.Rand
	clk   *clock
	dir   string
	opts  Options
	s     *Spool
	msgs  map[string]*mMsg
	order []string
}

func newProp(t *testing.T, seed uint64) *prop {
	p := &prop{t: t, rng: rand.New(rand.NewPCG(seed, 1)), clk: newClock(), msgs: make(map[string]*mMsg)}
	p.opts = Options{
		Now: p.clk.Now, InlineBodyBytes: 512, MaxAttemptLog: 3, RetiredMaxCount: 100_000,
		UnsafeNoSync: true, MinFreeBytes: -1, Bounce: propBounce,
	}
	p.s, p.dir = openSpool(t, p.opts)
	return p
}

// propBounce owes a DSN when a recipient failed.
func propBounce(m *Message, _ func() ([]byte, error)) (*NewMessage, error) {
	for _, r := range m.Envelope.Recipients {
		if r.State == Failed {
			env := envelope("", m.Envelope.Sender)
			env.DSN = true
			return &NewMessage{ID: "dsn-" + m.ID, Envelope: *env, Body: []byte("report")}, nil
		}
	}
	return nil, nil
}

func (p *prop) step() string {
	ops := []struct {
		name   string
		weight int
		run    func()
	}{
		{"enqueue", 6, p.enqueue}, {"claim", 6, p.claim}, {"record", 8, p.record},
		{"unclaim", 1, p.unclaim}, {"hold", 1, p.hold}, {"release", 1, p.release},
		{"retry", 1, p.retry}, {"delete", 1, p.delete}, {"advance", 3, p.advance}, {"reopen", 1, p.reopen},
	}
	total := 0
	for _, op := range ops {
		total += op.weight
	}
	n := p.rng.IntN(total)
	for _, op := range ops {
		if n -= op.weight; n < 0 {
			op.run()
			p.compare()
			return op.name
		}
	}
	panic("unreachable")
}

func (p *prop) enqueue() {
	domains := []string{"a.example", "b.example", "c.example"}
	var rcpts []string
	for i := range 1 + p.rng.IntN(3) {
		rcpts = append(rcpts, fmt.Sprintf("u%d@%s", i, domains[p.rng.IntN(len(domains))]))
	}
	sender := "s@o.test"
	if p.rng.IntN(5) == 0 {
		sender = ""
	}
	size := []int{0, 100, 600, 3000}[p.rng.IntN(4)]
	id := enqueue(p.t, p.s, envelope(sender, rcpts...), bodyOf("p", size))
	p.add(id, &mMsg{sender: sender, rcpts: make([]mRcpt, len(rcpts))})
}

func (p *prop) add(id string, m *mMsg) {
	for i := range m.rcpts {
		m.rcpts[i] = mRcpt{state: Pending, next: p.clk.Now()}
	}
	p.msgs[id] = m
	p.order = append(p.order, id)
}

// eligible are the recipients Claim may return at now.
func (p *prop) eligible(now time.Time) map[rkey]bool {
	out := make(map[rkey]bool)
	for id, m := range p.msgs {
		for i, r := range m.rcpts {
			if !m.retired && !r.state.Final() && !r.held && !r.claimed && !r.next.After(now) {
				out[rkey{id, i}] = true
			}
		}
	}
	return out
}

func (p *prop) claim() {
	now := p.clk.Now()
	limit := 1 + p.rng.IntN(5)
	want := p.eligible(now)
	tasks, err := p.s.Claim(p.t.Context(), now, limit, func(Task) time.Time { return now.Add(5 * time.Minute) })
	if err != nil {
		p.t.Fatalf("Claim: %v", err)
	}
	if len(tasks) != min(limit, len(want)) {
		p.t.Errorf("Claim(limit %d) returned %d of %d eligible", limit, len(tasks), len(want))
	}
	for _, task := range tasks {
		k := rkey{task.ID, task.Rcpt}
		if !want[k] {
			p.t.Errorf("Claim returned %v, not eligible", k)
			continue
		}
		r := &p.msgs[task.ID].rcpts[task.Rcpt]
		r.claimed, r.next = true, now.Add(5*time.Minute)
		if task.Attempts != r.count {
			p.t.Errorf("task %v: Attempts %d, want %d", k, task.Attempts, r.count)
		}
	}
}

func (p *prop) claimed() []rkey {
	var out []rkey
	for _, id := range p.order {
		for i, r := range p.msgs[id].rcpts {
			if r.claimed {
				out = append(out, rkey{id, i})
			}
		}
	}
	return out
}

func (p *prop) record() {
	cl := p.claimed()
	if len(cl) == 0 {
		return
	}
	k := cl[p.rng.IntN(len(cl))]
	now := p.clk.Now()
	st := []State{Deferred, Deferred, Delivered, Failed}[p.rng.IntN(4)]
	next := now.Add(time.Duration(p.rng.IntN(600)) * time.Second)
	record(p.t, p.s, result(k.id, k.rcpt, st, now, next))
	m := p.msgs[k.id]
	r := &m.rcpts[k.rcpt]
	r.claimed = false
	if m.retired || r.state.Final() {
		return
	}
	r.state, r.count = st, r.count+1
	if st == Deferred {
		r.next = next
	}
	p.retireIfDone(k.id, true)
}

// retireIfDone mirrors the spool's retirement and bounce.
func (p *prop) retireIfDone(id string, notify bool) {
	m := p.msgs[id]
	failed := false
	for _, r := range m.rcpts {
		if !r.state.Final() {
			return
		}
		failed = failed || r.state == Failed
	}
	m.retired = true
	for i := range m.rcpts {
		m.rcpts[i].claimed = false
	}
	if notify && failed && m.sender != "" && !m.dsn {
		p.add("dsn-"+id, &mMsg{dsn: true, rcpts: make([]mRcpt, 1)})
	}
}

func (p *prop) unclaim() {
	cl := p.claimed()
	if len(cl) == 0 {
		return
	}
	k := cl[p.rng.IntN(len(cl))]
	p.s.Unclaim([]Task{{ID: k.id, Rcpt: k.rcpt}})
	p.msgs[k.id].rcpts[k.rcpt].claimed = false
}

// pick returns a message ID, live or not (or an unknown one).
func (p *prop) pick() (string, *mMsg) {
	if len(p.order) == 0 || p.rng.IntN(10) == 0 {
		return NewID(), nil
	}
	id := p.order[p.rng.IntN(len(p.order))]
	return id, p.msgs[id]
}

// expectLive checks err for an operation on a message that must be live.
func (p *prop) expectLive(op string, m *mMsg, err error) bool {
	if m == nil || m.retired {
		if !errors.Is(err, ErrNotFound) {
			p.t.Errorf("%s of a message not live: %v, want ErrNotFound", op, err)
		}
		return false
	}
	if err != nil {
		p.t.Fatalf("%s: %v", op, err)
	}
	return true
}

func (p *prop) hold() {
	id, m := p.pick()
	if p.expectLive("Hold", m, p.s.Hold(p.t.Context(), id)) {
		for i := range m.rcpts {
			if !m.rcpts[i].state.Final() {
				m.rcpts[i].held = true
			}
		}
	}
}

func (p *prop) release() {
	id, m := p.pick()
	if p.expectLive("Release", m, p.s.Release(p.t.Context(), id)) {
		now := p.clk.Now()
		for i := range m.rcpts {
			r := &m.rcpts[i]
			if r.held {
				r.held = false
				if r.next.Before(now) {
					r.next = now
				}
			}
		}
	}
}

func (p *prop) retry() {
	now := p.clk.Now()
	id, m := p.pick()
	all := p.rng.IntN(3) == 0
	if all {
		id = ""
	}
	n, err := p.s.Retry(p.t.Context(), id, now)
	if !all && !p.expectLive("Retry", m, err) {
		return
	}
	if all && err != nil {
		p.t.Fatalf("Retry(all): %v", err)
	}
	want := 0
	for mid, mm := range p.msgs {
		if (!all && mid != id) || mm.retired {
			continue
		}
		for i := range mm.rcpts {
			r := &mm.rcpts[i]
			if !r.state.Final() && !r.held && !r.claimed && r.next.After(now) {
				r.next = now
				want++
			}
		}
	}
	if n != want {
		p.t.Errorf("Retry(%q) moved %d, want %d", id, n, want)
	}
}

func (p *prop) delete() {
	id, m := p.pick()
	bounce := p.rng.IntN(2) == 0
	if p.expectLive("Delete", m, p.s.Delete(p.t.Context(), id, bounce, "test")) {
		for i := range m.rcpts {
			r := &m.rcpts[i]
			if !r.state.Final() {
				r.state, r.held, r.count = Failed, false, r.count+1
			}
		}
		p.retireIfDone(id, bounce)
	}
}

func (p *prop) advance() { p.clk.Advance(time.Duration(p.rng.IntN(400)) * time.Second) }

func (p *prop) reopen() {
	if err := p.s.Close(); err != nil {
		p.t.Fatal(err)
	}
	checkClean(p.t, p.dir)
	p.s = openIn(p.t, p.dir, p.opts)
	for _, m := range p.msgs {
		for i := range m.rcpts {
			m.rcpts[i].claimed = false
		}
	}
}

// compare checks the spool against the model: invariants, every message's
// recipients, and the counters.
func (p *prop) compare() {
	verifyNow(p.t, p.s)
	want := Counts{ByState: map[string]int{"pending": 0, "deferred": 0, "held": 0}}
	for _, id := range p.order {
		mm := p.msgs[id]
		got := message(p.t, p.s, id)
		if got.Retired != mm.retired {
			p.t.Errorf("%s: retired %v, want %v", id, got.Retired, mm.retired)
		}
		if mm.retired {
			want.Retired++
		} else {
			want.Messages++
		}
		if !mm.retired {
			p.checkLoad(got)
		}
		for i, r := range got.Envelope.Recipients {
			w := mm.rcpts[i]
			if r.State != w.state || r.Held != w.held || r.AttemptCount != w.count ||
				len(r.Attempts) != min(w.count, p.opts.MaxAttemptLog) || (!w.state.Final() && !r.NextAttempt.Equal(w.next)) {
				p.t.Errorf("%s/%d: %v held %v count %d (%d logged) next %v; want %+v",
					id, i, r.State, r.Held, r.AttemptCount, len(r.Attempts), r.NextAttempt, w)
			}
			switch {
			case w.state.Final() || mm.retired:
			case w.held:
				want.ByState["held"]++
			default:
				want.ByState[w.state.String()]++
			}
		}
	}
	p.checkNextDue()
	c, err := p.s.Counts()
	if err != nil {
		p.t.Fatal(err)
	}
	if c.Messages != want.Messages || c.Retired != want.Retired || !mapsEqual(c.ByState, want.ByState) {
		p.t.Errorf("Counts %+v, want %+v", c, want)
	}
	p.checkList()
}

// checkLoad checks that Load agrees with Message on a live message, but
// for the attempt logs, and gives a body of its size.
func (p *prop) checkLoad(want *Message) {
	m, r, err := p.s.Load(want.ID)
	if err != nil {
		p.t.Fatalf("Load(%s): %v", want.ID, err)
	}
	n, err := io.Copy(io.Discard, r)
	_ = r.Close() // read only
	if err != nil || n != want.Envelope.Size {
		p.t.Errorf("Load(%s) body: %d bytes, %v; want %d", want.ID, n, err, want.Envelope.Size)
	}
	for i := range m.Envelope.Recipients {
		r := m.Envelope.Recipients[i]
		w := want.Envelope.Recipients[i]
		if len(r.Attempts) != 0 {
			p.t.Errorf("Load(%s) recipient %d has attempt logs", want.ID, i)
		}
		w.Attempts = nil
		if !reflect.DeepEqual(r, w) {
			p.t.Errorf("Load(%s) recipient %d = %+v, want %+v", want.ID, i, r, w)
		}
	}
}

// checkNextDue checks NextDue against the model: exactly the earliest next
// attempt of a live recipient that is not final, held or claimed. Later
// would stall delivery; earlier would wake it for nothing.
func (p *prop) checkNextDue() {
	var want time.Time
	for _, m := range p.msgs {
		for _, r := range m.rcpts {
			if !m.retired && !r.state.Final() && !r.held && !r.claimed && (want.IsZero() || r.next.Before(want)) {
				want = r.next
			}
		}
	}
	got, ok, err := p.s.NextDue()
	if err != nil {
		p.t.Fatalf("NextDue: %v", err)
	}
	if ok != !want.IsZero() || !got.Equal(want) {
		p.t.Errorf("NextDue = %v, %v; want %v (zero: none)", got, ok, want)
	}
}

// checkList pages through every live message.
func (p *prop) checkList() {
	var got, want []string
	for _, id := range p.order {
		if !p.msgs[id].retired {
			want = append(want, id)
		}
	}
	slices.Sort(want)
	after := ""
	for {
		msgs, next, err := p.s.List(p.t.Context(), Filter{}, after, 7)
		if err != nil {
			p.t.Fatal(err)
		}
		for _, m := range msgs {
			got = append(got, m.ID)
		}
		if next == "" {
			break
		}
		after = next
	}
	if !slices.Equal(got, want) {
		p.t.Errorf("List: %d messages, want %d", len(got), len(want))
	}
}
