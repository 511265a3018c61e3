package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// maxHeaderBytes bounds how much of a message trace reads before the blank
// line that ends the header.
const maxHeaderBytes = 4 << 20

// traceHop is one row of `mta trace`: a Received header, numbered from the
// oldest (1), with the delay since the hop before it.
type traceHop struct {
	Hop int `json:"hop"`
	received
	// DelaySeconds is this hop's date minus the previous hop's; absent for
	// the first hop or when either date is missing. Negative values mean
	// the clocks of the two hosts disagree.
	DelaySeconds *float64 `json:"delay_seconds,omitempty"`
	delay        *time.Duration
}

func runTrace(ctx context.Context, args []string, stdio Stdio) error {
	fs := newFlagSet("trace", "[--json] [FILE]", stdio)
	asJSON := fs.Bool("json", false, "print the hops as a JSON array")
	if done, err := parseFlags(fs, args, stdio); done {
		return err
	}
	if fs.NArg() > 1 {
		fs.Usage()
		return errUsage
	}
	in := stdio.In
	if name := fs.Arg(0); name != "" && name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return fmt.Errorf("trace: %w", err)
		}
		defer func() { _ = f.Close() }() // read-only: nothing to lose
		in = f
	}
	values, err := receivedFields(in)
	if err != nil {
		return fmt.Errorf("trace: %w", err)
	}
	hops := traceHops(values)
	if *asJSON {
		enc := json.NewEncoder(stdio.Out)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false) // addresses keep their <>
		return enc.Encode(hops)
	}
	return printTrace(stdio.Out, hops)
}

// receivedFields reads a message header (CRLF or LF line ends, folded
// lines, an mbox "From " line first) and returns the unfolded bodies of its
// Received fields, top (newest) first. It stops at the blank line that ends
// the header or at the end of the input.
func receivedFields(r io.Reader) ([]string, error) {
	br := bufio.NewReader(io.LimitReader(r, maxHeaderBytes+1))
	var (
		out     []string
		cur     *strings.Builder // the Received field being unfolded, if any
		total   int
		started bool
	)
	flush := func() {
		if cur != nil {
			out = append(out, cur.String())
			cur = nil
		}
	}
	for {
		line, err := br.ReadString('\n')
		total += len(line)
		if total > maxHeaderBytes {
			return nil, fmt.Errorf("header longer than %d bytes", maxHeaderBytes)
		}
		text := strings.TrimRight(line, "\r\n")
		switch {
		case text == "":
			if started { // the blank line that ends the header
				flush()
				return out, nil
			}
		case !started && strings.HasPrefix(text, "From "):
			// the mbox separator line
		case text[0] == ' ' || text[0] == '\t':
			if cur != nil {
				cur.WriteString(text) // unfolding drops the line break only
			}
		default:
			flush()
			name, value, ok := strings.Cut(text, ":")
			if ok && strings.EqualFold(strings.TrimRight(name, " \t"), "received") {
				cur = &strings.Builder{}
				cur.WriteString(value)
			}
		}
		started = started || text != ""
		if err != nil {
			flush()
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, err
		}
	}
}

// traceHops parses the fields (newest first) into hops, oldest first, with
// the delay between each dated hop and the one before it.
func traceHops(values []string) []traceHop {
	hops := make([]traceHop, len(values))
	for i, v := range values {
		n := len(values) - 1 - i
		hops[n] = traceHop{Hop: n + 1, received: parseReceived(v)}
	}
	for i := 1; i < len(hops); i++ {
		prev, cur := hops[i-1].Date, hops[i].Date
		if prev.IsZero() || cur.IsZero() {
			continue
		}
		d := cur.Sub(prev)
		secs := d.Seconds()
		hops[i].delay, hops[i].DelaySeconds = &d, &secs
	}
	return hops
}

// traceColumns head the table; a malformed hop fills the first three and
// then shows its reason and raw text across the rest.
var traceColumns = []string{"HOP", "DELAY", "DATE", "FROM (HELO)", "SEEN AS", "BY", "WITH", "ID", "FOR"}

// printTrace writes the hops as a table.
func printTrace(w io.Writer, hops []traceHop) error {
	if len(hops) == 0 {
		_, err := fmt.Fprintln(w, "no Received headers")
		return err
	}
	rows := [][]string{traceColumns}
	for _, h := range hops {
		delay := ""
		if h.delay != nil {
			delay = formatDelay(*h.delay)
		}
		row := []string{strconv.Itoa(h.Hop), delay, formatDate(h.Date)}
		if h.Malformed != "" {
			row = append(row, "MALFORMED ("+clean(h.Malformed)+"): "+clean(h.Raw))
			rows = append(rows, row)
			continue
		}
		from := h.Helo
		if from == "" && h.From == "" {
			from = h.Comment
		}
		for _, c := range []string{from, seenCell(h.received), h.By, h.With, h.ID, h.For} {
			row = append(row, clean(c))
		}
		rows = append(rows, row)
	}
	if err := writeTable(w, rows); err != nil {
		return err
	}
	return printTotal(w, hops)
}

// writeTable pads each cell to its column's width, two spaces apart. A
// short row's last cell does not widen its column: it runs on.
func writeTable(w io.Writer, rows [][]string) error {
	width := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, c := range row {
			if len(row) == len(width) || i < len(row)-1 {
				width[i] = max(width[i], utf8.RuneCountInString(c))
			}
		}
	}
	var out strings.Builder
	for _, row := range rows {
		var line strings.Builder
		for i, c := range row {
			line.WriteString(c)
			if i < len(row)-1 {
				line.WriteString(strings.Repeat(" ", width[i]-utf8.RuneCountInString(c)+2))
			}
		}
		out.WriteString(strings.TrimRight(line.String(), " "))
		out.WriteByte('\n')
	}
	_, err := io.WriteString(w, out.String())
	return err
}

// printTotal writes the time from the first dated hop to the last.
func printTotal(w io.Writer, hops []traceHop) error {
	var first, last *traceHop
	for i := range hops {
		if hops[i].Date.IsZero() {
			continue
		}
		if first == nil {
			first = &hops[i]
		}
		last = &hops[i]
	}
	if first == nil || first == last {
		return nil
	}
	_, err := fmt.Fprintf(w, "\ntotal %s from hop %d to hop %d\n",
		formatDelay(last.Date.Sub(first.Date)), first.Hop, last.Hop)
	return err
}

// seenCell is the "seen as" cell: reverse DNS and address as the receiving
// host recorded them.
func seenCell(r received) string {
	switch {
	case r.RDNS != "" && r.IP != "":
		return r.RDNS + " [" + r.IP + "]"
	case r.IP != "":
		return "[" + r.IP + "]"
	}
	return r.RDNS
}

func formatDate(t time.Time) string {
	if t.IsZero() {
		return "?"
	}
	return t.Format("2006-01-02 15:04:05 -0700")
}

// formatDelay writes a delay with an explicit sign, so clock skew (a
// negative delay) stands out.
func formatDelay(d time.Duration) string {
	if d > 0 {
		return "+" + d.String()
	}
	return d.String()
}

// clean makes header text safe for a terminal: control characters (a
// header may carry escape sequences) become '?', runs of white space one
// space.
func clean(s string) string {
	s = strings.Map(func(r rune) rune {
		switch {
		case r == '\t' || r == '\n' || r == '\r':
			return ' '
		case unicode.IsControl(r) || r == unicode.ReplacementChar:
			return '?'
		}
		return r
	}, s)
	return strings.Join(strings.Fields(s), " ")
}
