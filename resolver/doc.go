// Package resolver finds the route to a recipient domain: the mail hosts to
// try, in order, with their addresses, and the trace of every DNS exchange
// that led there. It owns DNS for the project: the stub client (UDP with
// EDNS0, TCP on truncation, several servers), the answer cache and the
// sharing of concurrent lookups.
//
// How a route is built (RFC 5321 §5.1):
//
//   - The domain is normalised: lowercase, IDNA A-label (RFC 5891, UTS #46
//     lookup mapping), no trailing dot. It must have a dot; search domains
//     and ndots are never applied. An address literal ("[192.0.2.1]",
//     "[IPv6:2001:db8::1]", RFC 5321 §4.1.3) routes straight to its address.
//   - One MX query is made for the domain. A CNAME chain in the answer is
//     followed; the end of the chain is queried again only when the answer
//     carries neither data for it nor an SOA covering it (an
//     authoritative-only server answers with the CNAME alone; a NODATA
//     answer, RFC 2308 §2.2, carries the SOA). The recipient domain itself
//     is never rewritten.
//   - NXDOMAIN is permanent (5.1.2). A single MX with target "." is a null
//     MX (RFC 7505): permanent 5.1.10. A "." among real MX records is
//     ignored. No MX records (NODATA) means the implicit MX: the domain
//     itself at preference 0. When MX records exist, the domain's own
//     address records are never used.
//   - Hosts are sorted by preference; hosts of equal preference are
//     shuffled (RFC 5321 §5.1). An MX target that is an IP address or not a
//     host name is dropped as malformed. At most maxHosts hosts are resolved.
//   - Each host's A and AAAA records are looked up (a CNAME there is
//     followed; AAAA is not asked when A says NXDOMAIN). A host's addresses
//     keep the server's order, IPv4 first, at most maxFamilyAddrs of each
//     family; delivery picks the family. Addresses that are loopback,
//     unspecified, link-local, multicast, private (RFC 1918, RFC 4193),
//     shared (RFC 6598) or otherwise not global unicast are "prohibited" unless
//     Config.AllowPrivate is set, so that a hostile "MX 10 localhost" cannot
//     turn the MTA against internal hosts.
//   - "Self" is a host named Config.Hostname or with an address in
//     Config.SelfAddrs. It and every host of equal or worse preference are
//     dropped; when nothing is left the error is 5.4.6 (mail loops back to
//     myself).
//   - A host whose address lookup fails is dropped with the reason; the
//     route is made of the rest. With no usable host the error is permanent
//     5.4.4 when no host failed for a temporary reason (every host is
//     NXDOMAIN, has no address records, is malformed or has only prohibited
//     addresses), else temporary 4.4.4.
//   - SERVFAIL, REFUSED, a timeout or a malformed reply from every server
//     is temporary 4.4.3.
//
// CNAME chains are followed for at most maxCNAMEHops links. A loop or a
// longer chain is a temporary failure (4.4.3, ErrCNAMELoop): a recursive
// server that meets the same loop answers SERVFAIL, which is temporary too,
// so the outcome does not depend on which resolver noticed; and a chain
// assembled from answers cached at different times may loop only while a
// zone is being edited. The queue's lifetime still bounds the retries.
//
// Transport (RFC 1035 §4.2, RFC 6891, RFC 7766, RFC 5452): queries go over
// UDP with an EDNS0 OPT advertising 1232 bytes; a truncated reply is asked
// again over TCP on the same server, and a FORMERR or NOTIMP without an OPT
// record (a server that does not know EDNS0) is asked again without the
// OPT. A server that times out, fails, or answers with anything but
// NOERROR/NXDOMAIN is followed by the next one. A reply must carry our ID
// and echo our question: UDP datagrams that do not, or do not parse, are
// discarded while waiting, so a forger cannot end an exchange early; when
// nothing else comes, the timeout names what was discarded.
//
// Cache (RFC 1035 §7.4, RFC 2308, RFC 9520): each exchange's answer is
// cached under (name, type) for the smallest TTL of the records routing
// used, capped by Config.MaxTTL; NXDOMAIN and NODATA for min(SOA TTL, SOA
// MINIMUM), capped at maxNegativeTTL, and not at all without an SOA;
// SERVFAIL-like failures for failureTTL (under 5 minutes); timeouts are not
// cached. The cache holds at most Config.CacheEntries answers of at most
// maxCachedRecords records each, evicting the least recently used.
// Concurrent lookups of one (name, type) share one exchange; each of their
// traces shows that exchange, and only the lookup that made it reports it
// to the Logger and the Observer.
//
// Invariants: every Host in Route.Hosts has at least one address, none of
// them self, and none prohibited unless AllowPrivate; Route.Trace lists
// every exchange and cache answer in the order they were used; an error
// from Route is always an *Error whose Err is one of the sentinels.
package resolver
