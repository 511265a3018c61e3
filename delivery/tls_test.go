package delivery_test

import (
	"crypto/tls"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"mta/delivery"
	"mta/internal/peer"
	"mta/internal/selfsigned"
	"mta/spool"
)

func cert(t *testing.T, names ...string) *selfsigned.Cert {
	t.Helper()
	c, err := selfsigned.Generate(names, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestDeliverOpportunisticTLS(t *testing.T) {
	c := cert(t, "mx1.example.test")
	tests := []struct {
		name    string
		roots   bool // trust the peer's certificate
		verdict string
		max     uint16 // the host's newest TLS version
	}{
		{"unverified", false, "TLS1.3 unverified", 0},
		{"would_verify", true, "TLS1.3 verified", 0},
		{"TLS_1.0_is_enough", false, "TLS1.0 unverified", tls.VersionTLS10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, setup{zone: basicZone, hosts: map[string]peer.Behaviour{"127.0.0.2": {Cert: &c.TLS, MaxTLSVersion: tc.max}},
				cfg: func(cfg *delivery.Config) {
					if tc.roots {
						cfg.RootCAs = c.Pool()
					}
				}})
			id := w.send("s@sender.test", []string{"x@example.test"}, body7)
			m := w.waitStates(id, spool.Delivered)
			if a := lastAttempt(&m.Envelope.Recipients[0]); a.TLS != tc.verdict {
				t.Errorf("TLS verdict %q, want %q", a.TLS, tc.verdict)
			}
			s := w.hosts["127.0.0.2"].Sessions()[0]
			if !s.TLS || s.ServerName != "mx1.example.test" || s.EHLO != ourHost {
				t.Errorf("session %+v: want TLS with SNI mx1.example.test and EHLO %s", s, ourHost)
			}
		})
	}
}

func TestDeliverBrokenTLSFallsBackToPlain(t *testing.T) {
	w := newWorld(t, setup{zone: basicZone, hosts: map[string]peer.Behaviour{"127.0.0.2": {BrokenTLS: true}},
		cfg: func(c *delivery.Config) { c.ReuseMessages = 1 }})
	first := w.send("s@sender.test", []string{"x@example.test"}, body7)
	m := w.waitStates(first, spool.Delivered)
	a := lastAttempt(&m.Envelope.Recipients[0])
	if a.TLS != "none" {
		t.Errorf("TLS verdict %q, want none", a.TLS)
	}
	if len(a.Route) != 2 || a.Route[0].Phase != "starttls" || a.Route[1].Code != 250 {
		t.Errorf("route %+v: want the failed handshake, then the delivery", a.Route)
	}
	h := w.hosts["127.0.0.2"]
	if n := h.Connections(); n != 2 {
		t.Errorf("%d connections, want 2 (failed handshake, then plain)", n)
	}
	second := w.send("s@sender.test", []string{"y@example.test"}, body7)
	w.waitStates(second, spool.Delivered)
	if n := h.Connections(); n != 3 {
		t.Errorf("%d connections, want 3: the broken host is spoken to in plain text at once", n)
	}
	// A day later the host gets another chance at TLS.
	w.clock.advance(24*time.Hour + time.Minute)
	third := w.send("s@sender.test", []string{"z@example.test"}, body7)
	w.waitStates(third, spool.Delivered)
	if n := h.Connections(); n != 5 {
		t.Errorf("%d connections, want 5: a day later STARTTLS is tried again, then plain text", n)
	}
	if n := strings.Count(w.logs.String(), "TLS handshake failed"); n != 2 {
		t.Errorf("%d logged handshake failures, want 2", n)
	}
}

