package delivery

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/emersion/go-smtp"

	"mta/internal/mailaddr"
	"mta/spool"
)

// transaction runs MAIL, RCPT for each recipient of batch, and DATA. It
// returns the recipients to retry in a new transaction (452), those left
// unresolved by a session failure, and that failure.
//
// With PIPELINING (RFC 2920) MAIL, every RCPT and DATA go out in one
// write, after the RSET an aborted transaction left owing, and the replies
// are read in order; without it each command waits for its reply. Either
// way each reply is handled as the table in attempt.go says.
func (a *attempt) transaction(s *session, batch []int) (retry, unresolved []int, herr *AttemptError) {
	// The body is opened first: once DATA is on its way, an unreadable
	// body could only abort the session.
	body, err := a.e.cfg.Spool.Body(a.j.id)
	if err != nil {
		a.settle(s, batch, localError(false, "4.3.0", phaseLocal, "message body unreadable: "+err.Error()))
		return nil, nil, nil
	}
	defer body.Close()
	t := &txn{a: a, s: s, w: s.w, pipe: s.x.pipelining, body: body}
	if !t.build(batch) {
		return nil, nil, nil
	}
	herr = t.run()
	return t.retry, t.unresolved, herr
}

// txn is one transaction in progress.
type txn struct {
	a    *attempt
	s    *session
	w    *wire
	pipe bool
	body io.Reader

	lines []byte // MAIL, then each RCPT, back to back
	ends  []int  // where each line ends in lines
	rcpts []int  // the recipients whose RCPT is sent, in order

	accepted   []int
	retry      []int // refused with 452 (or 552): for a new transaction
	tooMany    []*AttemptError
	unresolved []int // left to another host by a session failure
}

// build writes the commands; a recipient whose RCPT cannot be written
// fails (so does the whole batch when MAIL cannot). It reports whether
// there is anything to send.
func (t *txn) build(batch []int) bool {
	a, s := t.a, t.s
	env := &a.j.msg.Envelope
	var err error
	t.lines, err = appendMail(t.w.line[:0], wireAddr(env.Sender), a.mailOptions(s), s.x)
	if err != nil {
		a.settle(s, batch, localError(true, "5.1.7", phaseLocal, "MAIL cannot be sent: "+err.Error()))
		return false
	}
	t.ends = append(t.ends, len(t.lines))
	for _, r := range batch {
		n := len(t.lines)
		t.lines, err = appendRcpt(t.lines, wireAddr(env.Recipients[r].Addr), rcptOptions(&env.Recipients[r]), s.x)
		if err != nil {
			t.lines = t.lines[:n]
			a.settle(s, []int{r}, localError(true, "5.1.3", phaseLocal, "RCPT cannot be sent: "+err.Error()))
			continue
		}
		t.rcpts = append(t.rcpts, r)
		t.ends = append(t.ends, len(t.lines))
	}
	t.w.line = t.lines // keep the grown buffer for the next transaction
	return len(t.rcpts) > 0
}

// line is command i: 0 is MAIL, i the RCPT of rcpts[i-1].
func (t *txn) line(i int) []byte {
	from := 0
	if i > 0 {
		from = t.ends[i-1]
	}
	return t.lines[from:t.ends[i]]
}

func (t *txn) cls(err error, phase string) *AttemptError {
	return classify(err, phase, t.s.t.host, t.s.t.ip.String())
}

func (t *txn) run() *AttemptError {
	over, herr := t.mail()
	if over || herr != nil {
		return herr
	}
	if herr := t.rcptReplies(); herr != nil {
		return herr
	}
	return t.data()
}

// mail sends the commands (all of them when pipelining) and reads the
// replies to RSET and MAIL. over: MAIL was refused for good and its
// recipients have failed.
func (t *txn) mail() (over bool, herr *AttemptError) {
	s, w := t.s, t.w
	s.dc.setPhase(phaseMail, t.a.e.cfg.Timeouts.Command)
	if s.dirty && !t.pipe {
		if herr := t.rset(); herr != nil {
			return false, herr
		}
	}
	if s.dirty {
		w.send([]byte("RSET"))
	}
	w.send(t.line(0))
	if t.pipe {
		for i := range t.rcpts {
			w.send(t.line(i + 1))
		}
		w.send([]byte("DATA"))
	}
	if err := w.flush(); err != nil {
		t.unresolved = t.rcpts
		return false, t.cls(err, phaseMail)
	}
	if s.dirty {
		if herr := t.rsetReply(); herr != nil {
			return false, herr
		}
	}
	_, err := w.reply(250)
	if err == nil {
		s.dirty = true
		return false, nil
	}
	ae := t.cls(err, phaseMail)
	if ae.Code < 500 {
		t.unresolved = t.rcpts
		return false, ae
	}
	t.a.settle(s, t.rcpts, ae)
	if t.pipe {
		t.drain()
	}
	return true, nil
}

// rset sends the RSET owed, without pipelining.
func (t *txn) rset() *AttemptError {
	if err := t.w.command("RSET"); err != nil {
		t.unresolved = t.rcpts
		return t.cls(err, phaseMail)
	}
	return t.rsetReply()
}

