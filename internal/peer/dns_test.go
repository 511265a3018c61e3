package peer_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"mta/internal/peer"
)

const zone = `$ORIGIN example.test.
$TTL 120
@        IN SOA ns hostmaster 1 3600 600 86400 45
@        IN MX 10 mx
mx       IN A 192.0.2.1
mx    60 IN AAAA 2001:db8::1
alias    IN CNAME mx
stop     IN CNAME mx
away     IN CNAME mx.elsewhere.example.
dangling IN CNAME missing
a.b.c    IN A 192.0.2.9
`

func start(t *testing.T, z string) *peer.DNS {
	t.Helper()
	d, err := peer.NewDNS(peer.DNSOptions{Addr: "127.0.0.1:0", Zone: z})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Error(err)
		}
	})
	return d
}

// ask sends one query with miekg/dns's own client over proto.
func ask(t *testing.T, d *peer.DNS, proto, name string, qtype uint16) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: proto, Timeout: 2 * time.Second}
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	q.SetEdns0(1232, false)
	m, _, err := c.Exchange(q, d.Addr())
	if err != nil {
		t.Fatalf("%s %s over %s: %v", dns.TypeToString[qtype], name, proto, err)
	}
	return m
}

// summary is "RCODE aa|answer...|authority types" for comparisons.
func summary(m *dns.Msg) string {
	var ans, ns []string
	for _, rr := range m.Answer {
		ans = append(ans, strings.Join(strings.Fields(rr.String()), " "))
	}
	for _, rr := range m.Ns {
		ns = append(ns, dns.TypeToString[rr.Header().Rrtype])
	}
	aa := ""
	if m.Authoritative {
		aa = " aa"
	}
	if m.Truncated {
		aa += " tc"
	}
	return dns.RcodeToString[m.Rcode] + aa + "|" + strings.Join(ans, "; ") + "|" + strings.Join(ns, " ")
}

func TestDNSAnswers(t *testing.T) {
	d := start(t, zone)
	d.Set("stop.example.test", peer.ModeCNAMEOnly)
	cases := []struct {
		name  string
		qname string
		qtype uint16
		want  string
	}{
		{"data_with_TTL_from_$TTL", "example.test", dns.TypeMX, "NOERROR aa|example.test. 120 IN MX 10 mx.example.test.|"},
		{"explicit_TTL", "mx.example.test", dns.TypeAAAA, "NOERROR aa|mx.example.test. 60 IN AAAA 2001:db8::1|"},
		{"NODATA_has_SOA", "mx.example.test", dns.TypeMX, "NOERROR aa||SOA"},
		{"NXDOMAIN_has_SOA", "nope.example.test", dns.TypeA, "NXDOMAIN aa||SOA"},
		{"empty_non-terminal_is_NODATA", "b.c.example.test", dns.TypeA, "NOERROR aa||SOA"},
		{"CNAME_chased", "alias.example.test", dns.TypeA, "NOERROR aa|alias.example.test. 120 IN CNAME mx.example.test.; mx.example.test. 120 IN A 192.0.2.1|"},
		{"CNAME_only_mode", "stop.example.test", dns.TypeA, "NOERROR aa|stop.example.test. 120 IN CNAME mx.example.test.|"},
		{"CNAME_out_of_zone_not_chased", "away.example.test", dns.TypeA, "NOERROR aa|away.example.test. 120 IN CNAME mx.elsewhere.example.|"},
		{"CNAME_to_missing_is_NXDOMAIN", "dangling.example.test", dns.TypeA, "NXDOMAIN aa|dangling.example.test. 120 IN CNAME missing.example.test.|SOA"},
		{"CNAME_asked_for", "alias.example.test", dns.TypeCNAME, "NOERROR aa|alias.example.test. 120 IN CNAME mx.example.test.|"},
		{"case_insensitive", "MX.Example.TEST", dns.TypeA, "NOERROR aa|mx.example.test. 120 IN A 192.0.2.1|"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, proto := range []string{"udp", "tcp"} {
				if got := summary(ask(t, d, proto, tc.qname, tc.qtype)); got != tc.want {
					t.Errorf("%s: got  %s\nwant %s", proto, got, tc.want)
				}
			}
		})
	}
}

func TestDNSModes(t *testing.T) {
	d := start(t, zone)
	cases := []struct {
		name      string
		mode      peer.Mode
		udp, tcp  string
		qname     string
		qtype     uint16
		wantQuery bool
	}{
		{name: "SERVFAIL", mode: peer.ModeServfail, udp: "SERVFAIL aa||", tcp: "SERVFAIL aa||"},
		{name: "NXDOMAIN", mode: peer.ModeNXDomain, udp: "NXDOMAIN aa||SOA", tcp: "NXDOMAIN aa||SOA"},
		{name: "NODATA", mode: peer.ModeNoData, udp: "NOERROR aa||SOA", tcp: "NOERROR aa||SOA"},
		{name: "truncate_over_UDP_only", mode: peer.ModeTruncate, udp: "NOERROR aa tc||",
			tcp: "NOERROR aa|mx.example.test. 120 IN A 192.0.2.1|"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d.Set("mx.example.test.", tc.mode)
			defer d.Set("mx.example.test", 0)
			if got := summary(ask(t, d, "udp", "mx.example.test", dns.TypeA)); got != tc.udp {
				t.Errorf("udp: got %s, want %s", got, tc.udp)
			}
			if got := summary(ask(t, d, "tcp", "mx.example.test", dns.TypeA)); got != tc.tcp {
				t.Errorf("tcp: got %s, want %s", got, tc.tcp)
			}
		})
	}
	t.Run("silent", func(t *testing.T) {
		d.Set("mx.example.test", peer.ModeSilent)
		defer d.Set("mx.example.test", 0)
		c := &dns.Client{Timeout: 100 * time.Millisecond}
		q := new(dns.Msg)
		q.SetQuestion("mx.example.test.", dns.TypeA)
		if m, _, err := c.Exchange(q, d.Addr()); err == nil {
			t.Errorf("silent name answered: %v", m)
		}
	})
}