func TestDeliverTLSPolicies(t *testing.T) {
	c := cert(t, "mx1.example.test")
	tests := []struct {
		name   string
		host   peer.Behaviour
		policy delivery.TLSPolicy
		roots  bool
		want   spool.State
	}{
		{"require_without_starttls_defers", peer.Behaviour{}, delivery.TLSRequire, false, spool.Deferred},
		{"require_accepts_any_certificate", peer.Behaviour{Cert: &c.TLS}, delivery.TLSRequire, false, spool.Delivered},
		{"verify_refuses_an_untrusted_certificate", peer.Behaviour{Cert: &c.TLS}, delivery.TLSVerify, false, spool.Deferred},
		{"verify_accepts_a_trusted_certificate", peer.Behaviour{Cert: &c.TLS}, delivery.TLSVerify, true, spool.Delivered},
		{"none_stays_plain", peer.Behaviour{Cert: &c.TLS}, delivery.TLSNone, false, spool.Delivered},
		{"require_defers_a_refused_starttls", peer.Behaviour{StartTLS: &peer.Reply{Code: 454, Enhanced: "4.7.0", Text: "TLS not available"}}, delivery.TLSRequire, false, spool.Deferred},
		{"require_defers_a_starttls_refused_with_5xx", peer.Behaviour{StartTLS: &peer.Reply{Code: 554, Enhanced: "5.7.3", Text: "no TLS for you"}}, delivery.TLSRequire, false, spool.Deferred},
		{"opportunistic_goes_on_plain_after_a_refused_starttls", peer.Behaviour{StartTLS: &peer.Reply{Code: 454, Enhanced: "4.7.0", Text: "TLS not available"}}, delivery.TLSOpportunistic, false, spool.Delivered},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, setup{zone: oneMXZone, hosts: map[string]peer.Behaviour{"127.0.0.2": tc.host},
				cfg: func(cfg *delivery.Config) {
					cfg.TLSPolicies = map[string]delivery.TLSPolicy{"example.test": tc.policy}
					if tc.roots {
						cfg.RootCAs = c.Pool()
					}
				}})
			id := w.send("s@sender.test", []string{"x@example.test"}, body7)
			r := w.waitAttempts(id, 0, 1)
			if r.State != tc.want {
				t.Fatalf("state %v, want %v (attempt %+v)", r.State, tc.want, lastAttempt(r))
			}
			a := lastAttempt(r)
			if tc.want == spool.Deferred && (a.Phase != "starttls" || !strings.HasPrefix(a.Enhanced, "4.7.")) {
				t.Errorf("deferral %+v, want 4.7.x at starttls", a)
			}
			if (tc.policy == delivery.TLSNone || tc.host.StartTLS != nil) && tc.want == spool.Delivered && a.TLS != "none" {
				t.Errorf("TLS %q, want none", a.TLS)
			}
			if tc.host.StartTLS != nil {
				cmds := w.hosts["127.0.0.2"].Sessions()[0].Commands
				if len(cmds) < 2 || cmds[1].Line != "STARTTLS" {
					t.Errorf("commands %+v, want STARTTLS after EHLO", cmds)
				}
				r := tc.host.StartTLS
				wantEnh := "4" + r.Enhanced[1:] // deferred: a 4.x.x status whatever the host's class
				if tc.want == spool.Deferred && (a.Code != r.Code || a.Enhanced != wantEnh || a.Text != r.Text) {
					t.Errorf("deferral %+v, want the host's %d %s %s as %s", a, r.Code, r.Enhanced, r.Text, wantEnh)
				}
			}
		})
	}
}

const relayZone = basicZone + "relay.test. 300 IN A 127.0.0.5\n"

