package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
)

// Stdio is the standard streams a subcommand reads and writes, so tests can
// run subcommands in-process.
type Stdio struct {
	In  io.Reader
	Out io.Writer
	Err io.Writer
}

// command is one subcommand of the binary.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdio Stdio) error
}

// Exit statuses follow sysexits.h where a caller (cron, a sendmail user)
// may branch on them.
const (
	exitOK       = 0
	exitFailure  = 1
	exitUsage    = 64 // EX_USAGE
	exitDataErr  = 65 // EX_DATAERR
	exitNoHost   = 68 // EX_NOHOST: permanent, no route
	exitSoftware = 70 // EX_SOFTWARE
	exitTempFail = 75 // EX_TEMPFAIL: try again later
	exitNoPerm   = 77 // EX_NOPERM
	exitConfig   = 78 // EX_CONFIG
)

// exitError carries an exit status out of a subcommand. A subcommand that has
// already told the user what went wrong returns one with an empty message.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func exitf(code int, format string, args ...any) error {
	return &exitError{code: code, msg: fmt.Sprintf(format, args...)}
}

// errUsage marks a usage mistake; the message has already been printed.
var errUsage = &exitError{code: exitUsage}

func commands() []command {
	return []command{
		{"bench", "measure the daemon under load (or generate load, or sink it)", runBench},
		{"check-config", "validate a config file", runCheckConfig},
		{"dkim", "make a DKIM signing key and its DNS record", runDKIM},
		{"lab", "run the MX routing lab: DNS, MX hosts with POP3, and the MTA in one process", runLab},
		{"queue", "list and manage the queue (through the daemon)", runQueue},
		{"route", "show how mail to a domain is routed (MX, addresses, DNS trace)", runRoute},
		{"serve", "run the daemon", runServe},
		{"sendmail", "queue a message from standard input (sendmail-compatible)", runSendmail},
		{"spool", "check or compact the spool of a stopped daemon", runSpool},
		{"trace", "print the Received chain of a message as a table of hops", runTrace},
		{"user", "manage the submission users file (add, passwd, del, list)", runUser},
		{"version", "print the version", runVersion},
	}
}

// run is the whole program: it picks the subcommand from args (or from the
// name the binary was invoked by, for the sendmail symlink) and runs it.
func run(ctx context.Context, args []string, stdio Stdio) error {
	cmds := commands()
	name := ""
	if len(args) > 0 {
		name = filepath.Base(args[0])
	}
	if name == "sendmail" {
		if c, ok := findCommand(cmds, "sendmail"); ok {
			return c.run(ctx, args[1:], stdio)
		}
	}
	if len(args) < 2 {
		usage(stdio.Err, cmds)
		return errUsage
	}
	sub := args[1]
	switch sub {
	case "help", "-h", "--help", "-help":
		if len(args) > 2 {
			if c, ok := findCommand(cmds, args[2]); ok {
				return c.run(ctx, []string{"--help"}, stdio)
			}
		}
		usage(stdio.Out, cmds)
		return nil
	case "--version", "-version":
		sub = "version"
	}
	c, ok := findCommand(cmds, sub)
	if !ok {
		usage(stdio.Err, cmds)
		return exitf(exitUsage, "unknown command %q", sub)
	}
	return c.run(ctx, args[2:], stdio)
}

func findCommand(cmds []command, name string) (command, bool) {
	for _, c := range cmds {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

func usage(w io.Writer, cmds []command) {
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].name < cmds[j].name })
	fmt.Fprintln(w, "usage: mta <command> [arguments]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands:")
	for _, c := range cmds {
		fmt.Fprintf(w, "  %-14s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, `Run "mta <command> --help" for a command's options.`)
}

// newFlagSet returns a flag set whose usage goes to stdio.Err, or to
// stdio.Out when the user asked for --help.
func newFlagSet(name, synopsis string, stdio Stdio) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stdio.Err)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "usage: mta %s %s\n", name, synopsis)
		var b strings.Builder
		fs.SetOutput(&b)
		fs.PrintDefaults()
		fs.SetOutput(w)
		if b.Len() > 0 {
			fmt.Fprintf(w, "\noptions:\n%s", b.String())
		}
	}
	return fs
}

// parseFlags parses args. When it returns done, the command ends with err:
// nil after --help, errUsage after a mistake (already explained).
func parseFlags(fs *flag.FlagSet, args []string, stdio Stdio) (done bool, err error) {
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "-h" || a == "-help" || a == "--help" {
			fs.SetOutput(stdio.Out)
		}
	}
	err = fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		return true, nil
	}
	if err != nil {
		return true, errUsage
	}
	return false, nil
}

// exitCode turns run's error into the process exit status, printing the
// message if there is one.
func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintf(stderr, "mta: %s\n", ee.msg)
		}
		return ee.code
	}
	fmt.Fprintf(stderr, "mta: %v\n", err)
	return exitFailure
}
