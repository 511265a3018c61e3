package smtpd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"strconv"
	"strings"
	"time"

	"mta/internal/mailaddr"
)

// header is the header section of a message as received.
type header struct {
	fields []field
	// pending is the first line of the body when the header section
	// ended without an empty line (a line that is not a header field).
	pending []byte
	utf8    bool // some field has non-ASCII octets
}

// field is one header field: its name lowercased and its lines as
// received (continuation lines included, each ending in CRLF).
type field struct {
	lower string
	raw   []byte
}

// readHeader reads the header section (RFC 5322 §2.2), at most
// maxHeaderBytes.
func readHeader(lr *lineReader) (*header, error) {
	h := &header{}
	size := 0
	for {
		line, err := lr.next()
		if err == io.EOF {
			return h, nil
		}
		if err != nil {
			return nil, err
		}
		if size += len(line); size > maxHeaderBytes {
			return nil, errHeaderTooBig
		}
		if len(line) == 2 { // the empty line
			return h, nil
		}
		if !isASCII(line) {
			h.utf8 = true
		}
		if line[0] == ' ' || line[0] == '\t' {
			if len(h.fields) == 0 {
				h.pending = bytes.Clone(line)
				return h, nil
			}
			last := &h.fields[len(h.fields)-1]
			last.raw = append(last.raw, line...)
			continue
		}
		name, ok := fieldName(line)
		if !ok {
			h.pending = bytes.Clone(line)
			return h, nil
		}
		h.fields = append(h.fields, field{lower: strings.ToLower(name), raw: bytes.Clone(line)})
	}
}

// fieldName returns the name of a header field line: printable ASCII but
// ":" before the colon (spaces before it are the obsolete syntax).
func fieldName(line []byte) (string, bool) {
	i := bytes.IndexByte(line, ':')
	if i <= 0 {
		return "", false
	}
	name := bytes.TrimRight(line[:i], " \t")
	if len(name) == 0 {
		return "", false
	}
	for _, c := range name {
		if c < 33 || c > 126 {
			return "", false
		}
	}
	return string(name), true
}

// values returns the unfolded values of the fields named lower.
func (h *header) values(lower string) []string {
	var out []string
	for _, f := range h.fields {
		if f.lower == lower {
			_, v, _ := bytes.Cut(f.raw, []byte(":"))
			out = append(out, strings.TrimSpace(strings.ReplaceAll(string(v), "\r\n", "")))
		}
	}
	return out
}

func (h *header) count(lower string) int {
	n := 0
	for _, f := range h.fields {
		if f.lower == lower {
			n++
		}
	}
	return n
}

// maxReceived: more Received fields than this means a loop (RFC 5321
// §6.3).
const maxReceived = 100

// checkHeader applies the header rules: the loop limit everywhere, and on
// submission exactly one From: with only addresses the user owns.
func (s *session) checkHeader(h *header) error {
	if h.count("received") > maxReceived {
		return s.refuse("data", errLoop, "too many Received fields")
	}
	if !s.kind.submission() {
		return nil
	}
	froms := h.values("from")
	if len(froms) != 1 {
		return s.refuse("data", errFromCount, fmt.Sprintf("%d From fields", len(froms)))
	}
	addrs, err := parseFromHeader(froms[0])
	if err != nil {
		return s.refuse("data", errFromCount, "unparsable From field: "+err.Error())
	}
	if s.srv.unownedFrom.Load() {
		return nil
	}
	for _, a := range addrs {
		if !s.user.Owns(a) {
			return s.refuse("data", errFromNotOwned, "From address not owned", "from", a.String())
		}
	}
	return nil
}

// fromParser reads From: fields. Display names are not needed, so an
// encoded word in any charset is taken as it is rather than failing.
var fromParser = mail.AddressParser{WordDecoder: &mime.WordDecoder{
	CharsetReader: func(_ string, r io.Reader) (io.Reader, error) { return r, nil },
}}

