package delivery_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"mta/delivery"
	"mta/internal/peer"
	"mta/internal/testpeer"
	"mta/spool"
)

func TestDeliverReusesConnections(t *testing.T) {
	eachMode(t, func(t *testing.T, lockStep bool) {
		w := newWorld(t, setup{lockStep: lockStep, zone: oneMXZone, hosts: map[string]peer.Behaviour{"127.0.0.2": {}},
			cfg: func(c *delivery.Config) { c.IdleTimeout = time.Minute }})
		for i := range 3 {
			id := w.send("s@sender.test", []string{"x@example.test"}, body7)
			w.waitStates(id, spool.Delivered)
			if i == 0 && w.sched.OpenConnections() != 1 {
				t.Errorf("%d connections open after the first message, want 1 idle", w.sched.OpenConnections())
			}
		}
		h := w.hosts["127.0.0.2"]
		if n := h.Connections(); n != 1 {
			t.Fatalf("%d connections, want 1 reused", n)
		}
		if s := h.Sessions()[0]; len(s.Transactions) != 3 {
			t.Errorf("%d transactions on the connection, want 3", len(s.Transactions))
		}
	})
}

func TestDeliverIdleConnectionsClose(t *testing.T) {
	w := newWorld(t, setup{zone: oneMXZone, hosts: map[string]peer.Behaviour{"127.0.0.2": {}},
		cfg: func(c *delivery.Config) { c.IdleTimeout = 50 * time.Millisecond }})
	id := w.send("s@sender.test", []string{"x@example.test"}, body7)
	w.waitStates(id, spool.Delivered)
	testpeer.WaitFor(t, "the idle connection to close", func() bool { return w.sched.OpenConnections() == 0 })
}

func TestDeliverDeadDestinationIsNotRedialled(t *testing.T) {
	busy := peer.Behaviour{Greeting: &peer.Reply{Code: 421, Enhanced: "4.3.2", Text: "overloaded"}}
	w := newWorld(t, setup{zone: basicZone, hosts: map[string]peer.Behaviour{"127.0.0.2": busy, "127.0.0.3": busy}, noStart: true})
	var ids []string
	for range 5 {
		ids = append(ids, w.send("s@sender.test", []string{"x@example.test"}, body7))
	}
	w.start()
	for _, id := range ids {
		w.waitAttempts(id, 0, 1)
	}
	mx1, mx2 := w.hosts["127.0.0.2"], w.hosts["127.0.0.3"]
	if a, b := mx1.Connections(), mx2.Connections(); a != 1 || b != 1 {
		t.Errorf("connections %d, %d: want one attempt at each host for 5 messages", a, b)
	}
	for _, id := range ids {
		if r := w.message(id).Envelope.Recipients[0]; r.State != spool.Deferred {
			t.Errorf("%s: state %v, want deferred", id, r.State)
		}
	}
	// The backoff ends: one probe (one session per host) finds them still
	// down; the other four are deferred again without dialling.
	w.retry(20 * time.Minute)
	for _, id := range ids {
		w.waitAttempts(id, 0, 2)
	}
	if a, b := mx1.Connections(), mx2.Connections(); a != 2 || b != 2 {
		t.Errorf("connections %d, %d after the probe: want one more each", a, b)
	}
	// The next probe finds them back, then the rest goes.
	for _, h := range []*peer.Host{mx1, mx2} {
		if err := h.SetBehaviour(peer.Behaviour{}); err != nil {
			t.Fatal(err)
		}
	}
	w.retry(time.Hour)
	for _, id := range ids {
		w.waitStates(id, spool.Delivered)
	}
}

func TestDeliverShutdownLosesNothing(t *testing.T) {
	w := newWorld(t, setup{zone: oneMXZone, hosts: map[string]peer.Behaviour{"127.0.0.2": {Hang: peer.HangDot}}})
	id := w.send("s@sender.test", []string{"x@example.test"}, body7)
	h := w.hosts["127.0.0.2"]
	testpeer.WaitHost(t, h, "the message to be sent", func(h *peer.Host) bool {
		ss := h.Sessions()
		return len(ss) == 1 && len(ss[0].Transactions) == 1 && ss[0].Transactions[0].Size > 0
	})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := w.sched.Shutdown(ctx); err == nil {
		t.Errorf("shutdown finished in time with a hung transaction in flight")
	}
	r := w.message(id).Envelope.Recipients[0]
	if r.State.Final() {
		t.Fatalf("state %v after an interrupted delivery, want still queued", r.State)
	}
	// The next run (a restart) delivers it once its committed time comes.
	if err := h.SetBehaviour(peer.Behaviour{}); err != nil {
		t.Fatal(err)
	}
	w.clock.advance(time.Hour)
	cfg := w.cfg
	s, err := delivery.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w.sched = s
	w.kick.Store(s)
	w.start()
	w.waitStates(id, spool.Delivered)
}

