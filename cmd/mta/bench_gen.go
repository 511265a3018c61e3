package main

// The generator: the benchmark's SMTP client, in the manner of Postfix's
// smtp-source. It is deliberately lean (one buffered connection, replies
// parsed by hand, bodies prepared once) so that on a small machine the
// CPU goes to the MTA being measured.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// genOptions say what the generator sends.
type genOptions struct {
	Target     string // host:port of the MTA
	Messages   int    // how many messages in all
	FirstSeq   int    // seq of the first message (ledger numbering)
	Sessions   int    // concurrent connections
	PerSession int    // messages per connection before QUIT
	Rcpts      int    // recipients per message
	SizeBytes  int    // approximate size of each message
	Domains    []string
	Helo       string
	From       string
	// StopOnError ends a session at its first connection error instead of
	// dialling again (used while the daemon is being killed).
	StopOnError bool
	// IOTimeout bounds the greeting and EHLO, and each transaction
	// (default 2 minutes).
	IOTimeout time.Duration
}

// genResult is what happened to the messages the generator tried.
type genResult struct {
	Tried     int
	Accepted  int
	Replies   map[string]int // refusals by reply code and enhanced code ("452 4.3.1")
	Errors    int            // messages lost to a connection error
	FirstErr  string
	Start     time.Time
	End       time.Time
	Latencies []time.Duration // transaction start → 250, accepted messages
}

// generate sends opts.Messages messages over opts.Sessions connections and
// records each 250 in led. It returns when every message has been tried or
// ctx ends.
func generate(ctx context.Context, opts genOptions, led *ledger) genResult {
	if opts.IOTimeout <= 0 {
		opts.IOTimeout = 2 * time.Minute
	}
	g := &generator{opts: opts, led: led, filler: bodyFiller(opts.SizeBytes)}
	res := genResult{Replies: map[string]int{}, Start: time.Now()}
	var wg sync.WaitGroup
	results := make([]genResult, opts.Sessions)
	for i := range opts.Sessions {
		wg.Go(func() { results[i] = g.session(ctx) })
	}
	wg.Wait()
	res.End = time.Now()
	for _, r := range results {
		res.Tried += r.Tried
		res.Accepted += r.Accepted
		res.Errors += r.Errors
		res.Latencies = append(res.Latencies, r.Latencies...)
		for c, n := range r.Replies {
			res.Replies[c] += n
		}
		if res.FirstErr == "" {
			res.FirstErr = r.FirstErr
		}
	}
	return res
}

type generator struct {
	opts   genOptions
	led    *ledger
	filler []byte
	next   atomic.Int64
}

// take hands out the next seq, or false when all have been handed out.
func (g *generator) take() (int, bool) {
	n := int(g.next.Add(1)) - 1
	return g.opts.FirstSeq + n, n < g.opts.Messages
}

// session is one concurrent client: connections one after the other until
// the messages run out.
func (g *generator) session(ctx context.Context) genResult {
	r := genResult{Replies: map[string]int{}}
	// One pair of buffers for all of the session's connections.
	c := &genConn{rd: bufio.NewReaderSize(nil, 4096), wr: bufio.NewWriterSize(nil, 8<<10), timeout: g.opts.IOTimeout}
	for ctx.Err() == nil {
		seq, ok := g.take()
		if !ok {
			return r
		}
		if err := g.connection(ctx, c, seq, &r); err != nil {
			r.Errors++
			if r.FirstErr == "" {
				r.FirstErr = err.Error()
			}
			if g.opts.StopOnError {
				return r
			}
		}
	}
	return r
}

// connection delivers up to PerSession messages, the first being seq, on
// one connection. An error is returned for the message it interrupted.
func (g *generator) connection(ctx context.Context, c *genConn, seq int, r *genResult) error {
	start := time.Now()
	// No TCP keepalive: the deadlines bound every exchange,
	// and keepalive would cost four setsockopt calls a message here.
	d := net.Dialer{Timeout: g.opts.IOTimeout, KeepAlive: -1}
	nc, err := d.DialContext(ctx, "tcp", g.opts.Target)
	if err != nil {
		r.Tried++
		return err
	}
	c.nc = nc
	c.rd.Reset(nc)
	c.wr.Reset(nc)
	defer nc.Close()
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Now()) })
	defer stop()
	c.deadline()
	if err := c.greeting(); err != nil {
		r.Tried++
		return err
	}
	if err := c.command(250, "EHLO "+g.opts.Helo); err != nil {
		r.Tried++
		return err
	}
	for i := 0; ; i++ {
		r.Tried++
		code, text, err := g.transaction(c, seq)
		switch {
		case err != nil:
			return err
		case code == 250:
			now := time.Now()
			r.Accepted++
			r.Latencies = append(r.Latencies, now.Sub(start))
			g.led.accept(seq, now)
		default:
			r.Replies[text]++
			if code == 421 {
				return nil
			}
		}
		if i+1 >= g.opts.PerSession {
			break
		}
		var ok bool
		if seq, ok = g.take(); !ok {
			break
		}
		start = time.Now()
	}
	_ = c.command(221, "QUIT") // the messages are decided; a lost QUIT changes nothing
	return nil
}

