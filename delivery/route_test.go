package delivery_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"mta/delivery"
	"mta/internal/peer"
	"mta/internal/testpeer"
	"mta/spool"
)

func TestDeliverPriority(t *testing.T) {
	w := newWorld(t, setup{zone: basicZone, hosts: map[string]peer.Behaviour{"127.0.0.2": {}, "127.0.0.3": {}}})
	id := w.send("a@sender.test", []string{"b@example.test"}, body7)
	m := w.waitStates(id, spool.Delivered)
	if got := len(w.hosts["127.0.0.2"].Messages()); got != 1 {
		t.Fatalf("best MX got %d messages, want 1", got)
	}
	if n := w.hosts["127.0.0.3"].Connections(); n != 0 {
		t.Errorf("backup MX was dialled %d times", n)
	}
	got := w.hosts["127.0.0.2"].Messages()[0]
	if got.EHLO != ourHost || got.From != "a@sender.test" || string(got.Data) != body7 {
		t.Errorf("received %+v", got)
	}
	a := lastAttempt(&m.Envelope.Recipients[0])
	if a.Host != "mx1.example.test" || a.IP != "127.0.0.2" || a.Code != 250 || a.Phase != "data" {
		t.Errorf("attempt record %+v", a)
	}
	line := ""
	for _, l := range strings.Split(w.logs.String(), "\n") {
		if strings.Contains(l, "msg_id="+id) {
			line = l
		}
	}
	for _, kv := range []string{"rcpt=b@example.test", "domain=example.test", "mx=mx1.example.test", "ip=127.0.0.2",
		"attempt=1", "phase=data", "code=250", "enhanced=2.0.0", "duration=", "delay=0s", "tls=none", "status=delivered", `reply="OK: queued"`} {
		if !strings.Contains(line, " "+kv) {
			t.Errorf("attempt log line lacks %s: %q", kv, line)
		}
	}
	w.obs.mu.Lock()
	defer w.obs.mu.Unlock()
	if w.obs.attempts["delivered"] != 1 || w.obs.delivered != 1 {
		t.Errorf("observer saw %v attempts, %d delivered", w.obs.attempts, w.obs.delivered)
	}
}

func TestDeliverFallback(t *testing.T) {
	eachMode(t, func(t *testing.T, lockStep bool) {
		tests := []struct {
			name  string
			best  peer.Behaviour
			dials int // connections the best MX should see
		}{
			{"refused", peer.Behaviour{Refuse: true}, 0},
			{"421_greeting", peer.Behaviour{Greeting: &peer.Reply{Code: 421, Enhanced: "4.3.2", Text: "busy"}}, 1},
			{"554_greeting", peer.Behaviour{Greeting: &peer.Reply{Code: 554, Text: "go away"}}, 1},
			{"hang_at_greeting", peer.Behaviour{Hang: peer.HangGreeting}, 1},
			{"hang_at_ehlo", peer.Behaviour{Hang: peer.HangEHLO}, 1},
			{"hang_at_mail", peer.Behaviour{Hang: peer.HangMail}, 1},
			{"hang_at_rcpt", peer.Behaviour{Hang: peer.HangRcpt}, 1},
			{"451_to_mail", peer.Behaviour{Mail: &peer.Reply{Code: 451, Enhanced: "4.7.1", Text: "greylisted"}}, 1},
			{"421_to_rcpt", peer.Behaviour{Rcpt: &peer.Reply{Code: 421, Enhanced: "4.3.0", Text: "closing"}}, 1},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				w := newWorld(t, setup{lockStep: lockStep, zone: basicZone,
					hosts: map[string]peer.Behaviour{"127.0.0.2": tc.best, "127.0.0.3": {}},
					cfg: func(c *delivery.Config) {
						c.Timeouts.Greeting, c.Timeouts.Command = 300*time.Millisecond, 300*time.Millisecond
					}})
				id := w.send("a@sender.test", []string{"b@example.test"}, body7)
				m := w.waitStates(id, spool.Delivered)
				if n := len(w.hosts["127.0.0.3"].Messages()); n != 1 {
					t.Errorf("backup MX got %d messages, want 1", n)
				}
				if n := w.hosts["127.0.0.2"].Connections(); !tc.best.Refuse && n != tc.dials {
					t.Errorf("best MX saw %d connections, want %d", n, tc.dials)
				}
				if a := lastAttempt(&m.Envelope.Recipients[0]); a.Host != "mx2.example.test" {
					t.Errorf("delivered through %q, want mx2.example.test", a.Host)
				}
			})
		}
	})
}

