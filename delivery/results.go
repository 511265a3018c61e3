package delivery

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"time"

	"mta/spool"
)

// deliver runs one attempt of j and records it. It reports a failure of the
// whole destination, why, and the time the attempt was recorded at (by
// cfg.Now), from which the destination's backoff counts.
func (e *Scheduler) deliver(j *job) (whole bool, why *AttemptError, at time.Time) {
	if !e.load(j) {
		return false, nil, time.Time{}
	}
	start := time.Now()
	res, whole := e.run(e.hard, j)
	if whole {
		for _, r := range res {
			why = &AttemptError{Code: r.code, Enhanced: r.enhanced, Text: r.text, Phase: r.phase, Host: r.host, IP: r.ip}
			break
		}
	}
	at = e.cfg.Now()
	e.recordAt(j, res, time.Since(start), time.Time{}, at)
	return whole, why, at
}

// load reads j's message; a message gone meanwhile (deleted) needs nothing.
func (e *Scheduler) load(j *job) bool {
	m, err := e.cfg.Spool.Message(j.id)
	if err != nil {
		if !errors.Is(err, spool.ErrNotFound) {
			e.log.Error("load message", "msg_id", j.id, "err", err)
		}
		e.cfg.Spool.Unclaim(j.tasks)
		return false
	}
	j.msg = m
	j.need8Bit, j.needUTF8 = needs(&m.Envelope, j.tasks)
	return true
}

// deferJobs defers the mail of a dead destination without dialling.
func (e *Scheduler) deferJobs(jobs []*job, why *AttemptError, until, now time.Time) {
	text := "destination not dialled: it failed at " + now.Format(time.RFC3339)
	r := result{state: spool.Deferred, phase: phaseLocal, enhanced: "4.4.1", text: text}
	if why != nil {
		r.enhanced = why.Enhanced
		r.text = "destination down until " + until.Format(time.RFC3339) + ", not dialled: " + why.Error()
	}
	for _, j := range jobs {
		if !e.load(j) {
			continue
		}
		res := make(map[int]result, len(j.tasks))
		for _, t := range j.tasks {
			res[t.Rcpt] = r
		}
		e.recordAt(j, res, 0, until, e.cfg.Now())
	}
}

// recordAt commits an attempt's results, as of now, in one Update and logs
// one line per recipient; interrupted recipients are given back
// unrecorded. No deferred recipient is due before notBefore.
func (e *Scheduler) recordAt(j *job, res map[int]result, d time.Duration, notBefore, now time.Time) {
	env := &j.msg.Envelope
	var u spool.Update
	var back []spool.Task
	var delayed, relayed []dsnRcpt
	var delayRefs []spool.RcptRef
	owed := env.Sender != "" && !env.DSN
	for _, t := range j.tasks {
		r, ok := res[t.Rcpt]
		if !ok || r.interrupted || t.Rcpt < 0 || t.Rcpt >= len(env.Recipients) {
			back = append(back, t)
			continue
		}
		sr := e.outcome(j, t, r, now, d, notBefore)
		rcpt := &env.Recipients[t.Rcpt]
		switch {
		case sr.State == spool.Deferred && owed && e.delayOwed(rcpt, env.Arrival, now):
			sr.DelayNotified = true
			delayed = append(delayed, dsnRcpt{addr: rcpt.Addr, orcpt: rcpt.ORcpt, action: "delayed",
				status: sr.Attempt.Enhanced, remote: r.host, diag: diagOf(r), text: r.text, last: now})
			delayRefs = append(delayRefs, spool.RcptRef{ID: j.id, Rcpt: t.Rcpt})
		case sr.State == spool.Delivered && owed && rcpt.Notify&spool.NotifySuccess != 0 && !r.hopDSN:
			relayed = append(relayed, dsnRcpt{addr: rcpt.Addr, orcpt: rcpt.ORcpt, action: "relayed",
				status: sr.Attempt.Enhanced, remote: r.host, diag: diagOf(r), last: now})
		}
		u.Results = append(u.Results, sr)
		e.logAttempt(j, t, r, sr, d)
	}
	if len(back) > 0 {
		e.cfg.Spool.Unclaim(back)
	}
	if len(delayed) > 0 {
		// One delay DSN for the message: it also reports the recipients
		// deferred at other destinations that are past the warning time,
		// and the spool sends it only if one of them had none yet.
		inJob := make(map[int]bool, len(j.tasks))
		for _, t := range j.tasks {
			inJob[t.Rcpt] = true
		}
		for i := range env.Recipients {
			r := &env.Recipients[i]
			if !inJob[i] && r.State == spool.Deferred && e.delayOwed(r, env.Arrival, now) {
				delayed = append(delayed, lastAttempt(r, "delayed"))
				delayRefs = append(delayRefs, spool.RcptRef{ID: j.id, Rcpt: i})
			}
		}
		if n := e.notices(j, delayed, nil); len(n) == 1 {
			u.Delay = &spool.DelayNotice{Recipients: delayRefs, DSN: n[0]}
		}
	}
	if len(relayed) > 0 {
		u.Enqueue = e.notices(j, nil, relayed)
	}
	if len(u.Results) == 0 {
		return
	}
	if err := e.cfg.Spool.Record(context.WithoutCancel(e.hard), u); err != nil {
		e.log.Error("record attempt", "msg_id", j.id, "err", err)
		tasks := make([]spool.Task, 0, len(u.Results))
		for _, t := range j.tasks {
			if _, ok := res[t.Rcpt]; ok {
				tasks = append(tasks, t)
			}
		}
		e.cfg.Spool.Unclaim(tasks) // due again at the committed lease
	}
}

