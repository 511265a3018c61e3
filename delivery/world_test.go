package delivery_test

// The test world: a real spool in t.TempDir, a real resolver against a
// testpeer DNS server, scripted SMTP hosts on 127.0.0.x sharing one port,
// and a clock the test moves forward so retries never sleep.

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mta/delivery"
	"mta/internal/mailaddr"
	"mta/internal/peer"
	"mta/internal/testpeer"
	"mta/resolver"
	"mta/spool"
)

const ourHost = "mta.test"

// clock is a settable time source shared by the spool and the scheduler.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano())
	return c
}

func (c *clock) now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// observer counts what the scheduler reports and fails on a panic.
type observer struct {
	t         testing.TB
	mu        sync.Mutex
	attempts  map[string]int // by result
	delivered int
	postponed int
}

func (o *observer) Attempt(result, phase string, code int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.attempts[result]++
}
func (o *observer) Delivered(time.Duration) { o.mu.Lock(); o.delivered++; o.mu.Unlock() }
func (o *observer) Connections(int)         {}
func (o *observer) Panic()                  { o.t.Errorf("a goroutine panicked (see log)") }
func (o *observer) Postponed(n int)         { o.mu.Lock(); o.postponed += n; o.mu.Unlock() }

type world struct {
	t     testing.TB
	dns   *testpeer.DNS
	port  int
	hosts map[string]*peer.Host
	sp    *spool.Spool
	sched *delivery.Scheduler
	clock *clock
	logs  *testpeer.Buffer
	obs   *observer
	cfg   delivery.Config
	kick  *atomic.Pointer[delivery.Scheduler] // where the spool's OnDue goes
}

type setup struct {
	zone  string
	hosts map[string]peer.Behaviour // by IP
	cfg   func(*delivery.Config)
	// aliases rewrite DSN recipients in local domains.
	aliases *mailaddr.Aliases
	// noStart leaves Run to the test.
	noStart bool
	// lockStep: no host offers PIPELINING.
	lockStep bool
}

// eachMode runs f against hosts that offer PIPELINING (RFC 2920) and
// hosts that do not (every command waits for its reply); f passes the
// mode on in setup.lockStep.
func eachMode(t *testing.T, f func(t *testing.T, lockStep bool)) {
	t.Helper()
	t.Run("pipelining", func(t *testing.T) { f(t, false) })
	t.Run("lock-step", func(t *testing.T) { f(t, true) })
}

