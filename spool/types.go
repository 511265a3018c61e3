package spool

import (
	"log/slog"
	"time"
)

// State is where one recipient of a message stands.
type State uint8

const (
	// Pending: accepted, never tried; due at NextAttempt (its arrival).
	Pending State = iota
	// Deferred: tried and failed temporarily; due again at NextAttempt.
	Deferred
	// Delivered: a host took it (final).
	Delivered
	// Failed: refused permanently, or its lifetime passed (final).
	Failed
)

func (s State) String() string {
	switch s {
	case Pending:
		return "pending"
	case Deferred:
		return "deferred"
	case Delivered:
		return "delivered"
	case Failed:
		return "failed"
	}
	return "unknown"
}

// Final reports whether the recipient needs no more attempts.
func (s State) Final() bool { return s == Delivered || s == Failed }

// Notify is the RFC 3461 NOTIFY parameter of a recipient, as bit flags.
// Zero means the client gave none (the MTA's default applies: failures and
// delays are reported).
type Notify uint8

const (
	NotifySuccess Notify = 1 << iota
	NotifyFailure
	NotifyDelay
	NotifyNever
)

// Ret is the RFC 3461 RET parameter: how much of the message a DSN returns.
type Ret uint8

const (
	RetDefault Ret = iota // not given: headers only
	RetFull
	RetHeaders
)

// Envelope is everything about a message but its body.
type Envelope struct {
	// Sender is the reverse-path; "" is the null sender.
	Sender     string
	Recipients []Recipient
	EnvID      string // RFC 3461 ENVID, decoded
	Ret        Ret
	// Has8Bit: the body has octets above 127 (needs 8BITMIME at the next hop).
	Has8Bit bool
	// SMTPUTF8: an envelope address or header is non-ASCII (needs SMTPUTF8).
	SMTPUTF8 bool
	// Arrival is when the message was accepted; the lifetime counts from it.
	Arrival time.Time
	// Size is the body size in octets; the spool sets it from the body.
	Size int64
	// DSN marks a delivery status notification this MTA generated; it is
	// never bounced (its sender is null anyway).
	DSN    bool
	Origin Origin
}

// Origin is where a message came from, for the log and `mta queue show`.
type Origin struct {
	Listener string // "relay", "submission", "submissions", "local", "dsn", "maildrop"
	ClientIP string
	HELO     string
	AuthUser string // login name of an authenticated submitter
	UID      int    // uid of a local submitter; -1 when not local
}

// Recipient is one forward-path and, once stored, its delivery state.
type Recipient struct {
	// Addr is the address as it will be sent in RCPT TO.
	Addr string
	// Domain is the destination: the normalised (lowercase, A-label) domain
	// of Addr, or an address literal. Routes are looked up by it.
	Domain string
	Notify Notify
	ORcpt  string // RFC 3461 ORCPT, decoded: "rfc822;user@example.org"

	// The fields below belong to the spool: Enqueue ignores what the
	// caller put there.

	State State
	// Held recipients are not due until released.
	Held bool
	// NextAttempt is when the recipient is next due (not final only).
	NextAttempt time.Time
	// AttemptCount counts every attempt ever made; Attempts keeps the last
	// few (bounded by Options.MaxAttemptLog).
	AttemptCount int
	Attempts     []Attempt
	// DelayNotified is set once a delay DSN has gone out for it.
	DelayNotified bool
	// Done is when the recipient became final.
	Done time.Time
}

// Attempt is one delivery attempt of one recipient, or a local decision
// (lifetime expired, destination dead, deleted by the administrator).
type Attempt struct {
	Time     time.Time
	Host     string // MX host name, "" for a local decision
	IP       string
	TLS      string // "none", "TLS1.3 unverified", "TLS1.3 verified", "" when not connected
	Phase    string // "dns", "dial", "greeting", "ehlo", "starttls", "auth", "mail", "rcpt", "data", "local"
	Code     int    // SMTP reply code, 0 when there was no reply
	Enhanced string // "2.0.0", "4.4.1", ...
	Text     string // reply text or local reason
	Duration time.Duration
	// Route is what the attempt met at each host of the route, in the order
	// it went: hosts skipped without dialling (and why), hosts that failed
	// (their reply or dial error), and last the host whose reply the fields
	// above give. Empty for local decisions. At most MaxRouteSteps are kept.
	Route []RouteStep
}

// MaxRouteSteps bounds Attempt.Route: a hostile MX list cannot bloat the
// attempt log.
const MaxRouteSteps = 32

// RouteStep is one host of an attempt's route and what happened there.
type RouteStep struct {
	Host     string // MX host name (or the domain, for a DNS failure)
	IP       string // "" when the host was not dialled
	Phase    string // as Attempt.Phase, or "skip" for a host passed over
	Code     int    // SMTP reply code, 0 when there was no reply
	Enhanced string
	Text     string // reply text, dial error, or why it was skipped
}

