package delivery

import (
	"sync"
	"time"
)

// poolKey is what a connection can be reused for: the same host and port,
// under the same TLS policy (so its TLS verdict fits) and AUTH user.
type poolKey struct {
	host   string
	port   int
	policy TLSPolicy
	user   string
}

// pool keeps idle sessions for reuse, bounded in number, each closed after
// IdleTimeout unused.
type pool struct {
	e      *Scheduler
	mu     sync.Mutex
	idle   map[poolKey][]*idleSession
	n      int
	closed bool
}

type idleSession struct {
	s     *session
	timer *time.Timer
}

func newPool(e *Scheduler) *pool {
	return &pool{e: e, idle: make(map[poolKey][]*idleSession)}
}

// get takes the most recently used idle session for k, or nil. One that
// outlived ReuseAge while idle is ended, not handed out.
func (p *pool) get(k poolKey) *session {
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.idle[k]
	for len(list) > 0 {
		is := list[len(list)-1]
		list = list[:len(list)-1]
		p.set(k, list)
		p.n--
		if !is.timer.Stop() { // the idle timer has it and is closing it
			continue
		}
		if time.Since(is.s.born) >= p.e.cfg.ReuseAge {
			s := is.s
			p.e.background(func() { p.e.quit(s) })
			continue
		}
		return is.s
	}
	return nil
}

func (p *pool) set(k poolKey, list []*idleSession) {
	if len(list) == 0 {
		delete(p.idle, k)
	} else {
		p.idle[k] = list
	}
}

// put gives a healthy session back after a message, or ends it when it
// has served enough messages or time, or the pool is full or closed.
func (p *pool) put(s *session) {
	cfg := &p.e.cfg
	if s.spent {
		p.e.closeSession(s)
		return
	}
	if s.msgs >= cfg.ReuseMessages || time.Since(s.born) >= cfg.ReuseAge {
		p.e.background(func() { p.e.quit(s) })
		return
	}
	k := s.t.key()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		p.e.background(func() { p.e.quit(s) })
		return
	}
	if p.n >= cfg.MaxIdleConns {
		p.evictOldestLocked()
	}
	is := &idleSession{s: s}
	is.timer = time.AfterFunc(cfg.IdleTimeout, func() { p.expire(k, is) })
	p.idle[k] = append(p.idle[k], is)
	p.n++
}

func (p *pool) evictOldestLocked() {
	var ok poolKey
	var oldest *idleSession
	for k, list := range p.idle {
		if len(list) > 0 && (oldest == nil || list[0].s.born.Before(oldest.s.born)) {
			ok, oldest = k, list[0]
		}
	}
	if oldest != nil && oldest.timer.Stop() {
		p.set(ok, p.idle[ok][1:])
		p.n--
		p.e.background(func() { p.e.quit(oldest.s) })
	}
}

func (p *pool) expire(k poolKey, is *idleSession) {
	p.mu.Lock()
	list := p.idle[k]
	for i, x := range list {
		if x == is {
			p.set(k, append(list[:i:i], list[i+1:]...))
			p.n--
			break
		}
	}
	p.mu.Unlock()
	p.e.quit(is.s)
}

// close ends every idle session and refuses new ones.
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	var all []*session
	for _, list := range p.idle {
		for _, is := range list {
			if is.timer.Stop() {
				all = append(all, is.s)
			}
		}
	}
	p.idle = map[poolKey][]*idleSession{}
	p.n = 0
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range all {
		wg.Go(func() { p.e.quit(s) })
	}
	wg.Wait()
}
