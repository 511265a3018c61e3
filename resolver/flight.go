package resolver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
)

// errCachedMeanwhile is do's word that no flight was under way because one
// has just ended and cached its answer: the caller reads the cache again.
var errCachedMeanwhile = errors.New("answer cached meanwhile")

// flight is one exchange series shared by every concurrent lookup of the
// same (name, type).
type flight struct {
	done    chan struct{}
	waiters int // callers that joined, under flightGroup.mu
	ans     *answer
	exs     []Exchange
}

// flightGroup runs at most one flight per key at a time.
type flightGroup struct {
	mu sync.Mutex
	m  map[cacheKey]*flight
}

// do returns the result of fn for key, running fn only when no flight for
// key is under way and cached, asked while no flight can end, says the
// answer is not in the cache. Without that check a caller that missed the
// cache just before a flight stored its answer, and came here just after
// the flight ended, would ask again. fn runs in its own goroutine on a
// context that keeps ctx's values but not its cancellation (fn bounds
// itself with Config.Timeout per exchange), so that one caller giving up
// does not fail the others; each caller waits only as long as its own ctx
// allows.
func (g *flightGroup) do(ctx context.Context, log *slog.Logger, key cacheKey, cached func() bool,
	fn func(context.Context) (*answer, []Exchange)) (*answer, []Exchange, error) {
	g.mu.Lock()
	if g.m == nil {
		g.m = make(map[cacheKey]*flight)
	}
	f, ok := g.m[key]
	if !ok && cached() {
		g.mu.Unlock()
		return nil, nil, errCachedMeanwhile
	}
	if !ok {
		f = &flight{done: make(chan struct{})}
		g.m[key] = f
		go g.run(context.WithoutCancel(ctx), log, key, f, fn)
	}
	f.waiters++
	g.mu.Unlock()
	select {
	case <-f.done:
		return f.ans, f.exs, nil
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
}

// run is a goroutine root: a panic is logged and becomes an error answer
// rather than ending the process.
func (g *flightGroup) run(ctx context.Context, log *slog.Logger, key cacheKey, f *flight,
	fn func(context.Context) (*answer, []Exchange)) {
	defer func() {
		if p := recover(); p != nil {
			log.Error("resolver panic", slog.String("name", key.name), slog.Any("panic", p))
			f.ans = &answer{rcode: rcodeError, err: fmt.Sprintf("internal error: %v", p)}
		}
		g.mu.Lock()
		delete(g.m, key)
		g.mu.Unlock()
		close(f.done)
	}()
	f.ans, f.exs = fn(ctx)
}