func TestDeliverRelayhostAuthOverVerifiedTLS(t *testing.T) {
	c := cert(t, "relay.test")
	relay := peer.Behaviour{Cert: &c.TLS, Auth: map[string]string{"me": "secret"}}
	w := newWorld(t, setup{zone: relayZone, hosts: map[string]peer.Behaviour{"127.0.0.5": relay, "127.0.0.2": {}}, noStart: true})
	w = relayWorld(t, w, c)
	id := w.send("s@sender.test", []string{"x@example.test", "y@elsewhere.test"}, body7)
	m := w.waitStates(id, spool.Delivered, spool.Delivered)
	h := w.hosts["127.0.0.5"]
	s := h.Sessions()[0]
	if !s.TLS || s.AuthUser != "me" || s.AuthMech != "PLAIN" || s.ServerName != "relay.test" {
		t.Errorf("relay session %+v: want verified TLS, then AUTH as me", s)
	}
	if a := lastAttempt(&m.Envelope.Recipients[0]); a.Host != "relay.test" || a.TLS != "TLS1.3 verified" {
		t.Errorf("attempt %+v", a)
	}
	if n := w.hosts["127.0.0.2"].Connections(); n != 0 {
		t.Errorf("the MX was dialled %d times despite the relayhost", n)
	}
	if n := len(h.Messages()); n != 1 {
		t.Errorf("relay got %d transactions, want 1 for both domains", n)
	}
	logs := w.logs.String()
	if !strings.Contains(logs, `line="EHLO `+ourHost+`"`) || strings.Contains(logs, "AG1lAHNlY3JldA") || strings.Contains(logs, `line="AUTH`) ||
		strings.Contains(logs, "Hello there") {
		t.Errorf("trace transcript should show EHLO and hide AUTH and the body:\n%s", logs)
	}
}

// A relayhost that offers only AUTH LOGIN gets LOGIN.
func TestDeliverRelayhostAuthLogin(t *testing.T) {
	c := cert(t, "relay.test")
	relay := peer.Behaviour{Cert: &c.TLS, Auth: map[string]string{"me": "secret"}, AuthMechs: []string{"LOGIN"}}
	w := newWorld(t, setup{zone: relayZone, hosts: map[string]peer.Behaviour{"127.0.0.5": relay}, noStart: true})
	w = relayWorld(t, w, c)
	w.waitStates(w.send("s@sender.test", []string{"x@example.test"}, body7), spool.Delivered)
	if s := w.hosts["127.0.0.5"].Sessions()[0]; s.AuthUser != "me" || s.AuthMech != "LOGIN" || s.AuthAttempts != 1 {
		t.Errorf("relay session: user %q, mechanism %q, %d AUTH exchanges; want me, LOGIN, 1", s.AuthUser, s.AuthMech, s.AuthAttempts)
	}
}

// relayWorld is a second scheduler on w's spool, sending through the
// relayhost on 127.0.0.5.
func relayWorld(t *testing.T, w *world, c *selfsigned.Cert) *world {
	t.Helper()
	cfg := w.cfg
	cfg.Relayhost = &delivery.Relayhost{NextHop: delivery.NextHop{
		Hosts: []string{"relay.test:" + strconv.Itoa(w.port)},
		Auth:  &delivery.Auth{Username: "me", Password: "secret"},
	}}
	cfg.RootCAs = c.Pool()
	cfg.Logger = slog.New(slog.NewTextHandler(w.logs, &slog.HandlerOptions{Level: delivery.LevelTrace}))
	return w.replace(cfg)
}

func TestDeliverNoAuthWithoutTLS(t *testing.T) {
	relay := peer.Behaviour{Auth: map[string]string{"me": "secret"}, AllowInsecureAuth: true}
	w := newWorld(t, setup{zone: relayZone, hosts: map[string]peer.Behaviour{"127.0.0.5": relay}, noStart: true})
	cfg := w.cfg
	cfg.Routes = map[string]delivery.NextHop{"example.test": {
		Hosts: []string{"[127.0.0.5]:" + strconv.Itoa(w.port)},
		TLS:   delivery.TLSOpportunistic,
		Auth:  &delivery.Auth{Username: "me", Password: "secret"},
	}}
	w = w.replace(cfg)
	id := w.send("s@sender.test", []string{"x@example.test"}, body7)
	r := w.waitAttempts(id, 0, 1)
	if a := lastAttempt(r); r.State != spool.Deferred || a.Phase != "auth" {
		t.Errorf("state %v, attempt %+v: want deferred at auth", r.State, a)
	}
	for _, s := range w.hosts["127.0.0.5"].Sessions() {
		if s.AuthAttempts != 0 {
			t.Errorf("AUTH was sent over plain text")
		}
	}
}

