package peer

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Session is the record of one connection to a Host.
type Session struct {
	Remote string
	// EHLO is the name the client gave in its last EHLO or HELO.
	EHLO string
	// TLS is set once STARTTLS (or implicit TLS) succeeded; TLSVersion and
	// ServerName (the SNI the client sent) come with it.
	TLS        bool
	TLSVersion uint16
	ServerName string
	// AuthUser is the user that authenticated, with AuthMech;
	// AuthAttempts counts AUTH exchanges the server took (with or without
	// success).
	AuthUser     string
	AuthMech     string
	AuthAttempts int
	Transactions []Transaction
	// Commands are the command lines read in plain text, in order.
	Commands []Command
}

// Command is a command line the host read and the ordinal of the read
// that brought it: commands the client wrote at once share it.
type Command struct {
	Line string
	Read int
}

func (s *Session) copy() Session {
	c := *s
	c.Commands = append([]Command(nil), s.Commands...)
	c.Transactions = append([]Transaction(nil), s.Transactions...)
	for i := range c.Transactions {
		c.Transactions[i].Rcpts = append([]Rcpt(nil), c.Transactions[i].Rcpts...)
	}
	return c
}

// Transaction is one MAIL command and what followed it.
type Transaction struct {
	From  string
	Opts  smtp.MailOptions
	Rcpts []Rcpt
	// Size is the octets of message data received; Reply the code sent
	// after the final dot (0 when none was sent).
	Size  int
	Reply int
}

// Rcpt is one RCPT command and the code it got.
type Rcpt struct {
	Addr  string
	Opts  smtp.RcptOptions
	Reply int
}

// Message is a message the host accepted (or kept before dropping the
// connection), as in a mailbox.
type Message struct {
	ID       int
	From     string
	To       []string
	Opts     smtp.MailOptions
	RcptOpts []smtp.RcptOptions
	Data     []byte
	EHLO     string
	TLS      bool
	Received time.Time
}

type backend struct{ h *Host }

func (be backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	nc := c.Conn()
	st, isTLS := c.TLSConnectionState()
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	pc, ok := nc.(*conn)
	if !ok {
		return nil, errors.New("peer: unknown connection")
	}
	s := &session{c: pc, sc: c, stop: make(chan struct{})}
	be.h.update(func() {
		pc.rec.EHLO = c.Hostname()
		if isTLS {
			pc.rec.TLS, pc.rec.TLSVersion, pc.rec.ServerName = true, st.Version, st.ServerName
		}
	})
	if pc.b.Hang == HangEHLO {
		pc.hang(s.stop)
		_ = pc.Close()
		return nil, &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "gone"}
	}
	return s, nil
}

type session struct {
	c      *conn
	sc     *smtp.Conn
	stop   chan struct{}
	authed bool
	from   string
	opts   smtp.MailOptions
	rcpts  []Rcpt
}

func (s *session) h() *Host { return s.c.h }

func (s *session) Reset() { s.rcpts = nil }

func (s *session) Logout() error {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	return nil
}

// stuck hangs the command and closes the connection; the client sees no
// answer at all.
func (s *session) stuck() error {
	s.c.hang(s.stop)
	_ = s.c.Close()
	return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "gone"}
}

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	b := s.h().behaviour() // the script as it is now: a test or the lab may change it
	if b.Auth != nil && !s.authed {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	}
	if b.Hang == HangMail {
		return s.stuck()
	}
	var o smtp.MailOptions
	if opts != nil {
		o = *opts
	}
	s.from, s.opts, s.rcpts = from, o, nil
	s.h().update(func() {
		s.c.rec.EHLO = s.sc.Hostname()
		s.c.rec.Transactions = append(s.c.rec.Transactions, Transaction{From: from, Opts: o})
	})
	if b.Mail != nil {
		return b.Mail.err()
	}
	return nil
}

