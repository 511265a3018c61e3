package smtpd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"mta/internal/mailaddr"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("smtpd: server closed")

// Server runs the SMTP listeners. Create it with New, call Serve once per
// listener, and Shutdown at the end.
type Server struct {
	cfg      Config
	log      *slog.Logger
	obs      Observer
	now      func() time.Time
	timeouts Timeouts
	trusted  []netip.Prefix
	origin   string
	tls      *tls.Config
	dkim     map[string]DKIMKey
	trustUID map[int]bool

	users        atomic.Pointer[Users]
	limits       atomic.Pointer[Limits]
	unownedFrom  atomic.Bool // Config.AllowUnownedFrom, or SetAllowUnownedFrom
	aliases      atomic.Pointer[mailaddr.Aliases]
	localDomains []string
	postmaster   []byte // what "<postmaster>" in RCPT becomes (input.go)

	auth  *authenticator
	rates *rateTable
	data  atomic.Int64 // sessions in the DATA phase

	lineBufs sync.Pool // *bufio.Reader of lineReaderBytes, for DATA

	closing atomic.Bool

	mu        sync.Mutex
	servers   []*smtp.Server
	listeners []*listener
	conns     map[*conn]struct{}
	perIP     map[netip.Addr]int
	total     int
	handoffs  []*handoffListener
}

// New checks cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Hostname == "" {
		return nil, errors.New("smtpd: no hostname")
	}
	if cfg.Spool == nil {
		return nil, errors.New("smtpd: no spool")
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		obs:      cfg.Observer,
		now:      cfg.Now,
		timeouts: cfg.Timeouts.withDefaults(),
		trusted:  cfg.TrustedNetworks,
		origin:   cfg.MyOrigin,
		conns:    map[*conn]struct{}{},
		perIP:    map[netip.Addr]int{},
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.obs == nil {
		s.obs = NopObserver{}
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.trusted == nil {
		s.trusted = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	}
	if s.origin == "" {
		s.origin = cfg.Hostname
	}
	if err := s.setup(cfg); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) setup(cfg Config) error {
	// SetAliases below checks the local domains.
	s.localDomains = cfg.LocalDomains
	s.postmaster = postmasterPath(cfg.LocalDomains, cfg.Hostname)
	if cfg.TLS != nil {
		s.tls = cfg.TLS.Clone()
		if s.tls.MinVersion < tls.VersionTLS12 {
			s.tls.MinVersion = tls.VersionTLS12
		}
	}
	var err error
	if s.dkim, err = normalizeDKIM(cfg.DKIM); err != nil {
		return err
	}
	if s.trustUID, err = resolveUIDs(cfg.SendmailTrustedUsers); err != nil {
		return err
	}
	if err := s.SetAliases(cfg.Aliases); err != nil {
		return err
	}
	s.SetLimits(cfg.Limits)
	s.SetAllowUnownedFrom(cfg.AllowUnownedFrom)
	users := cfg.Users
	if users == nil {
		users = &Users{}
	}
	s.auth = newAuthenticator(s)
	s.rates = newRateTable()
	s.SetUsers(users)
	return nil
}

// SetUsers replaces the submission users (e.g. after SIGHUP). The Server
// never modifies u.
func (s *Server) SetUsers(u *Users) {
	if u == nil {
		u = &Users{}
	}
	s.auth.setDummy(u)
	s.users.Store(u)
}

// SetLimits replaces the limits; sessions see them at their next command.
func (s *Server) SetLimits(l Limits) {
	l = l.withDefaults()
	s.limits.Store(&l)
}

// SetAllowUnownedFrom replaces Config.AllowUnownedFrom (e.g. after SIGHUP);
// messages whose header is checked afterwards see it.
func (s *Server) SetAllowUnownedFrom(allow bool) { s.unownedFrom.Store(allow) }

// SetAliases replaces the aliases; it fails, changing nothing, when an
// alias is malformed.
func (s *Server) SetAliases(aliases map[string][]string) error {
	t, err := mailaddr.NewAliases(aliases, s.localDomains)
	if err != nil {
		return fmt.Errorf("smtpd: %w", err)
	}
	s.aliases.Store(t)
	return nil
}

// Serve accepts connections on ln until Shutdown (then it returns
// ErrServerClosed) or until ln fails. For Submissions it does the TLS
// itself, so ln must be a plain listener.
func (s *Server) Serve(ln net.Listener, kind Kind) error {
	if kind < Relay || kind > Local {
		return fmt.Errorf("smtpd: unknown listener kind %d", kind)
	}
	if kind.submission() && s.tls == nil {
		return fmt.Errorf("smtpd: %s listener needs a TLS config", kind)
	}
	l := &listener{Listener: ln, srv: s, kind: kind}
	main := s.newSMTPServer()
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.servers = append(s.servers, main)
	s.listeners = append(s.listeners, l)
	if s.tls != nil && (kind == Relay || kind == Submission) {
		l.handoff = newHandoffListener(ln.Addr())
		s.handoffs = append(s.handoffs, l.handoff)
		inner := s.newSMTPServer()
		s.servers = append(s.servers, inner)
		go s.serveHandoffs(inner, l.handoff)
	}
	s.mu.Unlock()
	err := main.Serve(l)
	if s.closing.Load() {
		return ErrServerClosed
	}
	return err
}

func (s *Server) serveHandoffs(srv *smtp.Server, l *handoffListener) {
	if err := srv.Serve(l); err != nil && !errors.Is(err, net.ErrClosed) {
		s.log.Error("serving STARTTLS connections", "err", err)
	}
}

// newSMTPServer configures a go-smtp server. TLSConfig stays nil (TLS is
// done in conn.go), and MaxMessageBytes and MaxRecipients stay 0 (the
// session enforces the current Limits).
func (s *Server) newSMTPServer() *smtp.Server {
	srv := smtp.NewServer(backend{s})
	srv.Domain = s.cfg.Hostname
	srv.ReadTimeout = s.timeouts.Command
	srv.WriteTimeout = s.timeouts.Command
	srv.MaxLineLength = maxLineLength
	srv.AllowInsecureAuth = true // AUTH is offered only over TLS by the session
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	srv.ErrorLog = errorLog{s.log}
	return srv
}

// Shutdown stops accepting, ends idle sessions with 421 and waits for the
// others to finish their transaction; when ctx ends first it ends them at
// their next read or write, their last replies unsent, and returns ctx's
// error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	servers := append([]*smtp.Server(nil), s.servers...)
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	handoffs := s.handoffs
	listeners := s.listeners
	s.mu.Unlock()
	// Closed here too, not only by go-smtp: a Serve that registered but
	// has not reached go-smtp's accept loop yet must not start one.
	for _, l := range listeners {
		_ = l.Close() // errors are go-smtp's to report, from its own Close
	}
	for _, h := range handoffs {
		_ = h.Close() // never fails
	}
	for _, c := range conns {
		c.interruptIfIdle()
	}
	errs := make(chan error, len(servers))
	for _, srv := range servers {
		go func() { errs <- srv.Shutdown(ctx) }()
	}
	var first error
	for range servers {
		if err := <-errs; err != nil && !errors.Is(err, smtp.ErrServerClosed) && first == nil {
			first = err
		}
	}
	if ctx.Err() != nil {
		// go-smtp's Close does nothing after its Shutdown, so the
		// sessions are ended here, also one blocked sending to a client
		// that does not read.
		s.mu.Lock()
		for c := range s.conns {
			c.abort()
		}
		s.mu.Unlock()
		for _, srv := range servers {
			_ = srv.Close() // forced: the context ended
		}
		return ctx.Err()
	}
	return first
}

