package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"mta/internal/peer"
	"mta/internal/testpeer"
)

// startTestSinks starts sinks on 127.0.0.2… feeding led, stopped at the
// end of the test.
func startTestSinks(t *testing.T, led *ledger, ips ...string) *sinks {
	t.Helper()
	s, err := startSinks(sinkOptions{IPs: ips, Arrive: led.arrive})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func sinkAddr(s *sinks, ip string) string { return net.JoinHostPort(ip, strconv.Itoa(s.Port())) }

// TestGenerateIntoSink: every message the generator got a 250 for is
// counted once per recipient at the sink, whatever the session shape.
func TestGenerateIntoSink(t *testing.T) {
	tests := []struct {
		name                       string
		messages, sessions, per, r int
		size                       int
	}{
		{"one message per connection", 50, 4, 1, 1, 2048},
		{"many per connection", 60, 3, 7, 1, 1024},
		{"several recipients", 30, 2, 4, 3, 4096},
		{"large body", 4, 2, 1, 1, 300 << 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			led := newLedger("t1", tt.messages, tt.r)
			s := startTestSinks(t, led, "127.0.0.2")
			g := generate(t.Context(), genOptions{Target: sinkAddr(s, "127.0.0.2"), Messages: tt.messages, Sessions: tt.sessions,
				PerSession: tt.per, Rcpts: tt.r, SizeBytes: tt.size, Domains: []string{"a.test", "b.test"}, Helo: "gen.test", From: "s@gen.test"}, led)
			if g.Accepted != tt.messages || g.Tried != tt.messages || g.Errors != 0 || len(g.Latencies) != tt.messages {
				t.Fatalf("generator: %+v", g)
			}
			if err := waitArrivals(t.Context(), led, tt.messages*tt.r, nil); err != nil {
				t.Fatal(err)
			}
			tally := led.tally(10)
			if tally.Delivered != tt.messages*tt.r || len(tally.Missing) != 0 || tally.Duplicates != 0 || tally.Foreign != 0 {
				t.Errorf("tally: delivered %d missing %v dups %d foreign %d", tally.Delivered, tally.Missing, tally.Duplicates, tally.Foreign)
			}
			wantConns := (tt.messages + tt.per - 1) / tt.per
			if got := s.Connections(); got < int64(wantConns) || got > int64(wantConns+tt.sessions) {
				t.Errorf("connections = %d, want about %d", got, wantConns)
			}
		})
	}
}