func TestDeliverLifetimeExpires(t *testing.T) {
	zone := oneMXZone + `
sender.test. 300 IN MX 10 mx.sender.test.
mx.sender.test. 300 IN A 127.0.0.4
`
	busy := peer.Behaviour{Rcpt: &peer.Reply{Code: 450, Enhanced: "4.2.0", Text: "not now"}}
	w := newWorld(t, setup{zone: zone, hosts: map[string]peer.Behaviour{"127.0.0.2": busy, "127.0.0.4": {}},
		cfg: func(c *delivery.Config) { c.DelayWarning = -1 }})
	id := w.send("s@sender.test", []string{"x@example.test"}, body7)
	w.waitAttempts(id, 0, 1)
	w.retry(5*24*time.Hour + time.Minute)
	m := w.waitStates(id, spool.Failed)
	if a := lastAttempt(&m.Envelope.Recipients[0]); a.Code != 450 {
		t.Errorf("last attempt %+v", a)
	}
	sender := w.hosts["127.0.0.4"]
	testpeer.WaitHost(t, sender, "the failure DSN", func(h *peer.Host) bool { return len(h.Messages()) == 1 })
	if d := string(sender.Messages()[0].Data); !contains(d, "Action: failed", "Status: 5.2.0", "Diagnostic-Code: smtp; 450 4.2.0 not now") {
		t.Errorf("DSN:\n%s", d)
	}
}

func TestDeliverBoundedQueues(t *testing.T) {
	w := newWorld(t, setup{zone: oneMXZone, hosts: map[string]peer.Behaviour{"127.0.0.2": {}}, noStart: true,
		cfg: func(c *delivery.Config) { c.ActiveEntries, c.DestinationEntries = 4, 4 }})
	var ids []string
	for range 20 {
		ids = append(ids, w.send("s@sender.test", []string{"x@example.test"}, body7))
	}
	w.start()
	for _, id := range ids {
		w.waitStates(id, spool.Delivered)
	}
}

func TestDeliverSlowDestinationDoesNotBlockOthers(t *testing.T) {
	zone := `
slow.test. 300 IN MX 10 mx.slow.test.
mx.slow.test. 300 IN A 127.0.0.3
` + oneMXZone
	w := newWorld(t, setup{zone: zone, noStart: true,
		hosts: map[string]peer.Behaviour{"127.0.0.2": {}, "127.0.0.3": {Hang: peer.HangDot}},
		cfg: func(c *delivery.Config) {
			c.ActiveEntries, c.DestinationEntries = 4, 2
			c.Timeouts.FinalDot = time.Minute // the slow host holds its slots
		}})
	for range 5 {
		w.send("s@sender.test", []string{"x@slow.test"}, body7)
	}
	var fast []string
	for range 3 {
		fast = append(fast, w.send("s@sender.test", []string{"y@example.test"}, body7))
	}
	w.start()
	for _, id := range fast {
		w.waitStates(id, spool.Delivered)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_ = w.sched.Shutdown(ctx) // the slow host still holds its attempts: cut them off
}

// leased counts the recipients of ids a claim has taken: their next
// attempt moved from their arrival to the lease.
func (w *world) leased(ids []string, at time.Time) int {
	w.t.Helper()
	n := 0
	for _, id := range ids {
		if r := w.message(id).Envelope.Recipients[0]; r.NextAttempt.Equal(at) {
			n++
		}
	}
	return n
}

// TestDeliverQueueBounds: the scheduler holds no more claimed recipients
// than ActiveEntries, and one destination no more than DestinationEntries;
// the rest stays in the spool (memory stays flat whatever is queued). A
// host that never answers the final dot keeps what was claimed claimed.
func TestDeliverQueueBounds(t *testing.T) {
	const lease = 5 * time.Minute // the first backoff, with the world's fixed jitter
	tests := []struct {
		name           string
		active, perDst int
		wantHeld       int
		wantGivenBack  int // claimed past DestinationEntries and given back at once
	}{
		{"active_entries", 3, 3, 3, 0},
		{"destination_entries", 10, 2, 2, 8},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			zone := oneMXZone + "other.test. 300 IN MX 10 mx.other.test.\nmx.other.test. 300 IN A 127.0.0.3\n"
			w := newWorld(t, setup{zone: zone, noStart: true,
				hosts: map[string]peer.Behaviour{"127.0.0.2": {Hang: peer.HangDot}, "127.0.0.3": {}},
				cfg: func(c *delivery.Config) {
					c.ActiveEntries, c.DestinationEntries = tc.active, tc.perDst
					c.Timeouts.FinalDot = time.Minute
				}})
			var ids []string
			for range 10 {
				ids = append(ids, w.send("s@sender.test", []string{"x@example.test"}, body7))
			}
			now := w.clock.now()
			w.start()
			testpeer.WaitHost(t, w.hosts["127.0.0.2"], "a message to hang at the final dot", func(h *peer.Host) bool {
				ss := h.Sessions()
				return len(ss) == 1 && len(ss[0].Transactions) == 1 && ss[0].Transactions[0].Size > 0
			})
			if tc.wantGivenBack > 0 {
				// Another destination still gets its share.
				w.waitStates(w.send("s@sender.test", []string{"y@other.test"}, body7), spool.Delivered)
				testpeer.WaitFor(t, "the excess to be given back", func() bool {
					return w.leased(ids, now.Add(time.Minute)) == tc.wantGivenBack
				})
			}
			if n := w.leased(ids, now.Add(lease)); n != tc.wantHeld {
				t.Errorf("%d recipients held by the scheduler, want %d", n, tc.wantHeld)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
			defer cancel()
			_ = w.sched.Shutdown(ctx) // cut the hung attempt off
		})
	}
}