// TestDNSLargeAnswerTruncated checks that an answer bigger than the
// client's EDNS0 buffer is truncated over UDP and whole over TCP.
func TestDNSLargeAnswerTruncated(t *testing.T) {
	var z strings.Builder
	for i := range 100 {
		z.WriteString("big.test. 300 IN TXT \"record number " + strings.Repeat("x", 20) + string(rune('a'+i%26)) + "\"\n")
	}
	d := start(t, z.String())
	if m := ask(t, d, "udp", "big.test", dns.TypeTXT); !m.Truncated || len(m.Answer) >= 100 {
		t.Errorf("udp: truncated %v with %d records, want TC and fewer than 100", m.Truncated, len(m.Answer))
	}
	if m := ask(t, d, "tcp", "big.test", dns.TypeTXT); m.Truncated || len(m.Answer) != 100 {
		t.Errorf("tcp: truncated %v with %d records, want all 100", m.Truncated, len(m.Answer))
	}
}

// TestDNSRecordsQueries checks the query log and counts.
func TestDNSRecordsQueries(t *testing.T) {
	d := start(t, zone)
	ask(t, d, "udp", "MX.example.test", dns.TypeA)
	ask(t, d, "tcp", "example.test", dns.TypeMX)
	want := []peer.Query{{Name: "mx.example.test.", Type: "A", Proto: "udp"}, {Name: "example.test.", Type: "MX", Proto: "tcp"}}
	if got := d.Queries(); !slices.Equal(got, want) {
		t.Errorf("queries %v, want %v", got, want)
	}
	if got := d.Count("mx.example.test", ""); got != 1 {
		t.Errorf("Count = %d, want 1", got)
	}
	d.ResetQueries()
	if got := d.Queries(); len(got) != 0 {
		t.Errorf("after reset: %v", got)
	}
}

// TestDNSHold checks that a held name is answered only after release.
func TestDNSHold(t *testing.T) {
	d := start(t, zone)
	release := d.Hold("mx.example.test")
	done := make(chan *dns.Msg, 1)
	go func() {
		c := &dns.Client{Timeout: 10 * time.Second}
		q := new(dns.Msg)
		q.SetQuestion("mx.example.test.", dns.TypeA)
		m, _, _ := c.Exchange(q, d.Addr()) // nil on error, checked below
		done <- m
	}()
	deadline := time.Now().Add(10 * time.Second)
	for d.Count("mx.example.test", "A") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("query never arrived")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case <-done:
		t.Fatal("held query answered before release")
	default:
	}
	release()
	if m := <-done; m == nil || len(m.Answer) != 1 {
		t.Fatalf("after release: %v", m)
	}
}

func TestDNSZoneErrors(t *testing.T) {
	for name, z := range map[string]string{
		"bad_record": "example.test. 300 IN MX ten mx.example.test.\n",
		"include":    "$INCLUDE /etc/passwd\n",
		"bad_origin": "$ORIGIN\n",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := peer.NewDNS(peer.DNSOptions{Zone: z}); err == nil {
				t.Error("bad zone accepted")
			}
		})
	}
}

// TestDNSOriginAndDefaultSOA checks relative names under DNSOptions.Origin
// and the SOA served when the zone has none.
func TestDNSOriginAndDefaultSOA(t *testing.T) {
	d, err := peer.NewDNS(peer.DNSOptions{Zone: "mx 300 IN A 192.0.2.1\n", Origin: "lab.test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() }) // close errors are TestDNSAnswers' business
	if got := summary(ask(t, d, "udp", "mx.lab.test", dns.TypeA)); got != "NOERROR aa|mx.lab.test. 300 IN A 192.0.2.1|" {
		t.Errorf("got %s", got)
	}
	m := ask(t, d, "udp", "none.lab.test", dns.TypeA)
	if len(m.Ns) != 1 || m.Ns[0].(*dns.SOA).Hdr.Name != "lab.test." || m.Rcode != dns.RcodeNameError {
		t.Errorf("negative answer %v, want NXDOMAIN with SOA lab.test.", m)
	}
}

// TestDNSSetZone checks that the records can be replaced while serving.
func TestDNSSetZone(t *testing.T) {
	d := start(t, zone)
	if err := d.SetZone("mx.example.test. 30 IN A 192.0.2.200\n", ""); err != nil {
		t.Fatal(err)
	}
	if got := summary(ask(t, d, "udp", "mx.example.test", dns.TypeA)); got != "NOERROR aa|mx.example.test. 30 IN A 192.0.2.200|" {
		t.Errorf("got %s", got)
	}
}
