package spool

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// crashDirEnv tells the test binary to act as the crash test's child.
const crashDirEnv = "MTA_SPOOL_CRASH_CHILD_DIR"

// TestCrash runs a child process that enqueues messages and records
// results under load, printing each ID it was told is committed, and kills
// it with SIGKILL at a random moment, several times over one spool. After
// each kill the spool must reopen, hold every reported message intact and
// every reported result, and show no transaction half-applied: the child
// always records both recipients of a message in one Update, so their
// attempt counts and states must agree.
func TestCrash(t *testing.T) {
	if os.Getenv(crashDirEnv) != "" {
		t.Skip("running as the crash child")
	}
	rounds := 5
	if testing.Short() {
		rounds = 2
	}
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 2))
	var all []string
	for round := range rounds {
		lines := runCrashChild(t, dir, 20+rng.IntN(600))
		all = append(all, lines...)
		t.Logf("round %d: killed after %d committed reports", round, len(lines))
		verifyCrash(t, dir, all)
		if t.Failed() {
			t.FailNow()
		}
	}
}

// runCrashChild starts the child on dir, kills it once it has reported
// after lines (or after a few seconds), and returns its complete lines.
func runCrashChild(t *testing.T, dir string, after int) []string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
	cmd.Stderr = t.Output()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	enough := make(chan struct{})
	var lines []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		r := bufio.NewReader(out)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return // a line cut by the kill has no newline: not reported
			}
			if strings.HasPrefix(line, "E ") || strings.HasPrefix(line, "R ") {
				lines = append(lines, strings.TrimSuffix(line, "\n"))
				if len(lines) == after {
					close(enough)
				}
			}
		}
	}()
	select {
	case <-enough:
	case <-done:
		t.Fatalf("crash child exited before being killed: %v", cmd.Wait())
	case <-time.After(5 * time.Second):
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-done
	_ = cmd.Wait() // killed: the error is the signal
	return lines
}

// verifyCrash reopens the spool and checks every report.
func verifyCrash(t *testing.T, dir string, lines []string) {
	t.Helper()
	s := openIn(t, dir, Options{RetiredMaxCount: 1 << 30})
	defer func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
		checkClean(t, dir)
	}()
	verifyNow(t, s)
	for _, line := range lines {
		f := strings.Fields(line)
		m, err := s.Message(f[1])
		if err != nil {
			t.Errorf("%q: %v", line, err)
			continue
		}
		if f[0] == "E" {
			size, _ := strconv.Atoi(f[2])
			if !m.Retired && string(readBody(t, s, m.ID)) != string(bodyOf(m.ID, size)) {
				t.Errorf("%q: body damaged", line)
			}
			continue
		}
		state, _ := strconv.Atoi(f[2])
		count, _ := strconv.Atoi(f[3])
		for _, r := range m.Envelope.Recipients {
			if r.AttemptCount < count || (State(state).Final() && r.State != State(state)) {
				t.Errorf("%q: recipient %s is %v after %d attempts", line, r.Addr, r.State, r.AttemptCount)
			}
		}
	}
	checkPairs(t, s)
}

// checkPairs checks that both recipients of every child message agree,
// and that every live recipient is due when the child's commits said:
// pending at its arrival, deferred a second before its last attempt (as
// the child records), or claimed when killed, at the lease of an hour
// its claim committed. A claim lost in the crash would make it due at
// once (a hot retry), a half-applied one leave it due at no time the
// child gave.
func checkPairs(t *testing.T, s *Spool) {
	t.Helper()
	msgs, err := allMessages(s)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		rs := m.Envelope.Recipients
		if len(rs) == 2 && (rs[0].AttemptCount != rs[1].AttemptCount || rs[0].State != rs[1].State) {
			t.Errorf("message %s half-applied: %v/%d and %v/%d", m.ID, rs[0].State, rs[0].AttemptCount, rs[1].State, rs[1].AttemptCount)
		}
		full, err := s.Message(m.ID)
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range full.Envelope.Recipients {
			if r.State.Final() {
				continue
			}
			arrival, next := full.Envelope.Arrival, r.NextAttempt
			leased := !next.Before(arrival.Add(59 * time.Minute))
			pending := r.AttemptCount == 0 && !next.Before(arrival) && next.Before(arrival.Add(time.Minute))
			deferred := len(r.Attempts) > 0 && next.Equal(r.Attempts[len(r.Attempts)-1].Time.Add(-time.Second))
			if !leased && !pending && !deferred {
				t.Errorf("recipient %s/%d (%v, %d attempts, arrived %v) due at %v: no time the child committed",
					m.ID, i, r.State, r.AttemptCount, arrival, next)
			}
		}
	}
}

