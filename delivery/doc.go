// Package delivery takes due recipients from the spool and hands them to
// each destination's mail exchangers over SMTP: the scheduler, the
// destination queues, the SMTP client side, TLS policy, retries and
// delivery status notifications (RFC 5321 §5, §4.5.3.2, §4.5.4; RFC 2920;
// RFC 3207; RFC 3461, 3464, 6522, 6533).
//
// What it owns and keeps true:
//
//   - The scheduler (one goroutine) claims due recipients from the spool
//     (spool.Claim), which commits each one's next attempt time before any
//     dial: a crash never starts a hot retry loop, and a recipient whose
//     outcome was not recorded is due again at that time (at least once,
//     never lost).
//   - Claimed recipients wait in bounded destination queues (Config.ActiveEntries
//     in all, Config.DestinationEntries per destination). Recipients due for
//     a destination that holds its share are postponed in the claim's commit
//     (spool.ClaimOrPostpone) to when it should have room, at twice the rate
//     it has been finishing recipients, so a backlog is rewritten a few
//     times while it drains, not on every claim. A destination is a
//     next hop: a recipient domain's MX route, or a configured route or
//     relayhost shared by many domains. Workers take from destinations with
//     a free slot under a global cap (MaxConns) and a per-destination cap
//     (PerDestinationConns). A new destination, or one coming back from
//     dead, gets one attempt at a time until one succeeds.
//   - A destination where a whole attempt failed (DNS failed temporarily, or
//     no host took a session) is dead for its backoff: its mail is deferred
//     without dialling, and one probe goes out when the backoff ends.
//   - One attempt follows the route in order, at most MaxAddrsPerAttempt
//     addresses and MaxSessionsPerAttempt completed sessions; at most
//     MaxRcptsPerTxn recipients per transaction. The reply table is in
//     attempt.go. Every read and write of a connection carries the RFC 5321
//     §4.5.3.2 timeout of its phase (conn.go): go-smtp may tighten it, never
//     clear it.
//   - Every attempt of every recipient is recorded in the spool in one
//     Update per attempt, with the route it went along (steps.go: hosts
//     skipped and why, hosts that failed and how, the host that answered),
//     and logged as one Info line with the keys msg_id rcpt domain mx ip
//     attempt phase code enhanced duration delay tls status reply (and
//     next_attempt, possible_duplicate). A failed opportunistic handshake
//     is logged, and kept in the route, before the plain-text retry.
//   - Deferred recipients back off from Backoff.Min to Backoff.Max with
//     jitter; past Lifetime they fail. A delay DSN goes out once after
//     DelayWarning unless NOTIFY excludes DELAY, one per message: it reports
//     every recipient then delayed, at any destination, and the spool sends
//     it only if one of them had none (spool.DelayNotice); a failure DSN is built by
//     the spool's Bounce hook (Bouncer) when the message retires; a
//     "relayed" DSN answers NOTIFY=SUCCESS to a hop without DSN. Nothing is
//     ever sent to the null sender, nor about a DSN.
//   - TLS: STARTTLS whenever offered (opportunistic: unverified, plain retry
//     after a failed handshake, the host remembered as broken for a day);
//     per-domain "require" and "verify"; configured routes verify by
//     default, use implicit TLS on port 465, and never send AUTH in clear.
//   - Connections are reused per (host, TLS policy, AUTH user), bounded by
//     messages and age, closed when idle. The next MAIL follows a completed
//     transaction directly (RFC 5321 §4.1.1.5); RSET comes only after an
//     abandoned one, and EHLO is never said twice. A pooled connection the
//     host closed while idle fails before any reply and is replaced,
//     without counting as a failed attempt.
//   - go-smtp's client takes a session through the greeting, EHLO, STARTTLS
//     and AUTH; the transactions are written by wire.go and command.go. To
//     a host offering PIPELINING (RFC 2920), MAIL, every RCPT and DATA go in
//     one write and the replies are read in order; otherwise lock-step. The
//     MAIL and RCPT parameters are those go-smtp writes, byte for byte.
//   - Shutdown stops claiming, lets in-flight transactions finish until its
//     context ends, then closes their connections: an interrupted recipient
//     is given back to the spool and is due again (at worst delivered twice).
package delivery
