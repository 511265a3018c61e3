package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"text/tabwriter"

	"golang.org/x/term"

	"mta/internal/mailaddr"
	"mta/smtpd"
)

const userSynopsis = "add|passwd|del|list --file FILE [LOGIN] [--address ADDR]... [--cost N]"

// runUser manages the submission users file. Passwords come from the
// terminal (twice, without echo) or, when stdin is not a terminal, from its
// first line; never from the command line.
func runUser(_ context.Context, args []string, stdio Stdio) error {
	if len(args) == 0 || args[0] == "--help" || args[0] == "-h" || args[0] == "help" {
		w := stdio.Err
		if len(args) > 0 {
			w = stdio.Out
		}
		fmt.Fprintf(w, "usage: mta user %s\n", userSynopsis)
		fmt.Fprintln(w, "  add LOGIN --address ADDR...  add a user who may send as each ADDR (or @domain)")
		fmt.Fprintln(w, "  passwd LOGIN                 set a user's password")
		fmt.Fprintln(w, "  del LOGIN                    remove a user")
		fmt.Fprintln(w, "  list                         list the users and their addresses")
		if len(args) == 0 {
			return errUsage
		}
		return nil
	}
	verb := args[0]
	o, done, err := parseUserArgs(verb, args[1:], stdio)
	if done {
		return err
	}
	switch verb {
	case "add":
		return userAdd(o, stdio)
	case "passwd":
		return userPasswd(o, stdio)
	case "del":
		return userDel(o, stdio)
	case "list":
		return userList(o, stdio)
	}
	return exitf(exitUsage, "user: unknown action %q (add, passwd, del, list)", verb)
}

