package resolver_test

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"mta/internal/testpeer"
	"mta/resolver"
)

// frontQuery is what a front server saw of one query.
type frontQuery struct {
	name, proto  string
	udpSize      uint16 // 0: no OPT record
	do, rd, edns bool
}

// front is a miekg/dns server on 127.0.0.1 (UDP and TCP on one port) that
// records each query's flags and EDNS0 OPT, lets before write replies of
// its own to UDP queries first, then answers from the zone of a testpeer
// server unless before said it answered.
type front struct {
	mu      sync.Mutex
	queries []frontQuery
}

func newFront(t *testing.T, zone string, before func(w dns.ResponseWriter, req *dns.Msg) (answered bool)) (*front, string) {
	t.Helper()
	back := testpeer.NewDNS(t, zone)
	f := &front{}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		q := frontQuery{name: req.Question[0].Name, proto: "udp", rd: req.RecursionDesired}
		if _, ok := w.LocalAddr().(*net.TCPAddr); ok {
			q.proto = "tcp"
		}
		if opt := req.IsEdns0(); opt != nil {
			q.edns, q.udpSize, q.do = true, opt.UDPSize(), opt.Do()
		}
		f.mu.Lock()
		f.queries = append(f.queries, q)
		f.mu.Unlock()
		if before != nil && q.proto == "udp" && before(w, req) {
			return
		}
		back.ServeDNS(w, req)
	})
	var pc net.PacketConn
	var l net.Listener
	for range 20 { // the UDP port may be taken for TCP; pick again
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if l, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	if pc == nil {
		t.Fatal("no port free for both UDP and TCP")
	}
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: l, Handler: h}} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go func() { _ = s.ActivateAndServe() }() // ends with Shutdown below
		<-started
		t.Cleanup(func() {
			if err := s.Shutdown(); err != nil {
				t.Errorf("front server shutdown: %v", err)
			}
		})
	}
	return f, pc.LocalAddr().String()
}

func (f *front) seen() []frontQuery {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.queries)
}

// TestRouteEDNS0 checks that every query is recursive and advertises a
// 1232-byte EDNS0 buffer without DNSSEC (RFC 6891, DNS flag day 2020), and
// that an answer larger than 512 bytes but within 1232 comes over UDP
// alone.
func TestRouteEDNS0(t *testing.T) {
	var zone strings.Builder
	zone.WriteString("$ORIGIN medium.test.\n")
	for i := range 16 {
		fmt.Fprintf(&zone, "@ 300 IN MX 10 a-rather-long-mail-exchanger-name-number-%02d\n", i)
	}
	zone.WriteString("a-rather-long-mail-exchanger-name-number-00 300 IN A 192.0.2.1\n")
	f, addr := newFront(t, zone.String(), nil)
	r := newResolver(t, resolver.Config{Servers: []string{addr}})
	rt, err := r.Route(t.Context(), "medium.test")
	if err != nil {
		t.Fatal(err)
	}
	if len(rt.Hosts) != 1 || len(rt.Dropped) != 15 { // only one of the 16 hosts has an address
		t.Errorf("%d hosts and %d dropped, want 1 and 15", len(rt.Hosts), len(rt.Dropped))
	}
	mx := rt.Trace[0]
	if mx.Type != "MX" || mx.Proto != "udp" || mx.Truncated || len(mx.Answer)+mx.Omitted != 16 {
		t.Fatalf("MX exchange %+v: want 16 records over UDP, not truncated", mx)
	}
	qs := f.seen()
	if len(qs) < 3 {
		t.Fatalf("front saw %d queries, want the MX and the hosts' A/AAAA", len(qs))
	}
	for _, q := range qs {
		if q.proto != "udp" || !q.edns || q.udpSize != 1232 || q.do || !q.rd {
			t.Errorf("query %+v: want UDP, RD, EDNS0 with 1232 bytes and DO clear", q)
		}
	}
}

