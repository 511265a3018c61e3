package smtpd

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// listener wraps the sockets of one Serve call: it counts connections and
// refuses those past the limits before go-smtp sees them.
type listener struct {
	net.Listener
	srv  *Server
	kind Kind
	// handoff receives the connections that completed STARTTLS; nil when
	// this listener offers no STARTTLS.
	handoff *handoffListener

	closeOnce sync.Once
	closeErr  error
}

// Close closes the socket once; Shutdown and go-smtp both close it.
func (l *listener) Close() error {
	l.closeOnce.Do(func() { l.closeErr = l.Listener.Close() })
	return l.closeErr
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		raw, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if c := l.srv.admit(raw, l); c != nil {
			return c, nil
		}
	}
}

// admit counts raw against the connection limits and wraps it, or writes
// 421 and closes it (returning nil).
func (s *Server) admit(raw net.Conn, l *listener) *conn {
	c := &conn{Conn: raw, raw: raw, srv: s, l: l, kind: l.kind, uid: -1}
	c.in.rcptTo = s.postmaster
	if l.kind == Local {
		uid, err := peerUID(raw)
		if err != nil {
			s.log.Warn("local connection without peer credentials", "err", err)
			_ = raw.Close() // nothing was said yet; the error is logged above
			return nil
		}
		c.uid = uid
	} else if a, ok := raw.RemoteAddr().(*net.TCPAddr); ok {
		c.ip = a.AddrPort().Addr().Unmap()
	}
	lim := s.currentLimits()
	// Trusted clients are not counted per address, so a busy trusted
	// relay cannot use up the share of its untrusted /64 neighbours.
	c.perIP = c.ip.IsValid() && !s.isTrusted(c.ip)
	s.mu.Lock()
	over := s.total >= lim.ConnsTotal ||
		c.perIP && s.perIP[clientBlock(c.ip)] >= lim.ConnsPerIP
	if !over {
		s.total++
		if c.perIP {
			s.perIP[clientBlock(c.ip)]++
		}
		s.conns[c] = struct{}{}
	}
	s.mu.Unlock()
	if over {
		s.refuse(raw, l.kind, c.ip)
		return nil
	}
	s.obs.ConnOpened(l.kind.String())
	c.ptr = s.startPTR(c.ip)
	if l.kind == Submissions {
		c.tls = tls.Server(raw, s.tls)
		c.Conn = c.tls
	}
	return c
}

func (s *Server) refuse(raw net.Conn, kind Kind, ip netip.Addr) {
	s.obs.ConnRefused(kind.String())
	s.log.Debug("connection refused: too many connections", "ip", ip.String(), "listener", kind.String())
	if kind != Submissions { // a TLS client could not read a plaintext reply
		_ = raw.SetWriteDeadline(time.Now().Add(time.Second)) // best effort: the socket is closed next
		_, _ = io.WriteString(raw, lineTooManyConns)          // best effort, as above
	}
	_ = raw.Close() // nothing more to tell anyone
}

// release gives back c's connection slot.
func (s *Server) release(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.total--
	if c.perIP {
		if b := clientBlock(c.ip); s.perIP[b] <= 1 {
			delete(s.perIP, b)
		} else {
			s.perIP[b]--
		}
	}
	s.mu.Unlock()
	s.obs.ConnClosed(c.kind.String())
}

// upgrade hands the socket of old, whose client was told to start TLS, to
// the listener's STARTTLS server as a new TLS connection. It keeps old's
// connection slot.
func (s *Server) upgrade(old *conn) {
	n := &conn{raw: old.raw, srv: s, l: old.l, kind: old.kind, ip: old.ip, perIP: old.perIP, uid: old.uid, ptr: old.ptr}
	n.in.rcptTo = s.postmaster
	n.tls = tls.Server(old.raw, s.tls)
	n.Conn = n.tls
	n.skipGreeting = true
	s.mu.Lock()
	delete(s.conns, old)
	s.conns[n] = struct{}{}
	s.mu.Unlock()
	if !old.l.handoff.deliver(n) {
		_ = n.Close() // shutting down: the STARTTLS server is gone
	}
}

