package main

// The sink: MX hosts for the bench domains, in the manner of Postfix's
// smtp-sink. Each host is one loopback address on a port shared by all
// (delivery.port), answers every transaction with 250 after reading it,
// and reports each recipient's arrival with the X-Bench-Id of the
// message. A host can be switched at any time to refuse connections, to
// greet with 421, or to hang, to play an MX that goes away.
//
// It is a lean hand-written server rather than internal/peer's go-smtp
// host: that one keeps every session and message for tests to inspect,
// which at thousands of messages a second costs the CPU the MTA under
// measurement should have.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// sinkMode is how a sink host treats connections.
type sinkMode int32

const (
	sinkAccept   sinkMode = iota // take every message
	sinkRefuse                   // nothing listens: connections are refused
	sinkGreet421                 // greet with 421 and close
	sinkHang                     // accept the connection and never greet
)

func (m sinkMode) String() string {
	return [...]string{"accept", "refuse", "421", "hang"}[m]
}

// sinkOptions configure a set of sink hosts.
type sinkOptions struct {
	IPs   []string // one host per address, e.g. 127.0.0.2, 127.0.0.3
	Port  int      // shared port; 0 picks one free on every address
	Delay time.Duration
	// Arrive is called once per recipient of every message taken, with
	// the message's bench tag and seq and the recipient's index; an
	// unreadable X-Bench-Id or recipient gives seq or k -1.
	Arrive func(tag string, seq, k int, t time.Time)
}

// sinks are running sink hosts.
type sinks struct {
	opts     sinkOptions
	port     int
	hosts    map[string]*sinkHost
	messages atomic.Int64
	conns    atomic.Int64
	gaveUp   atomic.Int64
	wg       sync.WaitGroup
}

// sinkHost is one address of the set.
type sinkHost struct {
	s  *sinks
	ip string

	mu     sync.Mutex
	mode   sinkMode
	ln     net.Listener
	open   map[net.Conn]struct{}
	closed bool
}

// startSinks listens on every address. With Port 0 it retries a few
// times: the port picked on the first address may be taken on another.
func startSinks(opts sinkOptions) (*sinks, error) {
	var lastErr error
	for range 20 {
		s := &sinks{opts: opts, port: opts.Port, hosts: map[string]*sinkHost{}}
		err := s.listenAll()
		if err == nil {
			return s, nil
		}
		s.Close()
		lastErr = err
		if opts.Port != 0 || !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	return nil, fmt.Errorf("sink: %w", lastErr)
}

func (s *sinks) listenAll() error {
	for _, ip := range s.opts.IPs {
		h := &sinkHost{s: s, ip: ip, open: map[net.Conn]struct{}{}}
		s.hosts[ip] = h
		if err := h.listen(); err != nil {
			return err
		}
		if s.port == 0 {
			s.port = h.ln.Addr().(*net.TCPAddr).Port
		}
	}
	return nil
}

// Port is the port every host listens on.
func (s *sinks) Port() int { return s.port }

// Messages is how many messages the hosts have taken.
func (s *sinks) Messages() int64 { return s.messages.Load() }

// Connections is how many connections the hosts have accepted.
func (s *sinks) Connections() int64 { return s.conns.Load() }

// GaveUp is how many connections to a hanging host the client closed
// itself (rather than SetMode or Close ending them).
func (s *sinks) GaveUp() int64 { return s.gaveUp.Load() }

// SetMode switches the host on ip; open connections are closed, as when
// a real host goes away or restarts.
func (s *sinks) SetMode(ip string, m sinkMode) error {
	h, ok := s.hosts[ip]
	if !ok {
		return fmt.Errorf("sink: no host %s", ip)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.mode = m
	h.dropLocked()
	if m != sinkRefuse && !h.closed {
		return h.listenLocked()
	}
	return nil
}

// Close stops every host and waits for their connections to end.
func (s *sinks) Close() {
	for _, h := range s.hosts {
		h.mu.Lock()
		h.closed = true
		h.dropLocked()
		h.mu.Unlock()
	}
	s.wg.Wait()
}

func (h *sinkHost) listen() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.listenLocked()
}

func (h *sinkHost) listenLocked() error {
	if h.ln != nil {
		return nil
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(h.ip, strconv.Itoa(h.s.port)))
	if err != nil {
		return err
	}
	h.ln = ln
	h.s.wg.Go(func() { h.accept(ln) })
	return nil
}

// dropLocked closes the connections and, unless the host keeps
// listening in its new mode, the listener.
func (h *sinkHost) dropLocked() {
	for c := range h.open {
		_ = c.Close() // the session ends with a read error
	}
	if h.ln != nil && (h.mode == sinkRefuse || h.closed) {
		_ = h.ln.Close()
		h.ln = nil
	}
}

func (h *sinkHost) accept(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return // closed
		}
		h.s.conns.Add(1)
		h.mu.Lock()
		if h.closed {
			h.mu.Unlock()
			_ = c.Close()
			continue
		}
		mode := h.mode
		h.open[c] = struct{}{}
		h.mu.Unlock()
		h.s.wg.Go(func() {
			defer h.forget(c)
			h.serve(c, mode)
		})
	}
}

func (h *sinkHost) forget(c net.Conn) {
	h.mu.Lock()
	delete(h.open, c)
	h.mu.Unlock()
	_ = c.Close()
}

