package main

// The benchmark's one table (or JSON object).

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// benchParams are the parameters of a run, printed with its results.
type benchParams struct {
	Mode       string `json:"mode"`
	Messages   int    `json:"messages"`
	SizeBytes  int    `json:"size_bytes"`
	Sessions   int    `json:"sessions"`
	PerSession int    `json:"messages_per_session"`
	Rcpts      int    `json:"recipients"`
	Domains    int    `json:"domains"`
	SinkDelay  string `json:"sink_delay,omitempty"`
	Prefill    int    `json:"prefill,omitempty"`
	Target     string `json:"target,omitempty"`
	CPUs       int    `json:"cpus"`
	// LoadAvg is the machine's 1-minute load average when the run began:
	// on a shared machine, other work skews every figure.
	LoadAvg float64 `json:"load_average_at_start"`
}

// benchReport is every figure of a run; fields that do not apply to the
// mode are left zero and not printed.
type benchReport struct {
	Params benchParams `json:"parameters"`

	Tried       int            `json:"tried"`
	Accepted    int            `json:"accepted"`
	Refused     map[string]int `json:"refused,omitempty"`
	Errors      int            `json:"errors"`
	FirstError  string         `json:"first_error,omitempty"`
	AcceptSecs  float64        `json:"accept_seconds"`
	AcceptRate  float64        `json:"accept_rate"`
	AcceptP50Ms float64        `json:"accept_latency_p50_ms"`
	AcceptP99Ms float64        `json:"accept_latency_p99_ms"`
	AcceptMaxMs float64        `json:"accept_latency_max_ms"`
	Expected    int            `json:"expected_arrivals,omitempty"`
	Delivered   int            `json:"delivered,omitempty"`
	Duplicates  int            `json:"duplicates,omitempty"`
	Foreign     int            `json:"foreign,omitempty"`
	E2ESecs     float64        `json:"end_to_end_seconds,omitempty"`
	E2ERate     float64        `json:"end_to_end_rate,omitempty"`
	DeliveryP50 float64        `json:"delivery_latency_p50_ms,omitempty"`
	DeliveryP99 float64        `json:"delivery_latency_p99_ms,omitempty"`
	DaemonCPU   float64        `json:"daemon_cpu_seconds,omitempty"`
	HeapBytes   int64          `json:"daemon_heap_inuse_bytes,omitempty"`
	HeapPeak    int64          `json:"daemon_heap_inuse_peak_bytes,omitempty"`
	RSSAnon     int64          `json:"daemon_rss_anon_bytes,omitempty"`
	RSSAnonPeak int64          `json:"daemon_rss_anon_peak_bytes,omitempty"`
	SpoolBytes  int64          `json:"spool_bytes,omitempty"`
	SpoolPeak   int64          `json:"spool_peak_bytes,omitempty"`
	SpoolFS     string         `json:"spool_file_system,omitempty"`
	BenchCPU    float64        `json:"bench_process_cpu_seconds,omitempty"`
	// StealPct is the share of the machine's CPU time the hypervisor gave
	// to other guests during the measured run: a run with steal is slower
	// for reasons outside it.
	StealPct     float64  `json:"steal_percent"`
	StealKnown   bool     `json:"-"`
	PrefillSecs  float64  `json:"prefill_seconds,omitempty"`
	ProfileFiles []string `json:"profiles,omitempty"`
}

// addGenerator fills the accept figures from the generator's result.
func (r *benchReport) addGenerator(g genResult) {
	r.Tried, r.Accepted, r.Errors, r.FirstError = g.Tried, g.Accepted, g.Errors, g.FirstErr
	if len(g.Replies) > 0 {
		r.Refused = g.Replies
	}
	if secs := g.End.Sub(g.Start).Seconds(); secs > 0 {
		r.AcceptSecs = secs
		r.AcceptRate = float64(g.Accepted) / secs
	}
	lat := slices.Clone(g.Latencies)
	slices.Sort(lat)
	r.AcceptP50Ms = ms(percentile(lat, 0.50))
	r.AcceptP99Ms = ms(percentile(lat, 0.99))
	if len(lat) > 0 {
		r.AcceptMaxMs = ms(lat[len(lat)-1])
	}
}

// addArrivals fills the delivery figures from the ledger.
func (r *benchReport) addArrivals(t ledgerTally) {
	r.Expected, r.Delivered, r.Duplicates, r.Foreign = t.Expected, t.Delivered, t.Duplicates, t.Foreign
	if !t.FirstAccept.IsZero() && !t.LastArrival.IsZero() {
		r.E2ESecs = t.LastArrival.Sub(t.FirstAccept).Seconds()
		if r.E2ESecs > 0 {
			r.E2ERate = float64(t.Delivered) / r.E2ESecs
		}
	}
	lat := slices.Clone(t.DeliveryLats)
	slices.Sort(lat)
	r.DeliveryP50 = ms(percentile(lat, 0.50))
	r.DeliveryP99 = ms(percentile(lat, 0.99))
}