// conn is the net.Conn go-smtp reads and writes. It does the TLS (so the
// reply filter below sees plaintext also after STARTTLS), filters replies,
// keeps read errors sticky and sets the deadlines of the DATA phase.
//
// It also batches replies. go-smtp writes every reply line with its own
// Write; conn keeps them and sends what it has with one write when the
// session is about to wait for the client (Read: go-smtp's bufio reader
// calls it only once the pipelined input it holds is used up, RFC 2920
// §3.2) and in Close, before the socket is closed or handed to STARTTLS.
// Between writing a reply and its next read or Close, go-smtp waits on
// nothing but the hooks of commands the client has already sent (a
// bcrypt check, the spool's commit), so no reply is held back from a
// client waiting for it. Each send has the write timeout, so a client
// that stops reading cannot hold the session.
type conn struct {
	net.Conn // raw, or TLS over raw
	raw      net.Conn
	srv      *Server
	l        *listener
	kind     Kind
	ip       netip.Addr // invalid on the local socket
	perIP    bool       // counted in Server.perIP (not trusted, not local)
	uid      int        // peer uid on the local socket, else -1
	ptr      *ptrLookup

	tls    *tls.Conn // non-nil when the session runs in TLS
	hsOnce sync.Once
	hsErr  error

	// Used only by the goroutine go-smtp serves this connection on.
	in           inputScanner // rewrites RCPT TO:<postmaster> (input.go)
	inPending    []byte       // scanned input go-smtp has not read yet
	sent354      bool         // a 354 went out since the last read
	sent334      bool         // a 334 went out since the last read
	readErr      error        // sticky: after one failed read, every read fails
	dataUntil    time.Time    // during DATA: the overall cap, else zero
	midLine      bool         // the last write did not end a line
	skipGreeting bool         // swallow go-smtp's greeting after STARTTLS
	esmtp        bool         // the client said EHLO, not HELO

	killed      atomic.Bool // a hook panicked: end the connection
	killWritten bool        // the reply after the panic went out; drop the rest

	// The replies not sent yet. A forced Shutdown closes the connection
	// from another goroutine, hence the mutex.
	wmu     sync.Mutex
	pending []byte
	wErr    error       // sticky: after a failed send nothing more goes out
	aborted atomic.Bool // a forced Shutdown: send nothing more

	mu      sync.Mutex // guards what Shutdown and Close touch
	handoff bool       // STARTTLS was accepted; go-smtp's session on this is over
	closed  bool
	sess    *session
}

func (c *conn) Read(p []byte) (int, error) {
	if len(c.inPending) > 0 {
		n := copy(p, c.inPending)
		c.inPending = c.inPending[n:]
		return n, nil
	}
	if c.readErr != nil {
		return 0, c.readErr
	}
	// The session is about to wait for the client: the client may be
	// waiting for these replies.
	if err := c.flush(); err != nil {
		c.readErr = err
		return 0, err
	}
	if c.handedOff() || c.killed.Load() {
		c.readErr = io.EOF
		return 0, io.EOF
	}
	if err := c.handshake(); err != nil {
		c.readErr = err
		return 0, err
	}
	if !c.dataUntil.IsZero() {
		d := time.Now().Add(c.srv.timeouts.DataIdle)
		if d.After(c.dataUntil) {
			d = c.dataUntil
		}
		if err := c.Conn.SetReadDeadline(d); err != nil {
			c.readErr = err
			return 0, err
		}
	}
	// After any deadline set above, as in flushLocked: that deadline
	// must not outlast abort's.
	if c.aborted.Load() {
		c.readErr = net.ErrClosed
		return 0, c.readErr
	}
	// go-smtp reads again only once it has taken in all it was given, so
	// the answer to a DATA or AUTH line the scanner held back at is known
	// now.
	sent354, sent334 := c.sent354, c.sent334
	c.sent354, c.sent334 = false, false
	if c.in.waiting() {
		if n := c.pass(p, c.in.resolve(sent354, sent334)); n > 0 {
			return n, nil
		}
	}
	for {
		n, err := c.Conn.Read(p)
		var out []byte
		same := true
		if n > 0 {
			out, same = c.in.feed(p[:n])
		}
		if err != nil {
			// The input ends (a TLS read may bring the last data with
			// the error): what is held goes on as it came.
			c.readErr = err
			if held := c.in.flushHeld(); len(held) > 0 {
				out, same = append(out, held...), false
			}
		}
		if same {
			return n, err
		}
		if m := c.pass(p, out); m > 0 {
			return m, nil // the error, if any, after the rest
		}
		if err != nil {
			return 0, err
		}
	}
}

// pass gives go-smtp what the input scanner let through, keeping what
// does not fit in p for the next Read.
func (c *conn) pass(p, out []byte) int {
	n := copy(p, out)
	c.inPending = out[n:]
	return n
}

// maxPendingBytes bounds the replies held back: past it they are sent at
// once. Pipelined input in go-smtp's 4 KiB buffer stays well under it.
const maxPendingBytes = 32 << 10

