package peer

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// pop3MaxLine bounds a command line, CRLF included. RFC 2449 §4 allows
// 255 octets; this leaves room for long passwords.
const pop3MaxLine = 512

// pop3MaxAuthFailures ends a session after this many failed logins.
const pop3MaxAuthFailures = 3

// pop3Capabilities is the CAPA answer (RFC 2449 §6).
var pop3Capabilities = []string{"TOP", "UIDL", "USER", "RESP-CODES", "PIPELINING", "IMPLEMENTATION mta-lab"}

// pop3Session is one POP3 conversation. Its states are those of RFC 1939
// §3: AUTHORIZATION until PASS succeeds (box == nil), then TRANSACTION,
// and UPDATE only when QUIT is given in TRANSACTION.
type pop3Session struct {
	srv  *POP3Server
	conn net.Conn // nil when not over a network; gets the idle deadlines
	r    *bufio.Reader
	w    *bufio.Writer
	ip   string

	user     string // from USER, waiting for PASS
	failures int

	box     *Mailbox         // locked while in TRANSACTION
	login   string           // the user whose mailbox box is
	msgs    []MailboxMessage // the maildrop as it was at PASS
	deleted []bool
}

func newPOP3Session(srv *POP3Server, r io.Reader, w io.Writer, conn net.Conn) *pop3Session {
	return &pop3Session{
		srv:  srv,
		conn: conn,
		r:    bufio.NewReaderSize(r, pop3MaxLine),
		w:    bufio.NewWriter(w),
	}
}

// errPOP3End ends a session after its last reply.
var errPOP3End = errors.New("session over")

func (s *pop3Session) run() {
	s.reply("+OK %s POP3 server ready", s.srv.cfg.Hostname)
	for {
		if err := s.flush(); err != nil {
			return
		}
		line, err := s.readLine()
		if errors.Is(err, errPOP3LineTooLong) {
			s.reply("-ERR line too long")
			continue
		}
		if err != nil {
			if s.box != nil {
				s.srv.log.Info("pop3 session lost, nothing deleted", "user", s.login, "ip", s.ip, "error", err)
			}
			return
		}
		if err := s.command(line); err != nil {
			_ = s.flush() // the last reply; the session ends either way
			return
		}
	}
}

var errPOP3LineTooLong = errors.New("line too long")

// readLine reads one command line, without its CRLF (a bare LF is
// accepted too, as netcat sends). The idle timer restarts for each line.
func (s *pop3Session) readLine() (string, error) {
	if s.conn != nil {
		if err := s.conn.SetReadDeadline(time.Now().Add(s.srv.cfg.IdleTimeout)); err != nil {
			return "", err
		}
	}
	line, err := s.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		for errors.Is(err, bufio.ErrBufferFull) {
			_, err = s.r.ReadSlice('\n')
		}
		if err != nil {
			return "", err
		}
		return "", errPOP3LineTooLong
	}
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(line), "\r\n"), nil
}

// reply queues one line. A write error sticks in the bufio.Writer and
// comes out of the next flush, which ends the session.
func (s *pop3Session) reply(format string, args ...any) {
	_, _ = fmt.Fprintf(s.w, format+"\r\n", args...)
}

// flush sends what was replied; bufio keeps the first write error, which
// flush returns.
func (s *pop3Session) flush() error {
	if s.conn != nil {
		if err := s.conn.SetWriteDeadline(time.Now().Add(s.srv.cfg.IdleTimeout)); err != nil {
			return err
		}
	}
	return s.w.Flush()
}

// release gives the maildrop back if the session still holds it.
func (s *pop3Session) release() {
	if s.box != nil {
		s.box.unlock()
		s.box = nil
	}
}

