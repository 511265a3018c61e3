package delivery_test

import (
	"sync"
	"testing"
	"time"

	"mta/delivery"
	"mta/internal/peer"
	"mta/internal/testpeer"
)

// BenchmarkDeliver measures end-to-end delivery: messages enqueued in a
// real spool, claimed, resolved (cached) and delivered to a go-smtp sink
// over loopback. Each iteration is a batch of 100 one-recipient messages.
func BenchmarkDeliver(b *testing.B) {
	const batch = 100
	w := newWorld(b, setup{zone: oneMXZone, hosts: map[string]peer.Behaviour{"127.0.0.2": {}},
		cfg: func(c *delivery.Config) { c.Logger = nil }})
	sink := w.hosts["127.0.0.2"]
	body := body7
	sent := 0
	start := time.Now()
	b.ReportAllocs()
	b.SetBytes(int64(len(body)) * batch)
	for b.Loop() {
		var wg sync.WaitGroup // concurrent enqueues share fsyncs (group commit)
		for range batch {
			wg.Go(func() { w.send("s@sender.test", []string{"x@example.test"}, body) })
		}
		wg.Wait()
		sent += batch
		testpeer.WaitHost(b, sink, "the batch", func(h *peer.Host) bool { return len(h.Messages()) >= sent })
		for _, m := range sink.Messages() { // keep the sink's memory flat
			sink.Delete(m.ID)
		}
		sent = 0
	}
	b.ReportMetric(float64(b.N*batch)/time.Since(start).Seconds(), "msgs/s")
}