// Write takes one reply line from go-smtp (it writes whole lines, each
// with one Write) and keeps it until the next flush.
func (c *conn) Write(p []byte) (int, error) {
	if c.killed.Load() {
		// After a panic only the hook's 421 goes out; go-smtp may still
		// answer commands it had buffered, and the client must not read
		// those answers as if the session went on.
		if c.killWritten {
			return len(p), nil
		}
		c.killWritten = true
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wErr != nil {
		return 0, c.wErr
	}
	c.pending = c.filter(c.pending, p)
	if len(c.pending) >= maxPendingBytes {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// flush sends the pending replies.
func (c *conn) flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.flushLocked()
}

func (c *conn) flushLocked() error {
	if c.wErr != nil || len(c.pending) == 0 {
		return c.wErr
	}
	if err := c.handshake(); err != nil {
		c.wErr = err
		return err
	}
	if err := c.Conn.SetWriteDeadline(time.Now().Add(c.srv.timeouts.Command)); err != nil {
		c.wErr = err
		return err
	}
	// Checked after the deadline is set: abort sets its deadline after
	// marking, so either this sees the mark or abort's deadline wins.
	if c.aborted.Load() {
		c.wErr = net.ErrClosed
		return c.wErr
	}
	_, err := c.Conn.Write(c.pending)
	c.pending = c.pending[:0]
	if err != nil {
		c.wErr = err
	}
	return err
}

// SetWriteDeadline does nothing: go-smtp sets one before each reply, but
// here a reply is only kept; flush sets the deadline of each send.
func (c *conn) SetWriteDeadline(time.Time) error { return nil }

// abort makes the connection fail its next read or write, and one blocked
// now, its pending replies unsent (a forced Shutdown).
func (c *conn) abort() {
	c.aborted.Store(true)
	_ = c.raw.SetDeadline(time.Now()) // a closed connection needs no interrupt
}

// SetReadDeadline is called by go-smtp before each command line: the DATA
// phase, if any, is over. While shutting down, a session outside a
// transaction gets a deadline in the past, so go-smtp says 421 and ends.
func (c *conn) SetReadDeadline(t time.Time) error {
	c.dataUntil = time.Time{}
	if c.srv.closing.Load() && !c.inTransaction() {
		t = time.Now()
	}
	return c.Conn.SetReadDeadline(t)
}

// Close sends the pending replies (QUIT's 221, a 421, STARTTLS's 220),
// then closes the socket or hands it to the STARTTLS server.
func (c *conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	handoff := c.handoff
	c.mu.Unlock()
	c.wmu.Lock()
	unsent := len(c.pending) > 0
	err := c.flushLocked()
	if c.wErr == nil {
		c.wErr = net.ErrClosed
	}
	c.pending = nil
	c.wmu.Unlock()
	if unsent && err != nil {
		c.srv.log.Debug("last replies not sent", "ip", c.ip.String(), "listener", c.kind.String(), "err", err)
	}
	if handoff && err == nil { // without its 220 the client starts no TLS
		c.srv.upgrade(c)
		return nil
	}
	c.srv.release(c)
	return c.Conn.Close()
}

// beginData starts the DATA phase: reads get the idle deadline, capped at
// until.
func (c *conn) beginData(until time.Time) { c.dataUntil = until }

func (c *conn) handshake() error {
	if c.tls == nil {
		return nil
	}
	c.hsOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), c.srv.timeouts.TLSHandshake)
		defer cancel()
		c.hsErr = c.tls.HandshakeContext(ctx)
		if c.hsErr != nil {
			c.srv.log.Debug("TLS handshake failed", "ip", c.ip.String(), "listener", c.kind.String(), "err", c.hsErr)
		}
	})
	return c.hsErr
}

func (c *conn) isTLS() bool { return c.tls != nil }

// unusable: the session on this connection must not take commands any
// more (STARTTLS handed it over, or a hook panicked).
func (c *conn) unusable() bool { return c.killed.Load() || c.handedOff() }

func (c *conn) handedOff() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.handoff
}

func (c *conn) setSession(s *session) {
	c.mu.Lock()
	c.sess = s
	c.mu.Unlock()
}

func (c *conn) inTransaction() bool {
	c.mu.Lock()
	s := c.sess
	c.mu.Unlock()
	return s != nil && s.tx.Load()
}

// interruptIfIdle makes a session outside a transaction stop waiting for
// its next command (Shutdown).
func (c *conn) interruptIfIdle() {
	if !c.inTransaction() {
		// raw, not Conn: admit may still be setting Conn to TLS.
		_ = c.raw.SetReadDeadline(time.Now()) // a closed connection needs no interrupt
	}
}

// offersSTARTTLS: this connection is plaintext on a listener with STARTTLS.
func (c *conn) offersSTARTTLS() bool { return c.tls == nil && c.l.handoff != nil }

// filter rewrites go-smtp's replies line by line (go-smtp writes whole
// lines, each with one Write). It appends what goes to the client to dst.
func (c *conn) filter(dst, p []byte) []byte {
	if c.handedOff() {
		return dst
	}
	for rest := p; len(rest) > 0; {
		line := rest
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line = rest[:i+1]
		}
		rest = rest[len(line):]
		start := !c.midLine
		c.midLine = line[len(line)-1] != '\n'
		if start {
			line = c.rewrite(line)
		}
		dst = append(dst, line...)
	}
	return dst
}

