package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"mta/spool"
)

// runLabStatus prints, per message, the route each recipient took: the
// hosts tried in order with their replies, the hosts skipped and why, and
// the host that took it. It asks the lab's MTA through its admin socket,
// for live messages and for retired ones (so delivered mail shows too).
func runLabStatus(ctx context.Context, args []string, stdio Stdio) error {
	fs := newFlagSet("lab status", "[--dir DIR] [--json] [--limit N]", stdio)
	dir := fs.String("dir", "", "the --dir the lab was started with (default "+labRuntimeHint+")")
	asJSON := fs.Bool("json", false, "print JSON for scripts")
	limit := fs.Int("limit", 50, "show at most this many messages, the latest")
	if done, err := parseFlags(fs, args, stdio); done {
		return err
	}
	if fs.NArg() > 0 || *limit <= 0 {
		fs.Usage()
		return errUsage
	}
	info, err := findLab(*dir)
	if err != nil {
		return exitf(exitTempFail, "%v", err)
	}
	msgs, err := labMessages(ctx, info.Admin, *limit)
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
		return exitf(exitTempFail, "the lab in %s (pid %d) does not answer: it was stopped without Ctrl-C (start it again)", filepath.Dir(info.Admin), info.PID)
	}
	if err != nil {
		return exitf(exitTempFail, "%v", err)
	}
	st := labStatus{Lab: info}
	for i := range msgs {
		st.Messages = append(st.Messages, newLabMessage(&msgs[i]))
	}
	if *asJSON {
		enc := json.NewEncoder(stdio.Out)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	st.print(stdio.Out, time.Now())
	return nil
}

// findLab reads the lab.json of the lab running in dir (or in the
// well-known runtime directory).
func findLab(dir string) (*labInfo, error) {
	if dir == "" {
		var err error
		if dir, err = labRuntimeDir(false); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, errors.New("no lab is running (start one with \"mta lab\"; give --dir when it was started with one)")
			}
			return nil, err
		}
	}
	info, err := readLabInfo(filepath.Join(dir, labInfoFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no lab is running in %s (start one with \"mta lab\")", dir)
	}
	return info, err
}