func (s *Server) isTrusted(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range s.trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func (s *Server) currentLimits() Limits { return *s.limits.Load() }

// backend is go-smtp's Backend.
type backend struct{ s *Server }

func (b backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return b.s.newSession(c)
}

// errorLog adapts go-smtp's internal error log to slog.
type errorLog struct{ log *slog.Logger }

func (e errorLog) Printf(format string, v ...any) {
	e.log.Debug("smtp server", "err", strings.TrimSpace(fmt.Sprintf(format, v...)))
}

func (e errorLog) Println(v ...any) {
	e.log.Debug("smtp server", "err", strings.TrimSpace(fmt.Sprintln(v...)))
}

// tempFile makes an unlinked temporary file for a spilled body.
func (s *Server) tempFile() (*os.File, error) {
	f, err := os.CreateTemp(s.cfg.TempDir, "mta-body-*")
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		_ = f.Close() // the removal error is the one to report
		return nil, err
	}
	return f, nil
}

// resolveUIDs turns sendmail_trusted_users (uids or login names) into uids.
func resolveUIDs(names []string) (map[int]bool, error) {
	m := map[int]bool{}
	for _, n := range names {
		if uid, err := strconv.Atoi(n); err == nil {
			m[uid] = true
			continue
		}
		u, err := user.Lookup(n)
		if err != nil {
			return nil, fmt.Errorf("smtpd: sendmail trusted user %q: %w", n, err)
		}
		uid, err := strconv.Atoi(u.Uid)
		if err != nil {
			return nil, fmt.Errorf("smtpd: sendmail trusted user %q: uid %q", n, u.Uid)
		}
		m[uid] = true
	}
	return m, nil
}
