package main

import (
	"context"
	"fmt"
	"path/filepath"

	"mta/spool"
)

// runSpool works on the spool file of a stopped daemon: check reports
// inconsistencies, compact reclaims free pages.
func runSpool(ctx context.Context, args []string, stdio Stdio) error {
	fs := newFlagSet("spool", "check|compact [--config FILE | --dir DIR]", stdio)
	config := fs.String("config", "", "config file (default /etc/mta/mta.yaml when present)")
	dir := fs.String("dir", "", "spool directory (default: from the config)")
	op, rest := "", args
	if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
		op, rest = args[0], args[1:]
	}
	if done, err := parseFlags(fs, rest, stdio); done {
		return err
	}
	if op != "check" && op != "compact" {
		fs.Usage()
		return errUsage
	}
	path := *dir
	if path == "" {
		cfg, err := clientConfig(*config)
		if err != nil {
			return exitf(exitConfig, "%v", err)
		}
		path = filepath.Join(clientDirs(cfg).State, spoolSubdir)
	}
	if op == "compact" {
		if err := spool.Compact(path); err != nil {
			return exitf(exitFailure, "spool compact %s: %v", path, err)
		}
		fmt.Fprintf(stdio.Out, "%s: compacted\n", path)
		return nil
	}
	rep, err := spool.Check(path)
	if err != nil {
		return exitf(exitFailure, "spool check %s: %v", path, err)
	}
	for _, p := range rep.Problems {
		fmt.Fprintf(stdio.Out, "problem: %s\n", p)
	}
	fmt.Fprintf(stdio.Out, "%s: %d message(s), %d problem(s)\n", path, rep.Messages, len(rep.Problems))
	if len(rep.Problems) > 0 {
		return &exitError{code: exitDataErr}
	}
	return nil
}
