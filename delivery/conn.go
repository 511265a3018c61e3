package delivery

import (
	"context"
	"net"
	"sync"
	"time"
)

// Phase names, as recorded in spool.Attempt.Phase.
const (
	phaseDNS      = "dns"
	phaseDial     = "dial"
	phaseGreeting = "greeting"
	phaseEHLO     = "ehlo"
	phaseStartTLS = "starttls"
	phaseAuth     = "auth"
	phaseMail     = "mail"
	phaseRcpt     = "rcpt"
	phaseData     = "data"
	phaseLocal    = "local"
)

// deadlineConn gives every Read and Write the deadline of the current
// phase. go-smtp's client sets a deadline before each command, clears it
// afterwards and writes the message with none; here its deadlines only
// tighten ours, and a zero one means ours. So a peer that stops answering
// or reading never holds a worker past the phase's timeout.
//
// A phase either has one deadline fixed when it starts (a reply must come
// within the timeout) or, for the message body, a fresh deadline per write
// (each block must go within the timeout).
type deadlineConn struct {
	net.Conn
	stop    func() bool // unregisters the context's close
	onClose func()      // called once, however the connection is closed

	mu     sync.Mutex
	phase  string
	until  time.Time     // fixed deadline of the phase
	perOp  time.Duration // > 0: each operation gets now+perOp instead
	next   *phaseSpec    // phase that starts at the first write
	rd, wd time.Time     // what the caller asked for
	closed bool
}

type phaseSpec struct {
	name    string
	timeout time.Duration
}

// newDeadlineConn wraps c; the connection closes when ctx ends, so a
// shutdown interrupts whatever blocks on it.
func newDeadlineConn(ctx context.Context, c net.Conn) *deadlineConn {
	d := &deadlineConn{Conn: c}
	d.stop = context.AfterFunc(ctx, func() { _ = c.Close() })
	return d
}

// setPhase starts a phase whose reply must come within timeout.
func (c *deadlineConn) setPhase(name string, timeout time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.phase, c.until, c.perOp, c.next = name, time.Now().Add(timeout), 0, nil
}

// setStreamPhase starts a phase where each write must finish within timeout.
func (c *deadlineConn) setStreamPhase(name string, timeout time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.phase, c.until, c.perOp, c.next = name, time.Time{}, timeout, nil
}

// thenOnWrite makes the next phase begin at the first write: the greeting
// is read inside go-smtp's Hello, whose first write is the EHLO.
func (c *deadlineConn) thenOnWrite(name string, timeout time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.next = &phaseSpec{name, timeout}
}

// currentPhase is the phase an error happened in.
func (c *deadlineConn) currentPhase() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.phase
}

func (c *deadlineConn) deadline(asked time.Time, write bool) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if write && c.next != nil {
		c.phase, c.until, c.perOp = c.next.name, time.Now().Add(c.next.timeout), 0
		c.next = nil
	}
	ours := c.until
	if c.perOp > 0 {
		ours = time.Now().Add(c.perOp)
	}
	if ours.IsZero() || (!asked.IsZero() && asked.Before(ours)) {
		return asked
	}
	return ours
}

func (c *deadlineConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	asked := c.rd
	c.mu.Unlock()
	if err := c.Conn.SetReadDeadline(c.deadline(asked, false)); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

func (c *deadlineConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	asked := c.wd
	c.mu.Unlock()
	if err := c.Conn.SetWriteDeadline(c.deadline(asked, true)); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

func (c *deadlineConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rd, c.wd = t, t
	return nil
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rd = t
	return nil
}

func (c *deadlineConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wd = t
	return nil
}

func (c *deadlineConn) Close() error {
	c.shut()
	return nil
}

// shut closes the connection; it reports whether this call closed it.
func (c *deadlineConn) shut() bool {
	c.mu.Lock()
	closed := c.closed
	c.closed = true
	c.mu.Unlock()
	if closed {
		return false
	}
	c.stop()
	_ = c.Conn.Close() // nothing to do about a failed close
	if c.onClose != nil {
		c.onClose()
	}
	return true
}

// preface replays bytes before the connection's own: after our STARTTLS,
// a fresh go-smtp client reads this stand-in greeting and then says EHLO
// over TLS as RFC 3207 §4.2 requires.
type preface struct {
	net.Conn
	mu  sync.Mutex
	pre []byte
}

func (p *preface) Read(b []byte) (int, error) {
	p.mu.Lock()
	if len(p.pre) > 0 {
		n := copy(b, p.pre)
		p.pre = p.pre[n:]
		p.mu.Unlock()
		return n, nil
	}
	p.mu.Unlock()
	return p.Conn.Read(b)
}
