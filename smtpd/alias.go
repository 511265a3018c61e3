package smtpd

import (
	"errors"
	"fmt"
	"strings"

	"mta/internal/mailaddr"
)

// aliasTable rewrites recipients in the local domains (postmaster, root,
// MAILER-DAEMON, ...) to real addresses at RCPT time.
type aliasTable struct {
	byLocal map[string][]mailaddr.Address // lowercased local part, any local domain
	byAddr  map[string][]mailaddr.Address // lowercased local part @ domain
}

// maxAliasDepth bounds aliases that point into a local domain again.
const maxAliasDepth = 8

func newAliasTable(m map[string][]string) (*aliasTable, error) {
	t := &aliasTable{byLocal: map[string][]mailaddr.Address{}, byAddr: map[string][]mailaddr.Address{}}
	for key, targets := range m {
		if len(targets) == 0 {
			return nil, fmt.Errorf("alias %q: no target", key)
		}
		var addrs []mailaddr.Address
		for _, tg := range targets {
			a, err := mailaddr.Parse(strings.TrimSpace(tg))
			if err != nil {
				return nil, fmt.Errorf("alias %q: target %q: %w", key, tg, err)
			}
			addrs = append(addrs, a)
		}
		if !strings.Contains(key, "@") {
			t.byLocal[strings.ToLower(key)] = addrs
			continue
		}
		a, err := mailaddr.Parse(key)
		if err != nil {
			return nil, fmt.Errorf("alias %q: %w", key, err)
		}
		t.byAddr[aliasKey(a)] = addrs
	}
	return t, nil
}

func aliasKey(a mailaddr.Address) string { return strings.ToLower(a.Local) + "@" + a.Domain }

var errNoSuchUser = errors.New("no such user in a local domain")

// expand returns the real recipients of a: a itself outside the local
// domains, its alias targets inside them (local reports that a was in a
// local domain). An unknown local user is errNoSuchUser.
func (s *Server) expand(a mailaddr.Address) (targets []mailaddr.Address, local bool, err error) {
	if !s.isLocalDomain(a.Domain) {
		return []mailaddr.Address{a}, false, nil
	}
	t := s.aliases.Load()
	var walk func(a mailaddr.Address, depth int) error
	walk = func(a mailaddr.Address, depth int) error {
		if !s.isLocalDomain(a.Domain) {
			targets = append(targets, a)
			return nil
		}
		if depth >= maxAliasDepth {
			return fmt.Errorf("alias loop at %s", a)
		}
		next, ok := t.byAddr[aliasKey(a)]
		if !ok {
			next, ok = t.byLocal[strings.ToLower(a.Local)]
		}
		if !ok {
			return fmt.Errorf("%w: %s", errNoSuchUser, a)
		}
		for _, n := range next {
			if err := walk(n, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(a, 0); err != nil {
		return nil, true, err
	}
	return targets, true, nil
}
