package peer

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// ErrPOP3Closed is what Serve returns after Close.
var ErrPOP3Closed = errors.New("pop3: server closed")

// DefaultPOP3IdleTimeout is the autologout timer of RFC 1939 §3: at least
// 10 minutes.
const DefaultPOP3IdleTimeout = 10 * time.Minute

// POP3Account is one user of a POP3Server.
type POP3Account struct {
	Password string
	Mailbox  *Mailbox
}

// POP3Config configures a POP3Server.
type POP3Config struct {
	// Hostname is named in the greeting (default "localhost").
	Hostname string
	// Accounts maps user names to their password and mailbox; several
	// users may share a mailbox. It is copied by NewPOP3.
	Accounts map[string]POP3Account
	// IdleTimeout ends a session that sends nothing (or reads nothing) for
	// this long, without applying its deletions (default
	// DefaultPOP3IdleTimeout; a lab may choose shorter).
	IdleTimeout time.Duration
	// Logger receives one line per login, update and failure (nil
	// discards).
	Logger *slog.Logger
}

// POP3Server serves mailboxes over POP3 (RFC 1939: USER, PASS, STAT, LIST,
// UIDL, TOP, RETR, DELE, NOOP, RSET, QUIT; RFC 2449 CAPA). It does not
// offer APOP or TLS: it is a lab and test peer, for loopback.
type POP3Server struct {
	cfg    POP3Config
	log    *slog.Logger
	panics atomic.Int64

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	wg        sync.WaitGroup
}

// NewPOP3 returns a server for cfg; call Serve to run it.
func NewPOP3(cfg POP3Config) *POP3Server {
	if cfg.Hostname == "" {
		cfg.Hostname = "localhost"
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultPOP3IdleTimeout
	}
	accounts := make(map[string]POP3Account, len(cfg.Accounts))
	for u, a := range cfg.Accounts {
		accounts[u] = a
	}
	cfg.Accounts = accounts
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &POP3Server{
		cfg:       cfg,
		log:       log,
		listeners: map[net.Listener]struct{}{},
		conns:     map[net.Conn]struct{}{},
	}
}

// Serve accepts sessions on l until Close (then it returns ErrPOP3Closed)
// or until l fails. It closes l.
func (s *POP3Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = l.Close() // never served
		return ErrPOP3Closed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer s.forgetListener(l)
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrPOP3Closed
			}
			return fmt.Errorf("pop3 accept: %w", err)
		}
		if !s.track(c) {
			_ = c.Close() // shutting down
			return ErrPOP3Closed
		}
		go s.serveConn(c)
	}
}

// Close stops every Serve, ends every session without applying its
// deletions, and waits for the sessions to finish.
func (s *POP3Server) Close() error {
	s.mu.Lock()
	s.closed = true
	var errs []error
	for l := range s.listeners {
		if err := l.Close(); !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	for c := range s.conns {
		if err := c.Close(); !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
	return errors.Join(errs...)
}

// Panics is how many sessions ended in a recovered panic (tests want 0).
func (s *POP3Server) Panics() int64 { return s.panics.Load() }

func (s *POP3Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *POP3Server) forgetListener(l net.Listener) {
	s.mu.Lock()
	delete(s.listeners, l)
	s.mu.Unlock()
	_ = l.Close() // already closed by Close or broken; either way done
}

// track registers a new connection; false when the server is closing.
func (s *POP3Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *POP3Server) serveConn(c net.Conn) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, c) // first, so Close does not close it twice
		s.mu.Unlock()
		_ = c.Close() // the session is over; nothing left to send
		s.wg.Done()
	}()
	s.runSession(c, c, c)
}

// runSession runs one session over r and w; conn, when not nil, gets the
// idle deadlines. It recovers a panic, logs and counts it.
func (s *POP3Server) runSession(r io.Reader, w io.Writer, conn net.Conn) {
	ip := ""
	if conn != nil {
		if a, ok := conn.RemoteAddr().(*net.TCPAddr); ok {
			ip = a.IP.String()
		}
	}
	defer func() {
		if p := recover(); p != nil {
			s.panics.Add(1)
			s.log.Error("pop3 session panic", "ip", ip, "panic", p, "stack", string(debug.Stack()))
		}
	}()
	sess := newPOP3Session(s, r, w, conn)
	sess.ip = ip
	defer sess.release()
	sess.run()
}

// account checks a user name and password; the password comparison does
// not leak its length of match through timing.
func (s *POP3Server) account(user, pass string) (POP3Account, bool) {
	a, ok := s.cfg.Accounts[user]
	if !ok {
		return POP3Account{}, false
	}
	if subtle.ConstantTimeCompare([]byte(a.Password), []byte(pass)) != 1 || a.Mailbox == nil {
		return POP3Account{}, false
	}
	return a, true
}
