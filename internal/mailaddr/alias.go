package mailaddr

import (
	"errors"
	"fmt"
	"strings"
)

// ErrNoSuchUser is an address in a local domain that no alias covers.
var ErrNoSuchUser = errors.New("no such user in a local domain")

// maxAliasDepth bounds aliases that point into a local domain again.
const maxAliasDepth = 8

// Aliases rewrite addresses in the local domains (postmaster, root,
// MAILER-DAEMON, ...) to real addresses. smtpd applies them at RCPT time;
// the daemon applies them to the recipients of the DSNs it makes, so a
// bounce to the operator's own domain arrives instead of looping.
type Aliases struct {
	local   map[string]bool
	byLocal map[string][]Address // lowercased local part, any local domain
	byAddr  map[string][]Address // lowercased local part @ domain
}

// NewAliases builds the table. A key is a local part (for every local
// domain) or a full address; each target must be an address.
func NewAliases(m map[string][]string, localDomains []string) (*Aliases, error) {
	t := &Aliases{local: map[string]bool{}, byLocal: map[string][]Address{}, byAddr: map[string][]Address{}}
	for _, d := range localDomains {
		n, err := NormalizeDomain(d)
		if err != nil {
			return nil, fmt.Errorf("local domain %q: %w", d, err)
		}
		t.local[n] = true
	}
	for key, targets := range m {
		if len(targets) == 0 {
			return nil, fmt.Errorf("alias %q: no target", key)
		}
		var addrs []Address
		for _, tg := range targets {
			a, err := Parse(strings.TrimSpace(tg))
			if err != nil {
				return nil, fmt.Errorf("alias %q: target %q: %w", key, tg, err)
			}
			addrs = append(addrs, a)
		}
		if !strings.Contains(key, "@") {
			t.byLocal[strings.ToLower(key)] = addrs
			continue
		}
		a, err := Parse(key)
		if err != nil {
			return nil, fmt.Errorf("alias %q: %w", key, err)
		}
		t.byAddr[aliasKey(a)] = addrs
	}
	return t, nil
}

func aliasKey(a Address) string { return strings.ToLower(a.Local) + "@" + a.Domain }

// IsLocal reports whether the normalised domain d is a local domain.
func (t *Aliases) IsLocal(d string) bool { return t != nil && t.local[d] }

// Expand returns the real recipients of a: a itself outside the local
// domains, its alias targets (followed to a bounded depth) inside them;
// local reports that a was in a local domain. An unknown local user is
// ErrNoSuchUser.
//
// A nil *Aliases has no local domains: it returns a unchanged.
func (t *Aliases) Expand(a Address) (targets []Address, local bool, err error) {
	if !t.IsLocal(a.Domain) {
		return []Address{a}, false, nil
	}
	var walk func(a Address, depth int) error
	walk = func(a Address, depth int) error {
		if !t.IsLocal(a.Domain) {
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
			return fmt.Errorf("%w: %s", ErrNoSuchUser, a)
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
