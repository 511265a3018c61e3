package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
)

// version is what `mta version` prints and what the daemon logs at start.
func version() string {
	v := "devel"
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		rev, dirty := "", false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if rev != "" {
			v += " " + rev
			if dirty {
				v += "-dirty"
			}
		}
	}
	return v
}

func runVersion(ctx context.Context, args []string, stdio Stdio) error {
	fs := newFlagSet("version", "", stdio)
	if done, err := parseFlags(fs, args, stdio); done {
		return err
	}
	fmt.Fprintf(stdio.Out, "mta %s (%s)\n", version(), runtime.Version())
	return nil
}
