package delivery_test

import (
	"context"
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
