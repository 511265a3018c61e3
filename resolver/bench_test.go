package resolver_test

import (
	"sync/atomic"
	"testing"
	"time"

	"mta/internal/testpeer"
	"mta/resolver"
)

const benchZone = `$ORIGIN bench.test.
@    300 IN SOA ns hostmaster 1 3600 600 86400 60
@    300 IN MX 10 mx1
@    300 IN MX 20 mx2
mx1  300 IN A 192.0.2.1
mx1  300 IN AAAA 2001:db8::1
mx2  300 IN A 192.0.2.2
`

// BenchmarkRoute measures whole routes (MX, then A and AAAA of two hosts)
// against a loopback DNS server: cached, where every answer comes from the
// cache, and uncached, where the clock jumps two days per reading so every
// answer has expired and each route makes five exchanges over UDP.
func BenchmarkRoute(b *testing.B) {
	d := testpeer.NewDNS(b, benchZone)
	b.Run("cached", func(b *testing.B) {
		r := newResolver(b, resolver.Config{Servers: []string{d.Addr()}})
		benchRoutes(b, r)
	})
	b.Run("cached_parallel", func(b *testing.B) {
		r := newResolver(b, resolver.Config{Servers: []string{d.Addr()}})
		if _, err := r.Route(b.Context(), "bench.test"); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := r.Route(b.Context(), "bench.test"); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
	})
	b.Run("uncached", func(b *testing.B) {
		var ticks atomic.Int64
		base := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
		now := func() time.Time { return base.Add(time.Duration(ticks.Add(1)) * 48 * time.Hour) }
		r := newResolver(b, resolver.Config{Servers: []string{d.Addr()}, Now: now})
		benchRoutes(b, r)
	})
}

func benchRoutes(b *testing.B, r *resolver.Resolver) {
	b.Helper()
	if _, err := r.Route(b.Context(), "bench.test"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		rt, err := r.Route(b.Context(), "bench.test")
		if err != nil || len(rt.Hosts) != 2 {
			b.Fatalf("route: %v, %v", rt, err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
}
