package smtpd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"time"

	"github.com/emersion/go-smtp"

	"mta/spool"
)

const (
	// maxLineOctets is RFC 5322 §2.1.1's limit, without the CRLF.
	maxLineOctets = 998
	// maxHeaderBytes bounds the header section, which is held in memory
	// for the fix-ups.
	maxHeaderBytes = 256 << 10
	// enqueueTimeout bounds the wait for the spool's commit.
	enqueueTimeout = 2 * time.Minute
	// writeBufferBytes batches lines into the DKIM signer and the spill
	// file.
	writeBufferBytes = 16 << 10
)

func (s *session) Data(r io.Reader) (err error) {
	defer s.recoverPanic(&err)
	if _, ok := r.(*io.PipeReader); ok {
		// go-smtp runs Data on a pipe only for BDAT. CHUNKING is not
		// offered, so BDAT is refused; go-smtp still reads the chunk
		// it announced, so its payload never runs as commands.
		return s.refuse("data", errBDAT, "BDAT without CHUNKING")
	}
	if s.c.unusable() || !s.tx.Load() || len(s.rcpts) == 0 {
		return errBadSequence
	}
	defer s.resetTx()
	lim := s.srv.currentLimits()
	if n := s.srv.data.Add(1); n > int64(lim.DataConcurrency) {
		s.srv.data.Add(-1)
		return s.refuse("data", errBusy, "too many DATA phases at once")
	}
	defer s.srv.data.Add(-1)
	s.c.beginData(time.Now().Add(s.srv.timeouts.Data))

	id := spool.NewID()
	start := time.Now()
	env, err := s.receive(id, r, lim)
	if err != nil {
		return err
	}
	s.log.LogAttrs(context.Background(), slog.LevelInfo, "message accepted", slog.String("msg_id", id),
		slog.String("sender", env.Sender), slog.Int("rcpts", len(env.Recipients)),
		slog.Int64("size", env.Size), slog.Duration("duration", time.Since(start)))
	s.srv.obs.MessageAccepted(s.kind.String(), env.Size, len(env.Recipients))
	if s.user != nil {
		now := s.srv.now()
		s.srv.rates.take("m:"+s.user.Login, 1, lim.UserMessagesPerDay, 24*time.Hour, now)
		s.srv.rates.take("r:"+s.user.Login, len(env.Recipients), lim.UserRecipientsPerHour, time.Hour, now)
	}
	return queued(id)
}

// receive reads the message, fixes its header, signs it, streams it into
// the spool and enqueues it. The returned error is the reply.
func (s *session) receive(id string, r io.Reader, lim Limits) (*spool.Envelope, error) {
	// Built only for a failure: With formats its attributes at once, a
	// cost every accepted message would pay for nothing.
	log := func() *slog.Logger { return s.log.With("msg_id", id) }
	lenient := !s.kind.submission()
	lr := s.srv.newLineReader(r, lenient, lim.MaxMessageBytes)
	defer s.srv.releaseLineReader(lr)
	h, err := readHeader(lr)
	if err != nil {
		return nil, s.dataFailure(log(), err)
	}
	if err := s.checkHeader(h); err != nil {
		return nil, err
	}
	now := s.srv.now()
	head := s.fixHeader(id, h, now)
	bw, err := s.srv.cfg.Spool.NewBody(id)
	if err != nil {
		log().Error("starting the body", "err", err)
		return nil, spoolReply(err)
	}
	enqueued := false
	defer func() {
		if !enqueued {
			if err := bw.Abort(); err != nil {
				log().Warn("discarding the body", "err", err)
			}
		}
	}()
	if key, domain, ok := s.signingKey(h); ok {
		err = s.writeSigned(bw, head, lr, key, domain)
	} else {
		err = writePlain(bw, head, lr)
	}
	if err != nil {
		return nil, s.dataFailure(log(), err)
	}
	env := s.envelope(h, now, lr.has8bit || !isASCII(head))
	env.Size = bw.Size()
	ctx, cancel := context.WithTimeout(context.Background(), enqueueTimeout)
	defer cancel()
	if err := s.srv.cfg.Spool.Enqueue(ctx, id, env, bw); err != nil {
		log().Error("enqueue", "err", err)
		return nil, spoolReply(err)
	}
	enqueued = true
	return env, nil
}

// spoolWriteError marks an error writing to the spool (or the spill file),
// as opposed to one reading from the client.
type spoolWriteError struct{ err error }

func (e *spoolWriteError) Error() string { return "write body: " + e.err.Error() }
func (e *spoolWriteError) Unwrap() error { return e.err }

// clientReadError marks an error reading the message from the client.
type clientReadError struct{ err error }

func (e *clientReadError) Error() string { return "read message: " + e.err.Error() }
func (e *clientReadError) Unwrap() error { return e.err }

