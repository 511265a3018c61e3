// Command mta is an outbound mail transfer agent: it accepts mail, keeps it
// durably, and delivers it to each recipient domain's mail exchangers.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args, Stdio{In: os.Stdin, Out: os.Stdout, Err: os.Stderr})
	stop()
	os.Exit(exitCode(err, os.Stderr))
}