// TestDeliverBacklogPostponed: recipients due past a destination's
// DestinationEntries are postponed, not claimed, spread at twice the rate
// the destination has been finishing recipients; the backlog then drains
// at that pace, each recipient rewritten a few times, not once a minute
// each until its turn (the fallback before any rate is known).
func TestDeliverBacklogPostponed(t *testing.T) {
	const backlog, perDst = 30, 2
	w := newWorld(t, setup{zone: oneMXZone, noStart: true, hosts: map[string]peer.Behaviour{"127.0.0.2": {}},
		cfg: func(c *delivery.Config) { c.ActiveEntries, c.DestinationEntries = 100, perDst }})
	var rcpts []string
	for i := range backlog {
		rcpts = append(rcpts, fmt.Sprintf("r%d@example.test", i))
	}
	big := w.send("s@sender.test", rcpts, body7)
	if err := w.sp.Hold(t.Context(), big); err != nil {
		t.Fatal(err)
	}
	w.start()
	// The destination finishes one recipient now and one two seconds on:
	// about one a second.
	w.waitStates(w.send("s@sender.test", []string{"a@example.test"}, body7), spool.Delivered)
	w.clock.advance(2 * time.Second)
	w.waitStates(w.send("s@sender.test", []string{"b@example.test"}, body7), spool.Delivered)

	now := w.clock.now()
	if err := w.sp.Release(t.Context(), big); err != nil {
		t.Fatal(err)
	}
	// One claim sees the whole backlog: it takes perDst and postpones the rest.
	var later []time.Time
	testpeer.WaitFor(t, "the backlog to be claimed or postponed", func() bool {
		later = later[:0]
		for _, r := range w.message(big).Envelope.Recipients {
			if r.State != spool.Delivered && r.NextAttempt.After(now) && r.NextAttempt.Before(now.Add(time.Minute)) {
				later = append(later, r.NextAttempt)
			}
		}
		return len(later) == backlog-perDst
	})
	// Due times are rounded up to a quarter second, so that the spread
	// backlog comes due in batches.
	const grain = 250 * time.Millisecond
	slices.SortFunc(later, time.Time.Compare)
	step := later[len(later)-1].Sub(later[0]) / time.Duration(len(later)-1)
	if step < 250*time.Millisecond || step > time.Second {
		t.Fatalf("postponed %v apart on average, want about half a second (twice a rate of about one a second)", step)
	}
	if first := later[0].Sub(now); first < perDst*step-grain {
		t.Errorf("first postponed to %v from now, want after the %d held (%v)", first, perDst, perDst*step)
	}
	for i, at := range later {
		if at.UnixNano()%int64(grain) != 0 {
			t.Errorf("postponed to %v, not on a %v boundary", at, grain)
		}
		if i > 0 {
			if d := at.Sub(later[i-1]); d > step+grain {
				t.Fatalf("postponed times %v and %v are %v apart, want at most %v (evenly spread)", later[i-1], at, d, step+grain)
			}
		}
	}
	if got := w.postponed(); got != backlog-perDst {
		t.Errorf("%d postponements counted, want %d", got, backlog-perDst)
	}
	if want := fmt.Sprintf(`msg="recipients postponed: destination holds its share" destination=example.test count=%d`, backlog-perDst); !strings.Contains(w.logs.String(), want) {
		t.Errorf("no debug line %q in the log", want)
	}

	// Time passes in small steps: the backlog drains well inside the
	// minute the fallback would put each one off for.
	for range 600 {
		if w.countState(big, spool.Delivered) == backlog {
			break
		}
		w.clock.advance(100 * time.Millisecond)
		w.sched.Kick()
		time.Sleep(2 * time.Millisecond)
	}
	if n := w.countState(big, spool.Delivered); n != backlog {
		t.Fatalf("%d of %d delivered after a minute", n, backlog)
	}
	if took := w.clock.now().Sub(now); took >= time.Minute {
		t.Errorf("backlog took %v to drain, want under the minute of the fallback", took)
	}
	t.Logf("postponed %v apart; drained in %v with %d postponements", step, w.clock.now().Sub(now), w.postponed())
	if got := w.postponed(); got > 4*backlog {
		t.Errorf("%d postponements for %d recipients, want a few each", got, backlog)
	}
}

