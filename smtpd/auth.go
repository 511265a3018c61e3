package smtpd

import (
	"bytes"
	"context"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"golang.org/x/crypto/bcrypt"
)

// authenticator checks passwords: bcrypt behind a semaphore (each check
// costs tens of milliseconds of CPU), the same work for unknown logins
// (a dummy hash), and failures throttled per client address and per login.
type authenticator struct {
	srv   *Server
	sem   chan struct{}
	dummy atomic.Pointer[[]byte]
	ip    *failures
	login *failures
	known *seen // login|address pairs that logged in: exempt from the login's limit
}

// knownFor is how long a successful login exempts its address from the
// login's failure limit.
const knownFor = 30 * 24 * time.Hour

func newAuthenticator(s *Server) *authenticator {
	return &authenticator{
		srv:   s,
		sem:   make(chan struct{}, runtime.GOMAXPROCS(0)),
		ip:    newFailures(),
		login: newFailures(),
		known: newSeen(),
	}
}

// setDummy makes the hash compared for unknown logins, with the cost of
// the users' own hashes so both take the same time.
func (a *authenticator) setDummy(u *Users) {
	cost := 0
	for _, usr := range u.List() {
		if c, err := bcrypt.Cost([]byte(usr.Hash)); err == nil {
			cost = c
			break
		}
	}
	if cost == 0 {
		return // no users: no timing to hide, and nobody can log in
	}
	if old := a.dummy.Load(); old != nil {
		if c, err := bcrypt.Cost(*old); err == nil && c == cost {
			return
		}
	}
	h, err := bcrypt.GenerateFromPassword([]byte("dummy password for unknown logins"), cost)
	if err != nil {
		a.srv.log.Error("making the dummy bcrypt hash", "err", err)
		return
	}
	a.dummy.Store(&h)
}

const authWait = 10 * time.Second

// check returns the user whose login and password these are.
func (a *authenticator) check(addr netip.Addr, login, password string, listener string) (*User, error) {
	lim := a.srv.currentLimits()
	now := a.srv.now()
	key := strings.ToLower(login)
	if len(key) > 255 {
		key = key[:255]
	}
	ip, block := "", ""
	if addr.IsValid() {
		ip, block = addr.String(), clientBlock(addr).String()
	}
	pair := key + "|" + block
	if a.ip.blocked(block, lim.AuthFailuresPerIP, lim.AuthFailureWindow, now) ||
		a.login.blocked(key, lim.AuthFailuresPerLogin, lim.AuthFailureWindow, now) && !a.known.has(pair, knownFor, now) {
		a.srv.log.Info("authentication throttled", "ip", ip, "listener", listener)
		return nil, errAuthThrottled
	}
	ctx, cancel := context.WithTimeout(context.Background(), authWait)
	defer cancel()
	select {
	case a.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, errBusy
	}
	usr, ok := a.srv.users.Load().Lookup(login)
	hash := []byte(nil)
	if ok {
		hash = []byte(usr.Hash)
	} else if d := a.dummy.Load(); d != nil {
		hash = *d
	}
	err := bcrypt.CompareHashAndPassword(hash, []byte(password))
	<-a.sem
	if !ok || err != nil {
		a.ip.add(block, lim.AuthFailureWindow, now)
		if !a.known.has(pair, knownFor, now) {
			a.login.add(key, lim.AuthFailureWindow, now)
		}
		a.srv.obs.AuthFailed(listener)
		a.srv.log.Info("authentication failed", "ip", ip, "listener", listener, "known_login", ok)
		return nil, errBadCreds
	}
	a.known.add(pair, knownFor, now)
	return usr, nil
}

// plainServer is SASL PLAIN (RFC 4616) with our replies: go-sasl's own
// server answers malformed input with a plain Go error, which go-smtp
// would send as internal text.
type plainServer struct {
	s    *session
	done bool
}

// Next runs inside go-smtp's AUTH handling, not a session hook, so it
// recovers its own panics.
func (p *plainServer) Next(resp []byte) (_ []byte, _ bool, err error) {
	defer p.s.recoverPanic(&err)
	if p.done {
		return nil, true, errAuthSyntax
	}
	if resp == nil {
		return []byte{}, false, nil // no initial response: ask for it
	}
	p.done = true
	parts := bytes.Split(resp, []byte{0})
	if len(parts) != 3 || len(parts[1]) == 0 {
		return nil, true, errAuthSyntax
	}
	authzid, login, password := string(parts[0]), string(parts[1]), string(parts[2])
	if authzid != "" && authzid != login {
		// Acting for another user is not offered.
		p.s.srv.obs.AuthFailed(p.s.kind.String())
		p.s.log.Info("authentication refused: authzid differs from login", "ip", p.s.ipString())
		return nil, true, errBadCreds
	}
	return nil, true, p.s.login(login, password)
}

// loginServer is the LOGIN mechanism (draft-murchison-sasl-login): the
// user name and the password each after a challenge.
type loginServer struct {
	s     *session
	step  int
	login string
}

func (l *loginServer) Next(resp []byte) (_ []byte, _ bool, err error) {
	defer l.s.recoverPanic(&err)
	switch l.step {
	case 0:
		l.step = 1
		if resp == nil {
			return []byte("Username:"), false, nil
		}
		fallthrough // the initial response is the user name
	case 1:
		if len(resp) == 0 {
			return nil, true, errAuthSyntax
		}
		l.login, l.step = string(resp), 2
		return []byte("Password:"), false, nil
	default:
		l.step = 3
		return nil, true, l.s.login(l.login, string(resp))
	}
}

var (
	_ sasl.Server = (*plainServer)(nil)
	_ sasl.Server = (*loginServer)(nil)
)
