package main

import (
	"net/netip"
	"strings"
	"time"
)

// received is one Received header field, read as RFC 5321 §4.4 writes it
// (Stamp = From-domain By-domain Opt-info ";" date-time) but tolerant of
// what real MTAs put there: comments anywhere, clauses missing or out of
// order, extra registered clauses (RFC 5321 §4.4 Additional-Registered-
// Clauses, e.g. Exim's "tls"), multi-word "with" values. Nothing is
// dropped: a header that cannot be read keeps its raw text and says why.
type received struct {
	// Raw is the unfolded field body, as written.
	Raw string `json:"raw"`
	// Malformed says why the header could not be read; empty when it could.
	Malformed string `json:"malformed,omitempty"`

	// From is the from clause's first word as written. Helo is what the
	// client claimed (its HELO/EHLO name); RDNS and IP are what the receiving
	// host saw (reverse DNS and address, from the TCP-info comment).
	From string `json:"from,omitempty"`
	Helo string `json:"helo,omitempty"`
	RDNS string `json:"rdns,omitempty"`
	IP   string `json:"ip,omitempty"`

	By  string `json:"by,omitempty"`
	Via string `json:"via,omitempty"`
	// With is the protocol as written (RFC 3848: ESMTPSA and friends, or
	// free text such as "Microsoft SMTP Server"); TLS and Auth are what
	// it, or the clause's comments, say about the session.
	With string `json:"with,omitempty"`
	TLS  bool   `json:"tls,omitempty"`
	Auth bool   `json:"auth,omitempty"`
	ID   string `json:"id,omitempty"`
	For  string `json:"for,omitempty"`
	// Comment holds comments before any clause, such as qmail's
	// "(qmail 1234 invoked by uid 1000)".
	Comment string `json:"comment,omitempty"`

	// DateText is the text after the last ';'; Date is it parsed (zero
	// when absent or unreadable).
	DateText string    `json:"date_text,omitempty"`
	Date     time.Time `json:"date,omitzero"`
}

// clause is one keyword of the stamp with its value words and comments.
type clause struct {
	name     string // lowercase keyword; "" for leading comments
	values   []string
	comments []string
}

// parseReceived reads the body of one Received field (unfolded).
func parseReceived(raw string) received {
	r := received{Raw: strings.TrimSpace(raw)}
	toks, bad := tokenize(r.Raw)
	head := toks
	semi := -1
	for i, t := range toks {
		if t.kind == tokSemi {
			semi = i
		}
	}
	if semi >= 0 {
		head = toks[:semi]
		r.DateText = strings.TrimSpace(r.Raw[toks[semi].pos+1:])
	}
	clauses := splitClauses(head)
	known := r.fill(clauses)
	switch {
	case bad != "":
		r.Malformed = bad
	case semi < 0:
		r.Malformed = "no ';' and date"
	case !known && r.Comment == "":
		r.Malformed = "no from, by, with, id or for clause"
	}
	if r.DateText != "" {
		d, err := parseMailDate(r.DateText)
		if err != nil && r.Malformed == "" {
			r.Malformed = "unreadable date: " + err.Error()
		}
		r.Date = d
	} else if semi >= 0 && r.Malformed == "" {
		r.Malformed = "empty date"
	}
	return r
}

// splitClauses groups tokens into keyword clauses. A keyword starts a
// clause only where one may start (not as the previous keyword's value); any
// other atom after a complete clause starts an additional clause of its
// own name, so unknown clauses never swallow known ones.
func splitClauses(toks []token) []clause {
	var out []clause
	cur := -1
	for _, t := range toks {
		switch t.kind {
		case tokComment:
			if cur < 0 {
				out = append(out, clause{})
				cur = len(out) - 1
			}
			out[cur].comments = append(out[cur].comments, t.text)
		case tokWord:
			lw := strings.ToLower(t.text)
			switch {
			case cur >= 0 && out[cur].name != "" && len(out[cur].values) == 0 && len(out[cur].comments) == 0:
				out[cur].values = append(out[cur].values, t.text)
			case cur >= 0 && forList(out[cur], t.text):
				if strings.Trim(t.text, ",") != "" {
					out[cur].values = append(out[cur].values, t.text)
				}
			case cur >= 0 && multiWord(out[cur]) && !isKeyword(lw):
				out[cur].values = append(out[cur].values, t.text)
			default:
				out = append(out, clause{name: lw})
				cur = len(out) - 1
			}
		default: // angle address, quoted string: always a value
			if cur < 0 {
				out = append(out, clause{})
				cur = len(out) - 1
			}
			out[cur].values = append(out[cur].values, t.text)
		}
	}
	return out
}