// command runs one command line; errPOP3End ends the session.
func (s *pop3Session) command(line string) error {
	verb, arg, _ := strings.Cut(line, " ")
	verb = strings.ToUpper(verb)
	args := strings.Fields(arg)
	switch verb {
	case "CAPA":
		s.reply("+OK capability list follows")
		for _, c := range pop3Capabilities {
			s.reply("%s", c)
		}
		s.reply(".")
		return nil
	case "QUIT":
		return s.quit()
	case "":
		s.reply("-ERR empty command")
		return nil
	}
	if s.box == nil {
		return s.authCommand(verb, arg, args)
	}
	s.transactionCommand(verb, args)
	return nil
}

// authCommand runs a command of the AUTHORIZATION state.
func (s *pop3Session) authCommand(verb, arg string, args []string) error {
	switch verb {
	case "USER":
		if len(args) != 1 {
			s.reply("-ERR syntax: USER name")
			return nil
		}
		s.user = args[0]
		s.reply("+OK send PASS")
	case "PASS":
		return s.pass(arg)
	case "STAT", "LIST", "UIDL", "TOP", "RETR", "DELE", "NOOP", "RSET":
		s.reply("-ERR log in first (USER, PASS)")
	default:
		s.reply("-ERR unknown command")
	}
	return nil
}

// pass checks the password (the rest of the line: it may hold spaces),
// locks the maildrop and enters TRANSACTION.
func (s *pop3Session) pass(pass string) error {
	if s.user == "" {
		s.reply("-ERR send USER first")
		return nil
	}
	user := s.user
	s.user = ""
	acct, ok := s.srv.account(user, pass)
	if !ok {
		s.failures++
		s.srv.log.Info("pop3 login failed", "user", user, "ip", s.ip)
		if s.failures >= pop3MaxAuthFailures {
			s.reply("-ERR [AUTH] invalid user name or password, closing")
			return errPOP3End
		}
		s.reply("-ERR [AUTH] invalid user name or password")
		return nil
	}
	if !acct.Mailbox.lock() {
		s.reply("-ERR [IN-USE] mailbox in use by another session")
		return nil
	}
	s.box, s.login = acct.Mailbox, user
	s.msgs = acct.Mailbox.List()
	s.deleted = make([]bool, len(s.msgs))
	n, size := s.stat()
	s.srv.log.Info("pop3 login", "user", user, "ip", s.ip, "messages", n)
	s.reply("+OK %s has %d messages (%d octets)", user, n, size)
	return nil
}

// quit ends the session; in TRANSACTION it first enters UPDATE and removes
// the messages marked deleted (RFC 1939 §6).
func (s *pop3Session) quit() error {
	if s.box == nil {
		s.reply("+OK bye")
		return errPOP3End
	}
	var uids []string
	for i, m := range s.msgs {
		if s.deleted[i] {
			uids = append(uids, m.UID)
		}
	}
	removed := s.box.Delete(uids...)
	s.srv.log.Info("pop3 update", "user", s.login, "ip", s.ip, "deleted", removed)
	// Unlock before the reply, so a client that reconnects as soon as it
	// reads "+OK" finds the maildrop free.
	s.release()
	if removed != len(uids) {
		s.reply("-ERR some deleted messages not removed")
		return errPOP3End
	}
	s.reply("+OK bye, %d messages deleted", removed)
	return errPOP3End
}

// transactionCommand runs a command of the TRANSACTION state.
func (s *pop3Session) transactionCommand(verb string, args []string) {
	switch verb {
	case "STAT":
		n, size := s.stat()
		s.reply("+OK %d %d", n, size)
	case "LIST", "UIDL":
		s.listing(verb, args)
	case "RETR":
		if i, ok := s.messageArg(args, 1, "RETR msg"); ok {
			s.reply("+OK %d octets", len(s.msgs[i].Data))
			s.sendLines(s.msgs[i].Data, -1)
		}
	case "TOP":
		s.top(args)
	case "DELE":
		if i, ok := s.messageArg(args, 1, "DELE msg"); ok {
			s.deleted[i] = true
			s.reply("+OK message %d deleted", i+1)
		}
	case "NOOP":
		s.reply("+OK")
	case "RSET":
		clear(s.deleted)
		n, size := s.stat()
		s.reply("+OK maildrop has %d messages (%d octets)", n, size)
	case "USER", "PASS":
		s.reply("-ERR already logged in")
	default:
		s.reply("-ERR unknown command")
	}
}

