package delivery

// Delivery status notifications: RFC 3464 (message/delivery-status) in an
// RFC 6522 multipart/report, RFC 6533 global types for SMTPUTF8 mail. A DSN
// has the null sender and Auto-Submitted: auto-replied (RFC 3834); none is
// ever sent for a message with the null sender or for a DSN.

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"mta/internal/mailaddr"
	"mta/spool"
)

// DSNConfig configures the DSNs this package builds.
type DSNConfig struct {
	// Hostname is the Reporting-MTA and the domain of MAILER-DAEMON.
	Hostname string
	// Lifetime is the queue lifetime, for Will-Retry-Until (5 days).
	Lifetime time.Duration
	// Now is the clock (nil: time.Now); NewID names the DSN (nil: spool.NewID).
	Now   func() time.Time
	NewID func() string
	// Aliases rewrite a DSN's recipient when the sender is in a local
	// domain (root@ourhost, a cron job's sender), so the notice reaches a
	// real mailbox instead of routing back to us. nil: none.
	Aliases AliasTable
}

// AliasTable expands an address in a local domain to its real recipients
// (see mailaddr.Aliases.Expand, which *mailaddr.Aliases implements). The
// daemon passes one whose table SIGHUP replaces; Expand is called from
// many goroutines at once.
type AliasTable interface {
	Expand(a mailaddr.Address) (targets []mailaddr.Address, local bool, err error)
}

func (c DSNConfig) withDefaults() DSNConfig {
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.NewID == nil {
		c.NewID = spool.NewID
	}
	if c.Lifetime <= 0 {
		c.Lifetime = 5 * 24 * time.Hour
	}
	return c
}

// maxReturnedBytes bounds the original message returned with RET=FULL.
const maxReturnedBytes = 50 * 1024

// Bouncer returns the spool.Options.Bounce hook: when a message retires it
// builds one failure DSN covering its failed recipients whose NOTIFY asks
// for failures, or returns nil when none is owed. It has no side effects.
func Bouncer(cfg DSNConfig) func(m *spool.Message, body func() ([]byte, error)) (*spool.NewMessage, error) {
	cfg = cfg.withDefaults()
	return func(m *spool.Message, body func() ([]byte, error)) (*spool.NewMessage, error) {
		env := &m.Envelope
		if env.Sender == "" || env.DSN {
			return nil, nil
		}
		var rcpts []dsnRcpt
		for i := range env.Recipients {
			r := &env.Recipients[i]
			if r.State != spool.Failed || !notifies(r.Notify, spool.NotifyFailure) {
				continue
			}
			rcpts = append(rcpts, lastAttempt(r, "failed"))
		}
		if len(rcpts) == 0 {
			return nil, nil
		}
		b, err := body()
		if err != nil {
			return nil, err
		}
		return buildDSN(cfg, m, dsnFailure, rcpts, b)
	}
}

// notifies reports whether a recipient's NOTIFY asks for kind; no NOTIFY
// means failures and delays (RFC 3461 §4.1).
func notifies(n spool.Notify, kind spool.Notify) bool {
	if n&spool.NotifyNever != 0 {
		return false
	}
	if n == 0 {
		return kind == spool.NotifyFailure || kind == spool.NotifyDelay
	}
	return n&kind != 0
}

type dsnKind int

const (
	dsnFailure dsnKind = iota
	dsnDelay
	dsnRelayed
)

// dsnRcpt is one recipient's per-recipient fields.
type dsnRcpt struct {
	addr, orcpt string
	action      string // failed, delayed, relayed
	status      string
	remote      string // Remote-MTA host
	diag        string // the reply, "550 5.1.1 ..."; "" when there was none
	text        string // local reason when there was no reply
	last        time.Time
}

func lastAttempt(r *spool.Recipient, action string) dsnRcpt {
	d := dsnRcpt{addr: r.Addr, orcpt: r.ORcpt, action: action, status: "5.0.0"}
	if n := len(r.Attempts); n > 0 {
		a := r.Attempts[n-1]
		d.remote, d.last, d.text = a.Host, a.Time, a.Text
		if a.Enhanced != "" {
			d.status = a.Enhanced
		}
		if a.Code != 0 {
			d.diag = strings.TrimSpace(fmt.Sprintf("%d %s %s", a.Code, a.Enhanced, a.Text))
		}
	}
	if action == "failed" && strings.HasPrefix(d.status, "4.") {
		d.status = "5" + d.status[1:] // gave up on a temporary failure
	}
	return d
}

