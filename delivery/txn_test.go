package delivery_test

import (
	"strings"
	"testing"
	"time"

	"mta/delivery"
	"mta/internal/peer"
	"mta/internal/testpeer"
	"mta/spool"
)

func TestDeliver452SplitsTheTransaction(t *testing.T) {
	eachMode(t, func(t *testing.T, lockStep bool) {
		w := newWorld(t, setup{lockStep: lockStep, zone: basicZone, hosts: map[string]peer.Behaviour{"127.0.0.2": {MaxRcpts: 2}}})
		var to []string
		for _, u := range []string{"a", "b", "c", "d", "e"} {
			to = append(to, u+"@example.test")
		}
		id := w.send("s@sender.test", to, body7)
		w.waitStates(id, spool.Delivered, spool.Delivered, spool.Delivered, spool.Delivered, spool.Delivered)
		h := w.hosts["127.0.0.2"]
		if n := h.Connections(); n != 1 {
			t.Errorf("%d connections, want 1 (new transactions on the same session)", n)
		}
		msgs := h.Messages()
		if len(msgs) != 3 {
			t.Fatalf("%d transactions, want 3 (2+2+1)", len(msgs))
		}
		seen := map[string]bool{}
		for _, m := range msgs {
			for _, r := range m.To {
				if seen[r] {
					t.Errorf("%s delivered twice", r)
				}
				seen[r] = true
			}
		}
		if len(seen) != 5 {
			t.Errorf("delivered to %v", seen)
		}
	})
}

func TestDeliverMaxRcptsPerTxn(t *testing.T) {
	eachMode(t, func(t *testing.T, lockStep bool) {
		w := newWorld(t, setup{lockStep: lockStep, zone: basicZone, hosts: map[string]peer.Behaviour{"127.0.0.2": {}},
			cfg: func(c *delivery.Config) { c.MaxRcptsPerTxn = 2 }})
		id := w.send("s@sender.test", []string{"a@example.test", "b@example.test", "c@example.test"}, body7)
		w.waitStates(id, spool.Delivered, spool.Delivered, spool.Delivered)
		if n := len(w.hosts["127.0.0.2"].Messages()); n != 2 {
			t.Errorf("%d transactions, want 2", n)
		}
	})
}

func TestDeliverTemporaryRecipientRetriedAlone(t *testing.T) {
	eachMode(t, func(t *testing.T, lockStep bool) {
		w := newWorld(t, setup{lockStep: lockStep, zone: basicZone, hosts: map[string]peer.Behaviour{"127.0.0.2": {
			RcptReplies: map[string]peer.Reply{"later@example.test": {Code: 450, Enhanced: "4.2.1", Text: "mailbox busy"}},
		}}})
		id := w.send("s@sender.test", []string{"now@example.test", "later@example.test"}, body7)
		m := w.waitStates(id, spool.Delivered, spool.Deferred)
		later := m.Envelope.Recipients[1]
		if a := lastAttempt(&later); a.Code != 450 || a.Enhanced != "4.2.1" || a.Phase != "rcpt" {
			t.Errorf("deferral recorded as %+v", a)
		}
		if !later.NextAttempt.After(w.clock.now()) {
			t.Errorf("next attempt %v not after now %v", later.NextAttempt, w.clock.now())
		}
		h := w.hosts["127.0.0.2"]
		if err := h.SetBehaviour(peer.Behaviour{}); err != nil {
			t.Fatal(err)
		}
		w.retry(6 * time.Minute)
		w.waitStates(id, spool.Delivered, spool.Delivered)
		msgs := h.Messages()
		if len(msgs) != 2 || len(msgs[1].To) != 1 || msgs[1].To[0] != "later@example.test" {
			t.Errorf("second delivery %+v, want only later@example.test", msgs)
		}
	})
}

func TestDeliverPermanentRecipientFails(t *testing.T) {
	eachMode(t, func(t *testing.T, lockStep bool) {
		w := newWorld(t, setup{lockStep: lockStep, zone: basicZone, hosts: map[string]peer.Behaviour{"127.0.0.2": {
			RcptReplies: map[string]peer.Reply{"gone@example.test": {Code: 550, Enhanced: "5.1.1", Text: "no such user"}},
		}}})
		id := w.send("", []string{"gone@example.test"}, body7) // null sender: no DSN at all
		m := w.waitStates(id, spool.Failed)
		if a := lastAttempt(&m.Envelope.Recipients[0]); a.Code != 550 || a.Enhanced != "5.1.1" {
			t.Errorf("attempt %+v", a)
		}
		if n := len(w.hosts["127.0.0.2"].Messages()); n != 0 {
			t.Errorf("no DATA expected when no recipient is accepted, got %d messages", n)
		}
		if !m.Retired {
			t.Errorf("message not retired")
		}
	})
}

