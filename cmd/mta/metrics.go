package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"mta/spool"
)

// metrics holds the daemon's Prometheus metrics on a registry of its own
// (no global registration), and adapts the packages' Observers to it.
type metrics struct {
	reg   *prometheus.Registry
	cache seriesCache

	received    *prometheus.CounterVec // by listener
	receivedB   prometheus.Counter
	smtpdConns  *prometheus.GaugeVec   // by listener
	smtpdRefuse *prometheus.CounterVec // by listener
	replies     *prometheus.CounterVec // by listener, class
	authFails   *prometheus.CounterVec // by listener
	panics      *prometheus.CounterVec // by subsystem

	attempts   *prometheus.CounterVec // by result, phase, class
	latency    prometheus.Histogram
	outConns   prometheus.Gauge
	postponed  prometheus.Counter
	dnsLookups *prometheus.CounterVec // by type, result, cached
	dnsTime    prometheus.Histogram

	commits   *prometheus.CounterVec // by result
	commitOps prometheus.Histogram
	commitDur prometheus.Histogram
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.received = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mta_smtpd_messages_received_total", Help: "Messages accepted (250 after the spool commit), by listener."}, []string{"listener"})
	m.receivedB = prometheus.NewCounter(prometheus.CounterOpts{Name: "mta_smtpd_received_bytes_total", Help: "Octets of accepted messages."})
	m.smtpdConns = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mta_smtpd_connections", Help: "Client connections open now, by listener."}, []string{"listener"})
	m.smtpdRefuse = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mta_smtpd_connections_refused_total", Help: "Connections refused with 421 for the per-IP or total limit."}, []string{"listener"})
	m.replies = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mta_smtpd_replies_total", Help: "Final replies sent to clients, by listener and code class (2xx, 4xx, 5xx)."}, []string{"listener", "class"})
	m.authFails = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mta_smtpd_auth_failures_total", Help: "Failed AUTH attempts."}, []string{"listener"})
	m.panics = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mta_panics_total", Help: "Panics recovered at goroutine roots (each is a bug)."}, []string{"subsystem"})
	m.attempts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mta_delivery_attempts_total", Help: "Delivery attempts per recipient, by result (delivered, deferred, failed), phase and reply class."}, []string{"result", "phase", "class"})
	m.latency = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mta_delivery_latency_seconds", Help: "Time from arrival to delivery of each delivered recipient.",
		Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600}})
	m.postponed = prometheus.NewCounter(prometheus.CounterOpts{Name: "mta_delivery_postponed_total", Help: "Due recipients left in the spool for later because their destination already held its share (half) of the recipients claimed for delivery."})
	m.outConns = prometheus.NewGauge(prometheus.GaugeOpts{Name: "mta_delivery_connections", Help: "Outgoing SMTP connections open now (busy and idle)."})
	m.dnsLookups = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mta_resolver_lookups_total", Help: "DNS lookups by query type, result and whether the cache answered."}, []string{"type", "result", "cached"})
	m.dnsTime = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mta_resolver_exchange_seconds", Help: "Duration of DNS exchanges that went to a server.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)})
	m.commits = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mta_spool_commits_total", Help: "Spool write transactions, by result (ok, error, empty)."}, []string{"result"})
	m.commitOps = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mta_spool_commit_operations", Help: "Operations (enqueues, results, claims) carried by one group commit.", Buckets: prometheus.ExponentialBuckets(1, 2, 10)})
	m.commitDur = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mta_spool_commit_seconds", Help: "Duration of one spool commit, fsync included.", Buckets: prometheus.ExponentialBuckets(0.0002, 2, 14)})
	m.reg.MustRegister(m.commits, m.commitOps, m.commitDur)
	m.reg.MustRegister(m.received, m.receivedB, m.smtpdConns, m.smtpdRefuse, m.replies, m.authFails, m.panics,
		m.attempts, m.latency, m.outConns, m.postponed, m.dnsLookups, m.dnsTime,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// watchSpool adds gauges read from the spool's counters at scrape time
// (the counters are kept in the spool's own transactions: no scan).
func (m *metrics) watchSpool(sp *spool.Spool, dir string) {
	queue := prometheus.NewDesc("mta_spool_recipients", "Live recipients in the queue, by state (pending, deferred, held).", []string{"state"}, nil)
	msgs := prometheus.NewDesc("mta_spool_messages", "Live messages in the queue.", nil, nil)
	retired := prometheus.NewDesc("mta_spool_retired_messages", "Finished messages kept for `mta queue show`.", nil, nil)
	size := prometheus.NewDesc("mta_spool_file_bytes", "Size of the spool's bbolt file.", nil, nil)
	m.reg.MustRegister(collectorFunc{descs: []*prometheus.Desc{queue, msgs, retired, size}, collect: func(ch chan<- prometheus.Metric) {
		if c, err := sp.Counts(); err == nil {
			for _, st := range []string{"pending", "deferred", "held"} {
				ch <- prometheus.MustNewConstMetric(queue, prometheus.GaugeValue, float64(c.ByState[st]), st)
			}
			ch <- prometheus.MustNewConstMetric(msgs, prometheus.GaugeValue, float64(c.Messages))
			ch <- prometheus.MustNewConstMetric(retired, prometheus.GaugeValue, float64(c.Retired))
		}
		if fi, err := os.Stat(filepath.Join(dir, "spool.db")); err == nil {
			ch <- prometheus.MustNewConstMetric(size, prometheus.GaugeValue, float64(fi.Size()))
		}
	}})
}

type collectorFunc struct {
	descs   []*prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (c collectorFunc) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c collectorFunc) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }

// serveMetrics serves /metrics and /healthz on addr until ctx ends.
// healthy reports whether the daemon can take mail.
func (m *metrics) serve(ctx context.Context, ln net.Listener, healthy func() error, log *slog.Logger) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := healthy(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n")) // a failed write means the scraper left
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx) // best effort at exit
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		log.Error("metrics server stopped", "err", err)
	}
}

// codeClass is a reply code's class label ("2xx"); constant strings, so
// the label costs no allocation per event.
func codeClass(code int) string {
	switch {
	case code <= 0:
		return "none"
	case code < 200:
		return "1xx"
	case code < 300:
		return "2xx"
	case code < 400:
		return "3xx"
	case code < 500:
		return "4xx"
	case code < 600:
		return "5xx"
	}
	return strconv.Itoa(code/100) + "xx"
}

// seriesKey names one counter series: its vector and up to three label
// values (unused ones empty).
type seriesKey struct {
	vec     *prometheus.CounterVec
	a, b, c string
	n       int // how many label values
}

// seriesCache keeps the series of the events that come with every message
// (replies, accepted messages, attempts, DNS lookups), looked up in their
// vector once: WithLabelValues hashes and validates the labels on each
// call. The label sets are bounded (listener, result, phase, class, query
// type), so is the cache. A typed map, not a sync.Map: a struct key boxed
// into an interface cost an allocation per event.
type seriesCache struct {
	mu       sync.RWMutex
	counters map[seriesKey]prometheus.Counter
	gauges   map[*prometheus.GaugeVec]map[string]prometheus.Gauge
}

func (m *metrics) series(k seriesKey) prometheus.Counter {
	m.cache.mu.RLock()
	c, ok := m.cache.counters[k]
	m.cache.mu.RUnlock()
	if ok {
		return c
	}
	c = k.vec.WithLabelValues([]string{k.a, k.b, k.c}[:k.n]...)
	m.cache.mu.Lock()
	if m.cache.counters == nil {
		m.cache.counters = map[seriesKey]prometheus.Counter{}
	}
	m.cache.counters[k] = c
	m.cache.mu.Unlock()
	return c
}

func (m *metrics) counter(vec *prometheus.CounterVec, a string) prometheus.Counter {
	return m.series(seriesKey{vec: vec, a: a, n: 1})
}

func (m *metrics) counter2(vec *prometheus.CounterVec, a, b string) prometheus.Counter {
	return m.series(seriesKey{vec: vec, a: a, b: b, n: 2})
}

func (m *metrics) counter3(vec *prometheus.CounterVec, a, b, c string) prometheus.Counter {
	return m.series(seriesKey{vec: vec, a: a, b: b, c: c, n: 3})
}

func (m *metrics) gauge(vec *prometheus.GaugeVec, l string) prometheus.Gauge {
	m.cache.mu.RLock()
	g, ok := m.cache.gauges[vec][l]
	m.cache.mu.RUnlock()
	if ok {
		return g
	}
	g = vec.WithLabelValues(l)
	m.cache.mu.Lock()
	if m.cache.gauges == nil {
		m.cache.gauges = map[*prometheus.GaugeVec]map[string]prometheus.Gauge{}
	}
	if m.cache.gauges[vec] == nil {
		m.cache.gauges[vec] = map[string]prometheus.Gauge{}
	}
	m.cache.gauges[vec][l] = g
	m.cache.mu.Unlock()
	return g
}

// Observer adapters.

type smtpdObserver struct{ m *metrics }

func (o smtpdObserver) ConnOpened(l string)  { o.m.gauge(o.m.smtpdConns, l).Inc() }
func (o smtpdObserver) ConnClosed(l string)  { o.m.gauge(o.m.smtpdConns, l).Dec() }
func (o smtpdObserver) ConnRefused(l string) { o.m.counter(o.m.smtpdRefuse, l).Inc() }
func (o smtpdObserver) Reply(l string, code int) {
	o.m.counter2(o.m.replies, l, codeClass(code)).Inc()
}
func (o smtpdObserver) MessageAccepted(l string, size int64, rcpts int) {
	o.m.counter(o.m.received, l).Inc()
	o.m.receivedB.Add(float64(size))
}
func (o smtpdObserver) AuthFailed(l string) { o.m.counter(o.m.authFails, l).Inc() }
func (o smtpdObserver) Panicked(l string)   { o.m.panics.WithLabelValues("smtpd").Inc() }

type deliveryObserver struct{ m *metrics }

func (o deliveryObserver) Attempt(result, phase string, code int) {
	o.m.counter3(o.m.attempts, result, phase, codeClass(code)).Inc()
}
func (o deliveryObserver) Delivered(d time.Duration) { o.m.latency.Observe(d.Seconds()) }
func (o deliveryObserver) Connections(n int)         { o.m.outConns.Set(float64(n)) }
func (o deliveryObserver) Panic()                    { o.m.panics.WithLabelValues("delivery").Inc() }
func (o deliveryObserver) Postponed(n int)           { o.m.postponed.Add(float64(n)) }

type resolverObserver struct{ m *metrics }

func (o resolverObserver) Lookup(qtype, result string, cached bool, d time.Duration) {
	o.m.counter3(o.m.dnsLookups, qtype, result, strconv.FormatBool(cached)).Inc()
	if !cached {
		o.m.dnsTime.Observe(d.Seconds())
	}
}

type spoolObserver struct{ m *metrics }

func (o spoolObserver) Committed(c spool.Commit) {
	switch {
	case c.Err != nil:
		o.m.commits.WithLabelValues("error").Inc()
	case !c.Synced:
		o.m.commits.WithLabelValues("empty").Inc()
	default:
		o.m.commits.WithLabelValues("ok").Inc()
		o.m.commitOps.Observe(float64(c.Ops))
		o.m.commitDur.Observe(c.Duration.Seconds())
	}
}