// buildDSN writes the DSN message and its envelope.
func buildDSN(cfg DSNConfig, m *spool.Message, kind dsnKind, rcpts []dsnRcpt, body []byte) (*spool.NewMessage, error) {
	env := &m.Envelope
	to, err := mailaddr.Parse(env.Sender)
	if err != nil {
		return nil, nil // a sender we cannot route to gets nothing
	}
	global := env.SMTPUTF8 || !to.ASCII()
	rcpts2 := dsnRecipients(cfg.Aliases, env.Sender, to)
	now := cfg.Now()
	id := cfg.NewID()
	boundary := newBoundary()
	var b bytes.Buffer
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\r\n", a...) }
	w("From: Mail Delivery System <MAILER-DAEMON@%s>", cfg.Hostname)
	w("To: <%s>", env.Sender)
	w("Subject: %s", subjects[kind])
	w("Date: %s", now.Format(time.RFC1123Z))
	w("Message-ID: <%s@%s>", id, cfg.Hostname)
	w("Auto-Submitted: auto-replied")
	w("MIME-Version: 1.0")
	reportType, statusType := "delivery-status", "message/delivery-status"
	if global {
		reportType, statusType = "global-delivery-status", "message/global-delivery-status"
	}
	w("Content-Type: multipart/report; report-type=%s;\r\n\tboundary=\"%s\"", reportType, boundary)
	w("")
	w("This is a MIME-encapsulated message.")
	w("")
	w("--%s", boundary)
	w("Content-Type: text/plain; charset=utf-8")
	w("Content-Transfer-Encoding: 8bit")
	w("")
	humanPart(&b, cfg.Hostname, kind, rcpts, env.Arrival.Add(cfg.Lifetime))
	w("--%s", boundary)
	w("Content-Type: %s", statusType)
	w("")
	statusPart(&b, cfg, m, rcpts, kind)
	returned(&b, boundary, env.Ret, global, body)
	w("--%s--", boundary)
	out := b.Bytes()
	return &spool.NewMessage{ID: id, Body: out, Envelope: spool.Envelope{
		Recipients: rcpts2,
		Has8Bit:    has8Bit(out),
		SMTPUTF8:   global,
		Arrival:    now,
		DSN:        true,
		Origin:     spool.Origin{Listener: "dsn", UID: -1},
	}}, nil
}

// dsnRecipients is the envelope of a DSN to the sender: the sender itself,
// or its aliases when it is in a local domain. An unknown local sender keeps
// its own address: the notice then fails, and a DSN is never bounced.
func dsnRecipients(aliases AliasTable, sender string, to mailaddr.Address) []spool.Recipient {
	var targets []mailaddr.Address
	local, err := false, error(nil)
	if aliases != nil {
		targets, local, err = aliases.Expand(to)
	}
	if !local || err != nil || len(targets) == 0 {
		return []spool.Recipient{{Addr: sender, Domain: to.Domain, Notify: spool.NotifyNever}}
	}
	out := make([]spool.Recipient, 0, len(targets))
	for _, a := range targets {
		out = append(out, spool.Recipient{Addr: a.String(), Domain: a.Domain, Notify: spool.NotifyNever})
	}
	return out
}

var subjects = map[dsnKind]string{
	dsnFailure: "Undelivered Mail Returned to Sender",
	dsnDelay:   "Delayed Mail (still being retried)",
	dsnRelayed: "Successful Mail Delivery Report",
}