// labMessages are the latest limit messages, live and retired, oldest
// first, each with its attempt logs.
func labMessages(ctx context.Context, admin string, limit int) ([]spool.Message, error) {
	byID := map[string]spool.Message{}
	cursor := ""
	for len(byID) < limit {
		resp, err := labAdmin(ctx, admin, adminRequest{Op: "retired", Cursor: cursor, Limit: min(limit, 500)})
		if err != nil {
			return nil, err
		}
		for _, m := range resp.Messages {
			byID[m.ID] = m
		}
		if cursor = resp.Cursor; cursor == "" {
			break
		}
	}
	resp, err := labAdmin(ctx, admin, adminRequest{Op: "list", Limit: 10000})
	if err != nil {
		return nil, err
	}
	for _, m := range resp.Messages {
		if _, retired := byID[m.ID]; !retired {
			byID[m.ID] = m
		}
	}
	out := make([]spool.Message, 0, len(byID))
	for _, m := range byID {
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b spool.Message) int {
		if c := a.Envelope.Arrival.Compare(b.Envelope.Arrival); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out[max(0, len(out)-limit):], nil
}

func labAdmin(ctx context.Context, admin string, req adminRequest) (*adminResponse, error) {
	resp, err := adminCall(ctx, admin, req)
	if err != nil {
		return nil, err
	}
	if resp.Error != "" {
		return nil, fmt.Errorf("%s: %s", req.Op, resp.Error)
	}
	return resp, nil
}

// labStatus is `mta lab status --json`.
type labStatus struct {
	Lab      *labInfo     `json:"lab"`
	Messages []labMessage `json:"messages"`
}

// labMessage is one message and how each recipient was routed.
type labMessage struct {
	ID         string    `json:"id"`
	Sender     string    `json:"sender"` // "" for a bounce
	Bounce     bool      `json:"bounce"` // a DSN the MTA made
	Arrival    time.Time `json:"arrival"`
	Finished   bool      `json:"finished"` // every recipient is delivered or failed
	Recipients []labRcpt `json:"recipients"`
}

// labRcpt is one recipient: where it stands, who took it, every attempt.
type labRcpt struct {
	Addr        string       `json:"addr"`
	State       string       `json:"state"`              // pending, deferred, delivered, failed
	TakenBy     string       `json:"taken_by,omitempty"` // the host that took it
	TakenByIP   string       `json:"taken_by_ip,omitempty"`
	NextAttempt *time.Time   `json:"next_attempt,omitempty"`
	Attempts    []labAttempt `json:"attempts"`
}

// labAttempt is one attempt: its route, step by step, and its outcome.
// The spool records an attempt when it ends; a student watching wants to
// see when it began (a hanging host shows as a gap before the end).
type labAttempt struct {
	Started    time.Time `json:"started"`
	Ended      time.Time `json:"ended"`
	DurationMS int64     `json:"duration_ms"`
	Route      []labStep `json:"route"`
	Outcome    labStep   `json:"outcome"`
}

// labStep is one host of a route and what happened there.
type labStep struct {
	Host     string `json:"host"`
	IP       string `json:"ip,omitempty"`
	Phase    string `json:"phase"` // "skip" for a host or address not dialled
	Code     int    `json:"code,omitempty"`
	Enhanced string `json:"enhanced,omitempty"`
	Text     string `json:"text"`
}

func newLabMessage(m *spool.Message) labMessage {
	e := &m.Envelope
	out := labMessage{ID: m.ID, Sender: e.Sender, Bounce: e.DSN, Arrival: e.Arrival, Finished: m.Retired}
	for i := range e.Recipients {
		r := &e.Recipients[i]
		lr := labRcpt{Addr: r.Addr, State: r.State.String(), Attempts: []labAttempt{}}
		if r.Held {
			lr.State = "held"
		}
		if !r.State.Final() && !r.NextAttempt.IsZero() {
			next := r.NextAttempt
			lr.NextAttempt = &next
		}
		for _, a := range r.Attempts {
			la := labAttempt{Started: a.Time.Add(-a.Duration), Ended: a.Time, DurationMS: a.Duration.Milliseconds(), Route: []labStep{},
				Outcome: labStep{Host: a.Host, IP: a.IP, Phase: a.Phase, Code: a.Code, Enhanced: a.Enhanced, Text: a.Text}}
			for _, s := range a.Route {
				la.Route = append(la.Route, labStep(s))
			}
			lr.Attempts = append(lr.Attempts, la)
		}
		if n := len(r.Attempts); r.State == spool.Delivered && n > 0 {
			lr.TakenBy, lr.TakenByIP = r.Attempts[n-1].Host, r.Attempts[n-1].IP
		}
		out.Recipients = append(out.Recipients, lr)
	}
	return out
}

func (st *labStatus) print(w io.Writer, now time.Time) {
	fmt.Fprintf(w, "lab: DNS %s, MTA relay %s\n", st.Lab.DNS, strings.Join(st.Lab.Relay, " "))
	if len(st.Messages) == 0 {
		fmt.Fprintf(w, "\nno messages yet: send one to the relay listener\n")
	}
	for _, m := range st.Messages {
		from := m.Sender
		if m.Bounce {
			from = "<> (a bounce from the MTA)"
		}
		status := "in the queue"
		if m.Finished {
			status = "finished"
		}
		fmt.Fprintf(w, "\nmessage %s from %s, arrived %s, %s\n", m.ID, from, m.Arrival.Local().Format("15:04:05"), status)
		for _, r := range m.Recipients {
			r.print(w, now)
		}
	}
}

func (r *labRcpt) print(w io.Writer, now time.Time) {
	fmt.Fprintf(w, "  to <%s>: %s", r.Addr, r.State)
	switch {
	case r.TakenBy != "":
		fmt.Fprintf(w, ", taken by %s [%s]", r.TakenBy, r.TakenByIP)
	case r.State == "failed" && len(r.Attempts) > 0:
		o := r.Attempts[len(r.Attempts)-1].Outcome
		fmt.Fprintf(w, ", %s", strings.TrimSpace(replyText(o)))
	}
	if r.NextAttempt != nil {
		fmt.Fprintf(w, ", next attempt %s", when(now, *r.NextAttempt))
	}
	fmt.Fprintln(w)
	if len(r.Attempts) == 0 {
		fmt.Fprintln(w, "    not tried yet")
	}
	for i, a := range r.Attempts {
		fmt.Fprintf(w, "    attempt %d at %s, took %dms:\n", i+1, a.Started.Local().Format("15:04:05.000"), a.DurationMS)
		route := a.Route
		if len(route) == 0 { // a local decision, or recorded without its route
			route = []labStep{a.Outcome}
		}
		for j, s := range route {
			mark := ""
			if r.State == "delivered" && i == len(r.Attempts)-1 && j == len(route)-1 {
				mark = "  <- took it"
			}
			fmt.Fprintf(w, "      %d. %s%s\n", j+1, stepLine(spool.RouteStep(s)), mark)
		}
	}
}

// stepLine is one route step: the host, then its reply, the dial error,
// or why it was skipped.
func stepLine(s spool.RouteStep) string {
	host := s.Host
	if s.IP != "" {
		host += " [" + s.IP + "]"
	}
	if host != "" {
		host += "  "
	}
	if s.Phase == "skip" {
		return host + "skipped: " + s.Text
	}
	return host + s.Phase + ": " + replyText(labStep(s))
}

// replyText is "250 2.0.0 text", or "text (4.4.1)" when there was no reply.
func replyText(s labStep) string {
	if s.Code != 0 {
		return strings.TrimSpace(fmt.Sprintf("%d %s %s", s.Code, s.Enhanced, s.Text))
	}
	if s.Enhanced != "" && !strings.HasSuffix(s.Text, "("+s.Enhanced+")") {
		return s.Text + " (" + s.Enhanced + ")"
	}
	return s.Text
}
