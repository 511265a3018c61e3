package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

const benchSynopsis = `[generate|sink] [options]

  (no mode)   end to end: starts a DNS server for the bench domains, sink MX
              hosts on 127.0.0.2…, and the daemon (this binary, "serve", on a
              temporary spool with fsync); sends the load; prints one table
  generate    send the load to a running MTA at --target (any MTA)
  sink        serve as MX for the bench domains and count arrivals

The default run is the reference load: 20,000 messages of 2 KiB over 20
sessions, one message per session, one recipient each.`

// benchOptions are the command line of mta bench.
type benchOptions struct {
	mode        string
	messages    int
	sizeBytes   int
	sessions    int
	perSession  int
	rcpts       int
	domains     int
	rcptDomains string
	prefill     int
	slowSink    time.Duration
	jsonOut     bool
	profileDir  string
	target      string
	port        int
	timeout     time.Duration
	keep        bool
}

func runBench(ctx context.Context, args []string, stdio Stdio) error {
	// The bench's live heap is small too (its ledger); at Go's default GC
	// percent its collector took about a tenth of its CPU, which the
	// daemon being measured shares.
	setGCPercent()
	o, done, err := parseBenchArgs(args, stdio)
	if done {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	var r *benchReport
	switch o.mode {
	case "generate":
		r, err = benchGenerate(ctx, o)
	case "sink":
		return benchSink(ctx, o, stdio)
	default:
		r, err = benchEndToEnd(ctx, o, stdio)
	}
	if r != nil {
		var werr error
		if o.jsonOut {
			werr = r.writeJSON(stdio.Out)
		} else {
			werr = r.writeTable(stdio.Out)
		}
		if err == nil {
			err = werr
		}
	}
	return err
}

func parseBenchArgs(args []string, stdio Stdio) (benchOptions, bool, error) {
	o := benchOptions{mode: "end-to-end", sizeBytes: 2048}
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		o.mode, args = args[0], args[1:]
	}
	fs := newFlagSet("bench", benchSynopsis, stdio)
	fs.IntVar(&o.messages, "n", 20000, "messages to send (sink: arrivals to wait for)")
	fs.Var((*sizeFlag)(&o.sizeBytes), "size", "message size: bytes, or with k or m (KiB, MiB)")
	fs.IntVar(&o.sessions, "c", 20, "concurrent sessions")
	fs.IntVar(&o.perSession, "m", 1, "messages per session (connection)")
	fs.IntVar(&o.rcpts, "r", 1, "recipients per message")
	fs.IntVar(&o.domains, "domains", 4, "bench domains (one sink address each, 127.0.0.2 on)")
	fs.StringVar(&o.rcptDomains, "rcpt-domains", "", "generate: comma-separated recipient domains instead of the bench domains")
	fs.IntVar(&o.prefill, "prefill", 0, "queue this many deferred messages first (to a domain whose MX answers 421), then measure")
	fs.DurationVar(&o.slowSink, "slow-sink", 0, "delay each sink reply by this much")
	fs.BoolVar(&o.jsonOut, "json", false, "print JSON instead of the table")
	fs.StringVar(&o.profileDir, "profile", "", "write the daemon's CPU and heap profiles of the measured run to this directory")
	fs.StringVar(&o.target, "target", "", "generate: the MTA's SMTP address, host:port")
	fs.IntVar(&o.port, "port", 2525, "sink: the port every sink address listens on")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Minute, "give up on the whole run after this long")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory (config, spool, daemon log)")
	if done, err := parseFlags(fs, args, stdio); done {
		return o, true, err
	}
	if err := o.check(fs.NArg()); err != nil {
		fs.Usage()
		return o, true, exitf(exitUsage, "bench: %v", err)
	}
	return o, false, nil
}

func (o *benchOptions) check(extra int) error {
	switch {
	case extra > 0:
		return fmt.Errorf("unexpected arguments")
	case o.mode != "end-to-end" && o.mode != "generate" && o.mode != "sink":
		return fmt.Errorf("unknown mode %q", o.mode)
	case o.messages < 1 || o.sessions < 1 || o.perSession < 1 || o.rcpts < 1 || o.domains < 1:
		return fmt.Errorf("-n, -c, -m, -r and --domains must be positive")
	case o.rcpts > 1000 || o.domains > 200:
		return fmt.Errorf("at most 1000 recipients and 200 domains")
	case o.sizeBytes < 512 || o.sizeBytes > 50<<20:
		return fmt.Errorf("--size must be between 512 bytes and 50 MiB")
	case o.mode == "generate" && o.target == "":
		return fmt.Errorf("generate needs --target host:port")
	case o.prefill < 0 || o.timeout <= 0:
		return fmt.Errorf("--prefill and --timeout must not be negative")
	}
	return nil
}