// TestRouteForgedReply checks that UDP datagrams that do not carry the
// query's ID (a late reply to an earlier query, or a blind forgery), or
// carry it with another question, are discarded while the real reply is
// awaited (RFC 5452 §9.1), and that an exchange that gets nothing else
// fails as a timeout that names what was discarded.
func TestRouteForgedReply(t *testing.T) {
	const zone = `$ORIGIN forged.test.
@   300 IN MX 10 mx
mx  300 IN A 192.0.2.1
`
	forge := func(w dns.ResponseWriter, req *dns.Msg, id uint16, qname string) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.Id = id
		m.Question[0].Name = qname
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300},
			A: net.ParseIP("198.51.100.66")}}
		m.Answer = append(m.Answer, &dns.MX{Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeMX, Class: dns.ClassINET, Ttl: 300},
			Preference: 1, Mx: "evil.example."})
		if err := w.WriteMsg(m); err != nil {
			panic(err) // a loopback write does not fail
		}
	}
	for _, tc := range []struct {
		name   string
		before func(w dns.ResponseWriter, req *dns.Msg)
	}{
		{"wrong_ID_discarded", func(w dns.ResponseWriter, req *dns.Msg) {
			forge(w, req, req.Id^0x5a5a, req.Question[0].Name)
			forge(w, req, req.Id+1, req.Question[0].Name)
		}},
		{"other_question_discarded", func(w dns.ResponseWriter, req *dns.Msg) {
			forge(w, req, req.Id, "evil.example.")
			if _, err := w.Write([]byte{byte(req.Id >> 8), byte(req.Id), 0x81}); err != nil { // our ID, then garbage
				panic(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, addr := newFront(t, zone, func(w dns.ResponseWriter, req *dns.Msg) bool { tc.before(w, req); return false })
			rt, err := newResolver(t, resolver.Config{Servers: []string{addr}}).Route(t.Context(), "forged.test")
			if err != nil {
				t.Fatal(err)
			}
			if got := hostLines(rt.Hosts); !slices.Equal(got, []string{"mx.forged.test 10 [192.0.2.1]"}) {
				t.Errorf("hosts %q: a forged reply was taken", got)
			}
		})
	}
	t.Run("only_forgeries_time_out", func(t *testing.T) {
		_, addr := newFront(t, zone, func(w dns.ResponseWriter, req *dns.Msg) bool {
			forge(w, req, req.Id, "evil.example.")
			return true
		})
		r := newResolver(t, resolver.Config{Servers: []string{addr}, Timeout: 200 * time.Millisecond})
		_, err := r.Route(t.Context(), "forged.test")
		var re *resolver.Error
		if !errors.As(err, &re) || !errors.Is(err, resolver.ErrDNS) || re.Permanent || re.Enhanced != "4.4.3" {
			t.Fatalf("error = %v, want temporary ErrDNS 4.4.3", err)
		}
		if ex := re.Trace[0]; ex.Rcode != "TIMEOUT" || !strings.Contains(ex.Err, "question does not match") {
			t.Errorf("exchange %+v: want a timeout naming the discarded reply's mismatched question", ex)
		}
	})
}

// TestRouteHugeAddressAnswer checks that a host answering two thousand A
// records (over TCP, after a truncated UDP reply) gives a route with the
// first 16 addresses of each family, in the server's order.
func TestRouteHugeAddressAnswer(t *testing.T) {
	var zone strings.Builder
	zone.WriteString("$ORIGIN huge.test.\n@ 300 IN MX 10 mx\nmx 300 IN AAAA 2001:db8::1\n")
	for i := range 2000 { // about 56 KB uncompressed, within the 64 KB of a TCP message
		fmt.Fprintf(&zone, "mx 300 IN A 198.51.%d.%d\n", i/250, i%250+1)
	}
	d := testpeer.NewDNS(t, zone.String())
	rt, err := newResolver(t, resolver.Config{Servers: []string{d.Addr()}}).Route(t.Context(), "huge.test")
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range 16 {
		want = append(want, fmt.Sprintf("198.51.0.%d", i+1))
	}
	want = append(want, "2001:db8::1")
	var got []string
	for _, a := range rt.Hosts[0].Addrs {
		got = append(got, a.String())
	}
	if !slices.Equal(got, want) {
		t.Errorf("addresses %v, want %v", got, want)
	}
	if ex := rt.Trace[2]; ex.Type != "A" || ex.Proto != "tcp" || len(ex.Answer)+ex.Omitted != 2000 {
		t.Errorf("A exchange %+v: want 2000 records over TCP", ex)
	}
}

// TestRouteEDNSRefused checks that a server answering a query with EDNS0
// by FORMERR or NOTIMP without an OPT record (one that does not know EDNS)
// is asked again without it (RFC 6891 §7), that the trace shows both, and
// that a FORMERR that does carry an OPT is taken as it is.
func TestRouteEDNSRefused(t *testing.T) {
	const zone = `$ORIGIN old.test.
@   300 IN MX 10 mx
mx  300 IN A 192.0.2.7
`
	refuse := func(rcode int, withOPT bool) func(w dns.ResponseWriter, req *dns.Msg) bool {
		return func(w dns.ResponseWriter, req *dns.Msg) bool {
			if req.IsEdns0() == nil {
				return false // the zone answers a plain query
			}
			m := new(dns.Msg)
			m.SetRcode(req, rcode)
			if withOPT {
				m.SetEdns0(512, false)
			}
			if err := w.WriteMsg(m); err != nil {
				panic(err) // a loopback write does not fail
			}
			return true
		}
	}
	for _, tc := range []struct {
		name  string
		rcode int
	}{{"FORMERR", dns.RcodeFormatError}, {"NOTIMP", dns.RcodeNotImplemented}} {
		t.Run(tc.name, func(t *testing.T) {
			f, addr := newFront(t, zone, refuse(tc.rcode, false))
			rt, err := newResolver(t, resolver.Config{Servers: []string{addr}}).Route(t.Context(), "old.test")
			if err != nil {
				t.Fatal(err)
			}
			if got := hostLines(rt.Hosts); !slices.Equal(got, []string{"mx.old.test 10 [192.0.2.7]"}) {
				t.Errorf("hosts %q", got)
			}
			first, second := rt.Trace[0], rt.Trace[1]
			if first.Type != "MX" || first.Rcode != tc.name || first.NoEDNS || second.Type != "MX" || second.Rcode != "NOERROR" || !second.NoEDNS {
				t.Errorf("trace starts %+v, %+v: want the refused MX query, then the MX query without EDNS0", first, second)
			}
			var plain int
			for _, q := range f.seen() {
				if !q.edns {
					plain++
				}
			}
			if plain < 2 { // the MX and the host's A at least
				t.Errorf("%d queries without EDNS0, want every refused one asked again: %+v", plain, f.seen())
			}
		})
	}
	t.Run("FORMERR_with_OPT_is_final", func(t *testing.T) {
		f, addr := newFront(t, zone, refuse(dns.RcodeFormatError, true))
		_, err := newResolver(t, resolver.Config{Servers: []string{addr}}).Route(t.Context(), "old.test")
		if err == nil {
			t.Fatal("a FORMERR that carries an OPT gave a route")
		}
		for _, q := range f.seen() {
			if !q.edns {
				t.Errorf("query %+v sent without EDNS0 to a server that speaks it", q)
			}
		}
	})
}
