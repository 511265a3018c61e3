package spool

import (
	"encoding/binary"
	"time"
)

// Records are stored as a format byte followed by fields in order:
// unsigned and signed varints, strings as a uvarint length and the bytes,
// times as a signed varint of Unix nanoseconds (0 for the zero time), nested
// records as a uvarint length and the record. Decoders check every length
// against what is left, so a damaged value gives ErrCorrupt, never a panic
// or a huge allocation. Attempt records may also carry attemptRouteFormat.
const recordFormat = 1

// enc appends fields to a record.
type enc struct{ b []byte }

func (e *enc) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *enc) varint(v int64)   { e.b = binary.AppendVarint(e.b, v) }
func (e *enc) str(s string)     { e.uvarint(uint64(len(s))); e.b = append(e.b, s...) }
func (e *enc) blob(p []byte)    { e.uvarint(uint64(len(p))); e.b = append(e.b, p...) }

func (e *enc) time(t time.Time) {
	if t.IsZero() {
		e.varint(0)
		return
	}
	e.varint(t.UnixNano())
}

// dec reads fields from a record; the first failure sticks.
type dec struct {
	b    []byte
	what string
	err  error
}

func newDec(what string, b []byte) *dec {
	d := &dec{b: b, what: what}
	if f := d.byte(); d.err == nil && f != recordFormat {
		d.fail("format %d", f)
	}
	return d
}

func (d *dec) fail(format string, args ...any) {
	if d.err == nil {
		d.err = corrupt(d.what+": "+format, args...)
	}
}

func (d *dec) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.fail("truncated")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *dec) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad uvarint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// small reads a uvarint that must not pass max.
func (d *dec) small(max uint64) int {
	v := d.uvarint()
	if v > max {
		d.fail("value %d above %d", v, max)
		return 0
	}
	return int(v)
}

func (d *dec) blob() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("length %d past the end", n)
		return nil
	}
	p := d.b[:n:n]
	d.b = d.b[n:]
	return p
}

func (d *dec) str() string { return string(d.blob()) }

func (d *dec) time() time.Time {
	ns := d.varint()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// count reads a number of elements that each take at least one byte.
func (d *dec) count() int {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail("count %d past the end", n)
		return 0
	}
	return int(n)
}

// end fails when bytes are left over.
func (d *dec) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	return d.err
}

// Envelope record flags.
const (
	envHas8Bit = 1 << iota
	envSMTPUTF8
	envDSN
	envBodyFile
	envFlagsAll = envHas8Bit | envSMTPUTF8 | envDSN | envBodyFile
)

// storedEnv is the envelope record: the envelope without recipient state,
// and where the body is.
type storedEnv struct {
	env  Envelope
	file bool // body in bodies/<id>, else in the bodies bucket
}

func encodeEnv(env *Envelope, file bool) []byte {
	e := enc{b: make([]byte, 0, 128+64*len(env.Recipients))}
	e.b = append(e.b, recordFormat)
	var flags uint64
	for _, f := range []struct {
		on  bool
		bit uint64
	}{{env.Has8Bit, envHas8Bit}, {env.SMTPUTF8, envSMTPUTF8}, {env.DSN, envDSN}, {file, envBodyFile}} {
		if f.on {
			flags |= f.bit
		}
	}
	e.uvarint(flags)
	e.str(env.Sender)
	e.str(env.EnvID)
	e.uvarint(uint64(env.Ret))
	e.time(env.Arrival)
	e.varint(env.Size)
	o := &env.Origin
	e.str(o.Listener)
	e.str(o.ClientIP)
	e.str(o.HELO)
	e.str(o.AuthUser)
	e.varint(int64(o.UID))
	e.uvarint(uint64(len(env.Recipients)))
	for i := range env.Recipients {
		r := &env.Recipients[i]
		e.str(r.Addr)
		e.str(r.Domain)
		e.uvarint(uint64(r.Notify))
		e.str(r.ORcpt)
	}
	return e.b
}

// envFile reads only the flags of an envelope record: whether the body is
// a file.
func envFile(b []byte) (bool, error) {
	d := newDec("envelope", b)
	flags := d.uvarint()
	if flags&^envFlagsAll != 0 {
		d.fail("flags %#x", flags)
	}
	return flags&envBodyFile != 0, d.err
}

