package delivery

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// target is one address of one host, and how to speak to it.
type target struct {
	host     string // MX or relay host name, or an address literal
	ip       netip.Addr
	port     int
	policy   TLSPolicy
	implicit bool // TLS from the first byte (port 465)
	auth     *Auth
}

func (t target) key() poolKey {
	k := poolKey{host: t.host, port: t.port, policy: t.policy}
	if t.auth != nil {
		k.user = t.auth.Username
	}
	return k
}

// serverName is the SNI and verification name: the host name, or for an
// address (an address literal, or a route given as one) the address itself,
// which crypto/tls verifies against the certificate's IP addresses and
// never sends as SNI (RFC 6066 §3).
func (t target) serverName() string {
	if strings.HasPrefix(t.host, "[") {
		return t.ip.String()
	}
	if a, err := netip.ParseAddr(t.host); err == nil {
		return a.String()
	}
	return t.host
}

// session is an open SMTP connection, ready for MAIL.
type session struct {
	t target
	// c is go-smtp's client from the greeting to AUTH; w speaks after it.
	c        *smtp.Client
	w        *wire
	nc       net.Conn // the connection c and w use: dc, or TLS over it
	dc       *deadlineConn
	tls      string // "none", "TLS1.3 verified", ...
	verified bool
	x        extensions
	size     int64 // SIZE limit; 0 when none
	born     time.Time
	msgs     int  // transactions completed
	reused   bool // taken from the pool for this attempt
	// dirty: a MAIL was accepted and its transaction not ended by the
	// reply to a final dot, so the next one starts with RSET (RFC 5321
	// §4.1.1.5: none is needed after a completed transaction).
	dirty bool
	// spent: the session must not be reused (a failure after every
	// recipient was settled left it in an unknown state).
	spent bool
}

// errTLSBroken: an opportunistic handshake failed; the host is now marked
// and the caller dials again in plain text.
var errTLSBroken = errors.New("TLS handshake failed, retrying in plain text")

// open dials t and takes the session through greeting, EHLO, STARTTLS and
// AUTH. ctx bounds the connection's life (the engine's hard stop).
func (e *Scheduler) open(ctx context.Context, t target) (*session, *AttemptError) {
	fail := func(err error, phase string) *AttemptError { return classify(err, phase, t.host, t.ip.String()) }
	addr := net.JoinHostPort(t.ip.String(), strconv.Itoa(t.port))
	dctx, cancel := context.WithTimeout(ctx, e.cfg.Timeouts.Connect)
	raw, err := e.dial(dctx, "tcp", addr)
	cancel()
	if err != nil {
		return nil, fail(err, phaseDial)
	}
	e.connOpened()
	s := &session{t: t, dc: newDeadlineConn(ctx, raw), tls: "none", born: time.Now()}
	s.dc.onClose = e.connClosed
	var nc net.Conn = s.dc
	if t.implicit {
		s.dc.setPhase(phaseStartTLS, e.cfg.Timeouts.StartTLS)
		tc := tls.Client(s.dc, e.tlsConfig(t.policy, t.serverName()))
		if err := tc.HandshakeContext(ctx); err != nil {
			e.closeSession(s)
			return nil, fail(err, phaseStartTLS)
		}
		s.tls, s.verified = e.verdict(tc.ConnectionState(), t.serverName())
		nc = tc
	}
	s.dc.setPhase(phaseGreeting, e.cfg.Timeouts.Greeting)
	s.dc.thenOnWrite(phaseEHLO, e.cfg.Timeouts.Command)
	s.nc = nc
	s.c = e.newClient(nc, t)
	if err := s.c.Hello(e.cfg.Hostname); err != nil {
		phase := s.dc.currentPhase()
		e.closeSession(s)
		return nil, fail(err, phase)
	}
	if aerr := e.secure(ctx, s); aerr != nil {
		e.closeSession(s)
		return nil, aerr
	}
	s.x = extensionsOf(s.c)
	if n, ok := s.c.MaxMessageSize(); ok {
		s.size = int64(n)
	}
	// go-smtp's client is done: after its EHLO (or AUTH) reply the host
	// sends nothing unasked, so its read buffer is empty.
	s.w = newWire(s.nc, e.transcriptFor(t))
	s.c = nil
	return s, nil
}