func (t *txn) rsetReply() *AttemptError {
	if _, err := t.w.reply(250); err != nil {
		t.unresolved = t.rcpts
		return t.cls(err, phaseMail)
	}
	t.s.dirty = false
	return nil
}

// drain reads the replies to the RCPTs and DATA pipelined after a refused
// MAIL; their recipients have failed already, so a session failure only
// spends the session.
func (t *txn) drain() {
	for range t.rcpts {
		t.s.dc.setPhase(phaseRcpt, t.a.e.cfg.Timeouts.Command)
		if _, err := t.w.reply(25); err != nil && t.gone(err) {
			return
		}
	}
	t.noRecipientData()
}

// gone reports a reply that ends the session (none, or 421) and marks the
// session spent.
func (t *txn) gone(err error) bool {
	if ae := t.cls(err, phaseData); ae.Code == 0 || ae.Code == 421 {
		t.s.spent = true
		return true
	}
	return false
}

func (t *txn) rcptReplies() *AttemptError {
	s, w := t.s, t.w
	for i, r := range t.rcpts {
		s.dc.setPhase(phaseRcpt, t.a.e.cfg.Timeouts.Command)
		var err error
		if !t.pipe {
			w.send(t.line(i + 1))
			err = w.flush()
		}
		if err == nil {
			_, err = w.reply(25)
		}
		if err == nil {
			t.accepted = append(t.accepted, r)
			continue
		}
		ae := t.cls(err, phaseRcpt)
		switch {
		case ae.Code == 0 || ae.Code == 421:
			t.unresolved = append(append(t.accepted, t.retry...), t.rcpts[i:]...)
			t.retry = nil
			return ae
		case ae.Code == 452 || ae.Code == 552:
			t.retry = append(t.retry, r)
			t.tooMany = append(t.tooMany, ae)
		default:
			t.a.settle(s, []int{r}, ae)
		}
	}
	return nil
}

// data reads the reply to DATA (sending it first without pipelining) and
// sends the message to the accepted recipients.
func (t *txn) data() *AttemptError {
	s, w := t.s, t.w
	if len(t.accepted) == 0 {
		t.deferTooMany()
		if t.pipe {
			t.noRecipientData()
		}
		return nil // without pipelining DATA is not sent; RSET comes before the next MAIL
	}
	s.dc.setPhase(phaseData, t.a.e.cfg.Timeouts.DataInit)
	var err error
	if !t.pipe {
		err = w.command("DATA")
	}
	if err == nil {
		_, err = w.reply(354)
	}
	if err != nil {
		var herr *AttemptError
		t.unresolved, herr = t.a.refused(s, t.accepted, t.cls(err, phaseData), false)
		return herr
	}
	return t.message()
}

// noRecipientData reads the reply to a pipelined DATA when no RCPT was
// accepted. Refused, it leaves the RSET owed; a 354 gets a lone final dot,
// as RFC 2920 §3.1 asks of the client (a message with no recipient, which
// delivers nothing and ends the transaction, so no RSET is owed).
func (t *txn) noRecipientData() {
	s, w := t.s, t.w
	s.dc.setPhase(phaseData, t.a.e.cfg.Timeouts.DataInit)
	if _, err := w.reply(354); err != nil {
		t.gone(err)
		return
	}
	s.dc.setPhase(phaseData, t.a.e.cfg.Timeouts.FinalDot)
	err := w.command(".")
	if err == nil {
		_, err = w.reply(250)
	}
	if err != nil && t.gone(err) {
		return
	}
	s.dirty = false
}

// deferTooMany defers the recipients refused with 452 when none was
// accepted: a new transaction would meet the same refusal. A 552 read as
// 452 is recorded with a temporary enhanced code too (4.5.3, not 5.5.3),
// so a delay notice never reports a permanent status.
func (t *txn) deferTooMany() {
	for i, r := range t.retry {
		ae := *t.tooMany[i]
		ae.Permanent = false
		if strings.HasPrefix(ae.Enhanced, "5.") {
			ae.Enhanced = "4" + ae.Enhanced[1:]
		}
		t.a.set(r, errResult(&ae, t.s.tls))
	}
	t.retry = nil
}