// allMessages lists every live message with its states.
func allMessages(s *Spool) ([]Message, error) {
	var out []Message
	after := ""
	for {
		page, next, err := s.List(context.Background(), Filter{}, after, 500)
		if err != nil {
			return nil, err
		}
		out = append(out, page...)
		if next == "" {
			return out, nil
		}
		after = next
	}
}

// TestCrashChild is the child of TestCrash; it does nothing unless
// started by it. It runs until killed, or stops after 20 seconds.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("only run by TestCrash")
	}
	bounce := func(m *Message, _ func() ([]byte, error)) (*NewMessage, error) {
		env := envelope("", m.Envelope.Sender)
		env.DSN = true
		return &NewMessage{ID: "dsn-" + m.ID, Envelope: *env, Body: []byte("report")}, nil
	}
	// OnDue wakes the deliverers, as it wakes the scheduler in the daemon.
	kicks := []chan struct{}{make(chan struct{}, 1), make(chan struct{}, 1)}
	onDue := func() {
		for _, k := range kicks {
			select {
			case k <- struct{}{}:
			default:
			}
		}
	}
	s, err := Open(dir, Options{Bounce: bounce, OnDue: onDue, RetiredMaxCount: 1 << 30})
	if err != nil {
		t.Fatalf("child Open: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var mu sync.Mutex
	report := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(os.Stdout, format+"\n", args...)
	}
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(w)))
			var err error
			if w < 4 {
				err = crashEnqueuer(ctx, s, rng, report)
			} else {
				err = crashDeliverer(ctx, s, rng, kicks[w-4], report)
			}
			if err != nil && ctx.Err() == nil {
				t.Errorf("child worker %d: %v", w, err)
				cancel()
			}
		}()
	}
	wg.Wait()
	_ = s.Close() // the child's outcome is what it reported
}

func crashEnqueuer(ctx context.Context, s *Spool, rng *rand.Rand, report func(string, ...any)) error {
	for ctx.Err() == nil {
		id := NewID()
		size := 500 + rng.IntN(4000)
		if rng.IntN(10) == 0 {
			size = 70<<10 + rng.IntN(200<<10) // a body file
		}
		if err := tryEnqueue(s, id, envelope("s@o.test", "a@d.example", "b@e.example"), bodyOf(id, size)); err != nil {
			return err
		}
		report("E %s %d", id, size)
	}
	return nil
}

func crashDeliverer(ctx context.Context, s *Spool, rng *rand.Rand, kick <-chan struct{}, report func(string, ...any)) error {
	for ctx.Err() == nil {
		now := time.Now()
		tasks, err := s.Claim(ctx, now, 20, func(Task) time.Time { return now.Add(time.Hour) })
		if err != nil {
			return err
		}
		for i := 0; i < len(tasks); {
			id := tasks[i].ID
			j := i
			var results []Result
			st := []State{Deferred, Deferred, Delivered, Failed}[rng.IntN(4)]
			for ; j < len(tasks) && tasks[j].ID == id; j++ {
				results = append(results, result(id, tasks[j].Rcpt, st, now, now.Add(-time.Second)))
			}
			group := tasks[i:j]
			i = j
			if !strings.HasPrefix(id, "dsn-") && len(group) != 2 {
				s.Unclaim(group) // the limit cut the pair: due again at its lease
				continue
			}
			if err := s.Record(ctx, Update{Results: results}); err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
			report("R %s %d %d", id, st, group[0].Attempts+1)
		}
		if len(tasks) == 0 {
			select {
			case <-kick:
			case <-ctx.Done():
			}
		}
	}
	return nil
}
