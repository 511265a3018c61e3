package resolver

import (
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/dns"
)

// Pseudo rcodes for an exchange that got no usable reply.
const (
	rcodeTimeout = -1 // no reply before the timeout
	rcodeError   = -2 // refused connection, malformed or mismatched reply
)

// answer is what one exchange (or the cache) said about one (name, type),
// reduced to what routing uses. It is what the cache stores and is never
// modified once made.
type answer struct {
	rcode int      // DNS rcode, or rcodeTimeout / rcodeError
	rrs   []dns.RR // the CNAME chain from the name and the data at its end
	soa   *dns.SOA // authority SOA of a negative answer, or nil
	err   string   // why there is no reply, when rcode < 0
	// noData is set when rrs ends without records of the type asked
	// (NODATA, NXDOMAIN, or a chain left for the caller to follow).
	noData bool

	// recs and omitted are rrs as a trace shows them, made once so that
	// cache answers do not format records again.
	recs    []Record
	omitted int
}

// Errors of decode: the reply does not belong to our query.
var (
	errMalformed        = errors.New("malformed reply")
	errIDMismatch       = errors.New("reply ID does not match the query")
	errNotResponse      = errors.New("reply is not a response")
	errQuestionMismatch = errors.New("reply question does not match the query")
)

// decode unpacks raw and checks that it answers q: same ID, QR set, same
// opcode, the same single question. It is the first step of processing any
// reply and is safe on hostile bytes.
func decode(q *dns.Msg, raw []byte) (*dns.Msg, error) {
	m := new(dns.Msg)
	if err := m.Unpack(raw); err != nil {
		return nil, fmt.Errorf("%w: %v", errMalformed, err)
	}
	if m.Id != q.Id {
		return nil, errIDMismatch
	}
	if !m.Response || m.Opcode != q.Opcode {
		return nil, errNotResponse
	}
	if len(m.Question) != 1 || len(q.Question) != 1 {
		return nil, errQuestionMismatch
	}
	mq, qq := m.Question[0], q.Question[0]
	if !strings.EqualFold(mq.Name, qq.Name) || mq.Qtype != qq.Qtype || mq.Qclass != qq.Qclass {
		return nil, errQuestionMismatch
	}
	return m, nil
}

// reduce keeps what routing needs from a decoded reply to (name, qtype):
// the rcode, the chain and data (see follow), and the SOA of a negative
// answer.
func reduce(m *dns.Msg, name string, qtype uint16) *answer {
	a := &answer{rcode: m.Rcode}
	data, chain := follow(m.Answer, name, qtype)
	for _, c := range chain {
		a.rrs = append(a.rrs, c)
	}
	a.rrs = append(a.rrs, data...)
	a.recs, a.omitted = records(a.rrs)
	a.noData = len(data) == 0
	if a.noData {
		for _, rr := range m.Ns {
			if soa, ok := rr.(*dns.SOA); ok && soa.Hdr.Class == dns.ClassINET {
				a.soa = soa
				break
			}
		}
	}
	return a
}

// follow walks the CNAME chain from name through rrs and returns the
// records of qtype at its end and the chain's links, in order. It stops at
// data, at the end of the chain, at a link back to a name already seen
// (which it still returns, so the caller sees the loop), or after
// maxCNAMEHops+1 links.
func follow(rrs []dns.RR, name string, qtype uint16) (data []dns.RR, chain []*dns.CNAME) {
	cur := strings.ToLower(dns.Fqdn(name))
	seen := map[string]bool{cur: true}
	for len(chain) <= maxCNAMEHops {
		var next *dns.CNAME
		for _, rr := range rrs {
			h := rr.Header()
			if h.Class != dns.ClassINET || !strings.EqualFold(h.Name, cur) {
				continue
			}
			if h.Rrtype == qtype {
				data = append(data, rr)
			} else if c, ok := rr.(*dns.CNAME); ok && next == nil {
				next = c
			}
		}
		if len(data) > 0 || next == nil || qtype == dns.TypeCNAME {
			return data, chain
		}
		chain = append(chain, next)
		cur = strings.ToLower(dns.Fqdn(next.Target))
		if seen[cur] {
			return nil, chain
		}
		seen[cur] = true
	}
	return nil, chain
}

// rcodeText is the rcode as shown in a trace.
func rcodeText(rcode int) string {
	switch rcode {
	case rcodeTimeout:
		return "TIMEOUT"
	case rcodeError:
		return "ERROR"
	}
	if s, ok := dns.RcodeToString[rcode]; ok {
		return s
	}
	return fmt.Sprintf("RCODE%d", rcode)
}

// result is the Observer's word for an answer.
func (a *answer) result() string {
	switch {
	case a.rcode == rcodeTimeout:
		return "timeout"
	case a.rcode == rcodeError:
		return "error"
	case a.rcode == dns.RcodeNameError:
		return "nxdomain"
	case a.rcode != dns.RcodeSuccess:
		return "servfail"
	case len(a.rrs) == 0:
		return "nodata"
	}
	return "ok"
}

// records turns RRs into trace records, at most maxTraceRecords. It
// returns how many it left out.
func records(rrs []dns.RR) ([]Record, int) {
	n := min(len(rrs), maxTraceRecords)
	out := make([]Record, 0, n)
	for _, rr := range rrs[:n] {
		h := rr.Header()
		out = append(out, Record{
			Name: h.Name,
			Type: dns.TypeToString[h.Rrtype],
			TTL:  h.Ttl,
			Data: strings.TrimPrefix(rr.String(), h.String()),
		})
	}
	return out, len(rrs) - n
}

// aged is recs with each TTL lowered by ageSeconds, as a cache answer
// shows them.
func aged(recs []Record, ageSeconds uint32) []Record {
	out := make([]Record, len(recs))
	for i, r := range recs {
		r.TTL -= min(r.TTL, ageSeconds)
		out[i] = r
	}
	return out
}

// minTTL is the smallest TTL of rrs in seconds (0 for none).
func minTTL(rrs []dns.RR) uint32 {
	var m uint32
	for i, rr := range rrs {
		if t := rr.Header().Ttl; i == 0 || t < m {
			m = t
		}
	}
	return m
}