// capsZone has three domains with a host each, and dead.test, whose host
// refuses connections.
const capsZone = `
a.test. 300 IN MX 10 mx.a.test.
mx.a.test. 300 IN A 127.0.0.2
b.test. 300 IN MX 10 mx.b.test.
mx.b.test. 300 IN A 127.0.0.3
c.test. 300 IN MX 10 mx.c.test.
mx.c.test. 300 IN A 127.0.0.4
dead.test. 300 IN MX 10 mx.dead.test.
mx.dead.test. 300 IN A 127.0.0.5
`

// deadDestination fails one attempt to dead.test, so its mail is deferred
// from then on without a connection or a slot.
func (w *world) deadDestination() {
	w.t.Helper()
	r := w.waitAttempts(w.send("s@sender.test", []string{"x@dead.test"}, body7), 0, 1)
	if a := lastAttempt(r); r.State != spool.Deferred || a.Phase != "dial" {
		w.t.Fatalf("dead.test: %v, attempt %+v; want deferred at dial", r.State, a)
	}
}

// afterDispatch waits until the scheduler has dispatched once more: a
// message to the dead destination is deferred without dialling, by the
// same pass over the queues that would start any attempt a free slot
// allowed.
func (w *world) afterDispatch() {
	w.t.Helper()
	r := w.waitAttempts(w.send("s@sender.test", []string{"y@dead.test"}, body7), 0, 1)
	if a := lastAttempt(r); a.Phase != "local" || !strings.Contains(a.Text, "not dialled") {
		w.t.Fatalf("dead.test: attempt %+v, want deferred without dialling", a)
	}
}

func connections(hosts ...*peer.Host) int {
	n := 0
	for _, h := range hosts {
		n += h.Connections()
	}
	return n
}

