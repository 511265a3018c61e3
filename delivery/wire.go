package delivery

// The wire: a session's SMTP conversation once go-smtp's client has taken
// it through the greeting, EHLO, STARTTLS and AUTH. go-smtp has no
// pipelining (RFC 2920), and its Reset makes the next command say EHLO
// again, so transactions and QUIT are spoken here, over the same
// connection (the deadline wrapper still times every read and write).
// Replies are read with textproto, as go-smtp reads them, and a refusal
// becomes the same *smtp.SMTPError.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"
)

const (
	// wireWriteBytes buffers a command group, or the message in blocks of
	// a TLS record's size.
	wireWriteBytes = 16 * 1024
	// replyLineBytes bounds a reply line, as go-smtp does (twice the
	// 512 octets of RFC 5321 §4.5.3.1.5).
	replyLineBytes = 2000
	// bodyCopyBytes is the largest block read from the stored message.
	bodyCopyBytes = 32 * 1024
)

var errReplyLineTooLong = errors.New("reply line too long")

type wire struct {
	bw   *bufio.Writer
	r    *textproto.Reader
	line []byte // the command being built
	copy []byte // body blocks, grown up to bodyCopyBytes
	log  *transcript
	// answered: a reply other than 421 came since the session was taken
	// from the pool. A pooled connection that fails before one did was
	// closed by the host while idle; nothing was said on it.
	answered bool
}

func newWire(c net.Conn, log *transcript) *wire {
	lr := &lineLimit{r: c}
	return &wire{
		bw:  bufio.NewWriterSize(c, wireWriteBytes),
		r:   textproto.NewReader(bufio.NewReader(lr)),
		log: log,
	}
}

// send queues one command line (without CRLF); flush writes the queue.
func (w *wire) send(line []byte) {
	if w.log != nil {
		w.log.say(string(line))
	}
	_, _ = w.bw.Write(line) // a write error stays in bw and comes back from flush
	_, _ = w.bw.WriteString("\r\n")
}

func (w *wire) flush() error { return w.bw.Flush() }

// command sends one command now.
func (w *wire) command(line string) error {
	w.send([]byte(line))
	return w.flush()
}

// reply reads one reply. A code other than expect (in textproto's sense:
// 2 is any 2xx, 25 any 25x) is an *smtp.SMTPError, as go-smtp returns it;
// text is the reply as sent, enhanced code included.
func (w *wire) reply(expect int) (text string, err error) {
	code, msg, err := w.r.ReadResponse(expect)
	if code != 0 && w.log != nil {
		lines := strings.Split(msg, "\n")
		for i, l := range lines {
			sep := "-"
			if i == len(lines)-1 {
				sep = " "
			}
			w.log.say(strconv.Itoa(code) + sep + l)
		}
	}
	if code != 0 && code != 421 {
		w.answered = true
	}
	var te *textproto.Error
	if errors.As(err, &te) {
		return msg, replyError(te.Code, te.Msg)
	}
	return msg, err
}

// replyError is go-smtp's reading of a refusal: the enhanced code taken
// from the text (RFC 2034) and removed from each of its lines.
func replyError(code int, msg string) *smtp.SMTPError {
	e := &smtp.SMTPError{Code: code, Message: msg}
	first, rest, ok := strings.Cut(msg, " ")
	if !ok {
		return e
	}
	parts := strings.Split(first, ".")
	if len(parts) != 3 {
		return e
	}
	var enh smtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return e
		}
		enh[i] = n
	}
	e.EnhancedCode = enh
	e.Message = strings.ReplaceAll(rest, "\n"+first+" ", "\n")
	return e
}

// body sends the message dot-stuffed (RFC 5321 §4.5.2) and the final dot.
// A failure to read r comes back as a bodyError; a failure while the last
// block and the final dot go out as a finalDotError (the host may have
// taken the message).
func (w *wire) body(r io.Reader, size int64) error {
	if n := int(min(max(size+1, 512), bodyCopyBytes)); cap(w.copy) < n {
		w.copy = make([]byte, n)
	}
	dw := &dotWriter{w: w.bw}
	if _, err := io.CopyBuffer(dw, readerOnly{r}, w.copy[:cap(w.copy)]); err != nil {
		return err
	}
	dw.close()
	if err := w.bw.Flush(); err != nil {
		return finalDotError{err}
	}
	if w.log != nil {
		w.log.say("[message body, " + strconv.FormatInt(dw.n, 10) + " octets, and the final dot]")
	}
	return nil
}

// finalDotError is a failure to send the end of the message and its final
// dot.
type finalDotError struct{ err error }

func (e finalDotError) Error() string { return "send the final dot: " + e.err.Error() }
func (e finalDotError) Unwrap() error { return e.err }

// dotWriter dot-stuffs a message into a bufio.Writer a line at a time:
// a '.' starting a line is doubled, a bare LF goes out as CRLF, and the
// rest, CRs included, is sent as stored. It writes what textproto's
// DotWriter writes (which copies octet by octet), except that textproto
// also puts a CR before the LF of "\r\r\n"; the stored bytes go unchanged.
type dotWriter struct {
	w       *bufio.Writer
	started bool  // something was written
	midLine bool  // the last octet written was not a line's LF
	cr      bool  // the last octet written was CR
	n       int64 // octets of message written, for the transcript
}

func (d *dotWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		if !d.midLine && p[0] == '.' {
			_ = d.w.WriteByte('.') // a write error stays in w and comes back below
		}
		d.started, d.midLine = true, true
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			d.cr = p[len(p)-1] == '\r'
			if _, err := d.w.Write(p); err != nil {
				return 0, err
			}
			break
		}
		cr := (i > 0 && p[i-1] == '\r') || (i == 0 && d.cr)
		if _, err := d.w.Write(p[:i]); err != nil {
			return 0, err
		}
		if !cr {
			_ = d.w.WriteByte('\r')
		}
		if err := d.w.WriteByte('\n'); err != nil {
			return 0, err
		}
		d.midLine, d.cr = false, false
		p = p[i+1:]
	}
	d.n += int64(total)
	return total, nil
}

// close ends the last line when it is open (or the message is empty, as
// textproto does) and writes the final dot.
func (d *dotWriter) close() {
	switch {
	case d.midLine && d.cr:
		_ = d.w.WriteByte('\n')
	case d.midLine || !d.started:
		_, _ = d.w.WriteString("\r\n")
	}
	_, _ = d.w.WriteString(".\r\n") // errors come back from the flush
}

// lineLimit fails a read that would take a reply line past replyLineBytes,
// so a host cannot make us buffer without end.
type lineLimit struct {
	r    io.Reader
	line int
}

func (l *lineLimit) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	for _, c := range p[:n] {
		l.line++
		if c == '\n' {
			l.line = 0
		}
		if l.line > replyLineBytes {
			return 0, errReplyLineTooLong
		}
	}
	return n, err
}

// say logs one line of the transcript.
func (t *transcript) say(line string) {
	t.log.Log(context.Background(), LevelTrace, "smtp transcript", "mx", t.host, "ip", t.ip, "line", line)
}
