package smtpd

import (
	"bytes"
	"strconv"
	"strings"
	"unicode"
)

// inputScanner follows the client's octets on their way to go-smtp, to
// rewrite one command go-smtp's parser refuses: RFC 5321 §4.5.1 requires
// "RCPT TO:<Postmaster>" without a domain to be accepted, and go-smtp
// answers it 501. Such a line becomes "RCPT TO:<postmaster@DOMAIN>" (a
// local domain, so the postmaster alias applies), its parameters kept.
//
// Only command lines are ever rewritten, never message data, a BDAT
// chunk or an AUTH response, which would change what is stored or how
// many octets go-smtp takes as a chunk. The scanner reads each line as
// go-smtp's parseCmd does, and lets go-smtp read no further than a point
// it cannot judge yet:
//
//   - A partial command line is held until its end arrives; go-smtp cannot
//     act on it anyway. One longer than go-smtp's line limit is passed on:
//     go-smtp ends the session on it.
//   - After a DATA line (that go-smtp answers, not refuses as malformed)
//     or an AUTH line, everything is held: go-smtp reads on only once it
//     has answered, and then the reply filter has seen whether the answer
//     was 354 (the message follows), 334 (one response line follows, then
//     the same question again) or neither (commands follow).
//   - The message ends where go-smtp's data reader ends it: ".\r\n" at the
//     start of a line, a line starting after "\r\n" (its state machine,
//     quirks included).
//   - A BDAT line go-smtp would parse announces a chunk of that many
//     octets, which go-smtp always reads (and discards: BDAT is refused),
//     so the scanner passes them on untouched.
//   - When the client's input ends, whatever is held is passed on as it
//     came.
//
// The scanner is used only by the goroutine go-smtp serves the
// connection on.
type inputScanner struct {
	rcptTo []byte // "<postmaster@DOMAIN>"; nil: no rewrite
	mode   inputMode
	chunk  uint64    // inChunk: octets of the chunk still to come
	data   dataState // inData: go-smtp's data reader state
	mid    bool      // inCommands: inside a line too long to hold
	held   []byte    // read, not yet passed on
	out    []byte    // passed on after a change (reused)
}

type inputMode uint8

const (
	inCommands  inputMode = iota
	inAfterDATA           // holding after a DATA line
	inAfterAUTH           // holding after an AUTH line or response
	inAuthLine            // the client's response to a 334
	inData
	inChunk
)

// dataState is go-smtp's dataReader state (data.go).
type dataState uint8

const (
	dataBeginLine dataState = iota
	dataDot
	dataDotCR
	dataCR
	dataMid
)

// maxLineLength is go-smtp's MaxLineLength as newSMTPServer sets it: a
// longer line ends the session. Lines are held up to just past it, so
// that any line passed on unheld is one go-smtp refuses.
const (
	maxLineLength = 2000
	maxHeldLine   = maxLineLength + 2
)

// postmasterPath is the path a bare "<postmaster>" becomes: at the first
// local domain, else at the host name.
func postmasterPath(localDomains []string, hostname string) []byte {
	d := hostname
	if len(localDomains) > 0 {
		d = localDomains[0]
	}
	return []byte("<postmaster@" + strings.ToLower(strings.TrimSuffix(d, ".")) + ">")
}

// waiting reports whether the scanner holds input after a DATA or AUTH
// line, for resolve to judge.
func (s *inputScanner) waiting() bool { return s.mode == inAfterDATA || s.mode == inAfterAUTH }

// resolve ends the wait: go-smtp has answered the DATA or AUTH line (or
// AUTH response) and now reads on; sent354 and sent334 say whether that
// answer was 354 or 334. It returns what may be passed on now.
func (s *inputScanner) resolve(sent354, sent334 bool) []byte {
	switch {
	case s.mode == inAfterDATA && sent354:
		s.mode, s.data = inData, dataBeginLine
	case s.mode == inAfterAUTH && sent334:
		s.mode = inAuthLine
	case s.waiting():
		s.mode = inCommands
	default:
		return nil
	}
	held := s.held
	s.held = nil
	out, _ := s.feed(held)
	return out
}

// flushHeld gives up what is held (the client's input ended): go-smtp
// sees it as it came.
func (s *inputScanner) flushHeld() []byte {
	held := s.held
	s.held = nil
	return held
}