func TestDeliverEqualPreferenceSpread(t *testing.T) {
	zone := `
spread.test. 300 IN MX 10 a.spread.test.
spread.test. 300 IN MX 10 b.spread.test.
a.spread.test. 300 IN A 127.0.0.2
b.spread.test. 300 IN A 127.0.0.3
`
	w := newWorld(t, setup{zone: zone, hosts: map[string]peer.Behaviour{"127.0.0.2": {}, "127.0.0.3": {}},
		cfg: func(c *delivery.Config) { c.ReuseMessages = 1 }}) // a new connection per message
	var ids []string
	for range 8 {
		ids = append(ids, w.send("a@sender.test", []string{"x@spread.test"}, body7))
	}
	for _, id := range ids {
		w.waitStates(id, spool.Delivered)
	}
	a, b := len(w.hosts["127.0.0.2"].Messages()), len(w.hosts["127.0.0.3"].Messages())
	if a == 0 || b == 0 || a+b != 8 {
		t.Errorf("messages per host = %d, %d; want both used, 8 in all", a, b)
	}
}

func TestDeliverImplicitMX(t *testing.T) {
	zone := "implicit.test. 300 IN A 127.0.0.2\n"
	w := newWorld(t, setup{zone: zone, hosts: map[string]peer.Behaviour{"127.0.0.2": {}}})
	id := w.send("a@sender.test", []string{"x@implicit.test"}, body7)
	m := w.waitStates(id, spool.Delivered)
	if a := lastAttempt(&m.Envelope.Recipients[0]); a.Host != "implicit.test" {
		t.Errorf("host %q, want implicit.test", a.Host)
	}
}

func TestDeliverMXWithoutAddressDoesNotUseA(t *testing.T) {
	zone := `
noaddr.test. 300 IN MX 10 mx.noaddr.test.
noaddr.test. 300 IN A 127.0.0.2
`
	w := newWorld(t, setup{zone: zone, hosts: map[string]peer.Behaviour{"127.0.0.2": {}}})
	id := w.send("a@sender.test", []string{"x@noaddr.test"}, body7)
	m := w.waitStates(id, spool.Failed) // the MX host does not exist: 5.4.4
	if n := w.hosts["127.0.0.2"].Connections(); n != 0 {
		t.Errorf("the domain's own A record was dialled %d times", n)
	}
	if a := lastAttempt(&m.Envelope.Recipients[0]); a.Phase != "dns" || a.Enhanced != "5.4.4" {
		t.Errorf("attempt %+v, want 5.4.4 at dns", a)
	}
}

func TestDeliverDNSPermanentFailures(t *testing.T) {
	zone := `
nullmx.test. 300 IN MX 0 .
sender.test. 300 IN MX 10 mx.sender.test.
mx.sender.test. 300 IN A 127.0.0.4
`
	tests := []struct{ name, rcpt, enhanced string }{
		{"null_MX", "x@nullmx.test", "5.1.10"},
		{"NXDOMAIN", "x@nowhere.test", "5.1.2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, setup{zone: zone, hosts: map[string]peer.Behaviour{"127.0.0.4": {}}})
			id := w.send("a@sender.test", []string{tc.rcpt}, body7)
			m := w.waitStates(id, spool.Failed)
			if a := lastAttempt(&m.Envelope.Recipients[0]); a.Enhanced != tc.enhanced || a.Phase != "dns" {
				t.Errorf("attempt %+v, want %s at dns", a, tc.enhanced)
			}
			if m.Envelope.Recipients[0].AttemptCount != 1 {
				t.Errorf("%d attempts, want 1 (bounced at once)", m.Envelope.Recipients[0].AttemptCount)
			}
			sender := w.hosts["127.0.0.4"]
			testpeer.WaitHost(t, sender, "the DSN", func(h *peer.Host) bool { return len(h.Messages()) == 1 })
			dsn := sender.Messages()[0]
			if dsn.From != "" || !strings.Contains(string(dsn.Data), "Status: "+tc.enhanced) {
				t.Errorf("DSN from %q:\n%s", dsn.From, dsn.Data)
			}
		})
	}
}