// TestSinkTakesGoSMTPClient: go-smtp's client (an implementation we did not
// write) delivers to the sink, pipelined header and all, and the sink
// reports the message's bench id and recipient indexes.
func TestSinkTakesGoSMTPClient(t *testing.T) {
	led := newLedger("gs", 10, 2)
	s := startTestSinks(t, led, "127.0.0.2")
	c, err := smtp.Dial(sinkAddr(s, "127.0.0.2"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := "From: a@x.test\r\nX-Bench-Id: gs-7\r\n\r\n.leading dot\r\nbody\r\n"
	if err := c.SendMail("a@x.test", []string{"r0@y.test", "r1@y.test"}, strings.NewReader(body)); err != nil {
		t.Fatalf("send: %v", err)
	}
	if err := c.Quit(); err != nil {
		t.Errorf("quit: %v", err)
	}
	if err := waitArrivals(t.Context(), led, 2, nil); err != nil {
		t.Fatal(err)
	}
	if led.arrived[14].Load() == 0 || led.arrived[15].Load() == 0 {
		t.Errorf("message 7 recipients 0 and 1 not recorded")
	}
	if ok, _ := c.Extension("PIPELINING"); !ok {
		t.Errorf("PIPELINING not advertised")
	}
}

// TestGeneratorIntoGoSMTPServer: the generator speaks SMTP that go-smtp's
// server (internal/peer's host) accepts, with the bench header intact.
func TestGeneratorIntoGoSMTPServer(t *testing.T) {
	h := testpeer.NewSMTP(t, "127.0.0.2:0", peer.Behaviour{})
	led := newLedger("gp", 6, 2)
	g := generate(t.Context(), genOptions{Target: h.Addr(), Messages: 6, Sessions: 2, PerSession: 3, Rcpts: 2,
		SizeBytes: 2048, Domains: []string{"a.test"}, Helo: "gen.test", From: "s@gen.test"}, led)
	if g.Accepted != 6 {
		t.Fatalf("accepted %d of 6: %+v", g.Accepted, g)
	}
	msgs := h.Messages()
	if len(msgs) != 6 {
		t.Fatalf("host has %d messages", len(msgs))
	}
	for _, m := range msgs {
		if m.From != "s@gen.test" || len(m.To) != 2 || m.To[0] != "r0@a.test" || m.To[1] != "r1@a.test" {
			t.Errorf("envelope %s → %v", m.From, m.To)
		}
		if !bytes.Contains(m.Data, []byte("\r\nX-Bench-Id: gp-")) || len(m.Data) < 1500 || len(m.Data) > 2100 {
			t.Errorf("data of %d bytes lacks the bench header: %.200q", len(m.Data), m.Data)
		}
	}
}

// TestSinkModes: a sink host that goes away refuses, greets with 421 or
// hangs; the generator sees each as a failed connection, and the host
// takes mail again when switched back.
func TestSinkModes(t *testing.T) {
	led := newLedger("sm", 100, 1)
	s := startTestSinks(t, led, "127.0.0.2", "127.0.0.3")
	opts := genOptions{Target: sinkAddr(s, "127.0.0.3"), Messages: 1, Sessions: 1, PerSession: 1, Rcpts: 1, SizeBytes: 1024,
		Domains: []string{"a.test"}, Helo: "gen.test", From: "s@gen.test", IOTimeout: 200 * time.Millisecond}
	for i, m := range []sinkMode{sinkRefuse, sinkGreet421, sinkHang, sinkAccept} {
		t.Run(m.String(), func(t *testing.T) {
			if err := s.SetMode("127.0.0.3", m); err != nil {
				t.Fatal(err)
			}
			opts.FirstSeq = i
			gaveUp := s.GaveUp()
			g := generate(t.Context(), opts, led)
			if want := m == sinkAccept; (g.Accepted == 1) != want {
				t.Errorf("accepted %d, first error %q", g.Accepted, g.FirstErr)
			}
			if m == sinkHang {
				// The generator timed out and closed; the host counts it once it reads the EOF.
				testpeer.WaitFor(t, "the host to see the client give up", func() bool { return s.GaveUp() == gaveUp+1 })
			}
		})
	}
	// The other host never changed mode.
	opts.Target, opts.FirstSeq = sinkAddr(s, "127.0.0.2"), 10
	if g := generate(t.Context(), opts, led); g.Accepted != 1 {
		t.Errorf("untouched host: %+v", g)
	}
}

// startPostfixSink runs Postfix's smtp-sink on addr for the test, or skips
// the test when it is not installed.
func startPostfixSink(t *testing.T, addr string) {
	t.Helper()
	const bin = "/usr/sbin/smtp-sink"
	needTool(t, bin)
	args := []string{"-c", addr, "100"}
	if os.Geteuid() == 0 {
		args = append([]string{"-u", "root"}, args...) // it refuses to run as root otherwise
	}
	var stderr bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	testpeer.WaitFor(t, "smtp-sink to listen", func() bool {
		select {
		case <-exited:
			t.Fatalf("smtp-sink exited: %s", stderr.String())
		default:
		}
		return greets(addr)
	})
}

// TestGeneratorIntoPostfixSink: the generator against Postfix's smtp-sink.
func TestGeneratorIntoPostfixSink(t *testing.T) {
	ports, err := freePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.2:%d", ports[0])
	startPostfixSink(t, addr)
	led := newLedger("ps", 40, 2)
	g := generate(t.Context(), genOptions{Target: addr, Messages: 40, Sessions: 4, PerSession: 5, Rcpts: 2,
		SizeBytes: 4096, Domains: []string{"a.test"}, Helo: "gen.test", From: "s@gen.test"}, led)
	if g.Accepted != 40 || g.Errors != 0 {
		t.Errorf("smtp-sink accepted %d of 40: %+v", g.Accepted, g)
	}
}

// TestPostfixSourceIntoSink: Postfix's smtp-source as the client of the
// sink, three sessions of ten messages each on one connection (-d).
func TestPostfixSourceIntoSink(t *testing.T) {
	const bin = "/usr/sbin/smtp-source"
	needTool(t, bin)
	s, err := startSinks(sinkOptions{IPs: []string{"127.0.0.2"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	out, err := exec.CommandContext(t.Context(), bin, "-d", "-s", "3", "-m", "30", "-r", "2", "-l", "3000",
		"-f", "s@gen.test", "-t", "r0@a.test", sinkAddr(s, "127.0.0.2")).CombinedOutput()
	if err != nil {
		t.Fatalf("smtp-source: %v: %s", err, out)
	}
	if got := s.Messages(); got != 30 {
		t.Errorf("sink took %d of 30 messages", got)
	}
	if got := s.Connections(); got > 3 {
		t.Errorf("%d connections for 3 sessions with -d", got)
	}
}

// TestBenchSizeFlag covers the size syntax.
func TestBenchSizeFlag(t *testing.T) {
	for in, want := range map[string]int{"2048": 2048, "2k": 2048, "100K": 102400, "1m": 1 << 20} {
		var s sizeFlag
		if err := s.Set(in); err != nil || int(s) != want {
			t.Errorf("%q = %d, %v; want %d", in, s, err, want)
		}
	}
	var s sizeFlag
	if s.Set("big") == nil || s.Set("-1") == nil {
		t.Errorf("bad sizes accepted")
	}
}

// BenchmarkGenerateIntoSink is the cost of the instruments alone: the
// generator and the sink on loopback, no MTA between them.
func BenchmarkGenerateIntoSink(b *testing.B) {
	led := newLedger("bg", 1, 1)
	s, err := startSinks(sinkOptions{IPs: []string{"127.0.0.2"}, Arrive: func(string, int, int, time.Time) {}})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const batch = 200
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		g := generate(context.Background(), genOptions{Target: sinkAddr(s, "127.0.0.2"), Messages: batch, Sessions: 20, PerSession: 1,
			Rcpts: 1, SizeBytes: 2048, Domains: []string{"a.test"}, Helo: "gen.test", From: "s@gen.test"}, led)
		if g.Accepted != batch {
			b.Fatalf("accepted %d: %s", g.Accepted, g.FirstErr)
		}
	}
	b.ReportMetric(float64(b.N*batch)/time.Since(start).Seconds(), "msgs/s")
}

// BenchmarkGenerateIntoPeerHost is the generator against internal/peer's
// go-smtp host, which records every session and keeps every message: the
// comparison that made the bench sink a lean counting server of its own.
func BenchmarkGenerateIntoPeerHost(b *testing.B) {
	h, err := peer.Listen("127.0.0.2:0", peer.Behaviour{})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	led := newLedger("bp", 1, 1)
	const batch = 200
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		g := generate(context.Background(), genOptions{Target: h.Addr(), Messages: batch, Sessions: 20, PerSession: 1,
			Rcpts: 1, SizeBytes: 2048, Domains: []string{"a.test"}, Helo: "gen.test", From: "s@gen.test"}, led)
		if g.Accepted != batch {
			b.Fatalf("accepted %d: %s", g.Accepted, g.FirstErr)
		}
	}
	b.ReportMetric(float64(b.N*batch)/time.Since(start).Seconds(), "msgs/s")
}

// The machine row's steal: read from /proc/stat, as a share of all CPU
// time between two readings.
func TestStealPercent(t *testing.T) {
	total, steal, err := machineCPU()
	if err != nil {
		t.Fatal(err)
	}
	if total <= 0 || steal < 0 || steal > total {
		t.Errorf("machineCPU = %d total, %d steal", total, steal)
	}
	for _, tc := range []struct {
		t0, s0, t1, s1 int64
		want           float64
	}{
		{1000, 10, 2000, 260, 25},
		{1000, 10, 2000, 10, 0},
		{1000, 10, 1000, 10, 0}, // no time passed: nothing to say
	} {
		if got := stealPercent(tc.t0, tc.s0, tc.t1, tc.s1); got != tc.want {
			t.Errorf("stealPercent(%d, %d, %d, %d) = %v, want %v", tc.t0, tc.s0, tc.t1, tc.s1, got, tc.want)
		}
	}
}
