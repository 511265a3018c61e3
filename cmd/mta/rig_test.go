package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"mta/spool"
)

// rig is the bench world (DNS and sinks for the bench domains) and the
// daemon as a child process (this test binary acting as mta), for tests
// that prove what the daemon does under load and faults.
type rig struct {
	t   *testing.T
	led *ledger
	w   *world
	d   *childDaemon
}

// rigOptions size a rig; Daemon's Bin, Dir, DNS and SinkPort are filled in.
type rigOptions struct {
	Messages, Rcpts, Domains int
	Zone                     string // added to the bench zone
	Daemon                   daemonOptions
}

func newRig(t *testing.T, o rigOptions) *rig {
	t.Helper()
	if o.Domains == 0 {
		o.Domains = 2
	}
	if o.Rcpts == 0 {
		o.Rcpts = 1
	}
	r := &rig{t: t, led: newLedger(newBenchTag(), o.Messages, o.Rcpts)}
	w, err := startWorld(worldOptions{Domains: o.Domains, Arrive: r.led.arrive, Zone: o.Zone})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	r.w = w
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	do := o.Daemon
	do.Bin, do.Dir, do.DNS, do.SinkPort = bin, t.TempDir(), w.DNS.Addr(), w.Sinks.Port()
	do.Env = append(do.Env, asMTAEnv+"=1")
	if r.d, err = newDaemon(do); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.d.Stop(30 * time.Second); err != nil {
			t.Errorf("stop: %v", err)
		}
		if t.Failed() {
			t.Logf("daemon log (tail):\n%s", r.d.LogTail(6000))
		}
	})
	return r
}

func (r *rig) start() {
	r.t.Helper()
	if err := r.d.Start(r.t.Context()); err != nil {
		r.t.Fatal(err)
	}
}

// gen is the generator's options for the rig: bench domains, the daemon's
// relay listener.
func (r *rig) gen(first, n, sessions int) genOptions {
	return genOptions{Target: r.d.SMTP, Messages: n, FirstSeq: first, Sessions: sessions, PerSession: 3,
		Rcpts: r.led.rcpts, SizeBytes: 2048, Domains: r.w.Domains, Helo: benchHelo, From: benchSender}
}

// mta runs an mta subcommand in-process against the rig's config.
func (r *rig) mta(args ...string) (string, error) {
	var out, errb bytes.Buffer
	err := run(r.t.Context(), append([]string{"mta"}, args...), Stdio{In: strings.NewReader(""), Out: &out, Err: &errb})
	if err != nil {
		return out.String() + errb.String(), err
	}
	return out.String(), nil
}

// counts asks the daemon for the queue's counts with `mta queue list --json`.
func (r *rig) counts() (spool.Counts, error) {
	out, err := r.mta("queue", "list", "--json", "--limit", "1", "--config", r.d.Config)
	if err != nil {
		return spool.Counts{}, err
	}
	var resp adminResponse
	if err := json.Unmarshal([]byte(out), &resp); err != nil || resp.Counts == nil {
		return spool.Counts{}, fmt.Errorf("queue list --json: %v: %s", err, out)
	}
	return *resp.Counts, nil
}

// waitFor polls cond every few milliseconds until it holds, failing the
// test after limit. It waits on what the peers record; it never paces.
func (r *rig) waitFor(what string, limit time.Duration, cond func() bool) {
	r.t.Helper()
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			r.t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		select {
		case <-tick.C:
		case <-r.t.Context().Done():
			r.t.Fatalf("test ended waiting for %s", what)
		}
	}
}

// waitDelivered waits until every recipient of every accepted message has
// arrived at a sink.
func (r *rig) waitDelivered(limit time.Duration) {
	r.t.Helper()
	r.waitFor("every accepted message at the sinks", limit, func() bool {
		return r.led.Distinct() >= r.led.Accepted()*r.led.rcpts
	})
}

// waitQueueEmpty waits until the daemon reports no live message.
func (r *rig) waitQueueEmpty(limit time.Duration) {
	r.t.Helper()
	var last spool.Counts
	var lastErr error
	r.waitFor("an empty queue", limit, func() bool {
		last, lastErr = r.counts()
		return lastErr == nil && last.Messages == 0
	})
}

// checkNothingLost fails the test for any accepted message that has a
// recipient that never arrived, and logs the duplicates.
func (r *rig) checkNothingLost() ledgerTally {
	r.t.Helper()
	tally := r.led.tally(20)
	r.t.Logf("accepted %d messages (%d recipients); delivered %d; duplicates %d; arrived without a 250 seen %d; foreign %d",
		tally.Accepted, tally.Expected, tally.Delivered, tally.Duplicates, tally.Unaccepted, tally.Foreign)
	if len(tally.Missing) > 0 || tally.Delivered != tally.Expected {
		r.t.Errorf("LOST: %d recipients of accepted messages never arrived; first seqs %v", tally.Expected-tally.Delivered, tally.Missing)
	}
	return tally
}

// checkSpool runs `mta spool check` on the stopped daemon's spool.
func (r *rig) checkSpool() {
	r.t.Helper()
	if err := r.d.Stop(30 * time.Second); err != nil {
		r.t.Errorf("stop: %v", err)
	}
	if out, err := r.mta("spool", "check", "--config", r.d.Config); err != nil {
		r.t.Errorf("spool check: %v\n%s", err, out)
	}
}