// dataFailure logs why DATA failed and returns the reply. What is neither
// a reply, nor a failure to write the spool, nor one to read from the
// client (DKIM signing, the spill file) is a local error: temporary, and
// never blamed on the client's connection.
func (s *session) dataFailure(log *slog.Logger, err error) error {
	var reply *smtp.SMTPError
	var we *spoolWriteError
	var re *clientReadError
	switch {
	case errors.As(err, &reply):
	case errors.As(err, &we):
		reply = spoolReply(we.err)
		log.Error("writing the body", "err", we.err)
	case errors.As(err, &re):
		reply = readReply(re.err)
	default:
		reply = errLocal
		log.Error("processing the message", "err", err)
	}
	log.Info("message refused", "phase", "data", "code", reply.Code, "enhanced", enhanced(reply), "reason", err.Error())
	return reply
}

func (s *session) envelope(h *header, now time.Time, has8bit bool) *spool.Envelope {
	c := s.c
	origin := spool.Origin{Listener: s.kind.String(), ClientIP: s.ipString(), HELO: s.sc.Hostname(), UID: c.uid}
	if s.user != nil {
		origin.AuthUser = s.user.Login
	}
	return &spool.Envelope{
		Sender:     s.sender,
		Recipients: append([]spool.Recipient(nil), s.rcpts...),
		EnvID:      s.envID,
		Ret:        s.ret,
		Has8Bit:    has8bit,
		SMTPUTF8:   s.utf8Addrs || h.utf8,
		Arrival:    now,
		Origin:     origin,
	}
}

// writePlain streams the fixed header and the rest of the message into the
// spool as it arrives. The BodyWriter buffers by itself, so each line goes
// straight to it.
func writePlain(bw *spool.BodyWriter, head []byte, lr *lineReader) error {
	if _, err := bw.Write(head); err != nil {
		return &spoolWriteError{err}
	}
	return copyLines(bw, lr)
}

// copyLines writes the remaining lines of lr to w. A write error comes
// back as a *spoolWriteError, anything else is from reading.
func copyLines(w io.Writer, lr *lineReader) error {
	for {
		line, err := lr.next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := w.Write(line); err != nil {
			return &spoolWriteError{err}
		}
	}
}

// lineReader reads the message as go-smtp's data reader gives it (dot-
// stuffing removed, ended at CRLF.CRLF) and yields canonical lines: each
// ends in CRLF, has no other CR or LF, and at most 998 octets. A bare LF
// ends a line when lenient (the relay and local listeners) and is refused
// otherwise; a bare CR is always refused. Errors are sticky; those of the
// client's connection come as *clientReadError.
type lineReader struct {
	br      *bufio.Reader
	lenient bool
	max     int64
	n       int64
	has8bit bool
	fixed   []byte
	err     error
}

// lineReaderBytes is the buffer of a lineReader; a line longer than it is
// refused (errLongLine).
const lineReaderBytes = 4096

func newLineReader(r io.Reader, lenient bool, max int64) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, lineReaderBytes), lenient: lenient, max: max}
}

// newLineReader is newLineReader with a buffer left by an earlier message
// when there is one: a 4 KiB buffer per message was an eighth of what a
// session allocated.
func (s *Server) newLineReader(r io.Reader, lenient bool, max int64) *lineReader {
	br, _ := s.lineBufs.Get().(*bufio.Reader)
	if br == nil {
		return newLineReader(r, lenient, max)
	}
	br.Reset(r)
	return &lineReader{br: br, lenient: lenient, max: max}
}

// releaseLineReader gives lr's buffer back once the message is read and
// nothing refers to its lines any more.
func (s *Server) releaseLineReader(lr *lineReader) {
	lr.br.Reset(nil)
	s.lineBufs.Put(lr.br)
	lr.br = nil
}

// next returns the next line, valid until the following call, or io.EOF
// at the end of the message.
func (l *lineReader) next() ([]byte, error) {
	if l.err != nil {
		return nil, l.err
	}
	line, err := l.br.ReadSlice('\n')
	switch {
	case errors.Is(err, bufio.ErrBufferFull):
		return nil, l.fail(errLongLine)
	case err == io.EOF && len(line) == 0:
		return nil, l.fail(io.EOF)
	case err != nil && err != io.EOF:
		return nil, l.fail(&clientReadError{err})
	}
	content, crlf := line, false
	switch {
	case bytes.HasSuffix(line, []byte("\r\n")):
		content, crlf = line[:len(line)-2], true
	case bytes.HasSuffix(line, []byte("\n")):
		content = line[:len(line)-1]
		if !l.lenient {
			return nil, l.fail(errBareNewline)
		}
	}
	if bytes.IndexByte(content, '\r') >= 0 {
		return nil, l.fail(errBareNewline)
	}
	if len(content) > maxLineOctets {
		return nil, l.fail(errLongLine)
	}
	if l.n += int64(len(content)) + 2; l.n > l.max {
		return nil, l.fail(errTooBig)
	}
	if !l.has8bit && !isASCII(content) {
		l.has8bit = true
	}
	if crlf {
		return line, nil
	}
	// A bare LF, or the last line without its end: write CRLF.
	l.fixed = append(append(l.fixed[:0], content...), '\r', '\n')
	return l.fixed, nil
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

func (l *lineReader) fail(err error) error {
	l.err = err
	return err
}
