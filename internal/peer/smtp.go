package peer

// This file is the SMTP host: a go-smtp server on one address that records
// every session and answers as its Behaviour says. Tests (through
// internal/testpeer), `mta lab` and `mta bench` use it as their MX hosts.

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// Phases at which Behaviour.Hang can stop answering.
const (
	HangGreeting = "greeting" // accept the connection, never greet
	HangEHLO     = "ehlo"     // never answer EHLO/HELO
	HangMail     = "mail"     // never answer MAIL
	HangRcpt     = "rcpt"     // never answer RCPT
	HangDot      = "dot"      // read the whole message, never answer the final dot
)

// Reply is a scripted SMTP reply.
type Reply struct {
	Code     int
	Enhanced string // "4.2.1"; empty for the X.0.0 of the code's class
	Text     string
}

func (r Reply) err() *smtp.SMTPError {
	e := &smtp.SMTPError{Code: r.Code, Message: r.Text}
	if e.Message == "" {
		e.Message = "scripted reply"
	}
	var a, b, c int
	if _, err := fmt.Sscanf(r.Enhanced, "%d.%d.%d", &a, &b, &c); err == nil {
		e.EnhancedCode = smtp.EnhancedCode{a, b, c}
	}
	return e
}

func (r Reply) line() string {
	enh := r.Enhanced
	if enh == "" {
		enh = fmt.Sprintf("%d.0.0", r.Code/100)
	}
	return fmt.Sprintf("%d %s %s\r\n", r.Code, enh, r.err().Message)
}

// Behaviour scripts how a Host answers. The zero value accepts every
// message and advertises 8BITMIME, SMTPUTF8, DSN and SIZE without a limit.
type Behaviour struct {
	// Refuse: nothing listens on the address, so connections are refused.
	Refuse bool
	// Greeting, when set, is sent instead of the 220 greeting (421 closes
	// at once; anything else is followed by 503 to every command but QUIT).
	Greeting *Reply
	// Mail, Rcpt and Data, when set, answer every MAIL, every RCPT and
	// every final dot.
	Mail, Rcpt, Data *Reply
	// RcptReplies answers RCPT per recipient address (compared without
	// case); it wins over Rcpt.
	RcptReplies map[string]Reply
	// MaxRcpts: answer 452 4.5.3 to recipients past this many in one
	// transaction (0: no limit).
	MaxRcpts int
	// Delay is waited before each reply (slow host).
	Delay time.Duration
	// Hang is where the host stops answering: HangGreeting, HangEHLO,
	// HangMail, HangRcpt or HangDot ("" never hangs). A hang lasts until the
	// client closes the connection or the host is closed.
	Hang string
	// StopReadingAfter, when positive, makes the host stop reading the
	// message after this many octets of DATA and never answer, so the
	// client's writes block. It lasts until the host is closed or HangFor.
	StopReadingAfter int64
	// HangFor bounds a StopReadingAfter stall (0: until Close).
	HangFor time.Duration
	// DropAfterDot: read the whole message, keep it, and close the
	// connection instead of answering the final dot.
	DropAfterDot bool
	// Cert, when set, is offered through STARTTLS (or from the first byte
	// with ImplicitTLS).
	Cert *tls.Certificate
	// BrokenTLS offers STARTTLS but fails every handshake.
	BrokenTLS bool
	// StartTLS, when set, offers STARTTLS and answers it with this reply
	// (a 454, say) instead of starting TLS; the session goes on in plain
	// text.
	StartTLS *Reply
	// ImplicitTLS: TLS from the first byte (submissions, port 465); needs Cert.
	ImplicitTLS bool
	// MaxTLSVersion caps the TLS version offered with Cert (0: the newest).
	MaxTLSVersion uint16
	// No8BitMIME, NoSMTPUTF8, NoDSN and NoPipelining leave those
	// extensions out of the EHLO reply. No8BitMIME and NoPipelining cannot
	// be combined with STARTTLS.
	No8BitMIME, NoSMTPUTF8, NoDSN, NoPipelining bool
	// MaxSizeBytes is advertised with SIZE and enforced (0: no limit).
	MaxSizeBytes int64
	// Auth, when set, requires AUTH PLAIN or LOGIN with one of these
	// user → password pairs before MAIL. AUTH is offered only under TLS
	// unless AllowInsecureAuth.
	Auth              map[string]string
	AllowInsecureAuth bool
	// AuthMechs are the mechanisms offered with Auth (default PLAIN and
	// LOGIN); others are refused as unknown.
	AuthMechs []string
	// Domain is the host's name in its greeting (default "peer.test").
	Domain string
	// ReverseName, when set, is asked for the client address's name (its
	// reverse DNS) for the Received field of messages kept in the Mailbox,
	// which then reads "from EHLO (NAME [IP])" as Postfix writes it, with
	// "unknown" for "". Unset, the field has the address only.
	ReverseName func(ip string) string
}