func humanPart(b *bytes.Buffer, host string, kind dsnKind, rcpts []dsnRcpt, until time.Time) {
	w := func(format string, a ...any) { fmt.Fprintf(b, format+"\r\n", a...) }
	w("This is the mail system at host %s.", host)
	w("")
	switch kind {
	case dsnFailure:
		w("Your message could not be delivered to one or more recipients.")
		w("It is attached below.")
	case dsnDelay:
		w("Your message could not be delivered yet to one or more recipients.")
		w("The mail system will keep trying until %s.", until.UTC().Format(time.RFC1123Z))
		w("You do not need to send it again.")
	case dsnRelayed:
		w("Your message was handed to the next mail system for these recipients,")
		w("which gives no further delivery notifications.")
	}
	w("")
	for _, r := range rcpts {
		why := r.diag
		if why == "" {
			why = r.text
		}
		if r.remote != "" {
			w("<%s>: host %s said: %s", r.addr, r.remote, oneLine(why))
		} else {
			w("<%s>: %s", r.addr, oneLine(why))
		}
	}
	w("")
}

func statusPart(b *bytes.Buffer, cfg DSNConfig, m *spool.Message, rcpts []dsnRcpt, kind dsnKind) {
	env := &m.Envelope
	w := func(format string, a ...any) { fmt.Fprintf(b, format+"\r\n", a...) }
	w("Reporting-MTA: dns; %s", cfg.Hostname)
	w("X-Queue-ID: %s", m.ID)
	if env.EnvID != "" {
		w("Original-Envelope-Id: %s", oneLine(env.EnvID))
	}
	if !env.Arrival.IsZero() {
		w("Arrival-Date: %s", env.Arrival.Format(time.RFC1123Z))
	}
	for _, r := range rcpts {
		w("")
		if r.orcpt != "" {
			w("Original-Recipient: %s", oneLine(r.orcpt))
		}
		typ := "rfc822"
		if !mailaddr.IsASCII(r.addr) {
			typ = "utf-8"
		}
		w("Final-Recipient: %s; %s", typ, r.addr)
		w("Action: %s", r.action)
		w("Status: %s", r.status)
		if r.remote != "" {
			w("Remote-MTA: dns; %s", r.remote)
		}
		if r.diag != "" {
			w("Diagnostic-Code: smtp; %s", oneLine(r.diag))
		}
		if !r.last.IsZero() {
			w("Last-Attempt-Date: %s", r.last.Format(time.RFC1123Z))
		}
		if kind == dsnDelay {
			w("Will-Retry-Until: %s", env.Arrival.Add(cfg.Lifetime).Format(time.RFC1123Z))
		}
	}
	w("")
}

// returned writes the original message's part: its headers, or with
// RET=FULL the message cut at maxReturnedBytes.
func returned(b *bytes.Buffer, boundary string, ret spool.Ret, global bool, body []byte) {
	if len(body) == 0 {
		return
	}
	w := func(format string, a ...any) { fmt.Fprintf(b, format+"\r\n", a...) }
	w("--%s", boundary)
	part := headersOf(body)
	typ := "text/rfc822-headers"
	if global {
		typ = "message/global-headers"
	}
	if ret == spool.RetFull {
		part = cutAtLine(body, maxReturnedBytes)
		typ = "message/rfc822"
		if global {
			typ = "message/global"
		}
	}
	w("Content-Type: %s", typ)
	if has8Bit(part) {
		w("Content-Transfer-Encoding: 8bit")
	}
	w("")
	b.Write(part)
	// The CRLF before the next delimiter belongs to the delimiter (RFC
	// 2046 §5.1.1): one more, so the part keeps its own last line end.
	w("")
}

// headersOf is the header section of a message, with its final CRLF.
func headersOf(msg []byte) []byte {
	if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 {
		return msg[:i+2]
	}
	if i := bytes.Index(msg, []byte("\n\n")); i >= 0 {
		return msg[:i+1]
	}
	return cutAtLine(msg, maxReturnedBytes)
}

// cutAtLine cuts msg to at most n octets, at a line end.
func cutAtLine(msg []byte, n int) []byte {
	if len(msg) <= n {
		return msg
	}
	if i := bytes.LastIndexByte(msg[:n], '\n'); i > 0 {
		return msg[:i+1]
	}
	return msg[:n]
}

func has8Bit(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return true
		}
	}
	return false
}

func newBoundary() string {
	var r [12]byte
	_, _ = rand.Read(r[:]) // crypto/rand.Read never fails
	return "=_" + hex.EncodeToString(r[:])
}
