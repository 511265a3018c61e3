package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"mta/internal/testpeer"
)

func runMTA(ctx context.Context, args ...string) (string, string, error) {
	var out, errb bytes.Buffer
	err := run(ctx, append([]string{"mta"}, args...), Stdio{In: strings.NewReader(""), Out: &out, Err: &errb})
	return out.String(), errb.String(), err
}

// TestBenchEndToEnd runs `mta bench` as a user would, on a small load: it
// starts the DNS server, the sinks and the daemon (this test binary acting
// as mta), and reports every figure, with the daemon's profiles.
func TestBenchEndToEnd(t *testing.T) {
	t.Setenv(asMTAEnv, "1") // the daemon bench starts is os.Executable(): this test binary
	prof := t.TempDir()
	const stale = "from an earlier run"
	writeFile(t, filepath.Join(prof, heapProfileFile), stale)
	out, errOut, err := runMTA(t.Context(), "bench", "-n", "300", "-c", "6", "-m", "2", "-r", "2", "--domains", "3", "--json", "--profile", prof)
	if err != nil {
		t.Fatalf("bench: %v\n%s\n%s", err, out, errOut)
	}
	var r benchReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("JSON: %v\n%s", err, out)
	}
	if r.Accepted != 300 || r.Expected != 600 || r.Delivered != 600 || r.Foreign != 0 {
		t.Errorf("accepted %d, delivered %d of %d, foreign %d", r.Accepted, r.Delivered, r.Expected, r.Foreign)
	}
	if r.AcceptRate <= 0 || r.E2ERate <= 0 || r.AcceptP99Ms < r.AcceptP50Ms || r.AcceptMaxMs < r.AcceptP99Ms || r.DeliveryP99 < r.DeliveryP50 {
		t.Errorf("rates and latencies: %+v", r)
	}
	if r.DaemonCPU <= 0 || r.RSSAnon <= 0 || r.HeapBytes <= 0 || r.SpoolBytes <= 0 || r.RSSAnonPeak < r.RSSAnon || r.SpoolFS == "" {
		t.Errorf("daemon figures: cpu %v rss %d (peak %d) heap %d spool %d on %q", r.DaemonCPU, r.RSSAnon, r.RSSAnonPeak, r.HeapBytes, r.SpoolBytes, r.SpoolFS)
	}
	if r.Params.Messages != 300 || r.Params.Sessions != 6 || r.Params.PerSession != 2 || r.Params.Rcpts != 2 || r.Params.SizeBytes != 2048 {
		t.Errorf("parameters: %+v", r.Params)
	}
	for _, f := range []string{cpuProfileFile, heapProfileFile} {
		b, err := os.ReadFile(filepath.Join(prof, f))
		if err != nil || len(b) == 0 || string(b) == stale {
			t.Errorf("profile %s: %v, %d bytes", f, err, len(b))
		}
	}
}

// TestBenchPrefillAndSlowSink runs the larger-run options on a small load:
// a queue of deferred messages first, then fresh mail measured past it to
// sinks that delay every reply. Only the fresh mail arrives, and none
// sooner than one sink delay after its accept.
func TestBenchPrefillAndSlowSink(t *testing.T) {
	t.Setenv(asMTAEnv, "1")
	const delay = 30 * time.Millisecond
	out, errOut, err := runMTA(t.Context(), "bench", "-n", "40", "-c", "4", "--prefill", "25", "--slow-sink", delay.String(), "--json")
	if err != nil {
		t.Fatalf("bench: %v\n%s\n%s", err, out, errOut)
	}
	var r benchReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("JSON: %v\n%s", err, out)
	}
	if r.Params.Prefill != 25 || r.Params.SinkDelay != delay.String() || r.PrefillSecs <= 0 {
		t.Errorf("parameters %+v, prefill %.2f s", r.Params, r.PrefillSecs)
	}
	if r.Accepted != 40 || r.Expected != 40 || r.Delivered != 40 || r.Foreign != 0 {
		t.Errorf("accepted %d, delivered %d of %d, foreign %d", r.Accepted, r.Delivered, r.Expected, r.Foreign)
	}
	// The sink answers DATA only after the delay, so no message can
	// arrive sooner than that after its 250.
	if floor := float64(delay) / float64(time.Millisecond); r.DeliveryP50 < floor {
		t.Errorf("delivery latency p50 %.1f ms with every sink reply delayed %s", r.DeliveryP50, delay)
	}
}

