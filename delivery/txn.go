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
func (a *attempt) transaction(s *session, batch []int) (retry, unresolved []int, herr *AttemptError) {
	env := &a.j.msg.Envelope
	cls := func(err error, phase string) *AttemptError { return classify(err, phase, s.t.host, s.t.ip.String()) }
	s.dc.setPhase(phaseMail, a.e.cfg.Timeouts.Command)
	if err := s.c.Mail(wireAddr(env.Sender), a.mailOptions(s)); err != nil {
		ae := cls(err, phaseMail)
		if ae.Code >= 500 {
			for _, r := range batch {
				a.set(r, errResult(ae, s.tls))
			}
			return nil, nil, nil
		}
		return nil, batch, ae
	}
	var accepted []int
	var tooMany []*AttemptError
	for i, r := range batch {
		s.dc.setPhase(phaseRcpt, a.e.cfg.Timeouts.Command)
		err := s.c.Rcpt(wireAddr(env.Recipients[r].Addr), rcptOptions(&env.Recipients[r]))
		if err == nil {
			accepted = append(accepted, r)
			continue
		}
		ae := cls(err, phaseRcpt)
		switch {
		case ae.Code == 0 || ae.Code == 421:
			return nil, append(append(accepted, retry...), batch[i:]...), ae
		case ae.Code == 452 || ae.Code == 552:
			retry = append(retry, r)
			tooMany = append(tooMany, ae)
		default:
			a.set(r, errResult(ae, s.tls))
		}
	}
	if len(accepted) == 0 {
		// Nobody to send to. A 452 with nothing accepted would come again
		// in a new transaction: those recipients are deferred.
		for i, r := range retry {
			ae := *tooMany[i]
			ae.Permanent = false
			a.set(r, errResult(&ae, s.tls))
		}
		if err := a.e.reset(s); err != nil {
			return nil, nil, cls(err, phaseMail)
		}
		return nil, nil, nil
	}
	unresolved, herr = a.data(s, accepted)
	return retry, unresolved, herr
}

// data sends the message to the accepted recipients.
func (a *attempt) data(s *session, accepted []int) (unresolved []int, herr *AttemptError) {
	cls := func(err error) *AttemptError { return classify(err, phaseData, s.t.host, s.t.ip.String()) }
	body, err := a.e.cfg.Spool.Body(a.j.id)
	if err != nil {
		for _, r := range accepted {
			a.set(r, errResult(localError(false, "4.3.0", phaseLocal, "message body unreadable: "+err.Error()), s.tls))
		}
		if err := a.e.reset(s); err != nil {
			return nil, cls(err)
		}
		return nil, nil
	}
	defer body.Close()
	s.dc.setPhase(phaseData, a.e.cfg.Timeouts.DataInit)
	w, err := s.c.Data()
	if err != nil {
		return a.refused(s, accepted, cls(err), false)
	}
	s.dc.setStreamPhase(phaseData, a.e.cfg.Timeouts.DataBlock)
	if _, err := io.Copy(w, readerOnly{body}); err != nil {
		var rerr bodyError
		if errors.As(err, &rerr) {
			for _, r := range accepted {
				a.set(r, errResult(localError(false, "4.3.0", phaseLocal, "message body unreadable: "+err.Error()), s.tls))
			}
			return nil, cls(err)
		}
		return accepted, cls(err) // nothing was delivered: another host may take it
	}
	s.dc.setPhase(phaseData, a.e.cfg.Timeouts.FinalDot)
	resp, err := w.CloseWithResponse()
	if err != nil {
		return a.refused(s, accepted, cls(err), true)
	}
	s.msgs++
	enh, text := splitEnhanced(resp.StatusText)
	for _, r := range accepted {
		a.set(r, result{state: spool.Delivered, phase: phaseData, host: s.t.host, ip: s.t.ip.String(),
			tls: s.tls, code: 250, enhanced: enh, text: text, hopDSN: s.dsn})
	}
	return nil, nil
}

// refused handles a failed DATA command or final dot: a reply decides for
// the accepted recipients; 421 or a lost connection leaves them to the next
// host, except after the final dot, where the host may have taken the
// message: they are deferred as possible duplicates.
func (a *attempt) refused(s *session, accepted []int, ae *AttemptError, afterDot bool) ([]int, *AttemptError) {
	switch {
	case ae.Code != 0 && ae.Code != 421:
		for _, r := range accepted {
			a.set(r, errResult(ae, s.tls))
		}
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

func (a *attempt) mailOptions(s *session) *smtp.MailOptions {
	env := &a.j.msg.Envelope
	o := &smtp.MailOptions{Size: env.Size, UTF8: a.j.needUTF8 && s.utf8}
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