// message sends the body and the final dot and reads the reply.
func (t *txn) message() *AttemptError {
	s, w := t.s, t.w
	s.dc.setStreamPhase(phaseData, t.a.e.cfg.Timeouts.DataBlock)
	if err := w.body(t.body, t.a.j.msg.Envelope.Size); err != nil {
		var berr bodyError
		var derr finalDotError
		switch {
		case errors.As(err, &berr):
			t.a.settle(s, t.accepted, localError(false, "4.3.0", phaseLocal, "message body unreadable: "+err.Error()))
			return t.cls(err, phaseData)
		case errors.As(err, &derr):
			var herr *AttemptError
			t.unresolved, herr = t.a.refused(s, t.accepted, t.cls(err, phaseData), true)
			return herr
		}
		t.unresolved = t.accepted
		return t.cls(err, phaseData) // nothing was delivered: another host may take it
	}
	s.dc.setPhase(phaseData, t.a.e.cfg.Timeouts.FinalDot)
	text, err := w.reply(250)
	if err != nil {
		ae := t.cls(err, phaseData)
		if ae.Code != 0 {
			s.dirty = false // the reply to the final dot ends the transaction, whatever it says
		}
		var herr *AttemptError
		t.unresolved, herr = t.a.refused(s, t.accepted, ae, true)
		return herr
	}
	s.dirty = false
	s.msgs++
	enh, text := splitEnhanced(text)
	ip := s.t.ip.String()
	for _, r := range t.accepted {
		t.a.set(r, result{state: spool.Delivered, phase: phaseData, host: s.t.host, ip: ip,
			tls: s.tls, code: 250, enhanced: enh, text: text, hopDSN: s.x.dsn})
	}
	return nil
}

// refused handles a failed DATA command or final dot: a reply decides for
// the accepted recipients; 421 or a lost connection leaves them to the next
// host, except after the final dot, where the host may have taken the
// message: they are deferred as possible duplicates.
func (a *attempt) refused(s *session, accepted []int, ae *AttemptError, afterDot bool) ([]int, *AttemptError) {
	switch {
	case ae.Code != 0 && ae.Code != 421:
		a.settle(s, accepted, ae)
		return nil, nil
	case afterDot && ae.Code == 0:
		dup := *ae
		dup.Text = "connection lost after the final dot, possible duplicate: " + ae.Text
		for _, r := range accepted {
			res := errResult(&dup, s.tls)
			res.maybeDup = true
			a.set(r, res)
		}
		return nil, ae
	}
	return accepted, ae
}

// settle gives each of rcpts the failure ae.
func (a *attempt) settle(s *session, rcpts []int, ae *AttemptError) {
	for _, r := range rcpts {
		a.set(r, errResult(ae, s.tls))
	}
}

func (a *attempt) mailOptions(s *session) *smtp.MailOptions {
	env := &a.j.msg.Envelope
	o := &smtp.MailOptions{Size: env.Size, UTF8: a.j.needUTF8 && s.x.utf8}
	if printableASCII(env.EnvID) {
		o.EnvelopeID = env.EnvID
	}
	switch env.Ret {
	case spool.RetFull:
		o.Return = smtp.DSNReturnFull
	case spool.RetHeaders:
		o.Return = smtp.DSNReturnHeaders
	}
	return o
}

// rcptOptions passes NOTIFY and ORCPT on (go-smtp sends them only to a
// host that offers DSN).
func rcptOptions(r *spool.Recipient) *smtp.RcptOptions {
	o := &smtp.RcptOptions{}
	switch {
	case r.Notify&spool.NotifyNever != 0:
		o.Notify = []smtp.DSNNotify{smtp.DSNNotifyNever}
	default:
		if r.Notify&spool.NotifySuccess != 0 {
			o.Notify = append(o.Notify, smtp.DSNNotifySuccess)
		}
		if r.Notify&spool.NotifyFailure != 0 {
			o.Notify = append(o.Notify, smtp.DSNNotifyFailure)
		}
		if r.Notify&spool.NotifyDelay != 0 {
			o.Notify = append(o.Notify, smtp.DSNNotifyDelayed)
		}
	}
	if typ, addr, ok := strings.Cut(r.ORcpt, ";"); ok && addr != "" {
		switch {
		case strings.EqualFold(typ, "rfc822") && printableASCII(addr):
			o.OriginalRecipientType, o.OriginalRecipient = smtp.DSNAddressTypeRFC822, addr
		case strings.EqualFold(typ, "utf-8"):
			o.OriginalRecipientType, o.OriginalRecipient = smtp.DSNAddressTypeUTF8, addr
		}
	}
	return o
}

// wireAddr is an address as sent: its domain as an A-label, so an IDN
// domain with an ASCII local part needs no SMTPUTF8.
func wireAddr(addr string) string {
	if addr == "" {
		return ""
	}
	if a, err := mailaddr.Parse(addr); err == nil {
		return a.String()
	}
	return addr
}

func printableASCII(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '!' || s[i] > '~' {
			return false
		}
	}
	return true
}

// splitEnhanced splits "2.0.0 OK queued" into its enhanced code and text.
func splitEnhanced(s string) (string, string) {
	s = oneLine(s)
	code, rest, _ := strings.Cut(s, " ")
	var a, b, c int
	if n, _ := fmt.Sscanf(code, "%d.%d.%d", &a, &b, &c); n == 3 {
		return code, rest
	}
	return "2.0.0", s
}

// bodyError marks a failure to read the stored body, as opposed to a
// failure to write it to the host.
type bodyError struct{ err error }

func (e bodyError) Error() string { return "read body: " + e.err.Error() }
func (e bodyError) Unwrap() error { return e.err }

type readerOnly struct{ r io.Reader }

func (r readerOnly) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		err = bodyError{err}
	}
	return n, err
}