// transaction sends message seq and returns the final reply, code and
// text ("452 4.3.1"): 250 or the refusal of MAIL, RCPT (when no recipient
// was taken), DATA or the dot.
func (g *generator) transaction(c *genConn, seq int) (int, string, error) {
	c.deadline() // one deadline for the whole transaction: setting one costs a timer update
	if code, text, err := c.commandReply("MAIL FROM:<" + g.opts.From + ">"); err != nil || code != 250 {
		return code, text, err
	}
	rcpts := g.rcpts(seq)
	took := 0
	var lastCode int
	var lastText string
	for _, a := range rcpts {
		code, text, err := c.commandReply("RCPT TO:<" + a + ">")
		if err != nil {
			return 0, "", err
		}
		lastCode, lastText = code, text
		if code == 250 || code == 251 {
			took++
		}
	}
	if took == 0 {
		_, err := c.commandCode("RSET")
		return lastCode, lastText, err
	}
	if code, text, err := c.commandReply("DATA"); err != nil || code != 354 {
		return code, text, err
	}
	if err := g.writeMessage(c.wr, seq, rcpts); err != nil {
		return 0, "", err
	}
	if err := c.wr.Flush(); err != nil {
		return 0, "", err
	}
	return c.readReply()
}

// rcpts are message seq's recipient addresses: r<k>@<domain>, the domains
// taken in turn so that every domain gets its share.
func (g *generator) rcpts(seq int) []string {
	out := make([]string, g.opts.Rcpts)
	for k := range out {
		d := g.opts.Domains[(seq*g.opts.Rcpts+k)%len(g.opts.Domains)]
		out[k] = "r" + strconv.Itoa(k) + "@" + d
	}
	return out
}

// benchHeader names the message in every copy the sinks receive.
const benchHeader = "X-Bench-Id"

func (g *generator) writeMessage(w *bufio.Writer, seq int, rcpts []string) error {
	fmt.Fprintf(w, "From: Bench <%s>\r\nTo: %s\r\nSubject: bench message %d\r\n", g.opts.From, strings.Join(rcpts, ", "), seq)
	fmt.Fprintf(w, "Date: %s\r\nMessage-ID: <%s.%d@%s>\r\n%s: %s-%d\r\n\r\n",
		time.Now().Format(time.RFC1123Z), g.led.tag, seq, g.opts.Helo, benchHeader, g.led.tag, seq)
	_, _ = w.Write(g.filler)
	_, err := w.WriteString(".\r\n")
	return err
}

// bodyFiller is a body of printable 76-character lines making a message of
// about size bytes with the headers; no line starts with a dot.
func bodyFiller(size int) []byte {
	const line = 78 // 76 characters and CRLF
	n := max(size-300, line) / line
	b := make([]byte, 0, n*line)
	for i := range n {
		for j := range 76 {
			b = append(b, byte('a'+(i+j)%26))
		}
		b = append(b, '\r', '\n')
	}
	return b
}

// genConn is one client connection; its owner sets the deadlines.
type genConn struct {
	nc      net.Conn
	rd      *bufio.Reader
	wr      *bufio.Writer
	timeout time.Duration
}

func (c *genConn) deadline() { _ = c.nc.SetDeadline(time.Now().Add(c.timeout)) }

func (c *genConn) commandCode(line string) (int, error) {
	code, _, err := c.commandReply(line)
	return code, err
}

func (c *genConn) commandReply(line string) (int, string, error) {
	_, _ = c.wr.WriteString(line) // a write error shows at Flush
	_, _ = c.wr.WriteString("\r\n")
	if err := c.wr.Flush(); err != nil {
		return 0, "", err
	}
	return c.readReply()
}

func (c *genConn) command(want int, line string) error {
	code, err := c.commandCode(line)
	if err == nil && code != want {
		err = fmt.Errorf("%s: reply %d", strings.Fields(line)[0], code)
	}
	return err
}

func (c *genConn) greeting() error {
	code, err := c.readCode()
	if err == nil && code != 220 {
		err = fmt.Errorf("greeting: reply %d", code)
	}
	return err
}

var errBadReply = errors.New("malformed reply")

// readCode reads one reply, multi-line or not, and returns its code.
func (c *genConn) readCode() (int, error) {
	code, _, err := c.readReply()
	return code, err
}

// readReply reads one reply and returns its code and "code x.y.z" with the
// enhanced code of its last line, when it has one.
func (c *genConn) readReply() (int, string, error) {
	for {
		line, err := c.rd.ReadSlice('\n')
		if err != nil {
			return 0, "", err
		}
		if len(line) < 4 {
			return 0, "", errBadReply
		}
		code, err := strconv.Atoi(string(line[:3]))
		if err != nil {
			return 0, "", errBadReply
		}
		if line[3] != '-' {
			text := string(line[:3])
			if f := strings.Fields(string(line[4:])); len(f) > 0 && strings.Count(f[0], ".") == 2 {
				text += " " + f[0]
			}
			return code, text, nil
		}
	}
}