func TestDeliverAttemptBudget(t *testing.T) {
	eachMode(t, func(t *testing.T, lockStep bool) {
		zone := `
three.test. 300 IN MX 10 a.three.test.
three.test. 300 IN MX 20 b.three.test.
three.test. 300 IN MX 30 c.three.test.
a.three.test. 300 IN A 127.0.0.2
b.three.test. 300 IN A 127.0.0.3
c.three.test. 300 IN A 127.0.0.4
`
		busy := peer.Behaviour{Greeting: &peer.Reply{Code: 421, Enhanced: "4.3.2"}}
		grey := peer.Behaviour{Mail: &peer.Reply{Code: 451, Enhanced: "4.7.1", Text: "greylisted"}}
		tests := []struct {
			name string
			b    peer.Behaviour
			cfg  func(*delivery.Config)
		}{
			{"two_addresses", busy, func(c *delivery.Config) { c.MaxAddrsPerAttempt = 2 }},
			{"two_sessions", grey, func(c *delivery.Config) { c.MaxSessionsPerAttempt = 2 }},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				w := newWorld(t, setup{lockStep: lockStep, zone: zone, cfg: tc.cfg,
					hosts: map[string]peer.Behaviour{"127.0.0.2": tc.b, "127.0.0.3": tc.b, "127.0.0.4": {}}})
				id := w.send("s@sender.test", []string{"x@three.test"}, body7)
				r := w.waitAttempts(id, 0, 1)
				if r.State != spool.Deferred {
					t.Errorf("state %v, want deferred", r.State)
				}
				if n := w.hosts["127.0.0.4"].Connections(); n != 0 {
					t.Errorf("the third host was dialled past the budget")
				}
			})
		}
	})
}

func TestDeliverIDNDomainAsALabel(t *testing.T) {
	zone := "xn--bcher-kva.test. 300 IN MX 10 mx.example.test.\nmx.example.test. 300 IN A 127.0.0.2\n"
	w := newWorld(t, setup{zone: zone, hosts: map[string]peer.Behaviour{"127.0.0.2": {NoSMTPUTF8: true}}})
	id := w.send("s@sender.test", []string{"x@bücher.test"}, body7, func(e *spool.Envelope) {
		e.Recipients[0].Domain = "xn--bcher-kva.test"
	})
	w.waitStates(id, spool.Delivered)
	if got := w.hosts["127.0.0.2"].Messages()[0].To[0]; got != "x@xn--bcher-kva.test" {
		t.Errorf("RCPT TO %q, want the A-label form", got)
	}
}