func decodeEnv(b []byte) (storedEnv, error) {
	d := newDec("envelope", b)
	var s storedEnv
	flags := d.uvarint()
	if flags&^envFlagsAll != 0 {
		d.fail("flags %#x", flags)
	}
	env := &s.env
	env.Has8Bit, env.SMTPUTF8, env.DSN = flags&envHas8Bit != 0, flags&envSMTPUTF8 != 0, flags&envDSN != 0
	s.file = flags&envBodyFile != 0
	env.Sender = d.str()
	env.EnvID = d.str()
	env.Ret = Ret(d.small(uint64(RetHeaders)))
	env.Arrival = d.time()
	env.Size = d.varint()
	env.Origin = Origin{Listener: d.str(), ClientIP: d.str(), HELO: d.str(), AuthUser: d.str(), UID: int(d.varint())}
	n := d.count()
	if n > maxRecipients {
		d.fail("%d recipients", n)
	}
	if d.err == nil && n > 0 {
		env.Recipients = make([]Recipient, n)
	}
	for i := 0; i < n && d.err == nil; i++ {
		r := &env.Recipients[i]
		r.Addr = d.str()
		if r.Domain = d.str(); d.err == nil && r.Domain == "" {
			d.fail("recipient %d has no domain", i)
		}
		r.Notify = Notify(d.small(0xff))
		r.ORcpt = d.str()
	}
	if err := d.end(); err != nil {
		return storedEnv{}, err
	}
	return s, nil
}

// rstate is a recipient's state record: what changes as it is tried.
// Arrival and Domain repeat the envelope's so that counters and indexes can
// be kept without reading it.
type rstate struct {
	State         State
	Held          bool
	DelayNotified bool
	// Leased: Claim handed it out and its result is not recorded; Next is
	// the lease. Never set on a final recipient.
	Leased  bool
	Next    time.Time
	Count   int
	Done    time.Time
	Arrival time.Time
	Domain  string
}

const (
	rsHeld = 1 << iota
	rsDelayNotified
	rsLeased
	rsFlagsAll = rsHeld | rsDelayNotified | rsLeased
)

func encodeState(r *rstate) []byte {
	e := enc{b: make([]byte, 0, 40+len(r.Domain))}
	e.b = append(e.b, recordFormat, byte(r.State))
	var flags uint64
	if r.Held {
		flags |= rsHeld
	}
	if r.DelayNotified {
		flags |= rsDelayNotified
	}
	if r.Leased {
		flags |= rsLeased
	}
	e.uvarint(flags)
	e.time(r.Next)
	e.uvarint(uint64(r.Count))
	e.time(r.Done)
	e.time(r.Arrival)
	e.str(r.Domain)
	return e.b
}

func decodeState(b []byte) (rstate, error) {
	d := newDec("recipient state", b)
	var r rstate
	r.State = State(d.byte())
	if r.State > Failed {
		d.fail("state %d", r.State)
	}
	flags := d.uvarint()
	if flags&^rsFlagsAll != 0 {
		d.fail("flags %#x", flags)
	}
	r.Held, r.DelayNotified, r.Leased = flags&rsHeld != 0, flags&rsDelayNotified != 0, flags&rsLeased != 0
	r.Next = d.time()
	r.Count = d.small(1 << 31)
	r.Done = d.time()
	r.Arrival = d.time()
	if r.Domain = d.str(); d.err == nil && r.Domain == "" {
		d.fail("no domain") // a key of the domain counters
	}
	if err := d.end(); err != nil {
		return rstate{}, err
	}
	return r, nil
}

// attemptRouteFormat is the attempt record with the route steps after the
// fields of recordFormat; attempts stored before routes were recorded keep
// recordFormat and decode with an empty Route.
const attemptRouteFormat = 2

func encodeAttempt(a *Attempt) []byte {
	e := enc{b: make([]byte, 0, 64+len(a.Host)+len(a.Text))}
	e.b = append(e.b, attemptRouteFormat)
	e.time(a.Time)
	e.str(a.Host)
	e.str(a.IP)
	e.str(a.TLS)
	e.str(a.Phase)
	e.varint(int64(a.Code))
	e.str(a.Enhanced)
	e.str(a.Text)
	e.varint(int64(a.Duration))
	steps := a.Route[:min(len(a.Route), MaxRouteSteps)]
	e.uvarint(uint64(len(steps)))
	for i := range steps {
		e.blob(encodeStep(&steps[i]))
	}
	return e.b
}

