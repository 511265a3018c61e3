package main

import (
	"os"
	"path/filepath"
)

// The files the daemon keeps, relative to its state and runtime
// directories.
const (
	spoolSubdir    = "spool"
	maildropSubdir = "maildrop"
	submitSocket   = "submit.sock"
	adminSocket    = "admin.sock"
	selfCertFile   = "selfsigned-cert.pem"
	selfKeyFile    = "selfsigned-key.pem"
	defaultConfig  = "/etc/mta/mta.yaml"
	defaultState   = "mta-data"
)

// dirs are where the daemon keeps state (spool, keys, maildrop) and
// sockets.
type dirs struct {
	State   string
	Runtime string
}

// resolveDirs applies the config, then systemd's $STATE_DIRECTORY /
// $RUNTIME_DIRECTORY (read through getenv), then ./mta-data.
func resolveDirs(c *Config, getenv func(string) string) dirs {
	d := dirs{State: c.StateDir, Runtime: c.RuntimeDir}
	if d.State == "" {
		d.State = firstPath(getenv("STATE_DIRECTORY"))
	}
	if d.State == "" {
		d.State = defaultState
	}
	if d.Runtime == "" {
		d.Runtime = firstPath(getenv("RUNTIME_DIRECTORY"))
	}
	if d.Runtime == "" {
		d.Runtime = d.State
	}
	if abs, err := filepath.Abs(d.State); err == nil {
		d.State = abs
	}
	if abs, err := filepath.Abs(d.Runtime); err == nil {
		d.Runtime = abs
	}
	return d
}

// clientDirs are the daemon's directories as a client command (sendmail,
// queue, spool) finds them: from the config alone. The caller's own
// $STATE_DIRECTORY / $RUNTIME_DIRECTORY, when it runs under systemd
// itself (cron, php-fpm), name that service's directories, not mta's.
func clientDirs(c *Config) dirs {
	return resolveDirs(c, func(string) string { return "" })
}

// firstPath takes the first of systemd's colon-separated directories.
func firstPath(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] == ':' {
			return s[:i]
		}
	}
	return s
}

// clientConfig is the config a client command (sendmail, queue) uses to
// find the daemon: the file given, else /etc/mta/mta.yaml when it exists,
// else the defaults. explicit says whether a missing file is an error.
func clientConfig(path string) (*Config, error) {
	if path == "" {
		if _, err := os.Stat(defaultConfig); err != nil {
			return Default(), nil
		}
		path = defaultConfig
	}
	return LoadConfig(path)
}