// Message is a stored message: live in the queue or retired.
type Message struct {
	ID       string
	Envelope Envelope
	// Retired is true for a message whose recipients are all final and that
	// now lives in the bounded retired records; its body is gone.
	Retired   bool
	RetiredAt time.Time
}

// Task is one due recipient handed to delivery by Claim.
type Task struct {
	ID     string // message ID
	Rcpt   int    // index into Envelope.Recipients
	Domain string
	// Attempts is the recipient's AttemptCount before this attempt.
	Attempts int
}

// Result is the outcome of an attempt for one recipient.
type Result struct {
	ID    string
	Rcpt  int
	State State // Delivered, Failed or Deferred
	// NextAttempt is when a Deferred recipient is due again.
	NextAttempt time.Time
	// Attempt is appended to the recipient's log.
	Attempt Attempt
	// DelayNotified records that a delay DSN for this recipient is being
	// enqueued in the same Update.
	DelayNotified bool
}

// NewMessage is a message created by the MTA itself (a DSN), small enough
// to pass as bytes.
type NewMessage struct {
	ID       string
	Envelope Envelope
	Body     []byte
}

// Update is a batch of results committed in one transaction, with any
// messages (DSNs) they cause.
type Update struct {
	Results []Result
	Enqueue []NewMessage
	// Delay is a delay DSN for some of a message's recipients, not only
	// those in Results: one DSN for all that are delayed, however many
	// destinations they wait at.
	Delay *DelayNotice
}

// DelayNotice is a delay DSN and the recipients it reports. In the
// commit, every one of them still live is marked DelayNotified, and the
// DSN is enqueued only if one of them was not marked already: attempts
// to two destinations of one message that both reach the warning time
// send one DSN between them, not two.
type DelayNotice struct {
	Recipients []RcptRef
	DSN        NewMessage
}

// RcptRef names one recipient of one message.
type RcptRef struct {
	ID   string
	Rcpt int
}

// Filter selects messages for List. Zero fields match everything.
type Filter struct {
	Sender    string // exact reverse-path
	Domain    string // some recipient has this destination domain
	State     string // "pending", "deferred", "held", "failed", "delivered"
	OlderThan time.Duration
}

// Counts are the queue's totals, kept up to date in every transaction so
// reading them never scans the queue.
type Counts struct {
	Messages int
	ByState  map[string]int // by recipient: "pending", "deferred", "held"
	ByDomain map[string]DomainCount
	Retired  int
}

// DomainCount is the live recipients of one destination domain.
type DomainCount struct {
	Pending  int
	Deferred int
	Held     int
	Oldest   time.Time // arrival of its oldest message
}

// Options configure a Spool. Zero values take the defaults shown.
type Options struct {
	// MaxMessageBytes refuses bodies larger than this (default 50 MiB;
	// negative turns the check off, for a caller that enforces its own
	// limit on what the client sends).
	MaxMessageBytes int64
	// MinFreeBytes refuses enqueues when the file system has less free
	// space than this (default 100 MiB; negative turns the check off).
	MinFreeBytes int64
	// InlineBodyBytes: bodies up to this size live in bbolt, larger ones in
	// files (default 64 KiB).
	InlineBodyBytes int
	// MaxAttemptLog bounds each recipient's attempt log (default 20).
	MaxAttemptLog int
	// RetiredMaxAge and RetiredMaxCount bound the retired records
	// (defaults 7 days and 100,000, whichever is reached first).
	RetiredMaxAge   time.Duration
	RetiredMaxCount int
	// Bounce builds the DSN for a message whose recipients have all become
	// final, or returns nil when none is owed. It runs inside the commit
	// that retires the message, so the DSN is enqueued in that same
	// transaction; it must have no side effects. body reads the first
	// BounceBodyBytes of the message (default 64 KiB); it is called only
	// when a DSN is owed, so retiring a message that owes none reads no
	// body.
	Bounce          func(m *Message, body func() ([]byte, error)) (*NewMessage, error)
	BounceBodyBytes int
	// OnDue is called (without blocking) after a commit that made work due
	// now: an enqueue, a retry, a release. cmd/mta wires it to the
	// scheduler's kick.
	OnDue func()
	// Now is the clock (nil means time.Now).
	Now func() time.Time
	// Logger (nil discards).
	Logger *slog.Logger
	// Observer receives commit measurements (nil: none).
	Observer Observer
	// UnsafeNoSync skips every fsync: a crash or power cut may lose or
	// corrupt the spool. For benchmarks and bulk test fixtures only; never
	// set it in production.
	UnsafeNoSync bool
}