type userOpts struct {
	file      string
	login     string
	addresses []string
	cost      int
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// parseUserArgs reads flags before and after the login.
func parseUserArgs(verb string, args []string, stdio Stdio) (userOpts, bool, error) {
	var o userOpts
	var addrs stringList
	fs := newFlagSet("user "+verb, userSynopsis, stdio)
	fs.StringVar(&o.file, "file", "", "the users file (required)")
	fs.Var(&addrs, "address", "an address (or @domain) the user may send as; repeat for more")
	fs.IntVar(&o.cost, "cost", 11, "bcrypt cost of new password hashes")
	var positional []string
	for {
		if done, err := parseFlags(fs, args, stdio); done {
			return o, true, err
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
	o.addresses = addrs
	wantLogin := verb != "list"
	switch {
	case o.file == "":
		fs.Usage()
		return o, true, exitf(exitUsage, "user %s: --file is required", verb)
	case wantLogin && len(positional) != 1, !wantLogin && len(positional) != 0:
		fs.Usage()
		return o, true, exitf(exitUsage, "user %s: wrong number of arguments", verb)
	}
	if wantLogin {
		o.login = positional[0]
	}
	return o, false, nil
}

func userAdd(o userOpts, stdio Stdio) error {
	users, err := loadUsersFile(o.file)
	if errors.Is(err, fs.ErrNotExist) {
		users, err = &smtpd.Users{}, nil
	}
	if err != nil {
		return exitf(exitFailure, "user add: %v", err)
	}
	if _, ok := users.Lookup(o.login); ok {
		return exitf(exitFailure, "user add: %q exists (use passwd, or del first)", o.login)
	}
	addrs := o.addresses
	if len(addrs) == 0 {
		if _, err := mailaddr.Parse(o.login); err != nil {
			return exitf(exitUsage, "user add: give the addresses %q may send as with --address", o.login)
		}
		addrs = []string{o.login}
	}
	if err := smtpd.CheckUser(o.login, addrs); err != nil {
		return exitf(exitUsage, "user add: %v", err) // before asking for a password
	}
	hash, err := newPasswordHash(o.cost, stdio)
	if err != nil {
		return err
	}
	u, err := smtpd.NewUser(o.login, hash, addrs)
	if err != nil {
		return exitf(exitUsage, "user add: %v", err)
	}
	users.Put(u)
	if err := writeUsersFile(o.file, users); err != nil {
		return exitf(exitFailure, "user add: %v", err)
	}
	fmt.Fprintf(stdio.Out, "added %s (%s) to %s; reload the daemon to apply\n", u.Login, strings.Join(u.Addresses, ", "), o.file)
	return nil
}

func userPasswd(o userOpts, stdio Stdio) error {
	users, err := loadUsersFile(o.file)
	if err != nil {
		return exitf(exitFailure, "user passwd: %v", err)
	}
	old, ok := users.Lookup(o.login)
	if !ok {
		return exitf(exitFailure, "user passwd: no user %q in %s", o.login, o.file)
	}
	hash, err := newPasswordHash(o.cost, stdio)
	if err != nil {
		return err
	}
	u, err := smtpd.NewUser(old.Login, hash, old.Addresses)
	if err != nil {
		return exitf(exitFailure, "user passwd: %v", err)
	}
	users.Put(u)
	if err := writeUsersFile(o.file, users); err != nil {
		return exitf(exitFailure, "user passwd: %v", err)
	}
	fmt.Fprintf(stdio.Out, "changed the password of %s; reload the daemon to apply\n", u.Login)
	return nil
}

func userDel(o userOpts, stdio Stdio) error {
	users, err := loadUsersFile(o.file)
	if err != nil {
		return exitf(exitFailure, "user del: %v", err)
	}
	if err := users.Delete(o.login); err != nil {
		return exitf(exitFailure, "user del: %v", err)
	}
	if err := writeUsersFile(o.file, users); err != nil {
		return exitf(exitFailure, "user del: %v", err)
	}
	fmt.Fprintf(stdio.Out, "removed %s; reload the daemon to apply\n", o.login)
	return nil
}

func userList(o userOpts, stdio Stdio) error {
	users, err := loadUsersFile(o.file)
	if err != nil {
		return exitf(exitFailure, "user list: %v", err)
	}
	tw := tabwriter.NewWriter(stdio.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LOGIN\tADDRESSES")
	for _, u := range users.List() {
		fmt.Fprintf(tw, "%s\t%s\n", u.Login, strings.Join(u.Addresses, ", "))
	}
	return tw.Flush()
}

// newPasswordHash reads a new password and hashes it.
func newPasswordHash(cost int, stdio Stdio) (string, error) {
	pw, err := readNewPassword(stdio)
	if err != nil {
		return "", err
	}
	hash, err := smtpd.HashPassword(pw, cost)
	if err != nil {
		return "", exitf(exitUsage, "user: %v", err)
	}
	return hash, nil
}

// readNewPassword asks twice on a terminal, or reads stdin's first line.
func readNewPassword(stdio Stdio) ([]byte, error) {
	if f, ok := stdio.In.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(stdio.Err, "New password: ")
		pw, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stdio.Err)
		if err != nil {
			return nil, exitf(exitFailure, "user: reading the password: %v", err)
		}
		fmt.Fprint(stdio.Err, "Again: ")
		again, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stdio.Err)
		if err != nil {
			return nil, exitf(exitFailure, "user: reading the password: %v", err)
		}
		if string(pw) != string(again) {
			return nil, exitf(exitUsage, "user: the passwords differ")
		}
		return checkPassword(pw)
	}
	line, err := bufio.NewReader(stdio.In).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, exitf(exitFailure, "user: reading the password from stdin: %v", err)
	}
	return checkPassword([]byte(strings.TrimRight(line, "\r\n")))
}

func checkPassword(pw []byte) ([]byte, error) {
	if len(pw) == 0 {
		return nil, exitf(exitUsage, "user: empty password")
	}
	if len(pw) > 72 {
		return nil, exitf(exitUsage, "user: passwords longer than 72 bytes are not supported (bcrypt)")
	}
	return pw, nil
}

// loadUsersFile reads and parses a users file, refusing one that group or
// others may write (anyone who can write it can give themselves a login).
func loadUsersFile(path string) (*smtpd.Users, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("%s is writable by group or others (mode %04o): chmod 640 it", path, st.Mode().Perm())
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, err
	}
	u, err := smtpd.ParseUsers(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return u, nil
}

// writeUsersFile replaces the users file atomically, keeping its owner and
// group when possible and its mode (a new file gets 0640). An operator's
// tighter mode (0600) must not widen when a user is added.
func writeUsersFile(path string, u *smtpd.Users) error {
	mode := os.FileMode(0o640)
	if st, err := os.Stat(path); err == nil {
		mode = st.Mode().Perm() &^ 0o022 // loadUsersFile refused it otherwise
	}
	return writeFileSync(path, u.Marshal(), mode)
}

var _ flag.Value = (*stringList)(nil)