// TestBenchSinkAndGenerate runs the two halves by hand, as against
// another MTA: `mta bench sink` serves the bench domains and counts,
// `mta bench generate --target` sends to it.
func TestBenchSinkAndGenerate(t *testing.T) {
	ports, err := freePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ports[0])
	type result struct {
		out string
		err error
	}
	sinkDone := make(chan result, 1)
	go func() {
		out, _, err := runMTA(t.Context(), "bench", "sink", "--port", port, "-n", "40", "--domains", "2")
		sinkDone <- result{out, err}
	}()
	target := "127.0.0.3:" + port
	testpeer.WaitFor(t, "the sink to listen", func() bool { return greets(target) })
	out, errOut, err := runMTA(t.Context(), "bench", "generate", "--target", target, "-n", "40", "-c", "4")
	if err != nil {
		t.Fatalf("generate: %v\n%s", err, errOut)
	}
	for _, want := range []string{"generate: 40 messages of 2 KiB, 4 sessions", "target " + target, "40 of 40 tried", "accept rate", "accept latency"} {
		if !strings.Contains(out, want) {
			t.Errorf("generate table lacks %q:\n%s", want, out)
		}
	}
	s := <-sinkDone
	if s.err != nil || !strings.Contains(s.out, "d2.bench.test  MX 127.0.0.3:"+port) || !strings.Contains(s.out, "40 messages, 40 recipients") {
		t.Errorf("sink: %v\n%s", s.err, s.out)
	}
}

// TestBenchUsage: mistakes are usage errors that say what is wrong.
func TestBenchUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"generate without target", []string{"generate"}, "needs --target"},
		{"unknown mode", []string{"flood"}, "unknown mode"},
		{"zero sessions", []string{"-c", "0"}, "must be positive"},
		{"tiny size", []string{"--size", "10"}, "--size"},
		{"bad size", []string{"--size", "lots"}, "not a size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, err := runMTA(t.Context(), append([]string{"bench"}, tt.args...)...)
			var ee *exitError
			if !errors.As(err, &ee) || ee.code != exitUsage {
				t.Fatalf("err = %v, want a usage error", err)
			}
			if all := out + errOut + err.Error(); !strings.Contains(all, tt.want) {
				t.Errorf("output lacks %q: %s", tt.want, all)
			}
		})
	}
}

// TestBenchReportTable: the table names every figure with its unit.
func TestBenchReportTable(t *testing.T) {
	r := benchReport{Params: benchParams{Mode: "end-to-end", Messages: 10, SizeBytes: 2048, Sessions: 2, PerSession: 1, Rcpts: 1, Domains: 1, SinkDelay: "50ms", Prefill: 5},
		Tried: 10, Accepted: 9, Refused: map[string]int{"452 4.3.1": 1}, AcceptRate: 900, AcceptSecs: 0.01, Expected: 9, Delivered: 9,
		E2ERate: 450, E2ESecs: 0.02, DaemonCPU: 0.01, HeapBytes: 3 << 20, RSSAnon: 10 << 20, SpoolBytes: 16 << 20, SpoolFS: "tmpfs", PrefillSecs: 1}
	var b bytes.Buffer
	if err := r.writeTable(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"end-to-end: 10 messages of 2 KiB", "sink delay 50ms prefilled queue 5", "9 of 10 tried", "refused: 452 4.3.1×1",
		"900 msgs/s", "450 msgs/s", "9 of 9 recipients", "3.0 MiB in use", "10.0 MiB at end", "16.0 MiB", "on tmpfs: fsync costs nothing", "5 deferred messages"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}