func decodeAttempt(b []byte) (Attempt, error) {
	d := &dec{b: b, what: "attempt"}
	format := d.byte()
	if d.err == nil && format != recordFormat && format != attemptRouteFormat {
		d.fail("format %d", format)
	}
	a := Attempt{Time: d.time(), Host: d.str(), IP: d.str(), TLS: d.str(), Phase: d.str()}
	a.Code = int(d.varint())
	a.Enhanced = d.str()
	a.Text = d.str()
	a.Duration = time.Duration(d.varint())
	if format == attemptRouteFormat {
		n := d.count()
		if n > MaxRouteSteps {
			d.fail("%d route steps", n)
		}
		for i := 0; i < n && d.err == nil; i++ {
			s, err := decodeStep(d.blob())
			if d.err == nil && err != nil {
				return Attempt{}, err
			}
			a.Route = append(a.Route, s)
		}
	}
	if err := d.end(); err != nil {
		return Attempt{}, err
	}
	return a, nil
}

// A route step record has no format byte: it only lives inside an attempt
// record.
func encodeStep(s *RouteStep) []byte {
	e := enc{b: make([]byte, 0, 32+len(s.Host)+len(s.Text))}
	e.str(s.Host)
	e.str(s.IP)
	e.str(s.Phase)
	e.varint(int64(s.Code))
	e.str(s.Enhanced)
	e.str(s.Text)
	return e.b
}

func decodeStep(b []byte) (RouteStep, error) {
	d := &dec{b: b, what: "route step"}
	s := RouteStep{Host: d.str(), IP: d.str(), Phase: d.str()}
	s.Code = int(d.varint())
	s.Enhanced = d.str()
	s.Text = d.str()
	if err := d.end(); err != nil {
		return RouteStep{}, err
	}
	return s, nil
}

// stateOf is the state record of a stored recipient.
func stateOf(r *Recipient, arrival time.Time) rstate {
	return rstate{
		State: r.State, Held: r.Held, DelayNotified: r.DelayNotified, Next: r.NextAttempt,
		Count: r.AttemptCount, Done: r.Done, Arrival: arrival, Domain: r.Domain,
	}
}

// applyState copies a state record into a recipient.
func applyState(r *Recipient, st *rstate) {
	r.State, r.Held, r.DelayNotified = st.State, st.Held, st.DelayNotified
	r.NextAttempt, r.AttemptCount, r.Done = st.Next, st.Count, st.Done
}

// encodeRetired is the retired record of m: when it retired, its envelope
// record, then per recipient its state record and attempt records.
func encodeRetired(m *Message, file bool) []byte {
	e := enc{b: make([]byte, 0, 512)}
	e.b = append(e.b, recordFormat)
	e.time(m.RetiredAt)
	e.blob(encodeEnv(&m.Envelope, file))
	for i := range m.Envelope.Recipients {
		r := &m.Envelope.Recipients[i]
		st := stateOf(r, m.Envelope.Arrival)
		e.blob(encodeState(&st))
		e.uvarint(uint64(len(r.Attempts)))
		for j := range r.Attempts {
			e.blob(encodeAttempt(&r.Attempts[j]))
		}
	}
	return e.b
}

func decodeRetired(id string, b []byte) (*Message, error) {
	d := newDec("retired record", b)
	m := &Message{ID: id, Retired: true, RetiredAt: d.time()}
	envRaw := d.blob()
	if d.err != nil {
		return nil, d.err
	}
	se, err := decodeEnv(envRaw)
	if err != nil {
		return nil, err
	}
	m.Envelope = se.env
	for i := range m.Envelope.Recipients {
		r := &m.Envelope.Recipients[i]
		st, err := decodeState(d.blob())
		if d.err != nil {
			return nil, d.err
		}
		if err != nil {
			return nil, err
		}
		applyState(r, &st)
		n := d.count()
		for j := 0; j < n && d.err == nil; j++ {
			a, err := decodeAttempt(d.blob())
			if d.err == nil && err != nil {
				return nil, err
			}
			r.Attempts = append(r.Attempts, a)
		}
	}
	if err := d.end(); err != nil {
		return nil, err
	}
	return m, nil
}

// domainCount record: pending, deferred, held recipients of a domain.
func encodeDomainCount(c [3]int64) []byte {
	e := enc{b: make([]byte, 0, 16)}
	e.b = append(e.b, recordFormat)
	for _, v := range c {
		e.varint(v)
	}
	return e.b
}

func decodeDomainCount(b []byte) ([3]int64, error) {
	d := newDec("domain counter", b)
	var c [3]int64
	for i := range c {
		c[i] = d.varint()
	}
	return c, d.end()
}

func encodeVersion(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func decodeVersion(b []byte) (uint32, error) {
	if len(b) != 4 {
		return 0, corrupt("schema version of %d bytes", len(b))
	}
	return binary.BigEndian.Uint32(b), nil
}