func newWorld(t testing.TB, s setup) *world {
	t.Helper()
	w := &world{t: t, clock: newClock(), logs: &testpeer.Buffer{}, obs: &observer{t: t, attempts: map[string]int{}}}
	if len(s.hosts) > 0 {
		scripts := make(map[string]peer.Behaviour, len(s.hosts))
		for ip, b := range s.hosts {
			b.NoPipelining = s.lockStep
			scripts[ip] = b
		}
		w.port, w.hosts = testpeer.SMTPHosts(t, scripts)
	}
	w.dns = testpeer.NewDNS(t, s.zone)
	res, err := resolver.New(resolver.Config{Servers: []string{w.dns.Addr()}, AllowPrivate: true,
		Hostname: ourHost, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatalf("resolver: %v", err)
	}
	w.kick = &atomic.Pointer[delivery.Scheduler]{}
	sched := w.kick
	w.sp, err = spool.Open(t.TempDir(), spool.Options{
		Now:    w.clock.now,
		Bounce: delivery.Bouncer(delivery.DSNConfig{Hostname: ourHost, Now: w.clock.now, Aliases: s.aliases}),
		OnDue: func() {
			if s := sched.Load(); s != nil {
				s.Kick()
			}
		},
	})
	if err != nil {
		t.Fatalf("spool: %v", err)
	}
	w.cfg = delivery.Config{
		Spool: w.sp, Resolver: res, Hostname: ourHost, Port: w.port,
		Timeouts: delivery.Timeouts{Connect: 5 * time.Second, Greeting: 5 * time.Second, Command: 5 * time.Second,
			StartTLS: 5 * time.Second, DataInit: 5 * time.Second, DataBlock: 5 * time.Second, FinalDot: 5 * time.Second},
		Backoff:  delivery.Backoff{Jitter: func() float64 { return 0.5 }},
		Now:      w.clock.now,
		Aliases:  s.aliases,
		Logger:   slog.New(slog.NewTextHandler(w.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Observer: w.obs,
	}
	if s.cfg != nil {
		s.cfg(&w.cfg)
	}
	w.sched, err = delivery.New(w.cfg)
	if err != nil {
		t.Fatalf("delivery.New: %v", err)
	}
	sched.Store(w.sched)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := w.sched.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := w.sp.Close(); err != nil {
			t.Errorf("close spool: %v", err)
		}
		if t.Failed() {
			t.Logf("delivery log:\n%s", w.logs.String())
		}
	})
	if !s.noStart {
		w.start()
	}
	return w
}

// replace stops the scheduler and starts a new one on the same spool.
func (w *world) replace(cfg delivery.Config) *world {
	w.t.Helper()
	if err := w.sched.Shutdown(context.Background()); err != nil {
		w.t.Fatalf("shutdown: %v", err)
	}
	s, err := delivery.New(cfg)
	if err != nil {
		w.t.Fatalf("delivery.New: %v", err)
	}
	w.sched, w.cfg = s, cfg
	w.kick.Store(s)
	w.start()
	return w
}

func (w *world) start() {
	go func() {
		if err := w.sched.Run(context.Background()); err != nil {
			w.t.Errorf("Run: %v", err)
		}
	}()
}

// send enqueues a message as smtpd would and returns its ID.
func (w *world) send(from string, to []string, body string, mod ...func(*spool.Envelope)) string {
	w.t.Helper()
	id := spool.NewID()
	bw, err := w.sp.NewBody(id)
	if err != nil {
		w.t.Fatalf("new body: %v", err)
	}
	if _, err := bw.Write([]byte(body)); err != nil {
		w.t.Fatalf("write body: %v", err)
	}
	env := &spool.Envelope{Sender: from, Has8Bit: bw.Has8Bit(), Origin: spool.Origin{Listener: "relay", UID: -1}}
	for _, r := range to {
		env.Recipients = append(env.Recipients, spool.Recipient{Addr: r, Domain: strings.ToLower(r[strings.LastIndexByte(r, '@')+1:])})
	}
	for _, f := range mod {
		f(env)
	}
	if err := w.sp.Enqueue(context.Background(), id, env, bw); err != nil {
		w.t.Fatalf("enqueue: %v", err)
	}
	return id
}

func (w *world) postponed() int {
	w.obs.mu.Lock()
	defer w.obs.mu.Unlock()
	return w.obs.postponed
}

func (w *world) countState(id string, st spool.State) int {
	n := 0
	for _, r := range w.message(id).Envelope.Recipients {
		if r.State == st {
			n++
		}
	}
	return n
}

func (w *world) message(id string) *spool.Message {
	w.t.Helper()
	m, err := w.sp.Message(id)
	if err != nil {
		w.t.Fatalf("message %s: %v", id, err)
	}
	return m
}

// waitStates waits until message id's recipients are in the given states.
func (w *world) waitStates(id string, want ...spool.State) *spool.Message {
	w.t.Helper()
	var m *spool.Message
	testpeer.WaitFor(w.t, fmt.Sprintf("%s in states %v", id, want), func() bool {
		m = w.message(id)
		for i, s := range want {
			if m.Envelope.Recipients[i].State != s {
				return false
			}
		}
		return true
	})
	return m
}

// waitAttempts waits until recipient rcpt of id has n attempts recorded.
func (w *world) waitAttempts(id string, rcpt, n int) *spool.Recipient {
	w.t.Helper()
	var r *spool.Recipient
	testpeer.WaitFor(w.t, fmt.Sprintf("%s/%d with %d attempts", id, rcpt, n), func() bool {
		r = &w.message(id).Envelope.Recipients[rcpt]
		return r.AttemptCount >= n
	})
	return r
}

// retry moves the clock past the next attempt of everything and kicks.
func (w *world) retry(d time.Duration) {
	w.clock.advance(d)
	w.sched.Kick()
}

func lastAttempt(r *spool.Recipient) spool.Attempt {
	if len(r.Attempts) == 0 {
		return spool.Attempt{}
	}
	return r.Attempts[len(r.Attempts)-1]
}

const basicZone = `
example.test. 300 IN MX 10 mx1.example.test.
example.test. 300 IN MX 20 mx2.example.test.
mx1.example.test. 300 IN A 127.0.0.2
mx2.example.test. 300 IN A 127.0.0.3
`

const body7 = "From: a@sender.test\r\nTo: b@example.test\r\nSubject: hello\r\nMessage-ID: <1@sender.test>\r\n\r\nHello there.\r\n"

const oneMXZone = `
example.test. 300 IN MX 10 mx1.example.test.
mx1.example.test. 300 IN A 127.0.0.2
`
