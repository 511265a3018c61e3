package smtpd

import (
	"errors"
	"fmt"
	"log/slog"
	"os/user"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"mta/internal/mailaddr"
	"mta/spool"
)

// session is go-smtp's Session: one per connection (a new one after
// STARTTLS). Its hooks run on the connection's goroutine.
type session struct {
	srv  *Server
	c    *conn
	sc   *smtp.Conn
	kind Kind
	log  *slog.Logger

	user       *User  // the authenticated submission user
	localLogin string // the local socket peer's login name ("" if unknown)
	trusted    bool   // relay: client in TrustedNetworks; local: trusted uid

	// The transaction.
	tx        atomic.Bool // between MAIL and the end of DATA or RSET
	sender    string
	utf8      bool // MAIL ... SMTPUTF8
	utf8Addrs bool // an envelope address is non-ASCII
	ret       spool.Ret
	envID     string
	rcpts     []spool.Recipient
}

func (s *Server) newSession(sc *smtp.Conn) (_ smtp.Session, err error) {
	c, ok := sc.Conn().(*conn)
	if !ok {
		return nil, errInternal
	}
	ss := &session{srv: s, c: c, sc: sc, kind: c.kind}
	defer ss.recoverPanic(&err)
	ss.log = s.log.With("listener", c.kind.String(), "ip", ss.ipString())
	switch c.kind {
	case Relay:
		ss.trusted = s.isTrusted(c.ip)
	case Local:
		ss.trusted = s.trustUID[c.uid]
		if u, err := user.LookupId(strconv.Itoa(c.uid)); err == nil {
			ss.localLogin = u.Username
		}
		ss.log = ss.log.With("uid", c.uid)
	}
	c.setSession(ss)
	return ss, nil
}

func (s *session) ipString() string {
	if !s.c.ip.IsValid() {
		return ""
	}
	return s.c.ip.String()
}

// recoverPanic turns a panic in a hook into a 421 that ends the
// connection, logged and counted (STYLE: recover at the session root).
func (s *session) recoverPanic(err *error) {
	r := recover()
	if r == nil {
		return
	}
	s.srv.log.Error("panic in SMTP session", "panic", fmt.Sprint(r), "listener", s.kind.String(),
		"ip", s.ipString(), "stack", string(debug.Stack()))
	s.srv.obs.Panicked(s.kind.String())
	s.c.killed.Store(true)
	if err != nil {
		*err = errInternal
	}
}

// refuse logs a refused command and returns its reply.
func (s *session) refuse(phase string, reply *smtp.SMTPError, why string, args ...any) error {
	args = append([]any{"phase", phase, "code", reply.Code, "enhanced", enhanced(reply), "reason", why}, args...)
	s.log.Info("command refused", args...)
	return reply
}

func enhanced(r *smtp.SMTPError) string {
	e := r.EnhancedCode
	return fmt.Sprintf("%d.%d.%d", e[0], e[1], e[2])
}

func (s *session) Reset() {
	defer s.recoverPanic(nil)
	s.resetTx()
}

func (s *session) resetTx() {
	s.tx.Store(false)
	s.sender, s.utf8, s.utf8Addrs, s.ret, s.envID, s.rcpts = "", false, false, spool.RetDefault, "", nil
}

func (s *session) Logout() error {
	defer s.recoverPanic(nil)
	s.resetTx()
	s.c.setSession(nil)
	return nil
}

func (s *session) AuthMechanisms() []string {
	if s.kind.submission() && s.c.isTLS() && s.user == nil {
		return []string{sasl.Plain, sasl.Login}
	}
	return nil
}