func (b Behaviour) check() error {
	switch b.Hang {
	case "", HangGreeting, HangEHLO, HangMail, HangRcpt, HangDot:
	default:
		return fmt.Errorf("unknown hang phase %q", b.Hang)
	}
	if b.ImplicitTLS && b.Cert == nil {
		return errors.New("implicit TLS needs a certificate")
	}
	if (b.No8BitMIME || b.NoPipelining) && (b.Cert != nil || b.BrokenTLS) && !b.ImplicitTLS {
		return errors.New("no 8BITMIME or PIPELINING cannot be combined with STARTTLS")
	}
	return nil
}

// Host is one scripted SMTP host.
type Host struct {
	addr string
	srv  *smtp.Server
	ln   net.Listener
	done chan struct{}
	wg   sync.WaitGroup

	mu       sync.Mutex
	b        Behaviour
	conns    int
	sessions []*Session
	mailbox  []Message
	nextID   int
	changed  chan struct{}
	closed   bool
	box      *Mailbox // also receives what is kept, for POP3
	open     map[*conn]struct{}
}

// Listen starts a host on addr ("127.0.0.2:2525", or port 0 for any). With
// Behaviour.Refuse nothing listens and Addr returns addr as given.
func Listen(addr string, b Behaviour) (*Host, error) {
	if err := b.check(); err != nil {
		return nil, fmt.Errorf("smtp peer %s: %w", addr, err)
	}
	h := &Host{addr: addr, b: b, done: make(chan struct{}), changed: make(chan struct{}), open: make(map[*conn]struct{})}
	if b.Refuse {
		return h, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("smtp peer: %w", err)
	}
	h.addr = ln.Addr().String()
	h.ln = &listener{Listener: ln, h: h}
	h.srv = h.newServer(b)
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		_ = h.srv.Serve(h.ln) // returns when Close closes the listener
	}()
	return h, nil
}

func (h *Host) newServer(b Behaviour) *smtp.Server {
	srv := smtp.NewServer(backend{h})
	srv.Domain = b.Domain
	if srv.Domain == "" {
		srv.Domain = "peer.test"
	}
	srv.ErrorLog = log.New(io.Discard, "", 0)
	srv.EnableSMTPUTF8 = !b.NoSMTPUTF8
	srv.EnableDSN = !b.NoDSN
	srv.MaxMessageBytes = b.MaxSizeBytes
	srv.MaxRecipients = b.MaxRcpts
	srv.AllowInsecureAuth = b.AllowInsecureAuth
	switch {
	case b.BrokenTLS, b.StartTLS != nil && b.Cert == nil:
		srv.TLSConfig = &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return nil, errors.New("scripted handshake failure")
		}}
	case b.Cert != nil && !b.ImplicitTLS:
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*b.Cert}, MinVersion: tls.VersionTLS10, MaxVersion: b.MaxTLSVersion}
	}
	return srv
}

// Addr is the address the host listens on, "ip:port".
func (h *Host) Addr() string { return h.addr }

// Port is the port of Addr.
func (h *Host) Port() string {
	_, p, _ := net.SplitHostPort(h.addr)
	return p
}

// SetBehaviour changes the script: replies to MAIL, RCPT and DATA follow it
// at once, even on open connections; the rest applies to new connections.
// Refuse, Cert, ImplicitTLS and the advertised extensions stay as the host
// started.
func (h *Host) SetBehaviour(b Behaviour) error {
	if err := b.check(); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.b = b
	return nil
}

func (h *Host) behaviour() Behaviour {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.b
}

// Close stops the host: the listener and every connection close, and
// every hang ends.
func (h *Host) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	h.mu.Unlock()
	close(h.done)
	var err error
	if h.srv != nil {
		err = h.srv.Close()
		// go-smtp closes only the listeners Serve has registered: one
		// closed before its goroutine got that far would block it forever.
		_ = h.ln.Close() // closed already, as a rule
	}
	h.mu.Lock()
	for c := range h.open { // connections go-smtp never saw (scripted greetings)
		_ = c.Conn.Close()
	}
	h.mu.Unlock()
	h.wg.Wait()
	return err
}

// Connections is the number of connections accepted so far.
func (h *Host) Connections() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.conns
}

// Sessions returns a copy of every connection's record, in accept order.
func (h *Host) Sessions() []Session {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]Session, len(h.sessions))
	for i, s := range h.sessions {
		out[i] = s.copy()
	}
	return out
}

// Messages returns a copy of the mailbox: every message the host accepted
// (and kept), oldest first.
func (h *Host) Messages() []Message {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Message(nil), h.mailbox...)
}

