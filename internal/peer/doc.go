// Package peer holds the real network peers that tests, the lab and the
// benchmark run against: servers that speak the protocols for real on
// loopback, configured through plain structs, with no dependency on the
// testing package (internal/testpeer wraps them for tests).
//
// This file's neighbours:
//   - dns.go, dnszone.go: DNS, an authoritative DNS server for a zone given
//     as master-file text, UDP and TCP on one port, answering like an
//     authoritative server (NXDOMAIN vs NODATA with the SOA, CNAMEs
//     chased inside the zone), with per-name switches (SERVFAIL, silence,
//     truncation over UDP, NXDOMAIN, NODATA, CNAME only), Hold for tests,
//     and a bounded log of the queries received.
//   - smtp.go, smtp_session.go: Host, an SMTP server on go-smtp for one
//     address (127.0.0.x:port), run by a Behaviour script (accept; refuse
//     connections; 4xx/5xx at greeting, MAIL, RCPT (all or per address),
//     DATA; 452 past N recipients; slow replies; hangs; a peer that stops
//     reading mid-DATA; a drop after the final dot; STARTTLS, broken TLS or
//     implicit TLS; 8BITMIME/SMTPUTF8/DSN left out; SIZE; required AUTH).
//     It records every session (EHLO name, TLS, AUTH, MAIL/RCPT with their
//     parameters, sizes, replies) and keeps accepted messages, also into a
//     Mailbox when one is set (SetMailbox).
//   - mailbox.go: Mailbox, the messages a lab host received, safe for
//     concurrent use; UIDs are unique and never reused.
//   - pop3.go, pop3_session.go: POP3Server, which serves mailboxes over
//     POP3 (RFC 1939; CAPA from RFC 2449, response codes from RFC 3206)
//     so a student can read with telnet what a lab host received.
//
// POP3 invariants: a session locks its mailbox from PASS to the end
// (RFC 1939 §4), numbers messages as they were at PASS, and removes the
// messages it marked deleted only when QUIT is given in the TRANSACTION
// state (the UPDATE state); a lost connection, an idle timeout or Close
// removes nothing.
package peer