// forList reports whether word goes on a for clause's list of addresses
// ("for <a@x>, <b@y>" or "for a@x, b@y"): RFC 5321 gives the clause one
// path, but some hosts list every recipient. word is a comma, or follows
// one.
func forList(c clause, word string) bool {
	if c.name != "for" || len(c.comments) > 0 || len(c.values) == 0 || isKeyword(strings.ToLower(word)) {
		return false
	}
	return strings.Trim(word, ",") == "" || strings.HasPrefix(word, ",") || strings.HasSuffix(c.values[len(c.values)-1], ",")
}

// multiWord reports whether c still takes words: "with" and "via" values
// may be several words ("with Microsoft SMTP Server", "via Frontend
// Transport") until a comment or a keyword ends them.
func multiWord(c clause) bool {
	return (c.name == "with" || c.name == "via") && len(c.comments) == 0
}

func isKeyword(lw string) bool {
	switch lw {
	case "from", "by", "via", "with", "id", "for":
		return true
	}
	return false
}

// fill sets r's fields from the clauses and reports whether any known
// clause was there.
func (r *received) fill(clauses []clause) bool {
	known := false
	exim := false
	for _, c := range clauses {
		for _, cm := range c.comments {
			if strings.HasPrefix(cm, "Exim ") {
				exim = true
			}
		}
	}
	seen := map[string]bool{}
	for _, c := range clauses {
		if c.name == "" {
			r.Comment = strings.Join(wrapComments(c.comments), " ")
			continue
		}
		if c.name == "tls" {
			r.TLS = true // Exim: "tls TLS_AES_256_GCM_SHA384"
		}
		if !isKeyword(c.name) || seen[c.name] {
			continue
		}
		seen[c.name] = true
		known = true
		r.fillClause(c, exim)
	}
	return known
}

func (r *received) fillClause(c clause, exim bool) {
	first := ""
	if len(c.values) > 0 {
		first = c.values[0]
	}
	switch c.name {
	case "from":
		r.From = first
		r.Helo, r.RDNS, r.IP = seenAs(first, c.comments, exim)
	case "by":
		r.By = first
	case "via":
		r.Via = strings.Join(c.values, " ")
	case "with":
		r.With = strings.Join(c.values, " ")
		if p, ok := protocolName(c.values); ok {
			r.With = p
		}
		r.TLS, r.Auth = protocolFlags(r.With)
		for _, cm := range c.comments {
			if strings.Contains(strings.ToLower(cm), "version=tls") {
				r.TLS = true // Microsoft: "(version=TLS1_2, cipher=...)"
			}
		}
	case "id":
		r.ID = first
	case "for":
		addrs := make([]string, 0, len(c.values))
		for _, v := range c.values {
			addrs = append(addrs, strings.TrimSuffix(strings.TrimPrefix(strings.Trim(v, ","), "<"), ">"))
		}
		r.For = strings.Join(addrs, ", ")
	}
}

func wrapComments(cs []string) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = "(" + c + ")"
	}
	return out
}

// seenAs reads the from clause: value is its first word, comments its
// TCP-info and the rest. In the RFC 5321 form ("from HELO (rDNS [IP])",
// Postfix, Sendmail, Microsoft) value is the HELO name, even when it is an
// address literal. Exim and qmail instead write the verified host name, or
// the bracketed address, first and the HELO name as "helo=NAME" or
// "(HELO NAME)"; Exim leaves helo= out when it equals the host name.
func seenAs(value string, comments []string, exim bool) (helo, rdns, ip string) {
	claimed := ""
	for _, cm := range comments {
		fields := strings.Fields(cm)
		for i, f := range fields {
			lf := strings.ToLower(f)
			switch {
			case strings.HasPrefix(lf, "helo="):
				claimed = f[len("helo="):]
			case lf == "helo" && i+1 < len(fields):
				claimed = fields[i+1]
			case ip == "":
				if a, ok := addrOf(f); ok {
					ip = a
					if i > 0 && hostish(fields[i-1]) {
						rdns = fields[i-1]
						if at := strings.LastIndexByte(rdns, '@'); at >= 0 {
							rdns = rdns[at+1:] // Sendmail's "ident@host"
						}
					}
				}
			}
		}
	}
	literal, isLiteral := addrOf(value)
	if ip == "" && isLiteral {
		// Exim's "from [192.0.2.5] (helo=client)": the address seen, and
		// the HELO name, if any, in the comment.
		return claimed, "", literal
	}
	switch {
	case claimed != "":
		if rdns == "" && !isLiteral {
			rdns = value
		}
		return claimed, rdns, ip
	case exim && !isLiteral && rdns == "":
		rdns = value
	}
	return value, rdns, ip
}

