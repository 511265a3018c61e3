package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

func runServe(ctx context.Context, args []string, stdio Stdio) error {
	fs := newFlagSet("serve", "[--config FILE]", stdio)
	config := fs.String("config", "", "config file (without one, mta runs on its embedded local defaults)")
	if done, err := parseFlags(fs, args, stdio); done {
		return err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return errUsage
	}
	cfg, err := serveConfig(*config, stdio.Err)
	if err != nil {
		return err
	}
	setGCPercent()
	log, err := newLogger(cfg.Log, stdio.Err)
	if err != nil {
		return exitf(exitConfig, "%v", err)
	}
	d := &daemonState{cfg: cfg, configPath: *config, zero: *config == "", log: log,
		timeouts: everyPhase(time.Duration(cfg.Delivery.SessionTimeout))}
	// SIGHUP's default action ends the process: catch it from the start
	// (a large spool can take a while to open); loop reloads then.
	d.hup = make(chan os.Signal, 1)
	signal.Notify(d.hup, syscall.SIGHUP)
	defer signal.Stop(d.hup)
	if err := d.start(ctx); err != nil {
		d.stop()
		_, _ = daemon.SdNotify(false, "STATUS=start failed: "+err.Error()) // no systemd: nothing to tell
		return exitf(exitSoftware, "start: %v", err)
	}
	return d.loop(ctx)
}

// serveConfig loads the config file, or the embedded defaults when there
// is none.
func serveConfig(path string, stderr io.Writer) (*Config, error) {
	if path == "" {
		cfg := Default()
		if p := cfg.Validate(); len(p) > 0 {
			return nil, exitf(exitConfig, "embedded defaults: %s", strings.Join(p, "; "))
		}
		return cfg, nil
	}
	cfg, err := LoadConfig(path)
	if err == nil {
		err = cfg.checkFiles(path)
	}
	var ce *ConfigError
	if errors.As(err, &ce) {
		fmt.Fprintln(stderr, ce.Error())
		return nil, &exitError{code: exitConfig}
	}
	if err != nil {
		return nil, exitf(exitConfig, "%v", err)
	}
	return cfg, nil
}

// newLogger makes the daemon's structured logger.
func newLogger(c LogConfig, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.Level)); err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}

// loop runs until ctx ends (SIGTERM, SIGINT): it reloads on SIGHUP and
// pets the systemd watchdog; then it drains and stops.
func (d *daemonState) loop(ctx context.Context) error {
	hup := d.hup
	if hup == nil {
		hup = make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
	}
	watchdog := make(<-chan time.Time)
	if iv, err := daemon.SdWatchdogEnabled(false); err == nil && iv > 0 {
		t := time.NewTicker(iv / 3)
		defer t.Stop()
		watchdog = t.C
	}
	d.notify("READY=1\nSTATUS=" + d.status())
	d.log.Info("ready", "listening", strings.Join(d.listenOn, " "))
	for {
		select {
		case <-ctx.Done():
			d.notify("STOPPING=1\nSTATUS=draining")
			d.log.Info("stopping: draining sessions and deliveries", "max", time.Duration(d.cfg.DrainTimeout))
			d.stop()
			d.log.Info("stopped")
			return nil
		case <-hup:
			d.notify("RELOADING=1\nMONOTONIC_USEC=" + daemon.SdNotifyMonotonicUsec())
			d.reload()
			d.notify("READY=1\nSTATUS=" + d.status())
		case <-watchdog:
			if err := d.healthy(); err != nil {
				d.log.Error("unhealthy: not petting the watchdog", "err", err)
				continue
			}
			d.notify("WATCHDOG=1")
		}
	}
}

func (d *daemonState) notify(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		d.log.Warn("sd_notify", "err", err)
	}
}

func (d *daemonState) status() string {
	c, err := d.sp.Counts()
	if err != nil {
		return "running"
	}
	return fmt.Sprintf("%d message(s) queued; listening on %s", c.Messages, strings.Join(d.listenOn, " "))
}

// daemonGCPercent is the daemon's GOGC when the environment sets none.
// Its live heap is small (a few MiB: the queue lives in the spool, not in
// memory), so at Go's default of 100 the collector ran some 30 times a
// second under load, for about a tenth of the daemon's CPU; at 400 the
// heap still peaks far below the memory the daemon is allowed.
const daemonGCPercent = 400

// setGCPercent applies daemonGCPercent unless GOGC is set: an operator's
// GOGC (or GOMEMLIMIT with GOGC=off) wins. mta bench runs at it too.
func setGCPercent() {
	if _, ok := os.LookupEnv("GOGC"); !ok {
		debug.SetGCPercent(daemonGCPercent)
	}
}
