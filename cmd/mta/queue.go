package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"mta/spool"
)

const queueSynopsis = `list|show ID|retry ID|all|hold ID|release ID|delete ID|flush [options]

  list            the queue by destination domain, then its messages
                  (--retired: the finished ones, newest first)
  show ID         one message (live or retired) with every recipient's attempts
  retry ID|all    make deferred recipients due now
  hold ID         stop delivering a message until released
  release ID      deliver a held message again
  delete ID       remove a message (--bounce tells the sender)
  flush           retry everything now`

func runQueue(ctx context.Context, args []string, stdio Stdio) error {
	fs := newFlagSet("queue", queueSynopsis, stdio)
	config := fs.String("config", "", "config file (default /etc/mta/mta.yaml when present)")
	asJSON := fs.Bool("json", false, "print JSON for scripts")
	domain := fs.String("domain", "", "list: only messages with a recipient at this domain")
	state := fs.String("state", "", "list: only pending, deferred or held messages")
	sender := fs.String("sender", "", "list: only messages from this sender")
	older := fs.Duration("older", 0, "list: only messages older than this")
	limit := fs.Int("limit", 100, "list: at most this many messages")
	retired := fs.Bool("retired", false, "list: the finished messages (delivered, bounced, deleted), newest first")
	bounce := fs.Bool("bounce", false, "delete: send the sender a bounce")
	// Options may follow the operation: mta queue show ID --json.
	op, rest := "", args
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		op, rest = args[0], args[1:]
	}
	var id string
	if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		id, rest = rest[0], rest[1:]
	}
	if done, err := parseFlags(fs, rest, stdio); done {
		return err
	}
	if op == "" || fs.NArg() > 0 {
		fs.Usage()
		return errUsage
	}
	req := adminRequest{Op: op, ID: id, Limit: *limit, Bounce: *bounce,
		Filter: spool.Filter{Domain: *domain, State: *state, Sender: *sender, OlderThan: *older}}
	if unknown, err := checkQueueOp(&req, *retired); err != nil {
		if unknown {
			fs.Usage()
		}
		return err
	}
	resp, err := callQueue(ctx, *config, req, op)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdio.Out)
		enc.SetIndent("", "  ")
		return enc.Encode(resp)
	}
	printQueueResult(stdio.Out, req.Op, op, id, resp, time.Now())
	return nil
}

// checkQueueOp checks that req's operation has the ID it needs (or none),
// and makes "list --retired" the "retired" request; unknown says the
// operation itself is not one.
func checkQueueOp(req *adminRequest, retired bool) (unknown bool, err error) {
	op, id := req.Op, req.ID
	switch op {
	case "list", "flush":
		if id != "" {
			return false, exitf(exitUsage, "queue %s takes no ID", op)
		}
		if retired && op == "list" {
			req.Op = "retired"
		}
	case "retry":
		if id == "all" {
			req.ID = ""
		} else if id == "" {
			return false, exitf(exitUsage, "queue retry needs an ID or \"all\"")
		}
	case "show", "hold", "release", "delete":
		if id == "" {
			return false, exitf(exitUsage, "queue %s needs a message ID", op)
		}
	default:
		return true, exitf(exitUsage, "unknown queue operation %q", op)
	}
	return false, nil
}

// callQueue asks the daemon's admin socket and turns its refusals into
// exit codes.
func callQueue(ctx context.Context, config string, req adminRequest, op string) (*adminResponse, error) {
	cfg, err := clientConfig(config)
	if err != nil {
		return nil, exitf(exitConfig, "%v", err)
	}
	resp, err := adminCall(ctx, filepath.Join(clientDirs(cfg).Runtime, adminSocket), req)
	if errors.Is(err, iofs.ErrPermission) {
		return nil, exitf(exitNoPerm, "%v (members of group %s may use mta queue)", err, cfg.Admin.Group)
	}
	if err != nil {
		return nil, exitf(exitTempFail, "%v", err)
	}
	if resp.Error != "" {
		code := exitFailure
		switch {
		case resp.NotFound:
			code = exitDataErr
		case resp.Denied:
			code = exitNoPerm
		}
		return nil, exitf(code, "queue %s: %s", op, resp.Error)
	}
	return resp, nil
}