// parseFromHeader returns the mailboxes of a From: value.
func parseFromHeader(v string) ([]mailaddr.Address, error) {
	list, err := fromParser.ParseList(v)
	if err != nil {
		return nil, err
	}
	if len(list) == 0 {
		return nil, errors.New("no address")
	}
	out := make([]mailaddr.Address, 0, len(list))
	for _, m := range list {
		a, err := parseMailbox(m.Address)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// stamp is what the fix-ups add: a folded Received field, and the
// Message-ID and Date used when the message has none.
type stamp struct {
	received  string
	messageID string
	date      string
}

// dropped fields are removed on every listener: Bcc must not reach the
// recipients, and Return-Path belongs to final delivery (RFC 5321 §4.4).
var dropped = map[string]bool{"bcc": true, "resent-bcc": true, "return-path": true}

// fixHeader returns the new header section, its empty line, and the
// pending first body line if any.
func fixHeader(h *header, st stamp) []byte {
	size := len(st.received) + len("Message-ID: \r\nDate: \r\n\r\n") + len(st.messageID) + len(st.date) + len(h.pending)
	for _, f := range h.fields {
		size += len(f.raw)
	}
	b := make([]byte, 0, size)
	b = append(b, st.received...)
	hasID, hasDate := false, false
	for _, f := range h.fields {
		if dropped[f.lower] {
			continue
		}
		hasID = hasID || f.lower == "message-id"
		hasDate = hasDate || f.lower == "date"
		b = append(b, f.raw...)
	}
	if !hasID {
		b = appendAll(b, "Message-ID: ", st.messageID, "\r\n")
	}
	if !hasDate {
		b = appendAll(b, "Date: ", st.date, "\r\n")
	}
	b = append(b, "\r\n"...)
	return append(b, h.pending...)
}

func appendAll(b []byte, parts ...string) []byte {
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func (s *session) fixHeader(id string, h *header, now time.Time) []byte {
	date := now.Format(time.RFC1123Z)
	return fixHeader(h, stamp{
		received:  s.received(id, date),
		messageID: "<" + id + "@" + s.srv.cfg.Hostname + ">",
		date:      date,
	})
}

// received builds our trace field (RFC 5321 §4.4, protocol names of RFC
// 3848 and RFC 6531 §4.3), dated date. It names the client by HELO, PTR
// and address (or uid on the local socket), never by its AUTH login.
func (s *session) received(id, date string) string {
	helo := sanitizeToken(s.sc.Hostname())
	var b strings.Builder
	b.Grow(160 + len(helo) + len(s.srv.cfg.Hostname) + len(date))
	writeAll(&b, "Received: from ", helo)
	if s.kind == Local {
		writeAll(&b, " (uid ", strconv.Itoa(s.c.uid), ")\r\n")
	} else {
		writeAll(&b, " (", s.c.ptr.wait(), " [", ipLiteral(s.c), "])\r\n")
	}
	writeAll(&b, "\tby ", s.srv.cfg.Hostname, " (mta) with ", s.protocol(), " id ", id)
	if len(s.rcpts) == 1 {
		writeAll(&b, "\r\n\tfor <", s.rcpts[0].Addr, ">")
	}
	writeAll(&b, ";\r\n\t", date, "\r\n")
	return b.String()
}

func writeAll(b *strings.Builder, parts ...string) {
	for _, p := range parts {
		b.WriteString(p)
	}
}

func ipLiteral(c *conn) string {
	if c.ip.Is6() {
		return "IPv6:" + c.ip.String()
	}
	return c.ip.String()
}

// protocol is the "with" value: SMTP for HELO; else ESMTP or UTF8SMTP
// with S for TLS and A for AUTH.
func (s *session) protocol() string {
	if !s.c.esmtp {
		return "SMTP"
	}
	p := "ESMTP"
	if s.utf8 {
		p = "UTF8SMTP"
	}
	if s.c.isTLS() {
		p += "S"
	}
	if s.user != nil {
		p += "A"
	}
	return p
}

// sanitizeToken makes a client-chosen name (HELO argument, PTR) safe in a
// header comment: letters, digits and ".-_:[]" only, at most 255 octets.
func sanitizeToken(v string) string {
	v = strings.TrimSuffix(v, ".")
	if len(v) > 255 {
		v = v[:255]
	}
	if len(v) == 0 {
		return "unknown"
	}
	var b []byte // a copy, made at the first octet to replace
	for i := 0; i < len(v); i++ {
		c := v[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(".-_:[]", c) >= 0
		if !ok {
			if b == nil {
				b = []byte(v)
			}
			b[i] = '?'
		}
	}
	if b == nil {
		return v
	}
	return string(b)
}