func (s *session) Auth(mech string) (_ sasl.Server, err error) {
	defer s.recoverPanic(&err)
	switch {
	case s.c.unusable():
		return nil, errBadSequence
	case !s.kind.submission():
		return nil, errAuthNotOffered
	case !s.c.isTLS():
		return nil, errTLSRequired
	case s.user != nil || s.tx.Load():
		return nil, errBadSequence
	}
	switch strings.ToUpper(mech) {
	case sasl.Plain:
		return &plainServer{s: s}, nil
	case sasl.Login:
		return &loginServer{s: s}, nil
	}
	return nil, errAuthMechanism
}

// login checks credentials and, when they are right, makes the session
// act for that user.
func (s *session) login(login, password string) error {
	u, err := s.srv.auth.check(s.c.ip, login, password, s.kind.String())
	if err != nil {
		return err
	}
	s.user = u
	s.log = s.log.With("user", u.Login)
	s.log.Debug("authenticated")
	return nil
}

func (s *session) Mail(from string, opts *smtp.MailOptions) (err error) {
	defer s.recoverPanic(&err)
	s.resetTx()
	if s.c.unusable() {
		return errBadSequence
	}
	lim := s.srv.currentLimits()
	if s.kind.submission() && s.user == nil {
		return s.refuse("mail", errAuthRequired, "MAIL before AUTH")
	}
	if opts.Size > lim.MaxMessageBytes {
		return s.refuse("mail", errTooBig, "declared SIZE over the limit", "size", opts.Size)
	}
	s.utf8 = opts.UTF8
	sender, err := s.checkSender(from)
	if err != nil {
		return err
	}
	if s.user != nil && !s.srv.rates.allow("m:"+s.user.Login, 1, lim.UserMessagesPerDay, 24*time.Hour, s.srv.now()) {
		return s.refuse("mail", errRateLimit, "messages per day")
	}
	s.sender = sender
	switch opts.Return {
	case smtp.DSNReturnFull:
		s.ret = spool.RetFull
	case smtp.DSNReturnHeaders:
		s.ret = spool.RetHeaders
	}
	s.envID = opts.EnvelopeID
	s.tx.Store(true)
	return nil
}

// checkSender applies who may send as whom and returns the reverse-path
// to store.
func (s *session) checkSender(from string) (string, error) {
	if from == "" {
		if s.kind == Local && !s.trusted {
			return s.localSender() // an empty sender becomes the user's own
		}
		return "", nil
	}
	a, err := s.parseAddr(from)
	if err != nil {
		if errors.Is(err, errNeedSMTPUTF8) {
			return "", s.refuse("mail", errNeedSMTPUTF8, "non-ASCII sender without SMTPUTF8")
		}
		return "", s.refuse("mail", errBadSender, err.Error())
	}
	switch {
	case s.kind.submission() && !s.user.Owns(a):
		return "", s.refuse("mail", errSenderNotOwned, "sender not owned", "sender", a.String())
	case s.kind == Local && !s.trusted:
		own, err := s.localSender()
		if err != nil {
			return "", err
		}
		if !strings.EqualFold(own, a.String()) {
			return "", s.refuse("mail", errSenderNotOwned, "untrusted local user's sender", "sender", a.String())
		}
	}
	if !a.ASCII() {
		s.utf8Addrs = true
	}
	return a.String(), nil
}

// localSender is login@MyOrigin for the local socket's peer.
func (s *session) localSender() (string, error) {
	if s.localLogin == "" {
		return "", s.refuse("mail", errSenderNotOwned, "local uid has no login name")
	}
	a, err := mailaddr.Parse(s.localLogin + "@" + s.srv.origin)
	if err != nil {
		return "", s.refuse("mail", errSenderNotOwned, "login name is not a local part", "err", err)
	}
	return a.String(), nil
}

// parseAddr parses an address as go-smtp gives it: go-smtp strips the
// quotes of a quoted local part, so a local part that is not a dot-string
// is quoted again.
func (s *session) parseAddr(raw string) (mailaddr.Address, error) {
	if !s.utf8 && !mailaddr.IsASCII(raw) {
		return mailaddr.Address{}, errNeedSMTPUTF8
	}
	return parseMailbox(raw)
}