// Delete removes message id from the mailbox; it reports whether it was there.
func (h *Host) Delete(id int) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, m := range h.mailbox {
		if m.ID == id {
			h.mailbox = append(h.mailbox[:i], h.mailbox[i+1:]...)
			h.notifyLocked()
			return true
		}
	}
	return false
}

// Changed returns a channel closed at the next change: a connection, a
// command recorded, a message kept or deleted. Wait on it, then look again.
func (h *Host) Changed() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.changed
}

func (h *Host) notifyLocked() {
	close(h.changed)
	h.changed = make(chan struct{})
}

// update runs f on the host's records under its lock and announces it.
func (h *Host) update(f func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f()
	h.notifyLocked()
}

// SetMailbox makes the host also append every message it keeps to mb,
// with Return-Path and Received fields in front, so the lab can serve it
// over POP3 and `mta trace` can read its hop.
func (h *Host) SetMailbox(mb *Mailbox) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.box = mb
}

func (h *Host) keep(m Message, remote string) {
	var box *Mailbox
	var domain string
	var rdns func(string) string
	h.update(func() {
		h.nextID++
		m.ID = h.nextID
		h.mailbox = append(h.mailbox, m)
		box, domain, rdns = h.box, h.b.Domain, h.b.ReverseName
	})
	if box == nil {
		return
	}
	if domain == "" {
		domain = "peer.test"
	}
	with := "ESMTP"
	if m.TLS {
		with = "ESMTPS"
	}
	ip, _, _ := net.SplitHostPort(remote)
	seen := "[" + ip + "]"
	if rdns != nil {
		name := rdns(ip)
		if name == "" {
			name = "unknown"
		}
		seen = name + " " + seen
	}
	// RFC 5321 §4.4 gives "for" one path: like Postfix, name the recipient
	// only when there is one.
	rcpt := ""
	if len(m.To) == 1 {
		rcpt = "\r\n\tfor <" + m.To[0] + ">"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Return-Path: <%s>\r\n", m.From)
	fmt.Fprintf(&b, "Received: from %s (%s)\r\n\tby %s with %s id %d%s; %s\r\n",
		m.EHLO, seen, domain, with, m.ID, rcpt, m.Received.Format(time.RFC1123Z))
	box.Append(append([]byte(b.String()), m.Data...))
}

// listener counts and records every connection and handles the scripted
// greetings go-smtp cannot give (refusal, hang) before it sees them.
type listener struct {
	net.Listener
	h *Host
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		b := l.h.behaviour()
		rec := &Session{Remote: c.RemoteAddr().String()}
		pc := &conn{Conn: c, h: l.h, rec: rec, b: b, cmds: commandLog{off: b.ImplicitTLS, tail: []byte("\r\n")}}
		closed := false
		l.h.update(func() {
			l.h.conns++
			l.h.sessions = append(l.h.sessions, rec)
			l.h.open[pc] = struct{}{}
			closed = l.h.closed
		})
		if closed {
			_ = c.Close()
			return nil, net.ErrClosed
		}
		switch {
		case b.Greeting != nil:
			l.h.goRoot(func() { pc.refuse(*b.Greeting) })
			continue
		case b.Hang == HangGreeting:
			l.h.goRoot(func() { pc.hang(nil); _ = pc.Close() })
			continue
		case b.ImplicitTLS:
			return tls.Server(pc, &tls.Config{Certificates: []tls.Certificate{*b.Cert}, MaxVersion: b.MaxTLSVersion}), nil
		}
		return pc, nil
	}
}

func (h *Host) goRoot(f func()) {
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		f()
	}()
}

// conn is one accepted connection: it slows replies down, hides 8BITMIME
// when asked, and can hang.
type conn struct {
	net.Conn
	h   *Host
	rec *Session
	b   Behaviour

	mu       sync.Mutex
	readLast bool // the last operation was a read: the next write is a reply
	midReply bool // the last write ended in a continuation line ("250-...")
	cmds     commandLog
}

func (c *conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	// A STARTTLS to refuse never reaches go-smtp, which would start TLS.
	for c.b.StartTLS != nil && n > 0 && strings.EqualFold(strings.TrimRight(string(p[:n]), "\r\n"), "STARTTLS") {
		c.h.update(func() {
			c.rec.Commands = append(c.rec.Commands, Command{Line: strings.TrimRight(string(p[:n]), "\r\n")})
		})
		if _, err := c.Conn.Write([]byte(c.b.StartTLS.line())); err != nil {
			return 0, err
		}
		n, err = c.Conn.Read(p)
	}
	c.mu.Lock()
	c.readLast = true
	c.mu.Unlock()
	if n > 0 {
		c.h.update(func() { c.cmds.read(p[:n], c.rec) })
	}
	return n, err
}

