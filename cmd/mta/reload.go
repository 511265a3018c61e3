package main

import (
	"reflect"
	"strings"

	"mta/internal/mailaddr"
)

// reload re-reads the config file on SIGHUP and applies what can change
// while running: users, the TLS certificate, limits and aliases. It names
// every other changed key as needing a restart. A config with errors is
// refused whole and the running one stays.
func (d *daemonState) reload() {
	if d.configPath == "" {
		d.log.Info("reload: no config file; reloading the certificate only")
		d.reloadCert(d.cfg)
		return
	}
	next, err := LoadConfig(d.configPath)
	if err != nil {
		d.log.Error("reload refused: the running config stays", "err", strings.ReplaceAll(err.Error(), "\n", "; "))
		return
	}
	var applied []string
	if next.UsersFile == "" {
		d.srv.SetUsers(nil) // no users file: nobody logs in
		applied = append(applied, "users")
	} else if users, err := loadUsersFile(next.UsersFile); err != nil {
		d.log.Error("reload: users file refused; the old users stay", "err", err)
	} else {
		d.srv.SetUsers(users)
		applied = append(applied, "users")
	}
	if d.reloadCert(next) {
		applied = append(applied, "tls")
	}
	d.srv.SetLimits(smtpdLimits(next.Limits))
	d.srv.SetAllowUnownedFrom(allowUnownedFrom(next.Limits))
	applied = append(applied, "limits")
	if d.reloadAliases(next) {
		applied = append(applied, "aliases")
	}
	if d.reloadNextHops(next) {
		applied = append(applied, "routes")
	}
	restart := restartKeys(d.cfg, next)
	// What was applied is now the running config; the rest waits.
	d.cfg.UsersFile, d.cfg.TLS, d.cfg.Limits, d.cfg.Aliases = next.UsersFile, next.TLS, next.Limits, next.Aliases
	d.cfg.Routes, d.cfg.Relayhost, d.cfg.TLSPolicies = next.Routes, next.Relayhost, next.TLSPolicies
	d.log.Info("reloaded", "applied", strings.Join(applied, ","), "need_restart", strings.Join(restart, ","))
}

// reloadAliases applies the aliases to RCPT (smtpd) and to the DSNs,
// within the local domains the daemon started with.
func (d *daemonState) reloadAliases(c *Config) bool {
	dsn, err := mailaddr.NewAliases(aliasMap(c.Aliases), d.cfg.LocalDomains)
	if err == nil {
		err = d.srv.SetAliases(aliasMap(c.Aliases))
	}
	if err != nil {
		d.log.Error("reload: aliases refused; the old aliases stay", "err", err)
		return false
	}
	d.aliases.table.Store(dsn)
	return true
}

// reloadNextHops applies routes, relayhost and TLS policies (and reads
// their password files again).
func (d *daemonState) reloadNextHops(c *Config) bool {
	routes, relay, policies, err := nextHops(c)
	if err == nil {
		err = d.engine.Load().SetNextHops(routes, relay, policies)
	}
	if err != nil {
		d.log.Error("reload: routes refused; the old ones stay", "err", err)
		return false
	}
	return true
}

func (d *daemonState) reloadCert(c *Config) bool {
	if err := d.certs.load(c, d.dirs.State, d.log); err != nil {
		d.log.Error("reload: certificate refused; the old one stays", "err", err)
		return false
	}
	return true
}

// restartKeys names the top-level keys that differ between the running
// config and next and that only a restart applies.
func restartKeys(cur, next *Config) []string {
	live := map[string]bool{"users_file": true, "tls": true, "limits": true, "aliases": true,
		"routes": true, "relayhost": true, "tls_policies": true}
	var out []string
	a, b := reflect.ValueOf(*cur), reflect.ValueOf(*next)
	t := a.Type()
	for i := 0; i < t.NumField(); i++ {
		key, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if live[key] {
			continue
		}
		if !reflect.DeepEqual(a.Field(i).Interface(), b.Field(i).Interface()) {
			out = append(out, key)
		}
	}
	return out
}
