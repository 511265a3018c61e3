package delivery

// MAIL and RCPT as go-smtp's Client.Mail and Client.Rcpt (v0.25.1) write
// them, byte for byte, for the options delivery sets: the commands are
// written here because go-smtp cannot pipeline (RFC 2920), and a host must
// see the same parameters either way (TestCommandsMatchGoSMTP compares
// them on the wire). Options delivery never sets are refused rather than
// dropped.

import (
	"errors"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"
)

// extensions are what the host's EHLO reply offered, as the commands need.
type extensions struct {
	eightBit   bool // 8BITMIME: MAIL says BODY=8BITMIME (as go-smtp does whenever offered)
	size       bool // SIZE, with or without a limit: MAIL says SIZE=
	utf8       bool // SMTPUTF8
	dsn        bool // DSN: RET, ENVID, NOTIFY, ORCPT
	pipelining bool // PIPELINING (RFC 2920)
}

var errUnsupportedOption = errors.New("option not supported by delivery's command writer")

// appendMail appends the MAIL command for from with o, without CRLF.
func appendMail(b []byte, from string, o *smtp.MailOptions, x extensions) ([]byte, error) {
	if strings.ContainsAny(from, "\r\n") {
		return b, errors.New("smtp: a line must not contain CR or LF")
	}
	if o.RequireTLS || o.Auth != nil {
		return b, errUnsupportedOption
	}
	b = append(append(append(b, "MAIL FROM:<"...), from...), '>')
	if x.eightBit {
		b = append(b, " BODY=8BITMIME"...)
	}
	if x.size && o.Size != 0 {
		b = strconv.AppendInt(append(b, " SIZE="...), o.Size, 10)
	}
	if o.UTF8 {
		if !x.utf8 {
			return b, errors.New("smtp: server does not support SMTPUTF8")
		}
		b = append(b, " SMTPUTF8"...)
	}
	if !x.dsn {
		return b, nil
	}
	switch o.Return {
	case smtp.DSNReturnFull, smtp.DSNReturnHeaders:
		b = append(append(b, " RET="...), o.Return...)
	case "":
	default:
		return b, errors.New("smtp: Unknown RET parameter value")
	}
	if o.EnvelopeID != "" {
		if !goSMTPPrintable(o.EnvelopeID) {
			return b, errors.New("smtp: Malformed ENVID parameter value")
		}
		b = appendXtext(append(b, " ENVID="...), o.EnvelopeID, xtextPlus)
	}
	return b, nil
}

// appendRcpt appends the RCPT command for to with o, without CRLF.
func appendRcpt(b []byte, to string, o *smtp.RcptOptions, x extensions) ([]byte, error) {
	if strings.ContainsAny(to, "\r\n") {
		return b, errors.New("smtp: a line must not contain CR or LF")
	}
	if !o.RequireRecipientValidSince.IsZero() || o.DeliverBy != nil || o.MTPriority != nil {
		return b, errUnsupportedOption
	}
	b = append(append(append(b, "RCPT TO:<"...), to...), '>')
	if !x.dsn {
		return b, nil
	}
	if len(o.Notify) != 0 {
		if !validNotify(o.Notify) {
			return b, errors.New("smtp: Malformed NOTIFY parameter value")
		}
		b = append(b, " NOTIFY="...)
		for i, v := range o.Notify {
			if i != 0 {
				b = append(b, ',')
			}
			b = append(b, v...)
		}
	}
	if o.OriginalRecipient == "" {
		return b, nil
	}
	b = append(append(append(b, " ORCPT="...), o.OriginalRecipientType...), ';')
	switch o.OriginalRecipientType {
	case smtp.DSNAddressTypeRFC822:
		if !goSMTPPrintable(o.OriginalRecipient) {
			return b, errors.New("smtp: Illegal address")
		}
		return appendXtext(b, o.OriginalRecipient, xtextPlus), nil
	case smtp.DSNAddressTypeUTF8:
		if x.utf8 {
			return appendXtext(b, o.OriginalRecipient, xtextUnitext), nil
		}
		return appendXtext(b, o.OriginalRecipient, xtextUTF8Addr), nil
	}
	return b, errors.New("smtp: Unknown address type")
}

// validNotify: NEVER alone, or SUCCESS, FAILURE and DELAY each at most once.
func validNotify(vs []smtp.DSNNotify) bool {
	seen := map[smtp.DSNNotify]bool{}
	for _, v := range vs {
		switch v {
		case smtp.DSNNotifyNever, smtp.DSNNotifyDelayed, smtp.DSNNotifyFailure, smtp.DSNNotifySuccess:
		default:
			return false
		}
		if seen[v] {
			return false
		}
		seen[v] = true
	}
	return !seen[smtp.DSNNotifyNever] || len(seen) == 1
}

// goSMTPPrintable is go-smtp's test for ENVID and rfc822 ORCPT: no
// control characters, nothing past '~' (space allowed).
func goSMTPPrintable(s string) bool {
	for _, c := range s {
		if c < ' ' || c > '~' {
			return false
		}
	}
	return true
}

// The xtext forms of RFC 3461 §4 and RFC 6533 §3, as go-smtp encodes them:
// per rune, not per octet.
const (
	xtextPlus     = iota // "+HEX" for all but printable ASCII other than '+' and '='
	xtextUTF8Addr        // "\x{HEX}" instead (utf-8-addr-xtext)
	xtextUnitext         // "\x{HEX}" for ASCII only, other runes as they are (utf-8-addr-unitext)
)

func appendXtext(b []byte, s string, form int) []byte {
	for _, c := range s {
		switch {
		case c >= '!' && c <= '~' && c != '+' && c != '=':
			b = append(b, byte(c))
		case form == xtextUnitext && c > 0x7f:
			b = append(b, string(c)...)
		case form == xtextPlus:
			b = append(b, '+')
			b = append(b, strings.ToUpper(strconv.FormatInt(int64(c), 16))...)
		default:
			b = append(b, `\x{`...)
			b = append(b, strings.ToUpper(strconv.FormatInt(int64(c), 16))...)
			b = append(b, '}')
		}
	}
	return b
}
