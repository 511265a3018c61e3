package delivery_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"mta/delivery"
	"mta/internal/peer"
	"mta/spool"
)

// verbs are the commands of a session, each with the read it came in.
func verbs(s peer.Session) []string {
	var out []string
	for _, c := range s.Commands {
		out = append(out, fmt.Sprintf("%d %s", c.Read, strings.ToUpper(strings.SplitN(c.Line, " ", 2)[0])))
	}
	return out
}

// TestDeliverPipelinesTheTransaction: to a host that offers PIPELINING,
// MAIL, every RCPT and DATA arrive in one read; to one that does not, each
// command waits for the reply to the one before.
func TestDeliverPipelinesTheTransaction(t *testing.T) {
	eachMode(t, func(t *testing.T, lockStep bool) {
		w := newWorld(t, setup{lockStep: lockStep, zone: oneMXZone, hosts: map[string]peer.Behaviour{"127.0.0.2": {}}})
		id := w.send("s@sender.test", []string{"a@example.test", "b@example.test", "c@example.test"}, body7)
		w.waitStates(id, spool.Delivered, spool.Delivered, spool.Delivered)
		h := w.hosts["127.0.0.2"]
		want := []string{"1 EHLO", "2 MAIL", "2 RCPT", "2 RCPT", "2 RCPT", "2 DATA"}
		if lockStep {
			want = []string{"1 EHLO", "2 MAIL", "3 RCPT", "4 RCPT", "5 RCPT", "6 DATA"}
		}
		if got := verbs(h.Sessions()[0]); strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("commands (read, verb) %v, want %v", got, want)
		}
		if m := h.Messages(); len(m) != 1 || len(m[0].To) != 3 || string(m[0].Data) != body7 {
			t.Errorf("host got %+v", m)
		}
	})
}

// TestDeliverReuseSendsNoRSETNorEHLO: a reused connection goes straight to
// the next MAIL after a completed transaction (RFC 5321 §4.1.1.5), never
// says EHLO again, and sends RSET only after a transaction it abandoned.
func TestDeliverReuseSendsNoRSETNorEHLO(t *testing.T) {
	eachMode(t, func(t *testing.T, lockStep bool) {
		w := newWorld(t, setup{lockStep: lockStep, zone: oneMXZone, hosts: map[string]peer.Behaviour{"127.0.0.2": {
			RcptReplies: map[string]peer.Reply{"gone@example.test": {Code: 550, Enhanced: "5.1.1", Text: "no such user"}},
		}}, cfg: func(c *delivery.Config) { c.IdleTimeout = time.Minute }})
		for _, to := range []string{"a@example.test", "b@example.test", "gone@example.test", "c@example.test"} {
			id := w.send("", []string{to}, body7)
			w.waitAttempts(id, 0, 1)
		}
		h := w.hosts["127.0.0.2"]
		if n := h.Connections(); n != 1 {
			t.Fatalf("%d connections, want 1", n)
		}
		var got []string
		var rsetRead, mailRead string
		for _, v := range verbs(h.Sessions()[0]) {
			read, verb, _ := strings.Cut(v, " ")
			got = append(got, verb)
			switch {
			case verb == "RSET":
				rsetRead = read
			case verb == "MAIL" && rsetRead != "" && mailRead == "":
				mailRead = read
			}
		}
		// The refused recipient's DATA is pipelined and refused too (the
		// transaction stays open); lock-step, DATA is not sent at all.
		want := "EHLO MAIL RCPT DATA MAIL RCPT DATA MAIL RCPT DATA RSET MAIL RCPT DATA"
		if lockStep {
			want = "EHLO MAIL RCPT DATA MAIL RCPT DATA MAIL RCPT RSET MAIL RCPT DATA"
		}
		if strings.Join(got, " ") != want {
			t.Errorf("commands on the connection:\n%s\nwant:\n%s", strings.Join(got, " "), want)
		}
		if (rsetRead == mailRead) == lockStep {
			t.Errorf("RSET in read %s, the next MAIL in read %s: want them together only when pipelining", rsetRead, mailRead)
		}
		if n := len(h.Messages()); n != 3 {
			t.Errorf("%d messages, want 3", n)
		}
	})
}

// TestDeliver421MidPipeline: a 421 to the second of three pipelined RCPTs
// ends the session at once; the next host takes all three recipients, and
// the first never sees a message.
func TestDeliver421MidPipeline(t *testing.T) {
	eachMode(t, func(t *testing.T, lockStep bool) {
		w := newWorld(t, setup{lockStep: lockStep, zone: basicZone, hosts: map[string]peer.Behaviour{
			"127.0.0.2": {RcptReplies: map[string]peer.Reply{"b@example.test": {Code: 421, Enhanced: "4.3.2", Text: "shutting down"}}},
			"127.0.0.3": {},
		}})
		id := w.send("s@sender.test", []string{"a@example.test", "b@example.test", "c@example.test"}, body7)
		m := w.waitStates(id, spool.Delivered, spool.Delivered, spool.Delivered)
		if n := len(w.hosts["127.0.0.2"].Messages()); n != 0 {
			t.Errorf("the host that said 421 got %d messages", n)
		}
		if got := w.hosts["127.0.0.3"].Messages(); len(got) != 1 || len(got[0].To) != 3 {
			t.Errorf("backup host got %+v, want one message to the three", got)
		}
		if n := w.sched.OpenConnections(); n != 1 {
			t.Errorf("%d connections open, want only the backup's, idle", n)
		}
		route := lastAttempt(&m.Envelope.Recipients[0]).Route
		if len(route) != 2 || route[0].Code != 421 || route[0].Phase != "rcpt" || route[1].Host != "mx2.example.test" {
			t.Errorf("route %+v", route)
		}
	})
}