// stat counts the messages not marked deleted and their octets.
func (s *pop3Session) stat() (n, size int) {
	for i, m := range s.msgs {
		if !s.deleted[i] {
			n++
			size += len(m.Data)
		}
	}
	return n, size
}

// listing answers LIST and UIDL, for one message or all.
func (s *pop3Session) listing(verb string, args []string) {
	item := func(i int) string {
		if verb == "UIDL" {
			return fmt.Sprintf("%d %s", i+1, s.msgs[i].UID)
		}
		return fmt.Sprintf("%d %d", i+1, len(s.msgs[i].Data))
	}
	if len(args) > 0 {
		if i, ok := s.messageArg(args, 1, verb+" [msg]"); ok {
			s.reply("+OK %s", item(i))
		}
		return
	}
	n, size := s.stat()
	if verb == "UIDL" {
		s.reply("+OK unique-id listing follows")
	} else {
		s.reply("+OK %d messages (%d octets)", n, size)
	}
	for i := range s.msgs {
		if !s.deleted[i] {
			s.reply("%s", item(i))
		}
	}
	s.reply(".")
}

// top answers TOP msg n: the header, the blank line, and n body lines.
func (s *pop3Session) top(args []string) {
	if len(args) != 2 {
		s.reply("-ERR syntax: TOP msg n")
		return
	}
	i, ok := s.messageArg(args[:1], 1, "TOP msg n")
	if !ok {
		return
	}
	n, err := strconv.Atoi(args[1])
	if err != nil || n < 0 || !isDecimal(args[1]) {
		s.reply("-ERR syntax: TOP msg n (n a number of lines, 0 or more)")
		return
	}
	s.reply("+OK top of message follows")
	s.sendLines(s.msgs[i].Data, n)
}

// messageArg reads the message number in args (want arguments in all) and
// returns its index; it replies -ERR itself when there is none.
func (s *pop3Session) messageArg(args []string, want int, syntax string) (int, bool) {
	if len(args) != want {
		s.reply("-ERR syntax: %s", syntax)
		return 0, false
	}
	n, err := strconv.Atoi(args[0])
	if err != nil || !isDecimal(args[0]) {
		s.reply("-ERR syntax: %s (msg is a message number)", syntax)
		return 0, false
	}
	if n < 1 || n > len(s.msgs) {
		s.reply("-ERR no such message")
		return 0, false
	}
	if s.deleted[n-1] {
		s.reply("-ERR message %d already deleted", n)
		return 0, false
	}
	return n - 1, true
}

func isDecimal(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// sendLines sends a message as a multi-line response (RFC 1939 §3): each
// line starting with '.' gets another '.', and a line "." ends it. With
// bodyLines >= 0 only the header, the blank line after it and that many
// body lines are sent (TOP).
func (s *pop3Session) sendLines(data []byte, bodyLines int) {
	inBody := false
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line = data[:i+1]
		}
		data = data[len(line):]
		if inBody && bodyLines >= 0 {
			if bodyLines == 0 {
				break
			}
			bodyLines--
		}
		if len(line) > 0 && line[0] == '.' {
			_ = s.w.WriteByte('.') // errors stick; see reply
		}
		_, _ = s.w.Write(line)
		if line[len(line)-1] != '\n' {
			_, _ = s.w.WriteString("\r\n") // never glue "." to a last line
		}
		if !inBody && (string(line) == "\r\n" || string(line) == "\n") {
			inBody = true
		}
	}
	s.reply(".")
}