// sizeFlag is a byte count written as 2048, 2k or 1m.
type sizeFlag int

func (s *sizeFlag) String() string { return strconv.Itoa(int(*s)) }

func (s *sizeFlag) Set(v string) error {
	mult := 1
	switch {
	case strings.HasSuffix(strings.ToLower(v), "k"):
		mult, v = 1024, v[:len(v)-1]
	case strings.HasSuffix(strings.ToLower(v), "m"):
		mult, v = 1<<20, v[:len(v)-1]
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return fmt.Errorf("%q is not a size like 2048, 2k or 1m", v)
	}
	*s = sizeFlag(n * mult)
	return nil
}

func (o *benchOptions) params() benchParams {
	p := benchParams{Mode: o.mode, Messages: o.messages, SizeBytes: o.sizeBytes, Sessions: o.sessions,
		PerSession: o.perSession, Rcpts: o.rcpts, Domains: o.domains, Prefill: o.prefill, CPUs: runtime.NumCPU(), LoadAvg: loadAverage()}
	if o.slowSink > 0 {
		p.SinkDelay = o.slowSink.String()
	}
	if o.mode == "generate" {
		p.Target = o.target
		p.Domains = len(o.genDomains())
	}
	return p
}

// loadAverage is the 1-minute load average, or 0 where it cannot be read.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64) // 0 on a malformed file: shown as such
	return v
}

// genDomains are the recipient domains of generate mode.
func (o *benchOptions) genDomains() []string {
	if o.rcptDomains != "" {
		return strings.Split(o.rcptDomains, ",")
	}
	var out []string
	for i := range o.domains {
		out = append(out, fmt.Sprintf("d%d.%s", i+1, benchZone))
	}
	return out
}

func (o *benchOptions) genOptions(target string, domains []string) genOptions {
	return genOptions{Target: target, Messages: o.messages, Sessions: o.sessions, PerSession: o.perSession,
		Rcpts: o.rcpts, SizeBytes: o.sizeBytes, Domains: domains, Helo: benchHelo, From: benchSender}
}

// benchGenerate sends the load to --target and reports the accept figures.
func benchGenerate(ctx context.Context, o benchOptions) (*benchReport, error) {
	r := &benchReport{Params: o.params()}
	led := newLedger(newBenchTag(), o.messages, o.rcpts)
	g := generate(ctx, o.genOptions(o.target, o.genDomains()), led)
	r.addGenerator(g)
	return r, ctx.Err()
}

// newBenchTag names one run in every X-Bench-Id it sends.
func newBenchTag() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}

// benchSink serves the bench domains until -n messages have arrived,
// --timeout passes or the command is interrupted.
func benchSink(ctx context.Context, o benchOptions, stdio Stdio) error {
	c := &arrivalCounter{}
	w, err := startWorld(worldOptions{Domains: o.domains, Delay: o.slowSink, Port: o.port, Arrive: c.arrive})
	if err != nil {
		return err
	}
	defer w.Close()
	fmt.Fprintf(stdio.Out, "DNS for %s on %s (udp and tcp); sinks on port %d:\n", benchZone, w.DNS.Addr(), w.Sinks.Port())
	for i, d := range w.Domains {
		fmt.Fprintf(stdio.Out, "  %s  MX %s:%d\n", d, w.IPs[i], w.Sinks.Port())
	}
	fmt.Fprintf(stdio.Out, "waiting for %d messages (at most %s)\n", o.messages, o.timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for w.Sinks.Messages() < int64(o.messages) {
		select {
		case <-ctx.Done():
			c.print(stdio, w)
			return nil
		case <-tick.C:
		}
	}
	c.print(stdio, w)
	return nil
}

// arrivalCounter is sink mode's tally: recipients and when the first and
// last came.
type arrivalCounter struct {
	mu          sync.Mutex
	n           int64
	first, last time.Time
}

func (c *arrivalCounter) arrive(_ string, _, _ int, t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	if c.first.IsZero() {
		c.first = t
	}
	c.last = t
}

func (c *arrivalCounter) print(stdio Stdio, w *world) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rate := 0.0
	if secs := c.last.Sub(c.first).Seconds(); secs > 0 {
		rate = float64(c.n) / secs
	}
	fmt.Fprintf(stdio.Out, "%d messages, %d recipients over %d connections; %.0f recipients/s from first to last\n",
		w.Sinks.Messages(), c.n, w.Sinks.Connections(), rate)
}
