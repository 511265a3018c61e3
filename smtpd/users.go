package smtpd

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/crypto/bcrypt"

	"mta/internal/mailaddr"
)

// The users file: one user per line,
//
//	login:bcrypt-hash:address,address,@domain
//
// Blank lines and lines starting with "#" are comments, kept when the file
// is written back. A login need not be an address (user "abc" may own
// zbird1@163.example); logins match without regard to case. Each address
// is one the user may send as; "@domain" owns every address of domain.
// This file owns the format only: reading and writing the file (and its
// permissions) is cmd/mta's.

// ErrUnknownUser is returned by Users.Delete for a login it lacks.
var ErrUnknownUser = errors.New("no such user")

// User is one submission user.
type User struct {
	Login string
	// Hash is the bcrypt hash of the password.
	Hash string
	// Addresses the user may send as: "local@domain" (domain normalised)
	// or "@domain" for a whole domain.
	Addresses []string
}

// Owns reports whether u may use a as sender (MAIL FROM or From:). Local
// parts compare without regard to ASCII case.
func (u *User) Owns(a mailaddr.Address) bool {
	for _, o := range u.Addresses {
		if d, ok := strings.CutPrefix(o, "@"); ok {
			if d == a.Domain {
				return true
			}
			continue
		}
		if strings.EqualFold(o, a.String()) {
			return true
		}
	}
	return false
}

// Users is a parsed users file. The Server never modifies one it was
// given; the editing methods are for `mta user`.
type Users struct {
	lines []usersLine
}

// usersLine is a comment (user == nil) or a user.
type usersLine struct {
	text string
	user *User
}

// ParseUsers parses a users file.
func ParseUsers(data []byte) (*Users, error) {
	u := &Users{}
	if len(data) == 0 {
		return u, nil
	}
	seen := map[string]int{}
	for i, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		line = strings.TrimRight(line, "\r")
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			u.lines = append(u.lines, usersLine{text: line})
			continue
		}
		usr, err := parseUserLine(trimmed)
		if err != nil {
			return nil, fmt.Errorf("users file line %d: %w", i+1, err)
		}
		key := strings.ToLower(usr.Login)
		if prev, dup := seen[key]; dup {
			return nil, fmt.Errorf("users file line %d: login %q already on line %d", i+1, usr.Login, prev)
		}
		seen[key] = i + 1
		u.lines = append(u.lines, usersLine{user: usr})
	}
	return u, nil
}

func parseUserLine(line string) (*User, error) {
	parts := strings.Split(line, ":")
	if len(parts) != 3 {
		return nil, errors.New("want login:hash:addresses")
	}
	var addrs []string
	if strings.TrimSpace(parts[2]) != "" {
		addrs = strings.Split(parts[2], ",")
	}
	return NewUser(parts[0], parts[1], addrs)
}

// NewUser checks and normalises a user's fields.
func NewUser(login, hash string, addresses []string) (*User, error) {
	login = strings.TrimSpace(login)
	if err := checkLogin(login); err != nil {
		return nil, err
	}
	hash = strings.TrimSpace(hash)
	if _, err := bcrypt.Cost([]byte(hash)); err != nil || !strings.HasPrefix(hash, "$2") {
		return nil, fmt.Errorf("user %q: not a bcrypt hash", login)
	}
	addrs, err := normalizeAddresses(login, addresses)
	if err != nil {
		return nil, err
	}
	return &User{Login: login, Hash: hash, Addresses: addrs}, nil
}

// CheckUser checks a login and its addresses without a password hash, so
// a tool can refuse them before asking for the password.
func CheckUser(login string, addresses []string) error {
	if err := checkLogin(strings.TrimSpace(login)); err != nil {
		return err
	}
	_, err := normalizeAddresses(login, addresses)
	return err
}

func normalizeAddresses(login string, addresses []string) ([]string, error) {
	var out []string
	for _, a := range addresses {
		n, err := normalizeOwned(strings.TrimSpace(a))
		if err != nil {
			return nil, fmt.Errorf("user %q: address %q: %w", login, a, err)
		}
		out = append(out, n)
	}
	return out, nil
}

func checkLogin(login string) error {
	if login == "" || len(login) > 255 {
		return errors.New("login must have 1 to 255 characters")
	}
	if strings.HasPrefix(login, "#") {
		return errors.New("login must not start with #")
	}
	for _, r := range login {
		if r <= ' ' || r == ':' || r == ',' || r == 0x7f {
			return fmt.Errorf("login %q: no spaces, control characters, ':' or ','", login)
		}
	}
	return nil
}

// normalizeOwned normalises "local@domain" or "@domain". The result must
// normalise to itself, so the file reads back the same.
func normalizeOwned(a string) (string, error) {
	if !utf8.ValidString(a) {
		return "", errors.New("not valid UTF-8")
	}
	if d, ok := strings.CutPrefix(a, "@"); ok {
		n, err := mailaddr.NormalizeDomain(d)
		if err != nil {
			return "", err
		}
		if again, err := mailaddr.NormalizeDomain(n); err != nil || again != n {
			return "", fmt.Errorf("domain %q does not normalise to itself", d)
		}
		return "@" + n, nil
	}
	p, err := mailaddr.Parse(a)
	if err != nil {
		return "", err
	}
	if again, err := mailaddr.Parse(p.String()); err != nil || again.String() != p.String() {
		return "", fmt.Errorf("address %q does not normalise to itself", a)
	}
	return p.String(), nil
}

// Marshal writes the users file back, comments included.
func (u *Users) Marshal() []byte {
	var b bytes.Buffer
	for _, l := range u.lines {
		if l.user == nil {
			b.WriteString(l.text)
		} else {
			b.WriteString(l.user.Login + ":" + l.user.Hash + ":" + strings.Join(l.user.Addresses, ","))
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// Lookup finds a user by login, without regard to case.
func (u *Users) Lookup(login string) (*User, bool) {
	if u == nil {
		return nil, false
	}
	for _, l := range u.lines {
		if l.user != nil && strings.EqualFold(l.user.Login, login) {
			return l.user, true
		}
	}
	return nil, false
}

// List returns the users in file order.
func (u *Users) List() []User {
	var out []User
	for _, l := range u.lines {
		if l.user != nil {
			out = append(out, *l.user)
		}
	}
	return out
}

// Put adds usr, or replaces the user with the same login in place.
func (u *Users) Put(usr *User) {
	for i, l := range u.lines {
		if l.user != nil && strings.EqualFold(l.user.Login, usr.Login) {
			u.lines[i].user = usr
			return
		}
	}
	u.lines = append(u.lines, usersLine{user: usr})
}

// Delete removes the user with that login.
func (u *Users) Delete(login string) error {
	for i, l := range u.lines {
		if l.user != nil && strings.EqualFold(l.user.Login, login) {
			u.lines = append(u.lines[:i], u.lines[i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("%w: %q", ErrUnknownUser, login)
}

// HashPassword makes the bcrypt hash of a password for a users file.
// cost 0 means bcrypt.DefaultCost + 1.
func HashPassword(password []byte, cost int) (string, error) {
	if cost == 0 {
		cost = bcrypt.DefaultCost + 1
	}
	h, err := bcrypt.GenerateFromPassword(password, cost)
	if err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	return string(h), nil
}