func TestDeliverDataReplies(t *testing.T) {
	eachMode(t, func(t *testing.T, lockStep bool) {
		tests := []struct {
			name  string
			reply peer.Reply
			want  spool.State
		}{
			{"4xx_defers", peer.Reply{Code: 451, Enhanced: "4.3.0", Text: "try later"}, spool.Deferred},
			{"5xx_fails", peer.Reply{Code: 554, Enhanced: "5.6.0", Text: "content rejected"}, spool.Failed},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				r := tc.reply
				w := newWorld(t, setup{lockStep: lockStep, zone: basicZone, hosts: map[string]peer.Behaviour{"127.0.0.2": {Data: &r}, "127.0.0.3": {}}})
				id := w.send("", []string{"x@example.test"}, body7)
				m := w.waitStates(id, tc.want)
				if a := lastAttempt(&m.Envelope.Recipients[0]); a.Code != r.Code || a.Host != "mx1.example.test" {
					t.Errorf("attempt %+v", a)
				}
				if n := w.hosts["127.0.0.3"].Connections(); n != 0 {
					t.Errorf("a DATA reply moved on to the backup MX (%d connections)", n)
				}
			})
		}
	})
}

func TestDeliverConnectionLostAfterDot(t *testing.T) {
	eachMode(t, func(t *testing.T, lockStep bool) {
		w := newWorld(t, setup{lockStep: lockStep, zone: basicZone, hosts: map[string]peer.Behaviour{"127.0.0.2": {DropAfterDot: true}, "127.0.0.3": {}}})
		id := w.send("s@sender.test", []string{"x@example.test"}, body7)
		r := w.waitAttempts(id, 0, 1)
		if r.State != spool.Deferred || !strings.Contains(lastAttempt(r).Text, "possible duplicate") {
			t.Errorf("state %v, attempt %+v", r.State, lastAttempt(r))
		}
		if n := w.hosts["127.0.0.3"].Connections(); n != 0 {
			t.Errorf("the backup MX was tried after the final dot")
		}
		if !strings.Contains(w.logs.String(), "possible_duplicate=true") {
			t.Errorf("log line does not flag the possible duplicate")
		}
	})
}

func TestDeliverPeerStopsReadingMidData(t *testing.T) {
	eachMode(t, func(t *testing.T, lockStep bool) {
		zone := `
stuck.test. 300 IN MX 10 mx.stuck.test.
mx.stuck.test. 300 IN A 127.0.0.3
other.test. 300 IN MX 10 mx.other.test.
mx.other.test. 300 IN A 127.0.0.2
`
		w := newWorld(t, setup{lockStep: lockStep, zone: zone,
			hosts: map[string]peer.Behaviour{"127.0.0.2": {}, "127.0.0.3": {StopReadingAfter: 1024}},
			cfg: func(c *delivery.Config) {
				c.Timeouts.DataBlock = 300 * time.Millisecond
				c.MaxConns = 1 // a hung worker would hold the only slot
			}})
		big := body7 + strings.Repeat(strings.Repeat("x", 998)+"\r\n", 16*1024) // 16 MB: more than the socket buffers hold
		stuck := w.send("s@sender.test", []string{"x@stuck.test"}, big)
		testpeer.WaitHost(t, w.hosts["127.0.0.3"], "DATA to start", func(h *peer.Host) bool {
			ss := h.Sessions()
			return len(ss) > 0 && len(ss[0].Transactions) > 0 && ss[0].Transactions[0].Size > 0
		})
		ok := w.send("s@sender.test", []string{"y@other.test"}, body7)
		w.waitStates(ok, spool.Delivered)
		r := w.waitAttempts(stuck, 0, 1)
		if a := lastAttempt(r); r.State != spool.Deferred || a.Phase != "data" || !strings.Contains(a.Text, "timeout") {
			t.Errorf("stuck recipient %v, attempt %+v", r.State, a)
		}
	})
}

func TestDeliverBodyNeeds(t *testing.T) {
	eachMode(t, func(t *testing.T, lockStep bool) {
		body8 := "Subject: caf\xc3\xa9\r\n\r\nna\xc3\xafve\r\n"
		no8 := peer.Behaviour{No8BitMIME: true}
		noUTF8 := peer.Behaviour{NoSMTPUTF8: true}
		small := peer.Behaviour{MaxSizeBytes: 10}
		tests := []struct {
			name     string
			mx1, mx2 peer.Behaviour
			sender   string
			body     string
			want     spool.State
			enhanced string // of the failure
			via      string // host that took it
		}{
			{"8bit_next_MX_has_8BITMIME", no8, peer.Behaviour{}, "s@sender.test", body8, spool.Delivered, "", "mx2.example.test"},
			{"8bit_nobody_has_8BITMIME", no8, no8, "s@sender.test", body8, spool.Failed, "5.6.3", ""},
			{"7bit_needs_no_8BITMIME", no8, no8, "s@sender.test", body7, spool.Delivered, "", "mx1.example.test"},
			{"utf8_nobody_has_SMTPUTF8", noUTF8, noUTF8, "dörte@sender.test", body7, spool.Failed, "5.6.7", ""},
			{"too_big_for_every_SIZE", small, small, "s@sender.test", body7, spool.Failed, "5.3.4", ""},
			{"best_MX_down_next_lacks_8BITMIME_defers", peer.Behaviour{Refuse: true}, no8, "s@sender.test", body8, spool.Deferred, "4.4.1", ""},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				w := newWorld(t, setup{lockStep: lockStep, zone: basicZone, hosts: map[string]peer.Behaviour{"127.0.0.2": tc.mx1, "127.0.0.3": tc.mx2}})
				id := w.send(tc.sender, []string{"x@example.test"}, tc.body, func(e *spool.Envelope) {
					e.SMTPUTF8 = tc.sender != "s@sender.test"
				})
				r := w.waitAttempts(id, 0, 1)
				a := lastAttempt(r)
				if r.State != tc.want {
					t.Fatalf("state %v (attempt %+v), want %v", r.State, a, tc.want)
				}
				if tc.enhanced != "" && a.Enhanced != tc.enhanced {
					t.Errorf("enhanced %q (attempt %+v), want %s", a.Enhanced, a, tc.enhanced)
				}
				if tc.via != "" && a.Host != tc.via {
					t.Errorf("delivered through %q, want %s", a.Host, tc.via)
				}
				for _, h := range w.hosts {
					for _, m := range h.Messages() {
						if string(m.Data) != tc.body {
							t.Errorf("stored bytes changed on the way")
						}
					}
				}
			})
		}
	})
}

