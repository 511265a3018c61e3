// Package smtpd is the intake side of the MTA: the SMTP listeners (relay
// on port 25, submission on 587 with STARTTLS, submissions on 465 with
// implicit TLS, and the local socket `mta sendmail` speaks to), their
// sessions, authentication, who may send what, abuse limits, the header
// fix-ups and DKIM signing. Every accepted message goes to the spool, and
// the client hears 250 only after spool.Enqueue returned.
//
// It is built on github.com/emersion/go-smtp's server, with these
// corrections made around it (see conn.go and session.go):
//
//   - CHUNKING is never advertised and BDAT is refused: go-smtp always
//     offers CHUNKING, and reads a BDAT payload sent after a refused RCPT
//     as commands in some versions. The connection wrapper removes the
//     keyword from the EHLO reply and Data refuses a BDAT body; go-smtp
//     still consumes the announced chunk, so it never runs as commands.
//   - STARTTLS is done here, not by go-smtp, so the reply filter keeps
//     working inside TLS: go-smtp's "TLS not supported" answer to STARTTLS
//     becomes "220 Ready to start TLS", the plaintext go-smtp connection is
//     ended, and the TLS connection is handed to a second go-smtp server
//     whose greeting is swallowed (RFC 3207 §4.2: the client's EHLO comes
//     next, and nothing from before TLS is kept).
//   - SIZE and the recipient limit are enforced here (they can change at
//     run time); the reply filter writes the current SIZE into EHLO.
//   - Every error handed to go-smtp is an *smtp.SMTPError with a fixed,
//     generic text (errors.go); details go to the log under the message ID.
//   - Timeouts: go-smtp's per-command read timeout is set, replies are
//     sent under the same timeout, TLS handshakes are bounded, and during
//     DATA every read gets an idle deadline under an overall cap. Any read
//     error is sticky, so a body cut short is never read as commands.
//   - Replies are batched (RFC 2920 §3.2): go-smtp writes each line on
//     its own; the connection wrapper sends what it holds in one write
//     when the session is about to wait for the client, and before the
//     connection is closed or handed to TLS.
//   - "RCPT TO:<Postmaster>" without a domain, which RFC 5321 §4.5.1 says
//     must be accepted and go-smtp's parser refuses, reaches go-smtp as
//     <postmaster@first local domain> (else @Hostname). The input scanner
//     (input.go) rewrites command lines only: it holds input back where it
//     cannot yet tell commands from a message, and reads lines, DATA,
//     AUTH exchanges, BDAT chunks and the end of a message exactly as
//     go-smtp does, so message data, chunks and AUTH responses pass
//     untouched.
//   - Panics in the hooks are recovered, logged and counted here.
//
// Invariants of what is stored (RFC 5321 §2.3.8, RFC 5322 §2.1.1): the
// spooled bytes use CRLF line ends only, no bare CR or LF, lines of at most
// 998 octets. The end of DATA is only CRLF.CRLF (go-smtp's reader); the
// smuggling variants (LF.LF, CR.CR, LF.CRLF, CRLF.LF) never end or split a
// message: submission refuses bare LF/CR with 550 5.6.0, the relay and
// local listeners turn bare LF into CRLF and refuse bare CR.
//
// Header fix-ups (RFC 5321 §4.4, RFC 3848, RFC 6531 §4.3): a Received
// field is prepended (with "for" only when there is exactly one
// recipient, never the AUTH login), Bcc, Resent-Bcc and Return-Path are
// removed, Message-ID and Date are added when missing, and more than 100
// Received fields is refused as a loop (554 5.4.6). DKIM (RFC 6376)
// signing comes after the fix-ups; nothing changes the bytes afterwards.
//
// Policy: relay clients in TrustedNetworks may send to any domain, others
// only to LocalDomains (RFC 5321 §4.5.1 postmaster included through the
// aliases), never an open relay. Submission (RFC 6409) needs AUTH PLAIN or
// LOGIN (RFC 4954) after TLS and a sender the user owns. The local socket
// learns the client's uid from SO_PEERCRED.
package smtpd