func printQueueResult(w io.Writer, reqOp, op, id string, resp *adminResponse, now time.Time) {
	switch {
	case reqOp == "retired":
		printRetired(w, resp, now)
	case op == "list":
		printQueueList(w, resp, now)
	case op == "show":
		printMessage(w, resp.Message, now)
	case op == "retry", op == "flush":
		fmt.Fprintf(w, "%d recipient(s) due now\n", resp.Changed)
	default:
		fmt.Fprintf(w, "%s: %s done\n", id, op)
	}
}

func printQueueList(w io.Writer, resp *adminResponse, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	c := resp.Counts
	fmt.Fprintf(tw, "DOMAIN\tPENDING\tDEFERRED\tHELD\tOLDEST\n")
	for _, d := range sortedKeys(c.ByDomain) {
		dc := c.ByDomain[d]
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\n", d, dc.Pending, dc.Deferred, dc.Held, age(now, dc.Oldest))
	}
	fmt.Fprintf(tw, "total: %d message(s)\t%d\t%d\t%d\t\n", c.Messages, c.ByState["pending"], c.ByState["deferred"], c.ByState["held"])
	_ = tw.Flush()
	if len(resp.Messages) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintf(tw, "ID\tAGE\tSIZE\tSENDER\tRECIPIENTS\tNEXT\tLAST REPLY\n")
	for _, m := range resp.Messages {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", m.ID, age(now, m.Envelope.Arrival), m.Envelope.Size,
			senderText(m.Envelope.Sender), rcptSummary(m.Envelope.Recipients), nextAttempt(now, m.Envelope.Recipients), lastReply(m.Envelope.Recipients))
	}
	_ = tw.Flush()
	if resp.More {
		fmt.Fprintln(w, "(more messages: raise --limit or filter)")
	}
}

// printRetired lists finished messages, newest first.
func printRetired(w io.Writer, resp *adminResponse, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "ID\tFINISHED\tSIZE\tSENDER\tRECIPIENTS\tLAST REPLY\n")
	for _, m := range resp.Messages {
		fmt.Fprintf(tw, "%s\t%s ago\t%d\t%s\t%s\t%s\n", m.ID, age(now, m.RetiredAt), m.Envelope.Size,
			senderText(m.Envelope.Sender), rcptSummary(m.Envelope.Recipients), lastReply(m.Envelope.Recipients))
	}
	_ = tw.Flush()
	if len(resp.Messages) == 0 {
		fmt.Fprintln(w, "(no finished messages)")
	}
	if resp.Cursor != "" {
		fmt.Fprintln(w, "(older messages: raise --limit)")
	}
}