var (
	replyChunking  = []byte("250-CHUNKING\r\n")
	replyStartTLS  = []byte("250-STARTTLS\r\n")
	replySize      = []byte("250 SIZE\r\n")
	replyHELO      = []byte("250 2.0.0 Hello ")
	reply354       = []byte("354 ")
	reply334       = []byte("334 ")
	replyNoTLS     = []byte("502 5.5.1 TLS not supported\r\n")
	replyIdle      = []byte("421 4.4.2 Idle timeout, bye bye\r\n")
	replyGreeting  = []byte("220 ")
	lineStartTLSb  = []byte(lineStartTLS)
	lineShutdownb  = []byte(lineShutdown)
	replyCodeDigit = func(b byte) bool { return b >= '0' && b <= '9' }
)

// rewrite returns the line to send instead of line (nil drops it).
func (c *conn) rewrite(line []byte) []byte {
	switch {
	case c.skipGreeting && bytes.HasPrefix(line, replyGreeting):
		c.skipGreeting = false
		return nil
	case bytes.Equal(line, replyChunking):
		// CHUNKING is never offered; its place in the EHLO reply (never
		// the last line) is where STARTTLS goes when offered.
		c.esmtp = true
		if c.offersSTARTTLS() {
			return replyStartTLS
		}
		return nil
	case bytes.HasPrefix(line, replyHELO):
		c.esmtp = false
	case bytes.HasPrefix(line, reply354):
		c.sent354 = true
	case bytes.HasPrefix(line, reply334):
		c.sent334 = true
	case bytes.Equal(line, replySize):
		line = strconv.AppendInt([]byte("250 SIZE "), c.srv.currentLimits().MaxMessageBytes, 10)
		line = append(line, '\r', '\n')
	case bytes.Equal(line, replyNoTLS) && c.offersSTARTTLS():
		c.mu.Lock()
		c.handoff = true
		c.mu.Unlock()
		line = lineStartTLSb
	case bytes.Equal(line, replyIdle) && c.srv.closing.Load():
		line = lineShutdownb
	}
	if len(line) >= 4 && line[3] == ' ' && replyCodeDigit(line[0]) && replyCodeDigit(line[1]) && replyCodeDigit(line[2]) {
		c.srv.obs.Reply(c.kind.String(), int(line[0]-'0')*100+int(line[1]-'0')*10+int(line[2]-'0'))
	}
	return line
}

// handoffListener is the listener of a STARTTLS server: it yields the
// connections that upgrade hands over.
type handoffListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	addr net.Addr
}

func newHandoffListener(addr net.Addr) *handoffListener {
	return &handoffListener{ch: make(chan net.Conn), done: make(chan struct{}), addr: addr}
}

func (h *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-h.ch:
		return c, nil
	case <-h.done:
		return nil, net.ErrClosed
	}
}

func (h *handoffListener) Close() error {
	h.once.Do(func() { close(h.done) })
	return nil
}

func (h *handoffListener) Addr() net.Addr { return h.addr }

func (h *handoffListener) deliver(c net.Conn) bool {
	select {
	case h.ch <- c:
		return true
	case <-h.done:
		return false
	}
}

// ptrLookup is the client's PTR name, looked up once per connection while
// the client talks.
type ptrLookup struct {
	done chan struct{}
	name string
}

const ptrTimeout = 2 * time.Second

func (s *Server) startPTR(ip netip.Addr) *ptrLookup {
	p := &ptrLookup{done: make(chan struct{}), name: "unknown"}
	if s.cfg.LookupPTR == nil || !ip.IsValid() {
		close(p.done)
		return p
	}
	if s.cfg.CachedPTR != nil {
		if name, ok := s.cfg.CachedPTR(ip); ok {
			if name != "" {
				p.name = sanitizeToken(name)
			}
			close(p.done)
			return p
		}
	}
	go func() {
		defer close(p.done)
		defer func() {
			if r := recover(); r != nil {
				s.log.Error("panic in LookupPTR", "panic", r, "ip", ip.String())
				s.obs.Panicked("ptr")
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), ptrTimeout)
		defer cancel()
		if name, err := s.cfg.LookupPTR(ctx, ip); err == nil && name != "" {
			p.name = sanitizeToken(name)
		}
	}()
	return p
}

// wait returns the name, or "unknown" when the lookup is still running
// after its timeout.
func (p *ptrLookup) wait() string {
	select {
	case <-p.done: // usually: the lookup ran while the client talked
		return p.name
	default:
	}
	t := time.NewTimer(ptrTimeout)
	defer t.Stop()
	select {
	case <-p.done:
		return p.name
	case <-t.C:
		return "unknown"
	}
}
