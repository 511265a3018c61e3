package smtpd

import (
	"errors"
	"net"
	"os"

	"github.com/emersion/go-smtp"

	"mta/spool"
)

// The replies this package hands to go-smtp. Each has a fixed, generic
// text: what went wrong in detail goes to the log, never to the client.
var (
	errSpool          = reply(451, 4, 3, 0, "Temporary spool failure, try again later")
	errNoSpace        = reply(452, 4, 3, 1, "Insufficient system storage, try again later")
	errLocal          = reply(451, 4, 3, 0, "Local error in processing, try again later")
	errTooBig         = reply(552, 5, 3, 4, "Message too big")
	errHeaderTooBig   = reply(552, 5, 3, 4, "Message header too big")
	errBadCreds       = reply(535, 5, 7, 8, "Authentication credentials invalid")
	errAuthRequired   = reply(530, 5, 7, 0, "Authentication required")
	errTLSRequired    = reply(530, 5, 7, 0, "Must issue a STARTTLS command first")
	errAuthThrottled  = reply(454, 4, 7, 0, "Too many failed authentications, try again later")
	errAuthNotOffered = reply(502, 5, 5, 1, "Command not implemented")
	errAuthMechanism  = reply(504, 5, 5, 4, "Unrecognized authentication type")
	errAuthSyntax     = reply(501, 5, 5, 2, "Invalid authentication data")
	errRelayDenied    = reply(554, 5, 7, 1, "Relay access denied")
	errSenderNotOwned = reply(553, 5, 7, 1, "Sender address not owned by user")
	errFromNotOwned   = reply(550, 5, 7, 1, "From header address not owned by user")
	errFromCount      = reply(550, 5, 6, 0, "Message must have exactly one valid From header")
	errLoop           = reply(554, 5, 4, 6, "Too many Received headers: mail loop")
	errTooManyRcpts   = reply(452, 4, 5, 3, "Too many recipients")
	errRateLimit      = reply(450, 4, 7, 1, "Sending rate limit reached, try again later")
	errBareNewline    = reply(550, 5, 6, 0, "Bare CR or LF in message; lines must end with CRLF")
	errLongLine       = reply(550, 5, 6, 0, "Message line longer than 998 octets")
	errUnknownUser    = reply(550, 5, 1, 1, "No such user here")
	errBadSender      = reply(553, 5, 1, 7, "Bad sender address syntax")
	errBadRcpt        = reply(501, 5, 1, 3, "Bad recipient address syntax")
	errNeedSMTPUTF8   = reply(553, 5, 6, 7, "Non-ASCII address needs SMTPUTF8")
	errBDAT           = reply(502, 5, 5, 1, "BDAT not implemented, use DATA")
	errBusy           = reply(451, 4, 3, 2, "Too busy, try again later")
	errTimeout        = reply(421, 4, 4, 2, "Timeout reading message data")
	errReadFailed     = reply(421, 4, 4, 0, "Connection error reading message data")
	errInternal       = reply(421, 4, 3, 0, "Internal error, try again later")
	errBadSequence    = reply(503, 5, 5, 1, "Bad sequence of commands")
)

// Reply lines written by the connection wrapper itself.
const (
	lineTooManyConns = "421 4.7.0 Too many connections, try again later\r\n"
	lineShutdown     = "421 4.3.2 Service shutting down\r\n"
	lineStartTLS     = "220 2.0.0 Ready to start TLS\r\n"
)

func reply(code, class, subject, detail int, text string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{class, subject, detail}, Message: text}
}

// queued is the final reply to DATA once the message is in the spool.
// go-smtp writes any *SMTPError that Data returns as the reply, so a 250
// "error" is how the reply carries the message ID.
func queued(id string) *smtp.SMTPError {
	return reply(250, 2, 0, 0, "Ok: queued as "+id)
}

// spoolReply maps an error from the spool to its reply.
func spoolReply(err error) *smtp.SMTPError {
	switch {
	case errors.Is(err, spool.ErrTooBig):
		return errTooBig
	case errors.Is(err, spool.ErrNoSpace):
		return errNoSpace
	}
	return errSpool
}

// readReply maps an error reading the message from the client.
func readReply(err error) *smtp.SMTPError {
	var ne net.Error
	switch {
	case errors.Is(err, smtp.ErrTooLongLine):
		return errLongLine
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return errTimeout
	}
	return errReadFailed
}
