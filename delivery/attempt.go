package delivery

// One attempt: the route's hosts in order until the recipients are
// resolved. The reply table (DESIGN "Delivery"):
//
//	dial failure, timeout, 4xx/5xx greeting,     close, next address/host;
//	EHLO/STARTTLS/AUTH failure, 421 anywhere      never reuse that connection
//	4xx to MAIL                                   next host
//	5xx to MAIL                                   the transaction's recipients fail
//	RCPT 452 (and 552, RFC 5321 §4.5.3.1.10)      a new transaction for them
//	RCPT other 4xx / 5xx                          that recipient deferred / failed
//	no RCPT accepted                              no DATA; RSET before the next MAIL
//	no RCPT accepted, DATA pipelined anyway       refused: RSET before the next MAIL;
//	                                              354: a lone "." (RFC 2920 §3.1), nothing delivered
//	DATA or final dot 4xx / 5xx                   deferred / failed
//	connection lost after the final dot           deferred, a possible duplicate
//	host lacks 8BITMIME / SMTPUTF8 / SIZE         next host, then 5.6.3 / 5.6.7 / 5.3.4
//
// Recipients left unresolved when the hosts or the budget (addresses,
// completed sessions) run out take the last host's error, or the last
// temporary one when a later host refused permanently (see finish). A 5xx
// greeting counts as temporary there (see fail): mail is never bounced
// because every host greeted 5xx.

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"mta/internal/mailaddr"
	"mta/spool"
)

// job is one message's claimed recipients for one destination.
type job struct {
	id     string
	dest   *destination
	tasks  []spool.Task
	spread int // rotation of equal-preference hosts

	msg      *spool.Message
	need8Bit bool
	needUTF8 bool
}

// result is what one attempt did for one recipient.
type result struct {
	state    spool.State
	phase    string
	host, ip string
	tls      string
	code     int
	enhanced string
	text     string
	hopDSN   bool // the host that took it offers DSN (NOTIFY went on)
	route    []spool.RouteStep
	maybeDup bool // the connection was lost after the final dot
	// interrupted: shutdown came before the recipient was resolved; it is
	// given back to the spool unrecorded.
	interrupted bool
}

func errResult(ae *AttemptError, tls string) result {
	r := result{state: spool.Deferred, phase: ae.Phase, host: ae.Host, ip: ae.IP, tls: tls,
		code: ae.Code, enhanced: ae.Enhanced, text: ae.Text}
	if ae.Permanent {
		r.state = spool.Failed
	}
	return r
}

// attempt is the state of one attempt of one job.
type attempt struct {
	e        *Scheduler
	ctx      context.Context
	j        *job
	start    time.Time
	pending  []int // recipient indexes still to resolve
	results  map[int]result
	addrs    int           // addresses dialled
	sessions int           // sessions that completed EHLO
	last     *AttemptError // the last host-level failure
	lastTemp *AttemptError // the last temporary one
	capErr   *AttemptError // a host lacked what the message needs
	steps    []spool.RouteStep
}

// run delivers j and returns its per-recipient results; whole reports a
// failure of the whole destination (no host took a session).
func (e *Scheduler) run(ctx context.Context, j *job) (res map[int]result, whole bool) {
	a := &attempt{e: e, ctx: ctx, j: j, start: time.Now(), results: make(map[int]result)}
	for _, t := range j.tasks {
		a.pending = append(a.pending, t.Rcpt)
	}
	hosts, aerr := e.hostsFor(ctx, j)
	if aerr != nil {
		a.routeFailed(aerr, j.dest.domain)
	}
	for _, h := range hosts {
		if a.done() {
			break
		}
		if h.skip != "" {
			a.step(spool.RouteStep{Host: h.name, Phase: phaseSkip, Text: h.skip})
			continue
		}
		if h.err != nil {
			a.fail(h.err)
			continue
		}
		a.tryHost(h)
	}
	a.finish()
	whole = a.sessions == 0 && a.capErr == nil && a.last != nil && !a.last.Permanent
	return a.results, whole
}

func (a *attempt) done() bool {
	cfg := &a.e.cfg
	return len(a.pending) == 0 || a.addrs >= cfg.MaxAddrsPerAttempt ||
		a.sessions >= cfg.MaxSessionsPerAttempt || a.ctx.Err() != nil
}

// finish gives the recipients no host resolved the last host error. A
// permanent one (a 5xx greeting or EHLO, a missing capability) speaks of
// that host, not of the recipients: it fails them only when no host
// failed temporarily, since a better host may be back later (RFC 5321
// §5.1: the hosts are tried, and retried, until one takes the mail).
func (a *attempt) finish() {
	why := a.last
	if a.capErr != nil {
		why = a.capErr
	}
	if why != nil && why.Permanent && a.lastTemp != nil {
		why = a.lastTemp
	}
	if why == nil {
		why = localError(false, "4.4.1", phaseDial, "no host could be tried")
	}
	for _, r := range a.pending {
		res := errResult(why, "")
		res.route = slices.Clip(a.steps)
		res.interrupted = a.ctx.Err() != nil
		a.set(r, res)
	}
	a.pending = nil
}

