package smtpd

import (
	"context"
	"crypto"
	"crypto/tls"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"mta/spool"
)

// LocalConn is a connection on a Local listener whose submitter the
// daemon knows by other means than SO_PEERCRED: a maildrop file's owner.
// Handing one to a Local listener runs it through the same intake as the
// submit socket.
type LocalConn struct {
	net.Conn
	UID int
}

// Kind is the role of a listener.
type Kind int

const (
	// Relay is the port 25 role: clients in TrustedNetworks may send to
	// any domain, everyone else only to LocalDomains. No AUTH.
	Relay Kind = iota + 1
	// Submission is port 587: STARTTLS, then AUTH, then mail from the
	// user's own addresses (RFC 6409).
	Submission
	// Submissions is port 465: implicit TLS (RFC 8314), then as
	// Submission. Serve wraps the listener in TLS itself.
	Submissions
	// Local is the unix socket `mta sendmail` speaks SMTP to; the peer's
	// uid comes from SO_PEERCRED.
	Local
)

// String is the listener's name in logs, metrics and spool.Origin.
func (k Kind) String() string {
	switch k {
	case Relay:
		return "relay"
	case Submission:
		return "submission"
	case Submissions:
		return "submissions"
	case Local:
		return "local"
	}
	return "unknown"
}

func (k Kind) submission() bool { return k == Submission || k == Submissions }

// Config configures a Server. Zero values take the defaults shown.
type Config struct {
	// Hostname is our FQDN: in the greeting, Received fields and
	// generated Message-IDs. Required.
	Hostname string
	// Spool receives every accepted message. Required.
	Spool *spool.Spool
	// TLS serves STARTTLS (relay and submission) and port 465. It may use
	// GetCertificate so certificates reload. Submission kinds need it; the
	// relay offers STARTTLS only when it is set. MinVersion is raised to
	// TLS 1.2.
	TLS *tls.Config
	// TrustedNetworks may relay to any domain (default loopback).
	TrustedNetworks []netip.Prefix
	// LocalDomains are ours: mail to them is only for Aliases; any other
	// user there is unknown (550 5.1.1).
	LocalDomains []string
	// MyOrigin qualifies local senders: login@MyOrigin (default Hostname).
	MyOrigin string
	// Aliases rewrite recipients in LocalDomains at RCPT time. A key is a
	// local part for every local domain ("postmaster") or a full address;
	// values are real addresses. Replace them at run time with SetAliases.
	Aliases map[string][]string
	// Users may log in on the submission listeners (replace with SetUsers).
	Users *Users
	// Limits protect the listeners (replace with SetLimits).
	Limits Limits
	// Timeouts bound each phase of a session.
	Timeouts Timeouts
	// AllowUnownedFrom turns off the check that the From: header of a
	// submitted message holds only addresses the user owns (replace with
	// SetAllowUnownedFrom).
	AllowUnownedFrom bool
	// DKIM signs mail whose sender domain (From: header, else MAIL FROM)
	// has a key here, keyed by normalised domain.
	DKIM map[string]DKIMKey
	// SendmailTrustedUsers (uids or login names) may use any MAIL FROM on
	// the local socket; everyone else sends as login@MyOrigin.
	SendmailTrustedUsers []string
	// LookupPTR names the client in the Received field; it gets 2 s and
	// "unknown" is used on failure or when it is nil.
	LookupPTR func(ctx context.Context, ip netip.Addr) (string, error)
	// CachedPTR, when set, is tried first: a name known without waiting
	// (a cache), ok false when it is not known. A hit saves starting a
	// lookup for the connection. name "" means the address has none.
	CachedPTR func(ip netip.Addr) (name string, ok bool)
	// TempDir holds the bodies of messages being DKIM-signed past 1 MiB
	// (the signature precedes the body, so the body waits); default
	// os.TempDir(). The files are unlinked as soon as they are created.
	TempDir string
	// Now is the clock (nil means time.Now).
	Now func() time.Time
	// Logger (nil discards).
	Logger *slog.Logger
	// Observer receives metrics events (nil means none).
	Observer Observer
}

