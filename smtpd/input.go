package smtpd

import (
	"bytes"
	"strconv"
	"strings"
)

// inputScanner follows the client's octets on their way to go-smtp, to
// rewrite one command go-smtp's parser refuses: RFC 5321 §4.5.1 requires
// "RCPT TO:<Postmaster>" without a domain to be accepted, and go-smtp
// answers it 501. Such a line becomes "RCPT TO:<postmaster@DOMAIN>" (a
// local domain, so the postmaster alias applies), its parameters kept.
//
// Only command lines are ever rewritten, never message data or a BDAT
// chunk, which would change what is stored or how many octets go-smtp
// takes as a chunk. The scanner knows where it is because it lets go-smtp
// read no further than a point it cannot judge yet:
//
//   - A partial command line (at most maxHeldLine octets) is held until
//     its end arrives; go-smtp cannot act on it anyway. A longer one is
//     passed on and its line never rewritten.
//   - After a DATA line everything is held: go-smtp reads on only once it
//     has answered DATA, and then the reply filter has seen whether that
//     answer was 354 (the message follows) or a refusal (commands follow).
//   - The message ends at CRLF.CRLF, as go-smtp's reader has it; a "."
//     line at the very start ends it too.
//   - A BDAT line go-smtp would parse announces a chunk of that many
//     octets, which go-smtp always reads (and discards: BDAT is refused),
//     so the scanner passes them on untouched.
//
// The scanner is used only by the goroutine go-smtp serves the
// connection on.
type inputScanner struct {
	rcptTo []byte // "<postmaster@DOMAIN>"; nil: no rewrite
	mode   inputMode
	chunk  uint64 // inChunk: octets of the chunk still to come
	// inData: how much of the end sequence ("\r\n.\r\n") the octets so
	// far end with.
	matched int
	mid     bool   // inCommands: inside a line too long to hold
	held    []byte // read, not yet passed on
	out     []byte // passed on after a change (reused)
}

type inputMode uint8

const (
	inCommands inputMode = iota
	inAfterDATA
	inData
	inChunk
)

// maxHeldLine bounds a partial command line held back: longer ones pass
// unchanged (go-smtp refuses lines past 2000 octets).
const maxHeldLine = 1024

var dataEnd = []byte("\r\n.\r\n")

// postmasterPath is the path a bare "<postmaster>" becomes: at the first
// local domain, else at the host name.
func postmasterPath(localDomains []string, hostname string) []byte {
	d := hostname
	if len(localDomains) > 0 {
		d = localDomains[0]
	}
	return []byte("<postmaster@" + strings.ToLower(strings.TrimSuffix(d, ".")) + ">")
}

// waiting reports whether the scanner holds input after a DATA line,
// for resolve to judge.
func (s *inputScanner) waiting() bool { return s.mode == inAfterDATA }

// resolve ends the wait after a DATA line: go-smtp answered it with 354
// (sent354) or refused it. It returns what may be passed on now.
func (s *inputScanner) resolve(sent354 bool) []byte {
	if s.mode != inAfterDATA {
		return nil
	}
	if sent354 {
		s.mode, s.matched = inData, 2 // the message starts at a line start
	} else {
		s.mode = inCommands
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
		case inAfterDATA:
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
		case inCommands:
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
			if at, ok := s.postmasterRcpt(line); ok {
				change(i - len(line))
				s.out = append(s.out, line[:at]...)
				s.out = append(s.out, s.rcptTo...)
				s.out = append(s.out, line[at+len("<postmaster>"):]...)
				break
			}
			pass(line)
			if isDATA(line) {
				s.mode = inAfterDATA
			} else if n, ok := bdatSize(line); ok && n > 0 {
				s.mode, s.chunk = inChunk, n
			}
		}
	}
	if changed {
		return s.out, false
	}
	return b, true
}

// dataEnd returns the length of p up to and including the end of the
// message, or -1 when p does not finish it. s.matched carries a partial
// match from one call to the next.
func (s *inputScanner) dataEnd(p []byte) int {
	// Finish a match begun in an earlier read, octet by octet.
	for k := 0; s.matched > 0 && k < len(p); k++ {
		switch {
		case p[k] == dataEnd[s.matched]:
			s.matched++
		case p[k] == '\r':
			s.matched = 1
		default:
			s.matched = 0
		}
		if s.matched == len(dataEnd) {
			s.matched = 0
			return k + 1
		}
		if s.matched == 0 {
			return s.scanData(p, k+1)
		}
	}
	if s.matched > 0 {
		return -1
	}
	return s.scanData(p, 0)
}

// scanData looks for the end sequence in p from from on, with no partial
// match pending.
func (s *inputScanner) scanData(p []byte, from int) int {
	if j := bytes.Index(p[from:], dataEnd); j >= 0 {
		return from + j + len(dataEnd)
	}
	// Remember how much of the sequence p ends with.
	for m := min(len(dataEnd)-1, len(p)-from); m > 0; m-- {
		if bytes.HasSuffix(p[from:], dataEnd[:m]) {
			s.matched = m
			break
		}
	}
	return -1
}

// postmasterRcpt finds "<postmaster>" in a RCPT line go-smtp would parse
// as a path without a domain, and returns where it starts.
func (s *inputScanner) postmasterRcpt(line []byte) (int, bool) {
	if s.rcptTo == nil || len(line) < len("RCPT TO:<postmaster>") || !hasPrefixFold(line, "RCPT ") {
		return 0, false
	}
	i := len("RCPT ")
	for i < len(line) && (line[i] == ' ' || line[i] == '\t') {
		i++
	}
	if !hasPrefixFold(line[i:], "TO:") {
		return 0, false
	}
	i += len("TO:")
	for i < len(line) && (line[i] == ' ' || line[i] == '\t') {
		i++
	}
	if !hasPrefixFold(line[i:], "<postmaster>") {
		return 0, false
	}
	return i, true
}

func hasPrefixFold(b []byte, prefix string) bool {
	return len(b) >= len(prefix) && strings.EqualFold(string(b[:len(prefix)]), prefix)
}

// isDATA: go-smtp reads this line as DATA without arguments, the one form
// it answers 354 to.
func isDATA(line []byte) bool {
	return strings.EqualFold(strings.TrimRight(string(line), "\r\n"), "DATA")
}

// bdatSize is the chunk size of a line go-smtp parses as a valid BDAT
// command (its parseCmd and handleBdat), whose chunk it then reads.
func bdatSize(line []byte) (uint64, bool) {
	if len(line) < 5 || !hasPrefixFold(line, "BDAT ") {
		return 0, false
	}
	l := strings.TrimRight(string(line), "\r\n")
	if len(l) < 6 { // go-smtp: a five-octet line is "mangled"
		return 0, false
	}
	args := strings.Fields(strings.TrimSpace(l[5:]))
	if len(args) == 0 || len(args) > 2 || len(args) == 2 && !strings.EqualFold(args[1], "LAST") {
		return 0, false
	}
	n, err := strconv.ParseUint(args[0], 10, 32)
	return n, err == nil
}
