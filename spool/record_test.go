package spool

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"
)

// sampleMessage is a retired message using every field.
func sampleMessage() *Message {
	at := time.Date(2030, 5, 6, 7, 8, 9, 10, time.UTC)
	env := envelope("alice@origin.test", "bob@dest.example", "carol@xn--bcher-kva.example")
	env.EnvID, env.Ret, env.Has8Bit, env.SMTPUTF8, env.DSN = "env id", RetFull, true, true, false
	env.Arrival, env.Size = at, 123456
	env.Origin.AuthUser, env.Origin.UID = "alice", 1000
	r := &env.Recipients[0]
	r.Notify, r.ORcpt = NotifySuccess|NotifyFailure, "rfc822;bob@dest.example"
	r.State, r.AttemptCount, r.Done, r.DelayNotified = Delivered, 2, at.Add(time.Hour), true
	r.Attempts = []Attempt{
		{Time: at, Host: "mx1.dest.example", IP: "192.0.2.1", TLS: "none", Phase: "rcpt", Code: 451, Enhanced: "4.7.1", Text: "greylisted", Duration: time.Second},
		{Time: at.Add(time.Hour), Host: "mx1.dest.example", IP: "2001:db8::1", TLS: "TLS1.3 verified", Phase: "data", Code: 250, Enhanced: "2.0.0", Text: "ok", Duration: 2 * time.Second,
			Route: []RouteStep{
				{Host: "mx0.dest.example", Phase: "skip", Text: "no address (NXDOMAIN)"},
				{Host: "mx1.dest.example", IP: "192.0.2.1", Phase: "greeting", Code: 421, Enhanced: "4.3.2", Text: "busy"},
				{Host: "mx1.dest.example", IP: "2001:db8::1", Phase: "data", Code: 250, Enhanced: "2.0.0", Text: "ok"},
			}},
	}
	env.Recipients[1].State, env.Recipients[1].Done = Failed, at
	return &Message{ID: NewID(), Envelope: *env, Retired: true, RetiredAt: at.Add(time.Hour)}
}

func TestRecordRoundTrip(t *testing.T) {
	m := sampleMessage()
	t.Run("envelope", func(t *testing.T) {
		se, err := decodeEnv(encodeEnv(&m.Envelope, true))
		if err != nil {
			t.Fatal(err)
		}
		want := m.Envelope
		want.Recipients = nil
		for _, r := range m.Envelope.Recipients {
			want.Recipients = append(want.Recipients, Recipient{Addr: r.Addr, Domain: r.Domain, Notify: r.Notify, ORcpt: r.ORcpt})
		}
		if !se.file || !sameEnvelope(se.env, want) {
			t.Errorf("decoded %+v, want %+v", se.env, want)
		}
	})
	t.Run("retired", func(t *testing.T) {
		got, err := decodeRetired(m.ID, encodeRetired(m, false))
		if err != nil {
			t.Fatal(err)
		}
		if !got.Retired || !got.RetiredAt.Equal(m.RetiredAt) || !sameEnvelope(got.Envelope, m.Envelope) {
			t.Errorf("decoded %+v, want %+v", got, m)
		}
	})
	t.Run("state", func(t *testing.T) {
		st := rstate{State: Deferred, Held: true, DelayNotified: true, Next: time.Unix(1, 2), Count: 7, Arrival: time.Unix(3, 4), Domain: "d.example"}
		got, err := decodeState(encodeState(&st))
		if err != nil || !reflect.DeepEqual(got, st) {
			t.Errorf("decoded %+v, %v; want %+v", got, err, st)
		}
	})
}

func TestAttemptRoute(t *testing.T) {
	a := sampleMessage().Envelope.Recipients[0].Attempts[1]
	t.Run("round trip", func(t *testing.T) {
		got, err := decodeAttempt(encodeAttempt(&a))
		if err != nil {
			t.Fatal(err)
		}
		if !got.Time.Equal(a.Time) || !reflect.DeepEqual(got.Route, a.Route) || got.Text != a.Text {
			t.Errorf("decoded %+v, want %+v", got, a)
		}
	})
	t.Run("records without a route still decode", func(t *testing.T) {
		// The attempt record as it was before routes were stored.
		e := enc{}
		e.b = append(e.b, recordFormat)
		e.time(a.Time)
		for _, s := range []string{a.Host, a.IP, a.TLS, a.Phase} {
			e.str(s)
		}
		e.varint(int64(a.Code))
		e.str(a.Enhanced)
		e.str(a.Text)
		e.varint(int64(a.Duration))
		got, err := decodeAttempt(e.b)
		if err != nil {
			t.Fatal(err)
		}
		if got.Host != a.Host || got.Code != a.Code || got.Duration != a.Duration || got.Route != nil {
			t.Errorf("decoded %+v", got)
		}
	})
	t.Run("long routes are cut", func(t *testing.T) {
		long := a
		long.Route = nil
		for range MaxRouteSteps + 10 {
			long.Route = append(long.Route, RouteStep{Host: "mx.dest.example", Phase: "skip", Text: "self"})
		}
		got, err := decodeAttempt(encodeAttempt(&long))
		if err != nil || len(got.Route) != MaxRouteSteps {
			t.Errorf("decoded %d steps, %v; want %d", len(got.Route), err, MaxRouteSteps)
		}
	})
}