// DKIMKey signs one sender domain: an RSA-2048 or Ed25519 key.
type DKIMKey struct {
	Selector string
	Signer   crypto.Signer
}

// Limits protect the listeners. Zero values take the defaults shown.
type Limits struct {
	// MaxMessageBytes refuses larger messages with 552 5.3.4 (50 MiB).
	MaxMessageBytes int64
	// MaxRecipients per message; more get 452 4.5.3 (1000).
	MaxRecipients int
	// ConnsPerIP: connections from one address (one /64 for IPv6),
	// except from trusted networks (20). ConnsTotal: connections on all listeners (1000).
	// Past either, the client reads 421 4.7.0 and is closed.
	ConnsPerIP int
	ConnsTotal int
	// DataConcurrency bounds messages in the DATA phase at once; past it
	// DATA gets 451 4.3.2 (200).
	DataConcurrency int
	// UserMessagesPerDay and UserRecipientsPerHour bound each submission
	// user; past them MAIL or RCPT gets 450 4.7.1 (1000 and 200).
	UserMessagesPerDay    int
	UserRecipientsPerHour int
	// AuthFailuresPerIP and AuthFailuresPerLogin failed logins within
	// AuthFailureWindow make further attempts from that address (one /64
	// for IPv6), or for that login, get 454 4.7.0 without a password check
	// (10, 5, 15 min). The login's limit does not apply to an address the
	// login was used from successfully in the last 30 days, so others
	// guessing its password cannot lock its user out.
	AuthFailuresPerIP    int
	AuthFailuresPerLogin int
	AuthFailureWindow    time.Duration
}

func (l Limits) withDefaults() Limits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	if l.MaxMessageBytes <= 0 {
		l.MaxMessageBytes = 50 << 20
	}
	def(&l.MaxRecipients, 1000)
	def(&l.ConnsPerIP, 20)
	def(&l.ConnsTotal, 1000)
	def(&l.DataConcurrency, 200)
	def(&l.UserMessagesPerDay, 1000)
	def(&l.UserRecipientsPerHour, 200)
	def(&l.AuthFailuresPerIP, 10)
	def(&l.AuthFailuresPerLogin, 5)
	if l.AuthFailureWindow <= 0 {
		l.AuthFailureWindow = 15 * time.Minute
	}
	return l
}

// Timeouts bound each phase of a session. Zero values take the defaults.
type Timeouts struct {
	// Command: reading one command line and writing one reply (5 min,
	// RFC 5321 §4.5.3.2.7).
	Command time.Duration
	// TLSHandshake bounds a STARTTLS or port 465 handshake (30 s).
	TLSHandshake time.Duration
	// DataIdle: the longest wait for more message data; every read
	// extends it (180 s, RFC 5321 §4.5.3.2.6).
	DataIdle time.Duration
	// Data caps the whole DATA phase (1 h).
	Data time.Duration
}

func (t Timeouts) withDefaults() Timeouts {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&t.Command, 5*time.Minute)
	def(&t.TLSHandshake, 30*time.Second)
	def(&t.DataIdle, 180*time.Second)
	def(&t.Data, time.Hour)
	return t
}

// Observer receives the events metrics are made of. listener is a Kind's
// name. Implementations must be safe for concurrent use and must not block.
type Observer interface {
	ConnOpened(listener string)
	ConnClosed(listener string)
	// ConnRefused: a connection past ConnsPerIP or ConnsTotal.
	ConnRefused(listener string)
	// Reply is every final reply line written, by its code (its class
	// is code/100).
	Reply(listener string, code int)
	MessageAccepted(listener string, sizeBytes int64, recipients int)
	AuthFailed(listener string)
	// Panicked: a session hook panicked (recovered and logged).
	Panicked(listener string)
}

// NopObserver ignores every event.
type NopObserver struct{}

func (NopObserver) ConnOpened(string)                  {}
func (NopObserver) ConnClosed(string)                  {}
func (NopObserver) ConnRefused(string)                 {}
func (NopObserver) Reply(string, int)                  {}
func (NopObserver) MessageAccepted(string, int64, int) {}
func (NopObserver) AuthFailed(string)                  {}
func (NopObserver) Panicked(string)                    {}
