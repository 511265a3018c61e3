// Package spool is the MTA's durable queue: message envelopes and bodies,
// each recipient's delivery state, the due index that says what to try
// next, the attempt logs, and the bounded records of retired messages. It
// keeps the promise behind every 250 reply to DATA (RFC 5321 §4.1.1.4,
// §6.1): once Enqueue has returned, the message survives a crash, a kill
// or a power cut, and stays until each recipient is delivered or failed.
//
// # Storage
//
// One bbolt file, dir/spool.db, holds everything but large bodies; its
// buckets and keys are described in schema.go. Bodies up to
// Options.InlineBodyBytes (64 KiB) live in the file; larger ones are
// streamed to dir/bodies/<id> by a BodyWriter while DATA arrives, so a
// message is never held in memory whole.
//
// # Durability
//
//   - Enqueue returns only after the commit holding the message is
//     fsynced; a body file and its directory are fsynced before that
//     commit, in the caller's goroutine.
//   - One committer goroutine owns write transactions (group commit): it
//     takes every operation waiting, applies them in one transaction, and
//     commits with one fsync (bbolt writes data pages, fdatasyncs, writes
//     the meta page, fdatasyncs). There is no timer: operations arriving
//     during a commit form the next batch. An operation that fails cleanly
//     (a duplicate ID, say) does not stop the others; one that fails after
//     writing spoils the transaction, which is rolled back and its
//     operations committed one by one.
//   - Transaction functions have no side effects: file removals, claim
//     bookkeeping, the OnDue kick and log lines happen after the commit.
//   - Claim commits each recipient's lease (its next attempt if the attempt
//     never reports) before returning, so after a crash every recipient
//     whose outcome was not recorded is due again at a committed time:
//     at-least-once delivery and no hot retry loop. A claim is the leased
//     flag in the recipient's state, its key moved from the due index to
//     the leases index; Open gives back the leases a killed process left.
//   - Body files no live envelope refers to (a crash during DATA, or after
//     a retirement's commit but before its file was removed) are removed
//     at Open.
//   - Commits leave bbolt's freelist out of the file once it lists more
//     than freelistSyncPages pages (bbolt would rewrite all of it, 8 bytes
//     per free page, in every commit); Close writes it, and after a crash
//     Open rebuilds it by walking the pages in use.
//   - No read transaction lives long: List pages with cursors, one short
//     transaction per page, so the file can grow and reuse pages.
//   - A damaged file must become ErrCorrupt, never a crash: reads and
//     commits turn bbolt's panics and memory faults into it, and since
//     bbolt also walks the file in goroutines of its own (its page check,
//     and Open of a file without freelist), the pages are walked first,
//     bounds-checked, and a file those walks could not survive is refused
//     (pages.go). A commit bbolt cannot even roll back leaves the spool
//     refusing every write until restart.
//   - A full disk (ENOSPC, or free space below Options.MinFreeBytes) is
//     ErrNoSpace, a body past Options.MaxMessageBytes ErrTooBig, a damaged
//     file ErrCorrupt, an unknown schema ErrVersion: never a silent success.
//
// # Invariants
//
// Check verifies these offline; tests verify them after every operation.
//
//   - A message is live exactly while its envelope is in msgs; it has one
//     state per recipient, and at least one is not final.
//   - Every live recipient that is neither final, held nor leased has
//     exactly one due key, at its NextAttempt; every leased one that is not
//     final has one lease key, at its NextAttempt (the lease); no other
//     recipient has either. So the first due key is the earliest recipient
//     Claim may take, whatever is claimed.
//   - Every live recipient that is not final has one domain index key.
//   - The counters (messages, retired, and pending, deferred, held by
//     recipient and by domain) equal a recount.
//   - When every recipient of a message is final, the same transaction
//     moves it to retired (with states and attempt logs), enqueues the DSN
//     Options.Bounce returns (RFC 3461 §6, RFC 3464; never for a DSN or the
//     null sender, RFC 5321 §6.1), and deletes its body.
//   - Retired records are bounded by Options.RetiredMaxAge and
//     RetiredMaxCount; attempt logs by Options.MaxAttemptLog per recipient,
//     and each attempt's route by MaxRouteSteps.
//   - Each body file belongs to a live message whose envelope says so.
//
// The envelope keeps what RFC 3461 asks a relay to carry on (NOTIFY,
// ORCPT, ENVID, RET) and what the next hop must offer for the body
// (8BITMIME, RFC 6152; SMTPUTF8, RFC 6531).
package spool