func extensionsOf(c *smtp.Client) extensions {
	has := func(name string) bool { ok, _ := c.Extension(name); return ok }
	return extensions{eightBit: has("8BITMIME"), size: has("SIZE"), utf8: has("SMTPUTF8"), dsn: has("DSN"),
		pipelining: has("PIPELINING")}
}

func (e *Scheduler) newClient(nc net.Conn, t target) *smtp.Client {
	c := smtp.NewClient(nc)
	c.CommandTimeout = e.cfg.Timeouts.Command
	c.SubmissionTimeout = e.cfg.Timeouts.FinalDot
	if tr := e.transcriptFor(t); tr != nil {
		c.DebugWriter = tr
	}
	return c
}

// LevelTrace is the slog level of SMTP transcripts (below Debug).
const LevelTrace = slog.Level(-8)

// transcriptFor is the transcript of a session with t, or nil when
// LevelTrace is off.
func (e *Scheduler) transcriptFor(t target) *transcript {
	if !e.log.Enabled(context.Background(), LevelTrace) {
		return nil
	}
	return &transcript{log: e.log, host: t.host, ip: t.ip.String()}
}

// transcript logs a session at LevelTrace: what go-smtp's client reads and
// writes (the AUTH exchange left out, see quiet), then the wire's commands
// and replies, with the message body as its size.
type transcript struct {
	log      *slog.Logger
	host, ip string
}

func (t *transcript) Write(p []byte) (int, error) {
	t.say(strings.TrimRight(string(p), "\r\n"))
	return len(p), nil
}

// quiet runs f without a transcript.
func quiet(c *smtp.Client, f func() error) error {
	w := c.DebugWriter
	c.DebugWriter = nil
	defer func() { c.DebugWriter = w }()
	return f()
}

// secure runs STARTTLS as the policy says, then AUTH when configured.
func (e *Scheduler) secure(ctx context.Context, s *session) *AttemptError {
	t := s.t
	if s.tls == "none" && t.policy != TLSNone {
		if aerr := e.startTLS(ctx, s); aerr != nil {
			return aerr
		}
	}
	if s.tls == "none" && (t.policy == TLSRequire || t.policy == TLSVerify) {
		ae := localError(false, "4.7.10", phaseStartTLS, "TLS is required but the host does not offer STARTTLS")
		ae.Host, ae.IP = t.host, t.ip.String()
		return ae
	}
	if s.tls != "none" && t.policy == TLSVerify && !s.verified {
		ae := localError(false, "4.7.5", phaseStartTLS, "certificate not verified")
		ae.Host, ae.IP = t.host, t.ip.String()
		return ae
	}
	if t.auth != nil {
		return e.authenticate(s)
	}
	return nil
}

func brokenKey(t target) string { return t.host + "|" + t.ip.String() }

// startTLS sends STARTTLS itself (go-smtp v0.25 cannot after a Hello with
// our name), completes the handshake, and starts a fresh go-smtp client on
// the TLS connection that says EHLO again.
func (e *Scheduler) startTLS(ctx context.Context, s *session) *AttemptError {
	t := s.t
	now := e.cfg.Now()
	if ok, _ := s.c.Extension("STARTTLS"); !ok {
		return nil
	}
	if t.policy == TLSOpportunistic && e.broken.broken(brokenKey(t), now) {
		return nil
	}
	fail := func(err error, phase string) *AttemptError { return classify(err, phase, t.host, t.ip.String()) }
	s.dc.setPhase(phaseStartTLS, e.cfg.Timeouts.StartTLS)
	code, text, err := rawCommand(s.dc, "STARTTLS")
	if err != nil {
		return fail(err, phaseStartTLS)
	}
	if code != 220 {
		if t.policy == TLSOpportunistic {
			return nil // RFC 3207 §4.1: the session may go on in plain text
		}
		// The policy, not the host, ends the delivery: deferred, with a
		// 4.x.x status even when the host said 5xx (a delay DSN reports
		// it as delayed).
		ae := fail(replyError(code, text), phaseStartTLS)
		ae.Permanent = false
		if strings.HasPrefix(ae.Enhanced, "5.") {
			ae.Enhanced = "4." + ae.Enhanced[2:]
		}
		return ae
	}
	tc := tls.Client(s.dc, e.tlsConfig(t.policy, t.serverName()))
	if err := tc.HandshakeContext(ctx); err != nil {
		ae := fail(err, phaseStartTLS)
		if t.policy == TLSOpportunistic && ctx.Err() == nil {
			e.broken.mark(brokenKey(t), now.Add(e.cfg.BrokenTLSFor), now)
			ae.Err = fmt.Errorf("%w: %w", errTLSBroken, err)
		}
		return ae
	}
	s.tls, s.verified = e.verdict(tc.ConnectionState(), t.serverName())
	s.nc = tc // after the stand-in greeting, read by the EHLO below
	s.c = e.newClient(&preface{Conn: tc, pre: []byte("220 TLS started\r\n")}, t)
	s.dc.setPhase(phaseEHLO, e.cfg.Timeouts.Command)
	if err := s.c.Hello(e.cfg.Hostname); err != nil {
		return fail(err, phaseEHLO)
	}
	return nil
}

