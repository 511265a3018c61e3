package main

// Profiles for `mta bench --profile`: when the daemon's environment has
// MTA_PROFILE_DIR, SIGUSR1 starts a CPU profile and SIGUSR2 stops it and
// writes a heap profile, so the profile covers exactly the measured load.
// Without the variable nothing is installed and the signals keep their
// default meaning.

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"syscall"
)

// profileDirEnv names the daemon's environment variable that turns the
// profile signals on.
const profileDirEnv = "MTA_PROFILE_DIR"

const (
	cpuProfileFile  = "cpu.pprof"
	heapProfileFile = "heap.pprof"
)

// profileOnSignals serves the profile signals until ctx ends; it returns at
// once when dir is empty.
func profileOnSignals(ctx context.Context, dir string, log *slog.Logger) {
	if dir == "" {
		return
	}
	log.Warn("profiling on SIGUSR1/SIGUSR2 is enabled", "dir", dir)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGUSR2)
	go func() {
		defer signal.Stop(sigs)
		var cpu *os.File
		for {
			select {
			case <-ctx.Done():
				if cpu != nil {
					pprof.StopCPUProfile()
					_ = cpu.Close() // the daemon is stopping; the profile is best effort
				}
				return
			case s := <-sigs:
				var err error
				if s == syscall.SIGUSR1 {
					cpu, err = startCPUProfile(dir, cpu)
				} else {
					cpu, err = stopProfiles(dir, cpu)
				}
				if err != nil {
					log.Error("profile", "err", err)
				}
			}
		}
	}()
}

func startCPUProfile(dir string, running *os.File) (*os.File, error) {
	if running != nil {
		return running, nil
	}
	f, err := os.Create(filepath.Join(dir, cpuProfileFile))
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("start CPU profile: %w", err)
	}
	return f, nil
}

// stopProfiles ends the CPU profile and writes the heap profile, renamed
// into place last so a reader knows both are complete.
func stopProfiles(dir string, cpu *os.File) (*os.File, error) {
	if cpu != nil {
		pprof.StopCPUProfile()
		if err := cpu.Close(); err != nil {
			return nil, err
		}
	}
	runtime.GC() // the heap profile shows the state as of the last GC
	tmp := filepath.Join(dir, heapProfileFile+".tmp")
	f, err := os.Create(tmp)
	if err != nil {
		return nil, err
	}
	err = pprof.Lookup("heap").WriteTo(f, 0)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("heap profile: %w", err)
	}
	return nil, os.Rename(tmp, filepath.Join(dir, heapProfileFile))
}
