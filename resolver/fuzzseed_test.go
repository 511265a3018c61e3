package resolver

import (
	"fmt"
	"net"

	"github.com/miekg/dns"
)

// fuzzSeeds are FuzzRoute inputs for the cases the fuzz test is about:
// normal routes, null MX, NXDOMAIN, MX to an IP literal, huge and looping
// CNAME chains, wrong IDs, mismatched questions, empty and truncated
// answers, garbage.
func fuzzSeeds() [][]byte {
	fix := byte(fuzzFixID)
	mx := func(pref uint16, target string) dns.RR {
		return &dns.MX{Hdr: hdr("fuzz.test.", dns.TypeMX), Preference: pref, Mx: target}
	}
	a := func(name, ip string) dns.RR {
		return &dns.A{Hdr: hdr(name, dns.TypeA), A: net.ParseIP(ip)}
	}
	cname := func(name, target string) dns.RR {
		return &dns.CNAME{Hdr: hdr(name, dns.TypeCNAME), Target: target}
	}
	soa := &dns.SOA{Hdr: hdr("fuzz.test.", dns.TypeSOA), Ns: "ns.fuzz.test.", Mbox: "h.fuzz.test.", Minttl: 60}
	mxQ := func(rcode int, ans ...dns.RR) []byte { return reply("fuzz.test.", dns.TypeMX, rcode, ans, nil) }
	hostA := func(name, ip string) []byte { return reply(name, dns.TypeA, 0, []dns.RR{a(name, ip)}, nil) }
	var chain []dns.RR
	for i := range 40 {
		from := "fuzz.test."
		if i > 0 {
			from = fmt.Sprintf("c%d.fuzz.test.", i)
		}
		chain = append(chain, cname(from, fmt.Sprintf("c%d.fuzz.test.", i+1)))
	}
	wrongID := mxQ(0, mx(10, "mx.fuzz.test."))
	wrongID[0], wrongID[1] = 0xde, 0xad
	truncated := new(dns.Msg)
	truncated.SetQuestion("fuzz.test.", dns.TypeMX)
	truncated.Response, truncated.Truncated = true, true
	tc, _ := truncated.Pack()

	return [][]byte{
		encodeFuzz(0, fuzzReply{fix, mxQ(0, mx(10, "mx1.fuzz.test."), mx(20, "mx2.fuzz.test."))},
			fuzzReply{fix, hostA("mx1.fuzz.test.", "192.0.2.1")}, fuzzReply{fix, hostA("mx2.fuzz.test.", "192.0.2.2")}),
		encodeFuzz(0, fuzzReply{fix, mxQ(0, mx(0, "."))}),
		encodeFuzz(0, fuzzReply{fix, mxQ(0, mx(0, "."), mx(10, "mx1.fuzz.test."))}, fuzzReply{fix, hostA("mx1.fuzz.test.", "192.0.2.1")}),
		encodeFuzz(0, fuzzReply{fix, reply("fuzz.test.", dns.TypeMX, dns.RcodeNameError, nil, []dns.RR{soa})}),
		encodeFuzz(0, fuzzReply{fix, mxQ(0, mx(10, "192.0.2.1."), mx(20, "[192.0.2.2]."))}),
		encodeFuzz(0, fuzzReply{fix, mxQ(0, chain...)}),
		encodeFuzz(0, fuzzReply{fix, mxQ(0, cname("fuzz.test.", "loop.fuzz.test."), cname("loop.fuzz.test.", "fuzz.test."))}),
		encodeFuzz(0, fuzzReply{fix, mxQ(0, cname("fuzz.test.", "other.fuzz.test."))},
			fuzzReply{fix, reply("other.fuzz.test.", dns.TypeMX, 0, []dns.RR{cname("other.fuzz.test.", "fuzz.test.")}, nil)}),
		encodeFuzz(0, fuzzReply{0, wrongID}),
		encodeFuzz(0, fuzzReply{fix, reply("other.test.", dns.TypeMX, 0, []dns.RR{mx(10, "mx.fuzz.test.")}, nil)}),
		encodeFuzz(0, fuzzReply{fix, mxQ(0)}, fuzzReply{fix, reply("fuzz.test.", dns.TypeA, 0, nil, nil)}),
		encodeFuzz(0, fuzzReply{fix, tc}),
		encodeFuzz(0, fuzzReply{fix, mxQ(dns.RcodeServerFailure)}),
		encodeFuzz(0, fuzzReply{fix, mxQ(0, mx(10, "localhost."))}, fuzzReply{fix, hostA("localhost.", "127.0.0.1")}),
		encodeFuzz(fuzzAllowPrivate, fuzzReply{fix, mxQ(0, mx(10, "localhost."))}, fuzzReply{fix, hostA("localhost.", "127.0.0.1")}),
		encodeFuzz(0, fuzzReply{fix, mxQ(0, mx(10, "self.fuzz.test."), mx(5, "mx2.fuzz.test."), mx(1, "mx1.fuzz.test."))},
			fuzzReply{fix, hostA("mx1.fuzz.test.", "192.0.2.1")}, fuzzReply{fix, hostA("mx2.fuzz.test.", "192.0.2.99")}),
		encodeFuzz(0, fuzzReply{fix, []byte("\x00\x00\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00garbage")}),
		encodeFuzz(0),
	}
}

func hdr(name string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: 300}
}

// reply packs a response to (name, qtype); it panics only on a bug in the
// seeds themselves.
func reply(name string, qtype uint16, rcode int, ans, ns []dns.RR) []byte {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Response, m.Rcode = true, rcode
	m.Answer, m.Ns = ans, ns
	b, err := m.Pack()
	if err != nil {
		panic(fmt.Sprintf("seed %s: %v", name, err))
	}
	return b
}