func (h *sinkHost) serve(c net.Conn, mode sinkMode) {
	switch mode {
	case sinkGreet421:
		_, _ = io.WriteString(c, "421 4.3.2 sink going away\r\n") // closing anyway
		return
	case sinkHang:
		// Until the client gives up (EOF) or SetMode closes the connection
		// (an error).
		if _, err := io.Copy(io.Discard, c); err == nil {
			h.s.gaveUp.Add(1)
		}
		return
	}
	ss := &sinkSession{h: h, c: c, rd: bufio.NewReaderSize(c, 8192), wr: bufio.NewWriterSize(c, 4096)}
	_ = ss.run() // a session ends with the connection; its error is of no interest
}

// sinkSession is one SMTP session of a sink host.
type sinkSession struct {
	h  *sinkHost
	c  net.Conn
	rd *bufio.Reader
	wr *bufio.Writer
	ks []int // recipients of the transaction, by bench index
}

const sinkIdle = 10 * time.Minute

func (ss *sinkSession) run() error {
	// Replies to pipelined commands wait in wr while more input is
	// buffered; when the client's input ends mid-line they must still go out.
	defer func() { _ = ss.wr.Flush() }() // a write to a gone client fails: nothing to do
	if err := ss.reply("220 sink.bench.test ESMTP\r\n"); err != nil {
		return err
	}
	for {
		_ = ss.c.SetDeadline(time.Now().Add(sinkIdle))
		line, err := ss.readLine()
		if err != nil {
			return err
		}
		verb := string(bytes.ToUpper(line[:min(4, len(line))]))
		switch verb {
		case "EHLO":
			err = ss.reply("250-sink.bench.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 SIZE\r\n")
		case "HELO", "NOOP":
			err = ss.reply("250 2.0.0 Ok\r\n")
		case "MAIL", "RSET":
			ss.ks = ss.ks[:0]
			err = ss.reply("250 2.0.0 Ok\r\n")
		case "RCPT":
			ss.ks = append(ss.ks, rcptIndex(line))
			err = ss.reply("250 2.1.5 Ok\r\n")
		case "DATA":
			err = ss.data()
		case "QUIT":
			_ = ss.reply("221 2.0.0 Bye\r\n")
			return nil
		default:
			err = ss.reply("502 5.5.2 Command not recognized\r\n")
		}
		if err != nil {
			return err
		}
	}
}

// reply writes r after the configured delay, flushing only when the
// client has sent nothing more (pipelined commands share one write).
func (ss *sinkSession) reply(r string) error {
	if d := ss.h.s.opts.Delay; d > 0 {
		time.Sleep(d) // the slow host being played; a closed conn fails the write below
	}
	if _, err := ss.wr.WriteString(r); err != nil {
		return err
	}
	if ss.rd.Buffered() > 0 {
		return nil
	}
	return ss.wr.Flush()
}

// readLine reads one command line without its CRLF; an overlong line is
// an error.
func (ss *sinkSession) readLine() ([]byte, error) {
	line, err := ss.rd.ReadSlice('\n')
	if err != nil {
		return nil, err
	}
	return bytes.TrimRight(line, "\r\n"), nil
}

func (ss *sinkSession) data() error {
	if len(ss.ks) == 0 {
		return ss.reply("503 5.5.1 No recipients\r\n")
	}
	if err := ss.reply("354 End data with <CR><LF>.<CR><LF>\r\n"); err != nil {
		return err
	}
	if err := ss.wr.Flush(); err != nil {
		return err
	}
	tag, seq, err := ss.readMessage()
	if err != nil {
		return err
	}
	now := time.Now()
	ss.h.s.messages.Add(1)
	if f := ss.h.s.opts.Arrive; f != nil {
		for _, k := range ss.ks {
			f(tag, seq, k, now)
		}
	}
	ss.ks = ss.ks[:0]
	return ss.reply("250 2.0.0 Ok: queued\r\n")
}

// readMessage reads DATA up to the final dot and returns the message's
// X-Bench-Id.
func (ss *sinkSession) readMessage() (tag string, seq int, err error) {
	seq = -1
	inHeader, atStart := true, true
	// One deadline for the whole message: one per line cost a timer
	// update for every line the bench sends.
	_ = ss.c.SetReadDeadline(time.Now().Add(sinkIdle))
	for {
		line, err := ss.rd.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			atStart = false // the rest of a long line follows
			continue
		}
		if err != nil {
			return "", -1, err
		}
		if atStart {
			switch {
			case bytes.Equal(line, []byte(".\r\n")) || bytes.Equal(line, []byte(".\n")):
				return tag, seq, nil
			case inHeader && len(bytes.TrimRight(line, "\r\n")) == 0:
				inHeader = false
			case inHeader && len(line) > len(benchHeader)+1 && bytes.EqualFold(line[:len(benchHeader)+1], []byte(benchHeader+":")):
				tag, seq = parseBenchID(bytes.TrimSpace(line[len(benchHeader)+1:]))
			}
		}
		atStart = true
	}
}

// parseBenchID splits "tag-seq".
func parseBenchID(v []byte) (string, int) {
	i := bytes.LastIndexByte(v, '-')
	if i < 0 {
		return "", -1
	}
	n, err := strconv.Atoi(string(v[i+1:]))
	if err != nil {
		return "", -1
	}
	return string(v[:i]), n
}

// rcptIndex reads k from "RCPT TO:<r<k>@domain>", or -1.
func rcptIndex(line []byte) int {
	i := bytes.IndexByte(line, '<')
	if i < 0 || i+2 >= len(line) || (line[i+1] != 'r' && line[i+1] != 'R') {
		return -1
	}
	rest := line[i+2:]
	j := bytes.IndexByte(rest, '@')
	if j < 0 {
		return -1
	}
	k, err := strconv.Atoi(string(rest[:j]))
	if err != nil {
		return -1
	}
	return k
}