// TestDeliverConnectionCaps: attempts never exceed MaxConns in all, nor
// PerDestinationConns for one destination; the others wait for a slot.
func TestDeliverConnectionCaps(t *testing.T) {
	hang := peer.Behaviour{Hang: peer.HangGreeting}
	t.Run("global", func(t *testing.T) {
		w := newWorld(t, setup{zone: capsZone,
			hosts: map[string]peer.Behaviour{"127.0.0.2": hang, "127.0.0.3": hang, "127.0.0.4": hang, "127.0.0.5": {Refuse: true}},
			cfg: func(c *delivery.Config) {
				c.MaxConns = 2
				c.Timeouts.Greeting = time.Minute
			}})
		w.deadDestination()
		for _, d := range []string{"a", "b", "c"} {
			w.send("s@sender.test", []string{"x@" + d + ".test"}, body7)
		}
		a, b, c := w.hosts["127.0.0.2"], w.hosts["127.0.0.3"], w.hosts["127.0.0.4"]
		testpeer.WaitFor(t, "two hosts to be dialled", func() bool { return connections(a, b, c) >= 2 })
		w.afterDispatch()
		if n := connections(a, b, c); n != 2 {
			t.Errorf("%d connections to three destinations, want MaxConns = 2", n)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		_ = w.sched.Shutdown(ctx) // cut the hung attempts off
	})
	t.Run("per_destination", func(t *testing.T) {
		w := newWorld(t, setup{zone: capsZone,
			hosts: map[string]peer.Behaviour{"127.0.0.2": {}, "127.0.0.5": {Refuse: true}},
			cfg: func(c *delivery.Config) {
				c.PerDestinationConns = 2
				c.IdleTimeout = time.Minute
				c.Timeouts.FinalDot = time.Minute
			}})
		w.deadDestination()
		// One delivery proves the destination: until then it gets one
		// attempt at a time.
		w.waitStates(w.send("s@sender.test", []string{"x@a.test"}, body7), spool.Delivered)
		h := w.hosts["127.0.0.2"]
		if err := h.SetBehaviour(peer.Behaviour{Hang: peer.HangDot}); err != nil {
			t.Fatal(err)
		}
		for range 4 {
			w.send("s@sender.test", []string{"x@a.test"}, body7)
		}
		hung := func() int {
			n := 0
			for _, s := range h.Sessions() {
				n += len(s.Transactions)
			}
			return n - 1 // the first was delivered
		}
		testpeer.WaitFor(t, "two messages to hang at the final dot", func() bool { return hung() >= 2 })
		w.afterDispatch()
		if n := hung(); n != 2 {
			t.Errorf("%d transactions at once to one destination, want PerDestinationConns = 2", n)
		}
		if n := h.Connections(); n != 2 {
			t.Errorf("%d connections, want 2: the idle one reused, one more", n)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		_ = w.sched.Shutdown(ctx)
	})
}

// TestDeliverReuseBounds: a connection carries at most ReuseMessages
// messages and lives at most ReuseAge, also when that age passes while it
// is idle; then it is closed with QUIT and the next message opens a new
// one.
func TestDeliverReuseBounds(t *testing.T) {
	tests := []struct {
		name      string
		cfg       func(*delivery.Config)
		pause     time.Duration // between the messages
		wantConns int           // for 4 messages, one after the other
		wantQuits int           // connections ended with QUIT by the end
	}{
		{"messages", func(c *delivery.Config) { c.ReuseMessages = 2 }, 0, 2, 2},
		{"age", func(c *delivery.Config) { c.ReuseAge = time.Nanosecond }, 0, 4, 4},
		// The last connection is young when it goes idle, and stays so.
		{"age_while_idle", func(c *delivery.Config) { c.ReuseAge = 300 * time.Millisecond }, 350 * time.Millisecond, 4, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, setup{zone: oneMXZone, hosts: map[string]peer.Behaviour{"127.0.0.2": {}},
				cfg: func(c *delivery.Config) { c.IdleTimeout = time.Minute; tc.cfg(c) }})
			for i := range 4 {
				if i > 0 {
					time.Sleep(tc.pause) // the idle connection ages
				}
				w.waitStates(w.send("s@sender.test", []string{"x@example.test"}, body7), spool.Delivered)
			}
			h := w.hosts["127.0.0.2"]
			if n := h.Connections(); n != tc.wantConns {
				t.Errorf("%d connections for 4 messages, want %d", n, tc.wantConns)
			}
			testpeer.WaitHost(t, h, "every connection to say QUIT", func(h *peer.Host) bool {
				quits := 0
				for _, s := range h.Sessions() {
					if n := len(s.Commands); n > 0 && strings.EqualFold(s.Commands[n-1].Line, "QUIT") {
						quits++
					}
				}
				return quits == tc.wantQuits
			})
		})
	}
}

// TestDeliverShutdownQuitsIdleConnections: at shutdown an idle connection
// says QUIT before it closes.
func TestDeliverShutdownQuitsIdleConnections(t *testing.T) {
	w := newWorld(t, setup{zone: oneMXZone, hosts: map[string]peer.Behaviour{"127.0.0.2": {}},
		cfg: func(c *delivery.Config) { c.IdleTimeout = time.Minute }})
	w.waitStates(w.send("s@sender.test", []string{"x@example.test"}, body7), spool.Delivered)
	if err := w.sched.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := w.sched.OpenConnections(); n != 0 {
		t.Errorf("%d connections open after shutdown", n)
	}
	h := w.hosts["127.0.0.2"]
	testpeer.WaitHost(t, h, "QUIT", func(h *peer.Host) bool {
		c := h.Sessions()[0].Commands
		return len(c) > 0 && c[len(c)-1].Line == "QUIT"
	})
}