func (c *conn) Write(p []byte) (int, error) {
	start := c.replyStart(p)
	if strings.HasPrefix(string(p), "354 ") {
		c.h.update(func() { c.cmds.inData = true })
	}
	if c.b.NoPipelining && string(p) == "250-PIPELINING\r\n" {
		return len(p), nil
	}
	if c.b.Delay > 0 && start {
		select {
		case <-time.After(c.b.Delay):
		case <-c.h.done:
		}
	}
	if c.b.No8BitMIME && string(p) == "250-8BITMIME\r\n" {
		return len(p), nil // go-smtp writes each EHLO line on its own
	}
	return c.Conn.Write(p)
}

// replyStart reports whether p begins a reply, for Delay: go-smtp writes
// each reply line on its own, so a plain-text write begins a reply unless
// the write before it ended in a continuation line ("250-8BITMIME"). That
// holds for pipelined commands too, whose replies all follow one read.
// Under TLS the lines cannot be seen: the first write after a read counts.
func (c *conn) replyStart(p []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	afterRead := c.readLast
	c.readLast = false
	last, ok := lastReplyLine(p)
	if !ok {
		return afterRead
	}
	start := !c.midReply
	c.midReply = last[3] == '-'
	return start
}

// lastReplyLine is the last line of p when p is whole reply lines
// ("250-a\r\n250 b\r\n"); false when p is anything else (TLS records).
func lastReplyLine(p []byte) ([]byte, bool) {
	body, ok := bytes.CutSuffix(p, []byte("\r\n"))
	if !ok {
		return nil, false
	}
	last := body[bytes.LastIndexByte(body, '\n')+1:]
	if len(last) < 4 || !isDecimal(string(last[:3])) || (last[3] != ' ' && last[3] != '-') || !isDecimal(string(p[:min(3, len(p))])) {
		return nil, false
	}
	return last, true
}

// commandLog records the command lines a connection reads into its
// Session, with the read that brought each: commands pipelined in one
// write arrive in one read. Message data (from a 354 reply to the final
// dot) is skipped, and nothing is recorded once TLS starts.
type commandLog struct {
	reads  int
	line   []byte
	inData bool
	tail   []byte // the last octets of data, to find the final dot across reads
	off    bool
}

func (l *commandLog) read(p []byte, rec *Session) {
	if l.off {
		return
	}
	l.reads++
	for len(p) > 0 {
		if l.inData {
			buf := append(l.tail, p...)
			i := bytes.Index(buf, []byte("\r\n.\r\n"))
			if i < 0 {
				l.tail = append([]byte(nil), buf[max(0, len(buf)-4):]...)
				return
			}
			p = buf[i+5:]
			l.inData, l.tail = false, []byte("\r\n")
			continue
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			l.line = append(l.line, p...)
			return
		}
		line := strings.TrimRight(string(append(l.line, p[:i]...)), "\r")
		l.line, p = l.line[:0], p[i+1:]
		rec.Commands = append(rec.Commands, Command{Line: line, Read: l.reads})
		if strings.EqualFold(line, "STARTTLS") {
			l.off = true
			return
		}
	}
}

func (c *conn) Close() error {
	c.h.mu.Lock()
	delete(c.h.open, c)
	c.h.mu.Unlock()
	return c.Conn.Close()
}

// refuse sends a scripted greeting: 421 closes, another code answers 503 to
// everything but QUIT, as RFC 5321 §3.1 has it.
func (c *conn) refuse(r Reply) {
	defer c.Close()
	if _, err := c.Write([]byte(r.line())); err != nil || r.Code == 421 {
		return
	}
	buf := make([]byte, 0, 512)
	one := make([]byte, 1)
	for len(buf) < 4096 {
		_ = c.SetReadDeadline(time.Now().Add(time.Minute))
		if _, err := c.Conn.Read(one); err != nil {
			return
		}
		buf = append(buf, one[0])
		if one[0] != '\n' {
			continue
		}
		line := strings.ToUpper(strings.TrimSpace(string(buf)))
		buf = buf[:0]
		if strings.HasPrefix(line, "QUIT") {
			_, _ = c.Write([]byte("221 2.0.0 bye\r\n"))
			return
		}
		if _, err := c.Write([]byte("503 5.5.1 no service\r\n")); err != nil {
			return
		}
	}
}

// hang never answers: it discards what the client sends until the client
// closes, the host closes, or stop is closed.
func (c *conn) hang(stop <-chan struct{}) {
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		_, _ = io.Copy(io.Discard, c.Conn)
	}()
	select {
	case <-gone:
	case <-c.h.done:
	case <-stop:
	}
}

// stall never reads nor answers: the client's writes fill the socket
// buffers and block.
func (c *conn) stall(stop <-chan struct{}) {
	var limit <-chan time.Time
	if c.b.HangFor > 0 {
		t := time.NewTimer(c.b.HangFor)
		defer t.Stop()
		limit = t.C
	}
	select {
	case <-c.h.done:
	case <-stop:
	case <-limit:
	}
}