// TestDeliverLoneDotAfter354: when no RCPT was accepted, a pipelined DATA
// may still be answered 354; RFC 2920 §3.1 has the client send a lone
// final dot, which delivers nothing and ends the transaction (no RSET is
// owed). Without pipelining DATA is never sent, and RSET precedes the next
// MAIL.
func TestDeliverLoneDotAfter354(t *testing.T) {
	eachMode(t, func(t *testing.T, lockStep bool) {
		h := newRawHost(t, "127.0.0.7", rawScript{pipelining: !lockStep, refuse: []string{"gone@raw.test"}})
		zone := "raw.test. 300 IN MX 10 mx.raw.test.\nmx.raw.test. 300 IN A 127.0.0.7\n"
		w := newWorld(t, setup{zone: zone, cfg: func(c *delivery.Config) { c.Port, c.IdleTimeout = h.port, time.Minute }})
		gone := w.send("", []string{"gone@raw.test"}, body7)
		m := w.waitStates(gone, spool.Failed)
		if a := lastAttempt(&m.Envelope.Recipients[0]); a.Code != 550 || a.Phase != "rcpt" {
			t.Errorf("attempt %+v, want the RCPT's 550", a)
		}
		ok := w.send("", []string{"ok@raw.test"}, body7)
		w.waitStates(ok, spool.Delivered)
		var got []string
		for _, l := range h.lines(0) {
			if !strings.HasPrefix(l, "| ") || l == "| ." {
				got = append(got, strings.SplitN(l, " ", 2)[0])
			}
		}
		want := "EHLO MAIL RCPT DATA | MAIL RCPT DATA |" // the first | is the lone dot
		if lockStep {
			want = "EHLO MAIL RCPT RSET MAIL RCPT DATA |"
		}
		if strings.Join(got, " ") != want {
			t.Errorf("host read %q, want %q\n(all: %q)", strings.Join(got, " "), want, h.lines(0))
		}
		if n := h.connections(); n != 1 {
			t.Errorf("%d connections, want 1", n)
		}
	})
}

// TestDeliverStalePooledConnection: a host that closed an idle pooled
// connection costs nothing: the first command fails before any reply, the
// message goes on a new connection, and the attempt records no failure.
func TestDeliverStalePooledConnection(t *testing.T) {
	eachMode(t, func(t *testing.T, lockStep bool) {
		h := newRawHost(t, "127.0.0.7", rawScript{pipelining: !lockStep, closeFirst: true})
		zone := "raw.test. 300 IN MX 10 mx.raw.test.\nmx.raw.test. 300 IN A 127.0.0.7\n"
		w := newWorld(t, setup{zone: zone, cfg: func(c *delivery.Config) { c.Port, c.IdleTimeout = h.port, time.Minute }})
		first := w.send("s@sender.test", []string{"a@raw.test"}, body7)
		w.waitStates(first, spool.Delivered)
		second := w.send("s@sender.test", []string{"b@raw.test"}, body7)
		m := w.waitStates(second, spool.Delivered)
		r := m.Envelope.Recipients[0]
		if a := lastAttempt(&r); r.AttemptCount != 1 || len(a.Route) != 1 || a.Route[0].Code != 250 {
			t.Errorf("%d attempts, route %+v: want one, straight to the host", r.AttemptCount, a.Route)
		}
		if n := h.connections(); n != 2 {
			t.Errorf("%d connections, want 2 (the stale one, then a new one)", n)
		}
	})
}

// TestDeliverMail5xxKeepsTheSession: a permanent refusal of MAIL fails the
// transaction's recipients; pipelined, the refused RCPTs and DATA that
// followed are read too, and the connection goes on to the next message
// without RSET (no transaction was open).
func TestDeliverMail5xxKeepsTheSession(t *testing.T) {
	eachMode(t, func(t *testing.T, lockStep bool) {
		w := newWorld(t, setup{lockStep: lockStep, zone: oneMXZone, hosts: map[string]peer.Behaviour{"127.0.0.2": {
			Mail: &peer.Reply{Code: 553, Enhanced: "5.7.1", Text: "sender refused"},
		}}, cfg: func(c *delivery.Config) { c.IdleTimeout = time.Minute }})
		refused := w.send("", []string{"a@example.test", "b@example.test"}, body7)
		m := w.waitStates(refused, spool.Failed, spool.Failed)
		if a := lastAttempt(&m.Envelope.Recipients[1]); a.Code != 553 || a.Phase != "mail" {
			t.Errorf("attempt %+v, want MAIL's 553", a)
		}
		h := w.hosts["127.0.0.2"]
		if err := h.SetBehaviour(peer.Behaviour{}); err != nil {
			t.Fatal(err)
		}
		w.waitStates(w.send("", []string{"c@example.test"}, body7), spool.Delivered)
		var got []string
		for _, v := range verbs(h.Sessions()[0]) {
			got = append(got, strings.SplitN(v, " ", 2)[1])
		}
		want := "EHLO MAIL RCPT RCPT DATA MAIL RCPT DATA"
		if lockStep {
			want = "EHLO MAIL MAIL RCPT DATA"
		}
		if strings.Join(got, " ") != want || h.Connections() != 1 {
			t.Errorf("%d connections, commands %s; want 1, %s", h.Connections(), strings.Join(got, " "), want)
		}
	})
}