// record updates the current transaction's record.
func (s *session) record(f func(t *Transaction)) {
	s.h().update(func() {
		if n := len(s.c.rec.Transactions); n > 0 {
			f(&s.c.rec.Transactions[n-1])
		}
	})
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	b := s.h().behaviour() // the script as it is now: a test or the lab may change it
	if b.Hang == HangRcpt {
		return s.stuck()
	}
	var o smtp.RcptOptions
	if opts != nil {
		o = *opts
	}
	var err *smtp.SMTPError
	if r, ok := lookupFold(b.RcptReplies, to); ok {
		err = r.err()
	} else if b.Rcpt != nil {
		err = b.Rcpt.err()
	}
	r := Rcpt{Addr: to, Opts: o, Reply: 250}
	if err != nil {
		r.Reply = err.Code
	} else {
		s.rcpts = append(s.rcpts, r)
	}
	s.record(func(t *Transaction) { t.Rcpts = append(t.Rcpts, r) })
	if err != nil {
		return err
	}
	return nil
}

func lookupFold(m map[string]Reply, k string) (Reply, bool) {
	for a, r := range m {
		if strings.EqualFold(a, k) {
			return r, true
		}
	}
	return Reply{}, false
}

func (s *session) Data(r io.Reader) error {
	b := s.h().behaviour() // the script as it is now: a test or the lab may change it
	if b.StopReadingAfter > 0 {
		n, _ := io.CopyN(io.Discard, r, b.StopReadingAfter)
		s.record(func(t *Transaction) { t.Size = int(n) })
		s.c.stall(s.stop)
		_ = s.c.Close()
		return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "gone"}
	}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, r); err != nil {
		return err // too big: go-smtp answers 552
	}
	s.record(func(t *Transaction) { t.Size = buf.Len() })
	switch {
	case b.Hang == HangDot:
		return s.stuck()
	case b.DropAfterDot:
		s.keep(buf.Bytes())
		_ = s.c.Close()
		return errors.New("dropped")
	case b.Data != nil:
		s.record(func(t *Transaction) { t.Reply = b.Data.Code })
		return b.Data.err()
	}
	s.keep(buf.Bytes())
	s.record(func(t *Transaction) { t.Reply = 250 })
	return nil
}

func (s *session) keep(data []byte) {
	m := Message{From: s.from, Opts: s.opts, Data: data, EHLO: s.sc.Hostname(), Received: time.Now()}
	_, m.TLS = s.sc.TLSConnectionState()
	for _, r := range s.rcpts {
		m.To = append(m.To, r.Addr)
		m.RcptOpts = append(m.RcptOpts, r.Opts)
	}
	s.h().keep(m, s.c.rec.Remote)
}

func (s *session) AuthMechanisms() []string {
	if s.c.b.Auth == nil {
		return nil
	}
	if s.c.b.AuthMechs != nil {
		return s.c.b.AuthMechs
	}
	return []string{sasl.Plain, sasl.Login}
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	s.h().update(func() { s.c.rec.AuthAttempts++ })
	mech = strings.ToUpper(mech)
	if !slices.Contains(s.AuthMechanisms(), mech) {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	check := func(user, pass string) error {
		if want, ok := s.c.b.Auth[user]; !ok || want != pass {
			return smtp.ErrAuthFailed
		}
		s.authed = true
		s.h().update(func() { s.c.rec.AuthUser, s.c.rec.AuthMech = user, mech })
		return nil
	}
	switch strings.ToUpper(mech) {
	case sasl.Plain:
		return sasl.NewPlainServer(func(_, user, pass string) error { return check(user, pass) }), nil
	case sasl.Login:
		return &loginServer{check: check}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// loginServer is the server side of the LOGIN mechanism, which go-sasl
// does not provide.
type loginServer struct {
	step  int
	user  string
	check func(user, pass string) error
}

func (l *loginServer) Next(resp []byte) ([]byte, bool, error) {
	l.step++
	switch l.step {
	case 1:
		if len(resp) > 0 { // initial response carries the user name
			l.user = string(resp)
			l.step++
			return []byte("Password:"), false, nil
		}
		return []byte("Username:"), false, nil
	case 2:
		l.user = string(resp)
		return []byte("Password:"), false, nil
	default:
		return nil, true, l.check(l.user, string(resp))
	}
}