// outcome turns a result into the spool's: the next attempt of a deferred
// recipient, or its failure once the lifetime has passed.
func (e *Scheduler) outcome(j *job, t spool.Task, r result, now time.Time, d time.Duration, notBefore time.Time) spool.Result {
	env := &j.msg.Envelope
	sr := spool.Result{ID: j.id, Rcpt: t.Rcpt, State: r.state, Attempt: spool.Attempt{
		Time: now, Host: r.host, IP: r.ip, TLS: r.tls, Phase: r.phase,
		Code: r.code, Enhanced: r.enhanced, Text: r.text, Duration: d, Route: r.route,
	}}
	if r.state != spool.Deferred {
		return sr
	}
	expires := env.Arrival.Add(e.cfg.Lifetime)
	if !now.Before(expires) {
		sr.State = spool.Failed
		sr.Attempt.Text += " (queue lifetime expired)"
		return sr
	}
	next := now.Add(e.cfg.Backoff.delay(t.Attempts + 1))
	if next.Before(notBefore) {
		next = notBefore
	}
	if next.After(expires) {
		next = expires // one last try at the end of the lifetime
	}
	sr.NextAttempt = next
	return sr
}

func (e *Scheduler) delayOwed(r *spool.Recipient, arrival, now time.Time) bool {
	return e.cfg.DelayWarning > 0 && !r.DelayNotified && now.Sub(arrival) >= e.cfg.DelayWarning &&
		notifies(r.Notify, spool.NotifyDelay)
}

func diagOf(r result) string {
	if r.code == 0 {
		return ""
	}
	return oneLine(strconv.Itoa(r.code) + " " + r.enhanced + " " + r.text)
}

// notices builds the delay and relayed DSNs an attempt owes, with the
// message's headers.
func (e *Scheduler) notices(j *job, delayed, relayed []dsnRcpt) []spool.NewMessage {
	var head []byte
	if rc, err := e.cfg.Spool.Body(j.id); err == nil {
		head, _ = io.ReadAll(io.LimitReader(rc, 64*1024)) // a short read still has the headers
		_ = rc.Close()
	}
	var out []spool.NewMessage
	for _, n := range []struct {
		kind  dsnKind
		rcpts []dsnRcpt
	}{{dsnDelay, delayed}, {dsnRelayed, relayed}} {
		if len(n.rcpts) == 0 {
			continue
		}
		m := *j.msg
		m.Envelope.Ret = spool.RetHeaders // only failures return the full message
		nm, err := buildDSN(e.dsn, &m, n.kind, n.rcpts, head)
		if err != nil || nm == nil {
			continue
		}
		out = append(out, *nm)
	}
	return out
}

// logAttempt logs one line per recipient per attempt, in the spirit of
// Postfix's "to=<…>, relay=host[ip], delay=…, dsn=…, status=…": duration is
// the attempt's, delay the time since the message arrived.
func (e *Scheduler) logAttempt(j *job, t spool.Task, r result, sr spool.Result, d time.Duration) {
	env := &j.msg.Envelope
	// Typed attributes: one of these lines is logged for every recipient
	// attempted, and key-value pairs would box each value first.
	attrs := make([]slog.Attr, 0, 17)
	attrs = append(attrs,
		slog.String("msg_id", j.id), slog.String("rcpt", env.Recipients[t.Rcpt].Addr), slog.String("domain", t.Domain),
		slog.String("mx", r.host), slog.String("ip", r.ip), slog.Int("attempt", t.Attempts+1), slog.String("phase", r.phase),
		slog.Int("code", r.code), slog.String("enhanced", r.enhanced), slog.Duration("duration", d),
		slog.Duration("delay", e.cfg.Now().Sub(env.Arrival)), slog.String("tls", r.tls),
		slog.String("status", sr.State.String()), slog.String("reply", r.text))
	if sr.State == spool.Deferred {
		attrs = append(attrs, slog.Time("next_attempt", sr.NextAttempt))
	}
	if r.maybeDup {
		attrs = append(attrs, slog.Bool("possible_duplicate", true))
	}
	e.log.LogAttrs(context.Background(), slog.LevelInfo, "delivery attempt", attrs...)
	e.obs.Attempt(sr.State.String(), r.phase, r.code)
	if sr.State == spool.Delivered {
		e.obs.Delivered(e.cfg.Now().Sub(env.Arrival))
	}
}