func parseMailbox(raw string) (mailaddr.Address, error) {
	a, err := mailaddr.Parse(raw)
	if err == nil {
		return a, nil
	}
	at := strings.LastIndexByte(raw, '@')
	if at <= 0 {
		return a, err
	}
	local := raw[:at]
	if strings.HasPrefix(local, `"`) {
		return a, err
	}
	q := `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(local) + `"`
	if a2, err2 := mailaddr.Parse(q + raw[at:]); err2 == nil {
		return a2, nil
	}
	return a, err
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) (err error) {
	defer s.recoverPanic(&err)
	if s.c.unusable() || !s.tx.Load() {
		return errBadSequence
	}
	a, err := s.parseAddr(to)
	if err != nil {
		if errors.Is(err, errNeedSMTPUTF8) {
			return s.refuse("rcpt", errNeedSMTPUTF8, "non-ASCII recipient without SMTPUTF8")
		}
		return s.refuse("rcpt", errBadRcpt, err.Error())
	}
	targets, local, err := s.srv.expand(a)
	if err != nil {
		return s.refuse("rcpt", errUnknownUser, err.Error(), "rcpt", a.String())
	}
	if !local && !s.mayRelay() {
		return s.refuse("rcpt", errRelayDenied, "relay denied", "rcpt", a.String())
	}
	add := s.newRecipients(a, targets, opts)
	lim := s.srv.currentLimits()
	if len(s.rcpts)+len(add) > lim.MaxRecipients {
		return s.refuse("rcpt", errTooManyRcpts, "too many recipients")
	}
	if s.user != nil && !s.srv.rates.allow("r:"+s.user.Login, len(s.rcpts)+len(add), lim.UserRecipientsPerHour, time.Hour, s.srv.now()) {
		return s.refuse("rcpt", errRateLimit, "recipients per hour")
	}
	s.rcpts = append(s.rcpts, add...)
	return nil
}

func (s *session) mayRelay() bool {
	switch s.kind {
	case Relay:
		return s.trusted
	case Local:
		return true
	}
	return s.user != nil
}

// newRecipients are the targets of RCPT a not already in the transaction,
// with the DSN parameters. An alias target remembers a as its ORCPT.
func (s *session) newRecipients(a mailaddr.Address, targets []mailaddr.Address, opts *smtp.RcptOptions) []spool.Recipient {
	orcpt := ""
	if opts.OriginalRecipient != "" {
		orcpt = strings.ToLower(string(opts.OriginalRecipientType)) + ";" + opts.OriginalRecipient
	} else if len(targets) != 1 || targets[0] != a {
		orcpt = "rfc822;" + a.String()
	}
	var out []spool.Recipient
	for _, t := range targets {
		addr := t.String()
		if s.hasRecipient(addr) || containsRcpt(out, addr) {
			continue
		}
		if !t.ASCII() {
			s.utf8Addrs = true
		}
		out = append(out, spool.Recipient{Addr: addr, Domain: t.Domain, Notify: notify(opts.Notify), ORcpt: orcpt})
	}
	return out
}

func (s *session) hasRecipient(addr string) bool { return containsRcpt(s.rcpts, addr) }

func containsRcpt(rs []spool.Recipient, addr string) bool {
	for _, r := range rs {
		if r.Addr == addr {
			return true
		}
	}
	return false
}

func notify(n []smtp.DSNNotify) spool.Notify {
	var f spool.Notify
	for _, v := range n {
		switch v {
		case smtp.DSNNotifySuccess:
			f |= spool.NotifySuccess
		case smtp.DSNNotifyFailure:
			f |= spool.NotifyFailure
		case smtp.DSNNotifyDelayed:
			f |= spool.NotifyDelay
		case smtp.DSNNotifyNever:
			f |= spool.NotifyNever
		}
	}
	return f
}