// TestDeliverRcpt552ReadAs452: 552 to RCPT is read as 452, too many
// recipients (RFC 5321 §4.5.3.1.10): the recipient goes into a new
// transaction at once, and refused there too, alone, it is deferred, not
// failed.
func TestDeliverRcpt552ReadAs452(t *testing.T) {
	eachMode(t, func(t *testing.T, lockStep bool) {
		w := newWorld(t, setup{lockStep: lockStep, zone: basicZone, hosts: map[string]peer.Behaviour{"127.0.0.2": {
			RcptReplies: map[string]peer.Reply{"b@example.test": {Code: 552, Enhanced: "5.5.3", Text: "too many recipients"}},
		}, "127.0.0.3": {}}})
		id := w.send("s@sender.test", []string{"a@example.test", "b@example.test", "c@example.test"}, body7)
		m := w.waitStates(id, spool.Delivered, spool.Deferred, spool.Delivered)
		if a := lastAttempt(&m.Envelope.Recipients[1]); a.Code != 552 || a.Enhanced != "4.5.3" || a.Phase != "rcpt" || a.Host != "mx1.example.test" {
			t.Errorf("b deferred with %+v", a)
		}
		h := w.hosts["127.0.0.2"]
		var rcpts [][]string
		for _, s := range h.Sessions() {
			for _, tx := range s.Transactions {
				var to []string
				for _, r := range tx.Rcpts {
					to = append(to, r.Addr)
				}
				rcpts = append(rcpts, to)
			}
		}
		if len(rcpts) != 2 || strings.Join(rcpts[1], ",") != "b@example.test" || h.Connections() != 1 {
			t.Errorf("transactions %v on %d connections; want a second one for b alone on the same one", rcpts, h.Connections())
		}
		if n := len(h.Messages()); n != 1 {
			t.Errorf("%d messages, want 1 (no DATA for b alone)", n)
		}
		if n := w.hosts["127.0.0.3"].Connections(); n != 0 {
			t.Errorf("the backup MX was dialled for a too-many-recipients reply")
		}
	})
}

// TestDeliverDATACommandRefused: a refusal of the DATA command itself
// (not of the final dot) defers or fails the accepted recipients; the
// transaction stays open, so the next message on the connection starts
// with RSET.
func TestDeliverDATACommandRefused(t *testing.T) {
	eachMode(t, func(t *testing.T, lockStep bool) {
		tests := []struct {
			name, reply string
			code        int
			want        spool.State
		}{
			{"4xx_defers", "451 4.3.0 not now", 451, spool.Deferred},
			{"5xx_fails", "554 5.5.1 no data for you", 554, spool.Failed},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				h := newRawHost(t, "127.0.0.7", rawScript{pipelining: !lockStep, refuseData: tc.reply})
				zone := "raw.test. 300 IN MX 10 mx.raw.test.\nmx.raw.test. 300 IN A 127.0.0.7\n"
				w := newWorld(t, setup{zone: zone, cfg: func(c *delivery.Config) { c.Port, c.IdleTimeout = h.port, time.Minute }})
				first := w.send("", []string{"a@raw.test", "b@raw.test"}, body7)
				m := w.waitStates(first, tc.want, tc.want)
				if a := lastAttempt(&m.Envelope.Recipients[1]); a.Phase != "data" || a.Code != tc.code {
					t.Errorf("attempt %+v, want the DATA reply", a)
				}
				w.waitStates(w.send("", []string{"c@raw.test"}, body7), spool.Delivered)
				var got []string
				for _, l := range h.lines(0) {
					if !strings.HasPrefix(l, "| ") {
						got = append(got, strings.SplitN(l, " ", 2)[0])
					}
				}
				if want := "EHLO MAIL RCPT RCPT DATA RSET MAIL RCPT DATA"; strings.Join(got, " ") != want || h.connections() != 1 {
					t.Errorf("%d connections; the host read %v, want %s", h.connections(), got, want)
				}
			})
		}
	})
}