func printMessage(w io.Writer, m *spool.Message, now time.Time) {
	e := m.Envelope
	status := "queued"
	if m.Retired {
		status = "finished " + m.RetiredAt.Format(time.RFC3339) + " (retired record; body removed)"
	}
	fmt.Fprintf(w, "message %s: %s\n", m.ID, status)
	fmt.Fprintf(w, "  from:     %s\n", senderText(e.Sender))
	fmt.Fprintf(w, "  arrived:  %s (%s ago)\n", e.Arrival.Format(time.RFC3339), age(now, e.Arrival))
	fmt.Fprintf(w, "  size:     %d octets", e.Size)
	if e.Has8Bit {
		fmt.Fprint(w, ", 8-bit")
	}
	if e.SMTPUTF8 {
		fmt.Fprint(w, ", SMTPUTF8")
	}
	fmt.Fprintln(w)
	o := e.Origin
	fmt.Fprintf(w, "  origin:   %s", o.Listener)
	if o.ClientIP != "" {
		fmt.Fprintf(w, " from %s (HELO %s)", o.ClientIP, o.HELO)
	}
	if o.AuthUser != "" {
		fmt.Fprintf(w, " user %s", o.AuthUser)
	}
	if o.UID >= 0 && o.Listener == "local" {
		fmt.Fprintf(w, " uid %d", o.UID)
	}
	fmt.Fprintln(w)
	for _, r := range e.Recipients {
		fmt.Fprintf(w, "\n  to <%s>: %s", r.Addr, rcptState(r))
		if !r.State.Final() {
			fmt.Fprintf(w, ", next attempt %s", when(now, r.NextAttempt))
		}
		fmt.Fprintf(w, " (%d attempt(s))\n", r.AttemptCount)
		for _, a := range r.Attempts {
			fmt.Fprintf(w, "    %s  %s\n", a.Time.Format("2006-01-02 15:04:05"), attemptText(a))
			if len(a.Route) > 1 { // a route of one step is the line above
				for i, s := range a.Route {
					fmt.Fprintf(w, "      %d. %s\n", i+1, stepLine(s))
				}
			}
		}
	}
}

func attemptText(a spool.Attempt) string {
	var b strings.Builder
	if a.Host != "" {
		fmt.Fprintf(&b, "%s[%s]", a.Host, a.IP)
		if a.TLS != "" {
			fmt.Fprintf(&b, " tls=%s", a.TLS)
		}
		b.WriteString(" ")
	}
	fmt.Fprintf(&b, "%s:", a.Phase)
	if a.Code != 0 {
		fmt.Fprintf(&b, " %d", a.Code)
	}
	if a.Enhanced != "" {
		fmt.Fprintf(&b, " %s", a.Enhanced)
	}
	fmt.Fprintf(&b, " %s (%s)", a.Text, a.Duration.Round(time.Millisecond))
	return b.String()
}

func rcptState(r spool.Recipient) string {
	if r.Held {
		return "held (" + r.State.String() + ")"
	}
	return r.State.String()
}

func senderText(s string) string {
	if s == "" {
		return "<>"
	}
	return s
}

func rcptSummary(rs []spool.Recipient) string {
	n := map[string]int{}
	for _, r := range rs {
		n[rcptState(r)]++
	}
	var parts []string
	for _, k := range sortedKeys(n) {
		parts = append(parts, fmt.Sprintf("%d %s", n[k], k))
	}
	first := ""
	if len(rs) > 0 {
		first = rs[0].Addr
		if len(rs) > 1 {
			first += ",…"
		}
	}
	return first + " (" + strings.Join(parts, ", ") + ")"
}

func nextAttempt(now time.Time, rs []spool.Recipient) string {
	var next time.Time
	for _, r := range rs {
		if !r.State.Final() && !r.Held && (next.IsZero() || r.NextAttempt.Before(next)) {
			next = r.NextAttempt
		}
	}
	if next.IsZero() {
		return "-"
	}
	return when(now, next)
}

func lastReply(rs []spool.Recipient) string {
	var last spool.Attempt
	for _, r := range rs {
		if n := len(r.Attempts); n > 0 && r.Attempts[n-1].Time.After(last.Time) {
			last = r.Attempts[n-1]
		}
	}
	if last.Time.IsZero() {
		return "-"
	}
	s := strings.TrimSpace(fmt.Sprintf("%s %s", last.Enhanced, last.Text))
	if last.Code != 0 { // 0: no reply (DNS, dial)
		s = fmt.Sprintf("%d %s", last.Code, s)
	}
	if len(s) > 60 {
		s = s[:57] + "..."
	}
	return s
}

// age is a short human duration: 45s, 12m, 3h4m, 2d5h.
func age(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
}

func when(now, t time.Time) string {
	if !t.After(now) {
		return "now"
	}
	return "in " + age(now, now.Add(-t.Sub(now)))
}