// hostish reports whether f can be a host name in a TCP-info comment.
func hostish(f string) bool {
	return f != "" && !strings.ContainsAny(f, "=()<>\"[]")
}

// addrOf reads an IP address as Received headers write one: "[192.0.2.1]",
// "[IPv6:2001:db8::1]", "[192.0.2.1]:25" (Exim with ports), or bare.
func addrOf(f string) (string, bool) {
	f = strings.TrimRight(f, ",;")
	if strings.HasPrefix(f, "[") {
		end := strings.IndexByte(f, ']')
		if end < 0 {
			return "", false
		}
		rest := f[end+1:]
		if rest != "" && !strings.HasPrefix(rest, ":") {
			return "", false
		}
		f = f[1:end]
		if len(f) > 5 && strings.EqualFold(f[:5], "ipv6:") {
			f = f[5:]
		}
	}
	a, err := netip.ParseAddr(f)
	if err != nil || a.Zone() != "" {
		return "", false
	}
	return a.String(), true
}

// protocolName picks the protocol out of a with clause's words: Exim writes
// "with esmtps tls CIPHER" when it has no TLS version to put in a comment;
// the protocol is the first word when that is a known name.
func protocolName(words []string) (string, bool) {
	if len(words) > 1 && isProtocol(words[0]) {
		return words[0], true
	}
	return "", false
}

// isProtocol reports whether p has the shape of the RFC 3848 / RFC 6531
// protocol types: [UTF8](SMTP|ESMTP|LMTP)[S][A], plus "SMTPS" as Gmail
// writes it.
func isProtocol(p string) bool {
	core, _ := protocolCore(p)
	return core != ""
}

func protocolCore(p string) (core, suffix string) {
	u := strings.TrimPrefix(strings.ToUpper(p), "UTF8")
	for _, c := range []string{"ESMTP", "SMTP", "LMTP"} {
		if s, ok := strings.CutPrefix(u, c); ok {
			switch s {
			case "", "A", "S", "SA":
				return c, s
			}
		}
	}
	return "", ""
}

// protocolFlags reads RFC 3848: a trailing S means the session used TLS, A
// that the client authenticated.
func protocolFlags(p string) (tls, auth bool) {
	core, s := protocolCore(p)
	if core == "" {
		return false, false
	}
	return strings.Contains(s, "S"), strings.Contains(s, "A")
}

type tokKind int

const (
	tokWord    tokKind = iota
	tokComment         // text is the inside of the outer parentheses
	tokAngle           // text includes the brackets
	tokQuoted          // text includes the quotes
	tokSemi
)

type token struct {
	kind tokKind
	text string
	pos  int // byte offset in the input
}

// tokenize splits a Received body into words, comments (nested, with
// quoted pairs), angle addresses, quoted strings and ';'. bad is non-empty
// when a comment, address or quoted string is not closed; the token then
// runs to the end of the input.
func tokenize(s string) (toks []token, bad string) {
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\r' || c == '\n':
			i++
		case c == ';':
			toks = append(toks, token{tokSemi, ";", i})
			i++
		case c == '(':
			end, ok := commentEnd(s, i)
			if !ok && bad == "" {
				bad = "unbalanced '('"
			}
			inner := s[i+1:]
			if ok {
				inner = s[i+1 : end-1]
			}
			toks = append(toks, token{tokComment, inner, i})
			i = end
		case c == '<' || c == '"':
			end, ok := closing(s, i)
			if !ok && bad == "" {
				bad = "unterminated " + string(c)
			}
			kind := tokAngle
			if c == '"' {
				kind = tokQuoted
			}
			toks = append(toks, token{kind, s[i:end], i})
			i = end
		default:
			j := i
			for j < len(s) && !strings.ContainsRune(" \t\r\n;(<\"", rune(s[j])) {
				j++
			}
			toks = append(toks, token{tokWord, s[i:j], i})
			i = j
		}
	}
	return toks, bad
}

// commentEnd returns the offset just past the comment opening at s[i],
// honouring nesting and quoted pairs, and whether it was closed.
func commentEnd(s string, i int) (int, bool) {
	depth := 0
	for j := i; j < len(s); j++ {
		switch s[j] {
		case '\\':
			j++
		case '(':
			depth++
		case ')':
			depth--
			if depth == 0 {
				return j + 1, true
			}
		}
	}
	return len(s), false
}

// closing returns the offset just past the '>' or '"' that closes the one
// at s[i], and whether there was one.
func closing(s string, i int) (int, bool) {
	want := byte('>')
	if s[i] == '"' {
		want = '"'
	}
	for j := i + 1; j < len(s); j++ {
		switch {
		case s[j] == '\\' && want == '"':
			j++
		case s[j] == want:
			return j + 1, true
		}
	}
	return len(s), false
}
