package peer

import (
	"fmt"
	"log/slog"
	"net"
	"strings"

	"github.com/miekg/dns"
)

// maxChase bounds how many CNAMEs one answer follows.
const maxChase = 16

// zone is the parsed records, indexed for answering.
type zone struct {
	rrs   map[string][]dns.RR // by lowercase owner
	names map[string]bool     // owners and their ancestors: names that exist
	soas  []*dns.SOA          // apexes, for negative answers
}

// ParseZone parses master-file text (as `mta lab` and the tests give it)
// and returns its records. origin is used for relative names (default ".").
func ParseZone(text, origin string) ([]dns.RR, error) {
	if origin == "" {
		origin = "."
	}
	zp := dns.NewZoneParser(strings.NewReader(text), dns.Fqdn(origin), "")
	zp.SetIncludeAllowed(false)
	var out []dns.RR
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		out = append(out, rr)
	}
	if err := zp.Err(); err != nil {
		return nil, fmt.Errorf("zone: %w", err)
	}
	return out, nil
}

func parseZone(text, origin string) (*zone, error) {
	rrs, err := ParseZone(text, origin)
	if err != nil {
		return nil, err
	}
	z := &zone{rrs: make(map[string][]dns.RR), names: make(map[string]bool)}
	for _, rr := range rrs {
		h := rr.Header()
		h.Name = canonical(h.Name)
		z.rrs[h.Name] = append(z.rrs[h.Name], rr)
		for n := h.Name; ; {
			z.names[n] = true
			i, end := dns.NextLabel(n, 0)
			if end {
				break
			}
			n = n[i:]
		}
		if soa, ok := rr.(*dns.SOA); ok {
			z.soas = append(z.soas, soa)
		}
	}
	if len(z.soas) == 0 {
		soa, err := dns.NewRR("$ORIGIN " + dns.Fqdn(originOr(origin)) + "\n" + defaultSOA)
		if err != nil {
			return nil, fmt.Errorf("zone: default SOA: %w", err)
		}
		z.soas = append(z.soas, soa.(*dns.SOA))
	}
	return z, nil
}

func originOr(o string) string {
	if o == "" {
		return "."
	}
	return o
}

// soaFor is the SOA of the closest apex above name, or the first one.
func (z *zone) soaFor(name string) *dns.SOA {
	var best *dns.SOA
	for _, s := range z.soas {
		if dns.IsSubDomain(s.Hdr.Name, name) && (best == nil || len(s.Hdr.Name) > len(best.Hdr.Name)) {
			best = s
		}
	}
	if best == nil {
		best = z.soas[0]
	}
	return best
}

// ours reports whether name is inside one of the zone's apexes.
func (z *zone) ours(name string) bool {
	for _, s := range z.soas {
		if dns.IsSubDomain(s.Hdr.Name, name) {
			return true
		}
	}
	return false
}

// ServeDNS answers one query as an authoritative server would.
func (d *DNS) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	proto := "udp"
	if _, ok := w.LocalAddr().(*net.TCPAddr); ok {
		proto = "tcp"
	}
	m := new(dns.Msg)
	if len(req.Question) != 1 {
		m.SetRcode(req, dns.RcodeFormatError)
		_ = w.WriteMsg(m) // the client's problem; nothing to do on failure
		return
	}
	q := req.Question[0]
	name := canonical(q.Name)
	d.record(Query{Name: name, Type: dns.TypeToString[q.Qtype], Proto: proto})
	d.log.Debug("dns query", slog.String("name", name), slog.String("type", dns.TypeToString[q.Qtype]),
		slog.String("proto", proto))

	d.wait(name)
	d.mu.Lock()
	mode := d.modes[name] | d.allMode
	z := d.zone
	modes := d.modes
	if mode&ModeSilent != 0 {
		d.mu.Unlock()
		return
	}
	m.SetReply(req)
	m.Authoritative = true
	switch {
	case mode&ModeServfail != 0:
		m.Rcode = dns.RcodeServerFailure
	case mode&ModeTruncate != 0 && proto == "udp":
		m.Truncated = true
	case mode&ModeNXDomain != 0:
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{z.soaFor(name)}
	case mode&ModeNoData != 0:
		m.Ns = []dns.RR{z.soaFor(name)}
	default:
		answer(m, z, modes, name, q.Qtype)
	}
	d.mu.Unlock()
	size := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		size = max(int(opt.UDPSize()), dns.MinMsgSize)
		m.SetEdns0(1232, false)
	}
	if proto == "udp" {
		m.Truncate(size)
	}
	_ = w.WriteMsg(m) // a client that went away is not the server's problem
}

// wait blocks while name is held (see Hold).
func (d *DNS) wait(name string) {
	d.mu.Lock()
	ch := d.holds[name]
	d.mu.Unlock()
	if ch == nil {
		return
	}
	select {
	case <-ch:
	case <-d.closed:
	}
}

// answer fills m for (name, qtype) from z: the CNAME chain (chased while
// the target is in the zone and its owner is not ModeCNAMEOnly), the
// records asked for, or NXDOMAIN / NODATA with the SOA in authority.
func answer(m *dns.Msg, z *zone, modes map[string]Mode, name string, qtype uint16) {
	seen := map[string]bool{}
	for range maxChase {
		seen[name] = true
		rrs := z.rrs[name]
		var data []dns.RR
		var cname *dns.CNAME
		for _, rr := range rrs {
			if rr.Header().Rrtype == qtype || qtype == dns.TypeANY {
				data = append(data, dns.Copy(rr))
			} else if c, ok := rr.(*dns.CNAME); ok {
				cname = c
			}
		}
		if len(data) > 0 {
			m.Answer = append(m.Answer, data...)
			return
		}
		if cname != nil {
			m.Answer = append(m.Answer, dns.Copy(cname))
			next := canonical(cname.Target)
			if modes[name]&ModeCNAMEOnly != 0 || seen[next] || !z.ours(next) {
				return
			}
			name = next
			continue
		}
		if !z.names[name] {
			m.Rcode = dns.RcodeNameError
		}
		m.Ns = []dns.RR{dns.Copy(z.soaFor(name))}
		return
	}
}