func TestDeliverRecordsTheRoute(t *testing.T) {
	zone := `
route.test. 300 IN MX 5 gone.route.test.
route.test. 300 IN MX 10 mx1.route.test.
route.test. 300 IN MX 20 mx2.route.test.
route.test. 300 IN MX 30 mx3.route.test.
mx1.route.test. 300 IN A 127.0.0.2
mx2.route.test. 300 IN A 127.0.0.3
mx3.route.test. 300 IN A 127.0.0.4
noaddr.test. 300 IN MX 10 mx.noaddr.test.
nullmx.test. 300 IN MX 0 .
`
	w := newWorld(t, setup{zone: zone, hosts: map[string]peer.Behaviour{
		"127.0.0.2": {Refuse: true},
		"127.0.0.3": {Greeting: &peer.Reply{Code: 421, Enhanced: "4.3.2", Text: "busy"}},
		"127.0.0.4": {},
	}})
	tests := []struct {
		rcpt  string
		state spool.State
		want  []string // host ip phase code enhanced of each step
	}{
		{"x@route.test", spool.Delivered, []string{
			"gone.route.test  skip 0 ", "mx1.route.test 127.0.0.2 dial 0 4.4.1",
			"mx2.route.test 127.0.0.3 greeting 421 4.3.2", "mx3.route.test 127.0.0.4 data 250 2.0.0"}},
		{"x@noaddr.test", spool.Failed, []string{"mx.noaddr.test  skip 0 ", "noaddr.test  dns 0 5.4.4"}},
		{"x@nullmx.test", spool.Failed, []string{"nullmx.test  dns 0 5.1.10"}},
	}
	for _, tc := range tests {
		t.Run(tc.rcpt, func(t *testing.T) {
			id := w.send("", []string{tc.rcpt}, body7)
			m := w.waitStates(id, tc.state)
			a := lastAttempt(&m.Envelope.Recipients[0])
			var got []string
			for _, s := range a.Route {
				got = append(got, fmt.Sprintf("%s %s %s %d %s", s.Host, s.IP, s.Phase, s.Code, s.Enhanced))
				if s.Text == "" {
					t.Errorf("step %+v says nothing", s)
				}
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("route:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// SetNextHops (SIGHUP) changes where new mail for a domain goes; invalid
// next hops are refused and the old ones stay.
func TestSetNextHops(t *testing.T) {
	w := newWorld(t, setup{zone: oneMXZone, hosts: map[string]peer.Behaviour{"127.0.0.2": {}, "127.0.0.3": {}}})
	first := w.send("s@sender.test", []string{"a@example.test"}, body7)
	w.waitStates(first, spool.Delivered)

	bad := map[string]delivery.NextHop{"example.test": {Hosts: nil}}
	if err := w.sched.SetNextHops(bad, nil, nil); err == nil {
		t.Fatal("a route without hosts was accepted")
	}
	route := map[string]delivery.NextHop{"example.test": {Hosts: []string{fmt.Sprintf("[127.0.0.3]:%d", w.port)}, TLS: delivery.TLSNone}}
	if err := w.sched.SetNextHops(route, nil, nil); err != nil {
		t.Fatal(err)
	}
	second := w.send("s@sender.test", []string{"b@example.test"}, body7)
	w.waitStates(second, spool.Delivered)
	if n := len(w.hosts["127.0.0.2"].Messages()); n != 1 {
		t.Errorf("MX host got %d messages, want only the first", n)
	}
	if got := w.hosts["127.0.0.3"].Messages(); len(got) != 1 || got[0].To[0] != "b@example.test" {
		t.Errorf("route host got %+v, want the second message", got)
	}
}

// TestDeliverBackupRefusingDoesNotBounce: a 5xx greeting from a backup MX
// says nothing about the recipient; while a better host failed only for
// now, the mail waits for it instead of bouncing (RFC 5321 §5.1: each host
// is tried and retried until one takes it).
func TestDeliverBackupRefusingDoesNotBounce(t *testing.T) {
	tests := []struct {
		name   string
		backup peer.Behaviour
	}{
		{"554_greeting", peer.Behaviour{Greeting: &peer.Reply{Code: 554, Enhanced: "5.7.1", Text: "no relaying for you"}}},
		{"550_greeting", peer.Behaviour{Greeting: &peer.Reply{Code: 550, Text: "no service"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, setup{zone: basicZone,
				hosts: map[string]peer.Behaviour{"127.0.0.2": {Greeting: &peer.Reply{Code: 421, Enhanced: "4.3.2", Text: "busy"}}, "127.0.0.3": tc.backup}})
			id := w.send("a@sender.test", []string{"b@example.test"}, body7)
			r := w.waitAttempts(id, 0, 1)
			if r.State != spool.Deferred {
				a := lastAttempt(r)
				t.Fatalf("recipient %v after %s %d %s: want deferred for the best MX", r.State, a.Phase, a.Code, a.Text)
			}
			w.hosts["127.0.0.2"].SetBehaviour(peer.Behaviour{})
			w.retry(time.Hour)
			w.waitStates(id, spool.Delivered)
		})
	}
}

// TestDeliverEveryHostGreets5xx: when every MX greets 5xx the mail is
// deferred, with the reply kept and a temporary enhanced code, and goes out
// once a host takes mail again; it is not bounced (RFC 5321 §3.1, Postfix's
// smtp_skip_5xx_greeting).
func TestDeliverEveryHostGreets5xx(t *testing.T) {
	refuse := peer.Behaviour{Greeting: &peer.Reply{Code: 554, Enhanced: "5.7.1", Text: "no service here"}}
	w := newWorld(t, setup{zone: basicZone, hosts: map[string]peer.Behaviour{"127.0.0.2": refuse, "127.0.0.3": refuse}})
	id := w.send("a@sender.test", []string{"b@example.test"}, body7)
	r := w.waitAttempts(id, 0, 1)
	a := lastAttempt(r)
	if r.State != spool.Deferred || a.Phase != "greeting" || a.Code != 554 || a.Enhanced != "4.7.1" {
		t.Fatalf("recipient %v after %s %d %s %s: want deferred at the greeting's 554 with 4.7.1", r.State, a.Phase, a.Code, a.Enhanced, a.Text)
	}
	if n := len(a.Route); n != 2 || a.Route[0].Code != 554 || a.Route[1].Code != 554 {
		t.Errorf("route %+v: want both hosts' 554", a.Route)
	}
	w.hosts["127.0.0.3"].SetBehaviour(peer.Behaviour{})
	// The attempt marks the destination down for its backoff when it ends,
	// by the clock of that moment; the retry may find it still down (and
	// defer without dialling), so the clock moves on until the probe goes.
	seen := 0
	testpeer.WaitFor(t, id+" delivered after the backup MX came back", func() bool {
		r := w.message(id).Envelope.Recipients[0]
		if r.State == spool.Delivered {
			return true
		}
		if r.AttemptCount > seen { // the last attempt is recorded: move the clock past its backoff
			seen = r.AttemptCount
			w.retry(time.Hour)
		}
		return false
	})
	if n := len(w.hosts["127.0.0.3"].Messages()); n != 1 {
		t.Errorf("backup MX got %d messages, want 1", n)
	}
}

// TestDeliverSourceAddress: connections leave from the configured source
// address of their family.
func TestDeliverSourceAddress(t *testing.T) {
	w := newWorld(t, setup{zone: oneMXZone, hosts: map[string]peer.Behaviour{"127.0.0.2": {}},
		cfg: func(c *delivery.Config) { c.SourceIPv4 = netip.MustParseAddr("127.0.0.8") }})
	w.waitStates(w.send("s@sender.test", []string{"x@example.test"}, body7), spool.Delivered)
	if got := w.hosts["127.0.0.2"].Sessions()[0].Remote; !strings.HasPrefix(got, "127.0.0.8:") {
		t.Errorf("connection came from %s, want 127.0.0.8", got)
	}
}

// TestDeliverEHLORefused: a host that refuses EHLO with 5xx is left for
// the next MX; one that does not know EHLO (502) is spoken to with HELO,
// without extensions.
func TestDeliverEHLORefused(t *testing.T) {
	zone := `
raw.test. 300 IN MX 10 mx1.raw.test.
raw.test. 300 IN MX 20 mx2.raw.test.
mx1.raw.test. 300 IN A 127.0.0.7
mx2.raw.test. 300 IN A 127.0.0.8
`
	tests := []struct {
		name, ehlo string
		via        string
		verbs      string // what the first host read
	}{
		{"554_next_MX", "554 5.7.1 go away", "mx2.raw.test", "EHLO"},
		{"502_HELO", "502 5.5.1 EHLO not implemented", "mx1.raw.test", "EHLO HELO MAIL RCPT DATA"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mx1 := newRawHost(t, "127.0.0.7", rawScript{ehlo: tc.ehlo})
			newRawHostOn(t, "127.0.0.8", mx1.port, rawScript{})
			w := newWorld(t, setup{zone: zone, cfg: func(c *delivery.Config) { c.Port = mx1.port }})
			m := w.waitStates(w.send("s@sender.test", []string{"x@raw.test"}, body7), spool.Delivered)
			a := lastAttempt(&m.Envelope.Recipients[0])
			if a.Host != tc.via {
				t.Errorf("delivered through %s (route %+v), want %s", a.Host, a.Route, tc.via)
			}
			if r := a.Route[0]; tc.via == "mx2.raw.test" && (r.Phase != "ehlo" || r.Code != 554) {
				t.Errorf("first step %+v, want the 554 at ehlo", r)
			}
			var got []string
			for _, l := range mx1.lines(0) {
				if !strings.HasPrefix(l, "| ") {
					got = append(got, strings.SplitN(l, " ", 2)[0])
				}
			}
			if strings.Join(got, " ") != tc.verbs {
				t.Errorf("the first host read %v, want %s", got, tc.verbs)
			}
		})
	}
}

// TestDeliverIPFamily: ip_family chooses the addresses dialled. The host
// has an IPv6 address where nothing listens.
func TestDeliverIPFamily(t *testing.T) {
	zone := `
example.test. 300 IN MX 10 mx1.example.test.
mx1.example.test. 300 IN AAAA ::1
mx1.example.test. 300 IN A 127.0.0.2
`
	tests := []struct {
		fam   delivery.IPFamily
		state spool.State
		ips   string // the addresses of the route's steps
	}{
		{delivery.FamilyIPv4, spool.Delivered, "127.0.0.2"},
		{delivery.FamilyPreferIPv4, spool.Delivered, "127.0.0.2"},
		{delivery.FamilyIPv6, spool.Deferred, "::1"},
	}
	for _, tc := range tests {
		t.Run(string(tc.fam), func(t *testing.T) {
			w := newWorld(t, setup{zone: zone, hosts: map[string]peer.Behaviour{"127.0.0.2": {}},
				cfg: func(c *delivery.Config) { c.IPFamily = tc.fam }})
			r := w.waitAttempts(w.send("s@sender.test", []string{"x@example.test"}, body7), 0, 1)
			var ips []string
			for _, s := range lastAttempt(r).Route {
				ips = append(ips, s.IP)
			}
			if r.State != tc.state || strings.Join(ips, " ") != tc.ips {
				t.Errorf("%v along %v, want %v along %s", r.State, ips, tc.state, tc.ips)
			}
		})
	}
}