// fail notes a host-level failure. A 5xx greeting refuses us that host,
// not the mail: it is recorded as answered, and counts for the recipients
// as a temporary failure, so mail that only such hosts were left to take
// waits and is retried rather than bounced (Postfix's default,
// smtp_skip_5xx_greeting; RFC 5321 §3.1 lets a server greet 554 for
// reasons of its own, and §5.1 has the client go on to the next host).
func (a *attempt) fail(ae *AttemptError) {
	a.step(errStep(ae))
	if ae.Phase == phaseGreeting && ae.Permanent {
		soft := *ae
		soft.Permanent = false
		soft.Enhanced = "4" + strings.TrimPrefix(ae.Enhanced, "5")
		ae = &soft
	}
	a.last = ae
	if !ae.Permanent {
		a.lastTemp = ae
	}
}

func (a *attempt) set(rcpt int, r result) {
	if _, ok := a.results[rcpt]; !ok {
		if r.route == nil {
			r.route = a.routeTo(r)
		}
		a.results[rcpt] = r
	}
}

// tryHost tries h's addresses until the recipients are resolved, a
// failure says to move to the next host, or the budget runs out.
func (a *attempt) tryHost(h mxHost) {
	a.skipAddrs(h)
	for _, ip := range orderAddrs(h.addrs, a.e.cfg.IPFamily) {
		if a.done() {
			return
		}
		t := target{host: h.name, ip: ip, port: h.port, policy: h.policy, implicit: h.implicit, auth: h.auth}
		if a.tryAddr(t) {
			return
		}
	}
}

// tryAddr delivers over one address, on a pooled session or a new one; it
// reports whether to stop trying h's addresses.
func (a *attempt) tryAddr(t target) (stop bool) {
	for {
		s, aerr := a.session(t)
		if aerr != nil {
			a.fail(aerr)
			return false
		}
		if cerr := a.capability(s); cerr != nil {
			a.step(errStep(cerr))
			a.capErr = cerr
			a.e.pool.put(s)
			return true
		}
		herr := a.deliverOn(s)
		if herr == nil {
			a.sessions++
			a.e.pool.put(s)
			return true
		}
		a.e.closeSession(s)
		if s.reused && !s.w.answered && (herr.Code == 0 || herr.Code == 421) {
			continue // the host closed it while it was idle; nothing was settled on it
		}
		a.sessions++
		a.fail(herr)
		return herr.Phase == phaseMail && herr.Code/100 == 4 && herr.Code != 421 // busy or greylisting: its other addresses would say the same
	}
}

// session takes a pooled session for t or dials one. A pooled session is
// not probed (no RSET, no NOOP): if the host closed it, its first command
// fails and tryAddr takes another.
func (a *attempt) session(t target) (*session, *AttemptError) {
	e := a.e
	if s := e.pool.get(t.key()); s != nil {
		s.reused = true
		s.w.answered = false
		return s, nil
	}
	a.addrs++
	s, aerr := e.open(a.ctx, t)
	if aerr != nil && errors.Is(aerr, errTLSBroken) {
		// The host is marked: plain text this time, and for BrokenTLSFor.
		a.step(errStep(aerr))
		e.log.Warn("TLS handshake failed, retrying in plain text", "msg_id", a.j.id, "mx", t.host, "ip", t.ip.String(),
			"reply", aerr.Text, "plain_for", e.cfg.BrokenTLSFor)
		s, aerr = e.open(a.ctx, t)
	}
	return s, aerr
}

// capability checks the session offers what the message needs.
func (a *attempt) capability(s *session) *AttemptError {
	var ae *AttemptError
	switch env := &a.j.msg.Envelope; {
	case a.j.need8Bit && !s.x.eightBit:
		ae = localError(true, "5.6.3", phaseMail, "host does not offer 8BITMIME for an 8-bit message")
	case a.j.needUTF8 && !s.x.utf8:
		ae = localError(true, "5.6.7", phaseMail, "host does not offer SMTPUTF8 for an internationalized address")
	case s.size > 0 && env.Size > s.size:
		ae = localError(true, "5.3.4", phaseMail, "message is larger than the host's SIZE limit")
	default:
		return nil
	}
	ae.Host, ae.IP = s.t.host, s.t.ip.String()
	return ae
}

// deliverOn runs transactions on s until every pending recipient is
// resolved; an error means the session failed and must be closed.
func (a *attempt) deliverOn(s *session) *AttemptError {
	for len(a.pending) > 0 {
		n := min(len(a.pending), a.e.cfg.MaxRcptsPerTxn)
		batch, rest := a.pending[:n:n], a.pending[n:]
		retry, unresolved, herr := a.transaction(s, batch)
		a.pending = append(append(unresolved, retry...), rest...)
		if herr != nil {
			return herr
		}
	}
	return nil
}

// needs says what the envelope needs of the next hop: 8BITMIME for an
// 8-bit body, SMTPUTF8 for a non-ASCII local part or header (IDN domains
// go out as A-labels and need nothing).
func needs(env *spool.Envelope, rcpts []spool.Task) (eightBit, utf8 bool) {
	utf8 = env.SMTPUTF8 || !mailaddr.IsASCII(localPart(env.Sender))
	for _, t := range rcpts {
		if t.Rcpt >= 0 && t.Rcpt < len(env.Recipients) {
			utf8 = utf8 || !mailaddr.IsASCII(localPart(env.Recipients[t.Rcpt].Addr))
		}
	}
	return env.Has8Bit, utf8
}

func localPart(addr string) string {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == '@' {
			return addr[:i]
		}
	}
	return addr
}