// percentile of sorted durations (nearest rank).
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func (r *benchReport) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// writeTable prints the report as one two-column table.
func (r *benchReport) writeTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s\t%s\n", k, fmt.Sprintf(format, args...)) }
	p := r.Params
	row("parameters", "%s: %d messages of %s, %d sessions, %d per session, %d rcpt, %d domain(s)",
		p.Mode, p.Messages, sizeText(p.SizeBytes), p.Sessions, p.PerSession, p.Rcpts, p.Domains)
	if p.SinkDelay != "" || p.Prefill > 0 || p.Target != "" {
		row("", "%s", strings.TrimSpace(fmt.Sprintf("%s %s %s", opt("sink delay ", p.SinkDelay),
			opt("prefilled queue ", itoaNZ(p.Prefill)), opt("target ", p.Target))))
	}
	if r.StealKnown {
		row("machine", "%d CPUs, load average %.2f at start, %.1f%% of CPU time stolen while measured", p.CPUs, p.LoadAvg, r.StealPct)
	} else {
		row("machine", "%d CPUs, load average %.2f at start", p.CPUs, p.LoadAvg)
	}
	row("accepted", "%d of %d tried, %d connection errors%s", r.Accepted, r.Tried, r.Errors, refusedText(r.Refused))
	if r.FirstError != "" {
		row("first error", "%s", r.FirstError)
	}
	row("accept rate", "%.0f msgs/s (%.2f s)", r.AcceptRate, r.AcceptSecs)
	row("accept latency", "p50 %.1f ms   p99 %.1f ms   max %.1f ms", r.AcceptP50Ms, r.AcceptP99Ms, r.AcceptMaxMs)
	if r.Expected > 0 {
		row("delivered", "%d of %d recipients, %d duplicates, %d foreign", r.Delivered, r.Expected, r.Duplicates, r.Foreign)
		row("end-to-end rate", "%.0f msgs/s (%.2f s, first accept → last arrival)", r.E2ERate, r.E2ESecs)
		row("delivery latency", "p50 %.1f ms   p99 %.1f ms (accept → arrival)", r.DeliveryP50, r.DeliveryP99)
	}
	if r.DaemonCPU > 0 {
		row("daemon CPU", "%.2f s (%.2f cores while measured)", r.DaemonCPU, r.DaemonCPU/max(r.E2ESecs, r.AcceptSecs))
		row("daemon Go heap", "%s in use at end, peak %s", mib(r.HeapBytes), mib(r.HeapPeak))
		row("daemon RSS anon", "%s at end, peak %s (mapped spool not counted)", mib(r.RSSAnon), mib(r.RSSAnonPeak))
		row("spool size", "%s at end, peak %s%s", mib(r.SpoolBytes), mib(r.SpoolPeak), fsText(r.SpoolFS))
		row("bench CPU", "%.2f s (generator, sinks, DNS: same machine)", r.BenchCPU)
	}
	if r.PrefillSecs > 0 {
		row("prefill", "%d deferred messages queued in %.1f s", p.Prefill, r.PrefillSecs)
	}
	for _, f := range r.ProfileFiles {
		row("profile", "%s", f)
	}
	return tw.Flush()
}

// fsText says where the spool was; on tmpfs an fsync costs nothing, so
// the figures do not show the daemon's cost on a disk.
func fsText(fs string) string {
	switch fs {
	case "":
		return ""
	case "tmpfs":
		return ", on tmpfs: fsync costs nothing there (set TMPDIR to a directory on disk)"
	}
	return ", on " + fs
}

func opt(label, v string) string {
	if v == "" {
		return ""
	}
	return label + v
}

func itoaNZ(n int) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprint(n)
}

func refusedText(m map[string]int) string {
	if len(m) == 0 {
		return ""
	}
	codes := make([]string, 0, len(m))
	for c := range m {
		codes = append(codes, c)
	}
	sort.Strings(codes)
	var b strings.Builder
	b.WriteString(", refused:")
	for _, c := range codes {
		fmt.Fprintf(&b, " %s×%d", c, m[c])
	}
	return b.String()
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func sizeText(n int) string {
	if n%1024 == 0 {
		return fmt.Sprintf("%d KiB", n/1024)
	}
	return fmt.Sprintf("%d B", n)
}
