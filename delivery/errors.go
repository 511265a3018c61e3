package delivery

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"strings"

	"github.com/emersion/go-smtp"

	"mta/resolver"
)

// AttemptError is why an attempt did not deliver: a reply of the remote
// host or a local failure, with where it happened. Permanent errors fail the
// recipient; the others defer it.
type AttemptError struct {
	Permanent bool
	Code      int    // SMTP reply code; 0 when there was no reply
	Enhanced  string // RFC 3463 code, e.g. "4.4.1"
	Text      string // the reply text, or the local reason
	Phase     string // dns, dial, greeting, ehlo, starttls, auth, mail, rcpt, data, local
	Host      string // MX or relay host name
	IP        string
	Err       error // underlying error, for errors.Is/As
}

func (e *AttemptError) Error() string {
	where := e.Host
	if e.IP != "" {
		where += "[" + e.IP + "]"
	}
	if where != "" {
		where += " "
	}
	if e.Code != 0 {
		return fmt.Sprintf("%s%s: %d %s %s", where, e.Phase, e.Code, e.Enhanced, e.Text)
	}
	return fmt.Sprintf("%s%s: %s (%s)", where, e.Phase, e.Text, e.Enhanced)
}

func (e *AttemptError) Unwrap() error { return e.Err }

// classify maps any error of a session step into an *AttemptError: the
// replies go-smtp returns as *smtp.SMTPError, our own *AttemptError,
// resolver errors, timeouts, TLS and network failures.
func classify(err error, phase, host, ip string) *AttemptError {
	var ae *AttemptError
	if errors.As(err, &ae) {
		return ae
	}
	e := &AttemptError{Phase: phase, Host: host, IP: ip, Err: err}
	var se *smtp.SMTPError
	var re *resolver.Error
	var ne net.Error
	var proto textproto.ProtocolError
	var cert x509.CertificateInvalidError
	var hostErr x509.HostnameError
	var unknown x509.UnknownAuthorityError
	var alert tls.AlertError
	switch {
	case errors.As(err, &se):
		e.Code, e.Text = se.Code, oneLine(se.Message)
		e.Permanent = se.Code >= 500 && se.Code < 600
		e.Enhanced = enhanced(se)
	case errors.As(err, &re):
		e.Phase, e.Permanent, e.Enhanced, e.Text = phaseDNS, re.Permanent, re.Enhanced, re.Reason
	case errors.As(err, &cert), errors.As(err, &hostErr), errors.As(err, &unknown):
		e.Enhanced, e.Text = "4.7.5", "certificate not valid: "+oneLine(err.Error())
	case errors.As(err, &alert), phase == phaseStartTLS:
		e.Enhanced, e.Text = "4.7.5", "TLS failed: "+oneLine(err.Error())
	case errors.Is(err, context.Canceled):
		e.Enhanced, e.Text = "4.3.0", "interrupted by shutdown"
	case errors.As(err, &ne) && ne.Timeout():
		e.Enhanced, e.Text = "4.4.2", "timeout at "+phase
	case phase == phaseDial:
		e.Enhanced, e.Text = "4.4.1", "connect: "+oneLine(err.Error())
	case errors.As(err, &proto):
		e.Enhanced, e.Text = "4.5.0", "protocol error: "+oneLine(err.Error())
	default:
		e.Enhanced, e.Text = "4.4.2", "connection lost: "+oneLine(err.Error())
	}
	if e.Enhanced == "" {
		e.Enhanced = "4.0.0"
	}
	return e
}

// enhanced is the reply's enhanced code, or the X.0.0 of its class.
func enhanced(se *smtp.SMTPError) string {
	c := se.EnhancedCode
	if c != smtp.EnhancedCodeNotSet && c != smtp.NoEnhancedCode && c[0] == se.Code/100 {
		return fmt.Sprintf("%d.%d.%d", c[0], c[1], c[2])
	}
	switch se.Code / 100 {
	case 2, 4, 5:
		return fmt.Sprintf("%d.0.0", se.Code/100)
	}
	return "4.0.0"
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 400 {
		s = s[:400]
	}
	return s
}

// localError is a failure decided here, not by a remote reply.
func localError(permanent bool, enh, phase, text string) *AttemptError {
	return &AttemptError{Permanent: permanent, Enhanced: enh, Phase: phase, Text: text}
}