func TestDeliverRouteImplicitTLSOn465(t *testing.T) {
	c := cert(t, "smtps.test")
	h, err := peer.Listen("127.0.0.6:465", peer.Behaviour{Cert: &c.TLS, ImplicitTLS: true})
	if err != nil {
		t.Skipf("cannot listen on port 465 here: %v", err)
	}
	t.Cleanup(func() { _ = h.Close() })
	w := newWorld(t, setup{zone: "smtps.test. 300 IN A 127.0.0.6\n", noStart: true})
	cfg := w.cfg
	cfg.RootCAs = c.Pool()
	cfg.Routes = map[string]delivery.NextHop{"example.test": {Hosts: []string{"[smtps.test]:465"}}}
	w = w.replace(cfg)
	id := w.send("s@sender.test", []string{"x@example.test"}, body7)
	m := w.waitStates(id, spool.Delivered)
	if a := lastAttempt(&m.Envelope.Recipients[0]); a.TLS != "TLS1.3 verified" || a.Host != "smtps.test" {
		t.Errorf("attempt %+v, want verified implicit TLS to smtps.test", a)
	}
	if s := h.Sessions()[0]; !s.TLS || s.ServerName != "smtps.test" {
		t.Errorf("session %+v", s)
	}
}

// TestDeliverRouteVerifiesAnAddress: a route given as an address is
// verified against the certificate's IP addresses (and sends no SNI).
func TestDeliverRouteVerifiesAnAddress(t *testing.T) {
	c := cert(t, "127.0.0.5")
	w := newWorld(t, setup{zone: basicZone, hosts: map[string]peer.Behaviour{"127.0.0.5": {Cert: &c.TLS}}, noStart: true})
	cfg := w.cfg
	cfg.RootCAs = c.Pool()
	cfg.Routes = map[string]delivery.NextHop{"example.test": {Hosts: []string{"[127.0.0.5]:" + strconv.Itoa(w.port)}}}
	w = w.replace(cfg)
	id := w.send("s@sender.test", []string{"x@example.test"}, body7)
	m := w.waitStates(id, spool.Delivered)
	if a := lastAttempt(&m.Envelope.Recipients[0]); a.TLS != "TLS1.3 verified" {
		t.Errorf("attempt %+v, want a verified TLS session", a)
	}
	if s := w.hosts["127.0.0.5"].Sessions()[0]; !s.TLS || s.ServerName != "" {
		t.Errorf("session %+v: want TLS without SNI", s)
	}
}

// TestDeliverRelayhostVerifiesByDefault: a relayhost whose certificate is
// not trusted is not sent AUTH, nor the mail; the mail waits.
func TestDeliverRelayhostVerifiesByDefault(t *testing.T) {
	c := cert(t, "relay.test")
	relay := peer.Behaviour{Cert: &c.TLS, Auth: map[string]string{"me": "secret"}}
	w := newWorld(t, setup{zone: relayZone, hosts: map[string]peer.Behaviour{"127.0.0.5": relay}, noStart: true})
	cfg := w.cfg
	cfg.Relayhost = &delivery.Relayhost{NextHop: delivery.NextHop{
		Hosts: []string{"relay.test:" + strconv.Itoa(w.port)},
		Auth:  &delivery.Auth{Username: "me", Password: "secret"},
	}} // no RootCAs: the system pool does not know the test's certificate
	w = w.replace(cfg)
	id := w.send("s@sender.test", []string{"x@example.test"}, body7)
	r := w.waitAttempts(id, 0, 1)
	if a := lastAttempt(r); r.State != spool.Deferred || a.Phase != "starttls" || a.Enhanced != "4.7.5" {
		t.Errorf("state %v, attempt %+v: want deferred, 4.7.5 at starttls", r.State, a)
	}
	h := w.hosts["127.0.0.5"]
	for _, s := range h.Sessions() {
		if s.AuthAttempts != 0 || len(s.Transactions) != 0 {
			t.Errorf("session %+v went on past an unverified certificate", s)
		}
	}
}