// sameEnvelope compares envelopes, times by instant.
func sameEnvelope(a, b Envelope) bool {
	return bytes.Equal(encodeRetired(&Message{Envelope: a}, false), encodeRetired(&Message{Envelope: b}, false))
}

func TestDecodeTruncated(t *testing.T) {
	m := sampleMessage()
	st := stateOf(&m.Envelope.Recipients[0], m.Envelope.Arrival)
	for _, tc := range []struct {
		name   string
		rec    []byte
		decode func([]byte) error
	}{
		{"envelope", encodeEnv(&m.Envelope, false), func(b []byte) error { _, err := decodeEnv(b); return err }},
		{"state", encodeState(&st), func(b []byte) error { _, err := decodeState(b); return err }},
		{"attempt", encodeAttempt(&m.Envelope.Recipients[0].Attempts[0]), func(b []byte) error { _, err := decodeAttempt(b); return err }},
		{"retired", encodeRetired(m, false), func(b []byte) error { _, err := decodeRetired("x", b); return err }},
		{"domain count", encodeDomainCount([3]int64{1, 2, 3}), func(b []byte) error { _, err := decodeDomainCount(b); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.decode(tc.rec); err != nil {
				t.Fatalf("whole record: %v", err)
			}
			for n := range len(tc.rec) {
				if err := tc.decode(tc.rec[:n]); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("cut to %d of %d bytes: %v, want ErrCorrupt", n, len(tc.rec), err)
				}
			}
			if err := tc.decode(append(bytes.Clone(tc.rec), 0)); !errors.Is(err, ErrCorrupt) {
				t.Errorf("with a trailing byte: %v, want ErrCorrupt", err)
			}
		})
	}
}

// FuzzDecodeRecord feeds damaged values to every decoder of stored records
// and keys: each must return ErrCorrupt or a value that encodes back to a
// record decoding the same, and never panic.
func FuzzDecodeRecord(f *testing.F) {
	m := sampleMessage()
	st := stateOf(&m.Envelope.Recipients[0], m.Envelope.Arrival)
	f.Add(byte(0), encodeEnv(&m.Envelope, true))
	f.Add(byte(1), encodeState(&st))
	f.Add(byte(2), encodeAttempt(&m.Envelope.Recipients[0].Attempts[1]))
	f.Add(byte(3), encodeRetired(m, false))
	f.Add(byte(4), encodeDomainCount([3]int64{5, -1, 0}))
	f.Add(byte(5), dueKey(m.RetiredAt, m.ID, 3))
	f.Add(byte(6), byDomainKey("d.example", m.RetiredAt, m.ID, 1))
	f.Fuzz(func(t *testing.T, kind byte, b []byte) {
		err := decodeKind(kind, b)
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("kind %d: %v, not ErrCorrupt", kind, err)
		}
	})
}

// decodeKind decodes b as record kind k and, when it decodes, checks that
// its re-encoding is stable.
func decodeKind(k byte, b []byte) error {
	stable := func(enc1 []byte, redo func([]byte) ([]byte, error)) error {
		enc2, err := redo(enc1)
		if err != nil || !bytes.Equal(enc1, enc2) {
			panic("re-encoding is not stable")
		}
		return nil
	}
	switch k % 7 {
	case 0:
		se, err := decodeEnv(b)
		if err != nil {
			return err
		}
		return stable(encodeEnv(&se.env, se.file), func(p []byte) ([]byte, error) {
			se, err := decodeEnv(p)
			return encodeEnv(&se.env, se.file), err
		})
	case 1:
		st, err := decodeState(b)
		if err != nil {
			return err
		}
		return stable(encodeState(&st), func(p []byte) ([]byte, error) { st, err := decodeState(p); return encodeState(&st), err })
	case 2:
		a, err := decodeAttempt(b)
		if err != nil {
			return err
		}
		return stable(encodeAttempt(&a), func(p []byte) ([]byte, error) { a, err := decodeAttempt(p); return encodeAttempt(&a), err })
	case 3:
		m, err := decodeRetired("x", b)
		if err != nil {
			return err
		}
		return stable(encodeRetired(m, false), func(p []byte) ([]byte, error) {
			m, err := decodeRetired("x", p)
			if err != nil {
				return nil, err
			}
			return encodeRetired(m, false), nil
		})
	case 4:
		_, err := decodeDomainCount(b)
		return err
	case 5:
		_, _, _, err := parseDueKey(b)
		return err
	default:
		_, _, _, _, err := parseByDomainKey(b)
		return err
	}
}