// rawCommand sends one command and reads its reply a byte at a time, so
// nothing after the reply (the TLS handshake) is consumed.
func rawCommand(c net.Conn, cmd string) (int, string, error) {
	if _, err := io.WriteString(c, cmd+"\r\n"); err != nil {
		return 0, "", err
	}
	return readReply(c)
}

// readReply reads one SMTP reply (RFC 5321 §4.2), single or multi-line,
// reading r one byte at a time.
func readReply(r io.Reader) (int, string, error) {
	var text []string
	line := make([]byte, 0, 128)
	one := make([]byte, 1)
	for lines := 0; lines < 100; {
		if _, err := io.ReadFull(r, one); err != nil {
			return 0, "", err
		}
		if one[0] != '\n' {
			if len(line) > 1000 {
				return 0, "", errors.New("reply line too long")
			}
			line = append(line, one[0])
			continue
		}
		lines++
		l := strings.TrimRight(string(line), "\r")
		line = line[:0]
		code, err := strconv.Atoi(l[:min(3, len(l))])
		if err != nil || len(l) < 3 || code < 100 || code > 599 || (len(l) > 3 && l[3] != ' ' && l[3] != '-') {
			return 0, "", fmt.Errorf("malformed reply %q", l)
		}
		if len(l) > 4 {
			text = append(text, l[4:])
		}
		if len(l) == 3 || l[3] == ' ' {
			return code, strings.Join(text, " "), nil
		}
	}
	return 0, "", errors.New("reply has too many lines")
}

// authenticate logs in with PLAIN or LOGIN, never over plain text. Its
// failures are temporary: a wrong password is the operator's to fix, and
// the mail waits.
func (e *Scheduler) authenticate(s *session) *AttemptError {
	t := s.t
	if s.tls == "none" {
		ae := localError(false, "4.7.10", phaseAuth, "AUTH withheld: the session is not encrypted")
		ae.Host, ae.IP = t.host, t.ip.String()
		return ae
	}
	var mech sasl.Client
	switch {
	case s.c.SupportsAuth(sasl.Plain):
		mech = sasl.NewPlainClient("", t.auth.Username, t.auth.Password)
	case s.c.SupportsAuth(sasl.Login):
		mech = sasl.NewLoginClient(t.auth.Username, t.auth.Password)
	default:
		ae := localError(false, "4.7.4", phaseAuth, "host offers neither AUTH PLAIN nor LOGIN")
		ae.Host, ae.IP = t.host, t.ip.String()
		return ae
	}
	s.dc.setPhase(phaseAuth, e.cfg.Timeouts.Command)
	if err := quiet(s.c, func() error { return s.c.Auth(mech) }); err != nil {
		ae := classify(err, phaseAuth, t.host, t.ip.String())
		ae.Permanent = false
		return ae
	}
	return nil
}

// quit ends a session politely, within a short bound.
func (e *Scheduler) quit(s *session) {
	s.dc.setPhase("quit", min(e.cfg.Timeouts.Command, 10*time.Second))
	if err := s.w.command("QUIT"); err == nil {
		_, _ = s.w.reply(221) // the connection closes below whatever the host says
	}
	e.closeSession(s)
}

func (e *Scheduler) closeSession(s *session) {
	s.dc.shut()
}

func (e *Scheduler) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if e.cfg.Dial != nil {
		return e.cfg.Dial(ctx, network, addr)
	}
	d := net.Dialer{}
	ap, err := netip.ParseAddrPort(addr)
	if err == nil {
		src := e.cfg.SourceIPv4
		if ap.Addr().Is6() {
			src = e.cfg.SourceIPv6
		}
		if src.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		}
	}
	return d.DialContext(ctx, network, addr)
}
