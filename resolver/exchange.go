package resolver

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/miekg/dns"
)

// transport sends one query to one server and returns the raw reply. The
// reply is checked by decode, never here, so that every path through
// answer processing is the same for the network and for the fuzz tests.
type transport interface {
	exchange(ctx context.Context, server, proto string, q *dns.Msg) ([]byte, error)
}

// netTransport is the real network.
type netTransport struct {
	dialer net.Dialer
}

func (t *netTransport) exchange(ctx context.Context, server, proto string, q *dns.Msg) ([]byte, error) {
	wire, err := q.Pack()
	if err != nil {
		return nil, fmt.Errorf("pack query: %w", err)
	}
	conn, err := t.dialer.DialContext(ctx, proto, server)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// Reads and writes end when ctx does: its deadline, or at once when it
	// is cancelled.
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			return nil, err
		}
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if proto == "tcp" {
		return tcpRoundTrip(conn, wire)
	}
	return udpRoundTrip(conn, wire, q.Id, func(b []byte) error { _, err := decode(q, b); return err })
}

// udpRoundTrip sends wire and waits for a datagram carrying id that check
// accepts (decode: a response to this very question). Others are discarded
// (RFC 5452 §9.1): late replies to earlier queries, blind forgeries, and
// replies with our ID to another question or that do not parse, any of
// which an attacker on the path of the replies can send. When the wait
// ends with nothing accepted, the error says what was discarded.
func udpRoundTrip(conn net.Conn, wire []byte, id uint16, check func([]byte) error) ([]byte, error) {
	if _, err := conn.Write(wire); err != nil {
		return nil, err
	}
	buf := make([]byte, 4096) // we advertise 1232; tolerate larger
	var discarded error
	for {
		n, err := conn.Read(buf)
		if err != nil {
			if discarded != nil {
				return nil, fmt.Errorf("%w (a reply with the query's ID was discarded: %v)", err, discarded)
			}
			return nil, err
		}
		if n < 2 || binary.BigEndian.Uint16(buf) != id {
			continue
		}
		if err := check(buf[:n]); err != nil {
			discarded = err
			continue
		}
		return buf[:n], nil
	}
}

// tcpRoundTrip sends wire with its two-octet length (RFC 1035 §4.2.2) and
// reads one reply.
func tcpRoundTrip(conn net.Conn, wire []byte) ([]byte, error) {
	out := make([]byte, 2+len(wire))
	binary.BigEndian.PutUint16(out, uint16(len(wire)))
	copy(out[2:], wire)
	if _, err := conn.Write(out); err != nil {
		return nil, err
	}
	var l [2]byte
	if _, err := io.ReadFull(conn, l[:]); err != nil {
		return nil, err
	}
	reply := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(conn, reply); err != nil {
		return nil, err
	}
	return reply, nil
}

// newQuery is a recursive query for (name, qtype), with an EDNS0 OPT
// when edns.
func newQuery(name string, qtype uint16, edns bool) *dns.Msg {
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	q.RecursionDesired = true
	if edns {
		q.SetEdns0(ednsBufferBytes, false)
	}
	return q
}

// exchangeAll asks each server in turn until one answers NOERROR or
// NXDOMAIN, and returns the last answer with every exchange made.
func (r *Resolver) exchangeAll(ctx context.Context, name string, qtype uint16) (*answer, []Exchange) {
	var exs []Exchange
	var a *answer
	for _, s := range r.servers {
		var ex []Exchange
		a, ex = r.exchangeServer(ctx, s, name, qtype)
		exs = append(exs, ex...)
		if a.rcode == dns.RcodeSuccess || a.rcode == dns.RcodeNameError || ctx.Err() != nil {
			break
		}
	}
	return a, exs
}

// exchangeServer asks one server over UDP, again without EDNS0 when the
// server refuses it, and again over TCP when the UDP reply is truncated.
func (r *Resolver) exchangeServer(ctx context.Context, server, name string, qtype uint16) (*answer, []Exchange) {
	a, ex, st := r.exchangeOnce(ctx, server, "udp", name, qtype, true)
	exs := []Exchange{ex}
	edns := true
	if st.ednsRefused && ctx.Err() == nil {
		edns = false
		a, ex, st = r.exchangeOnce(ctx, server, "udp", name, qtype, false)
		exs = append(exs, ex)
	}
	if st.truncated {
		a, ex, _ = r.exchangeOnce(ctx, server, "tcp", name, qtype, edns)
		exs = append(exs, ex)
	}
	return a, exs
}

// replyState is what exchangeServer needs to know of a reply beyond the
// answer.
type replyState struct {
	truncated bool // over UDP: ask again over TCP
	// ednsRefused: a FORMERR or NOTIMP without an OPT record to a query
	// with one, the answer of a server that does not know EDNS0
	// (RFC 6891 §7): ask again without it.
	ednsRefused bool
}

// exchangeOnce makes one exchange, bounded by Config.Timeout, and reports
// it to the log and the Observer.
func (r *Resolver) exchangeOnce(ctx context.Context, server, proto, name string, qtype uint16, edns bool) (*answer, Exchange, replyState) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	q := newQuery(name, qtype, edns)
	start := time.Now()
	raw, err := r.transport.exchange(ctx, server, proto, q)
	var m *dns.Msg
	if err == nil {
		m, err = decode(q, raw)
	}
	d := time.Since(start)
	ex := Exchange{Name: q.Question[0].Name, Type: dns.TypeToString[qtype], Server: server, Proto: proto, Duration: d, NoEDNS: !edns}
	var a *answer
	var st replyState
	if err != nil {
		a = &answer{rcode: rcodeError, err: err.Error()}
		if isTimeout(err) {
			a.rcode = rcodeTimeout
		}
		ex.Err = a.err
	} else {
		a = reduce(m, name, qtype)
		ex.Answer, ex.Omitted = records(m.Answer)
		st.truncated = m.Truncated && proto == "udp"
		st.ednsRefused = edns && (m.Rcode == dns.RcodeFormatError || m.Rcode == dns.RcodeNotImplemented) && m.IsEdns0() == nil
		ex.Truncated = m.Truncated
	}
	ex.Rcode = rcodeText(a.rcode)
	r.report(ctx, ex, a, d)
	return a, ex, st
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout())
}

// report logs an exchange or cache answer at Debug and tells the Observer.
func (r *Resolver) report(ctx context.Context, ex Exchange, a *answer, d time.Duration) {
	r.obs.Lookup(ex.Type, a.result(), ex.Cached, d)
	if !r.log.Enabled(ctx, slog.LevelDebug) {
		return
	}
	var ttl uint32
	for i, rec := range ex.Answer {
		if i == 0 || rec.TTL < ttl {
			ttl = rec.TTL
		}
	}
	r.log.LogAttrs(ctx, slog.LevelDebug, "dns exchange",
		slog.String("name", ex.Name), slog.String("type", ex.Type),
		slog.String("server", ex.Server), slog.String("proto", ex.Proto),
		slog.String("rcode", ex.Rcode), slog.Int("answers", len(ex.Answer)),
		slog.Uint64("ttl", uint64(ttl)), slog.Bool("cached", ex.Cached),
		slog.Duration("duration", d), slog.String("error", ex.Err))
}