// feed takes octets read from the client and returns those go-smtp may
// read now. same reports that they are exactly b (nothing held before,
// nothing held back or rewritten now), so the caller need not copy.
func (s *inputScanner) feed(b []byte) (out []byte, same bool) {
	if len(s.held) > 0 {
		b = append(s.held, b...)
		s.held = nil
		defer func() { same = false }()
	}
	s.out = s.out[:0]
	changed := false
	pass := func(p []byte) {
		if changed {
			s.out = append(s.out, p...)
		}
	}
	// change switches to copying: what was passed unchanged so far (b[:i])
	// goes into out first.
	change := func(i int) {
		if !changed {
			changed = true
			s.out = append(s.out, b[:i]...)
		}
	}
	i := 0
	for i < len(b) {
		switch s.mode {
		case inAfterDATA, inAfterAUTH:
			change(i)
			s.held = append(s.held, b[i:]...)
			i = len(b)
		case inChunk:
			n := uint64(len(b) - i)
			if n > s.chunk {
				n = s.chunk
			}
			pass(b[i : i+int(n)])
			i += int(n)
			if s.chunk -= n; s.chunk == 0 {
				s.mode = inCommands
			}
		case inData:
			j := s.dataEnd(b[i:])
			if j < 0 {
				pass(b[i:])
				i = len(b)
				break
			}
			pass(b[i : i+j])
			i += j
			s.mode = inCommands
		case inCommands, inAuthLine:
			if s.mid {
				j := bytes.IndexByte(b[i:], '\n')
				if j < 0 {
					pass(b[i:])
					i = len(b)
					break
				}
				pass(b[i : i+j+1])
				i += j + 1
				s.mid = false
				break
			}
			j := bytes.IndexByte(b[i:], '\n')
			if j < 0 {
				if len(b)-i > maxHeldLine {
					pass(b[i:])
					s.mid = true
				} else {
					change(i)
					s.held = append(s.held, b[i:]...)
				}
				i = len(b)
				break
			}
			line := b[i : i+j+1]
			i += j + 1
			if s.mode == inAuthLine {
				pass(line) // a SASL response, whatever it looks like
				s.mode = inAfterAUTH
				break
			}
			cmd, arg, ok := goSMTPCommand(line)
			if !ok {
				pass(line)
				break
			}
			switch cmd {
			case "RCPT":
				if at, ok := s.postmasterRcpt(line, arg); ok {
					change(i - len(line))
					s.out = append(s.out, line[:at]...)
					s.out = append(s.out, s.rcptTo...)
					s.out = append(s.out, line[at+len("<postmaster>"):]...)
				} else {
					pass(line)
				}
			case "DATA":
				pass(line)
				if len(arg) == 0 { // go-smtp refuses DATA with an argument (501)
					s.mode = inAfterDATA
				}
			case "AUTH":
				pass(line)
				s.mode = inAfterAUTH
			case "BDAT":
				pass(line)
				if n, ok := bdatSize(arg); ok && n > 0 {
					s.mode, s.chunk = inChunk, n
				}
			default:
				pass(line)
			}
		}
	}
	if changed {
		return s.out, false
	}
	return b, true
}

// dataEnd runs go-smtp's data reader state machine over p and returns
// the length of p up to and including the end of the message, or -1 when
// p does not finish it (s.data carries the state to the next call).
func (s *inputScanner) dataEnd(p []byte) int {
	for k := 0; k < len(p); k++ {
		c := p[k]
		switch s.data {
		case dataMid:
			// Only a CR changes the state: skip to the next one.
			j := bytes.IndexByte(p[k:], '\r')
			if j < 0 {
				return -1
			}
			k += j
			s.data = dataCR
		case dataBeginLine:
			switch c {
			case '.':
				s.data = dataDot
			case '\r':
				s.data = dataCR
			default:
				s.data = dataMid
			}
		case dataDot:
			if c == '\r' {
				s.data = dataDotCR
			} else {
				s.data = dataMid
			}
		case dataDotCR:
			if c == '\n' {
				s.data = dataBeginLine
				return k + 1
			}
			s.data = dataMid
		case dataCR:
			if c == '\n' {
				s.data = dataBeginLine
			} else {
				s.data = dataMid
			}
		}
	}
	return -1
}

// postmasterRcpt finds "<postmaster>" in a RCPT line whose argument (as
// goSMTPCommand returns it) go-smtp would parse as a path without a
// domain, and returns where it starts in line. A line the rewrite would
// take past go-smtp's line limit is left alone.
func (s *inputScanner) postmasterRcpt(line, arg []byte) (int, bool) {
	if s.rcptTo == nil || !hasPrefixFold(arg, "TO:") {
		return 0, false
	}
	path := bytes.TrimLeftFunc(arg[len("TO:"):], unicode.IsSpace) // go-smtp: TrimSpace after "TO:"
	if !hasPrefixFold(path, "<postmaster>") {
		return 0, false
	}
	if len(line)+len(s.rcptTo)-len("<postmaster>") > maxLineLength {
		return 0, false
	}
	return cap(line) - cap(path), true // path is a subslice of line
}

func hasPrefixFold(b []byte, prefix string) bool {
	return len(b) >= len(prefix) && strings.EqualFold(string(b[:len(prefix)]), prefix)
}

// goSMTPCommand reads line as go-smtp's parseCmd does (after textproto
// took off the line end): the command, upper case, and its argument
// (a subslice of line), or false where go-smtp answers a syntax error.
func goSMTPCommand(line []byte) (cmd string, arg []byte, ok bool) {
	l := bytes.TrimRight(line, "\r\n")
	switch {
	case hasPrefixFold(l, "STARTTLS"):
		return "STARTTLS", nil, true
	case len(l) < 4 || len(l) == 5:
		return "", nil, false
	case len(l) > 5 && l[4] != ' ':
		return "", nil, false
	}
	var c [4]byte
	for i := range c {
		c[i] = l[i]
		if 'a' <= c[i] && c[i] <= 'z' {
			c[i] -= 'a' - 'A'
		}
	}
	if len(l) == 4 {
		return string(c[:]), nil, true
	}
	return string(c[:]), bytes.TrimSpace(l[5:]), true
}

// bdatSize is the chunk size of a BDAT argument go-smtp's handleBdat
// accepts; it then reads the chunk whatever it answers.
func bdatSize(arg []byte) (uint64, bool) {
	args := strings.Fields(string(arg))
	if len(args) == 0 || len(args) > 2 || len(args) == 2 && !strings.EqualFold(args[1], "LAST") {
		return 0, false
	}
	n, err := strconv.ParseUint(args[0], 10, 32)
	return n, err == nil
}
