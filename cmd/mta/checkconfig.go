package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
)

func runCheckConfig(ctx context.Context, args []string, stdio Stdio) error {
	fs := newFlagSet("check-config", "FILE", stdio)
	if done, err := parseFlags(fs, args, stdio); done {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errUsage
	}
	c, err := LoadConfig(fs.Arg(0))
	var ce *ConfigError
	if errors.As(err, &ce) {
		fmt.Fprintln(stdio.Err, ce.Error())
		return &exitError{code: exitConfig}
	}
	if err != nil {
		return exitf(exitConfig, "%v", err)
	}
	if err := c.checkFiles(fs.Arg(0)); err != nil {
		fmt.Fprintln(stdio.Err, err.Error())
		return &exitError{code: exitConfig}
	}
	warnings := c.Warnings()
	for _, w := range warnings {
		fmt.Fprintf(stdio.Out, "warning: %s\n", w)
	}
	fmt.Fprintf(stdio.Out, "%s: ok (%d warning(s))\n", fs.Arg(0), len(warnings))
	return nil
}

// Warnings are things in a valid config that an operator most likely
// wants to fix.
func (c *Config) Warnings() []string {
	var w []string
	if strings.HasSuffix(c.Hostname, ".localdomain") {
		w = append(w, fmt.Sprintf("hostname %q is not a public name (RFC 5321 §4.1.4); receivers may refuse our EHLO", c.Hostname))
	}
	if len(c.LocalDomains) > 0 {
		for _, lp := range []string{"postmaster", "root", "MAILER-DAEMON"} {
			if !c.hasAlias(lp) {
				w = append(w, fmt.Sprintf("aliases: no alias for %q: mail to %s@%s has nowhere to go", lp, lp, c.LocalDomains[0]))
			}
		}
	}
	if c.Relayhost != nil && c.Relayhost.InsecureSkipVerify {
		w = append(w, "relayhost.insecure_skip_verify is on: the relay's certificate is not checked and the AUTH password can be stolen")
	}
	for _, d := range sortedKeys(c.Routes) {
		if c.Routes[d].InsecureSkipVerify {
			w = append(w, fmt.Sprintf("routes.%s.insecure_skip_verify is on: the certificate is not checked", d))
		}
	}
	if c.Delivery.AllowPrivateMX {
		w = append(w, "delivery.allow_private_mx is on: MX records can point this server at internal hosts (labs only)")
	}
	return w
}

// hasAlias reports whether local part lp has an alias for every local domain.
func (c *Config) hasAlias(lp string) bool {
	for k := range c.Aliases {
		if strings.EqualFold(k, lp) {
			return true
		}
	}
	for _, d := range c.LocalDomains {
		found := false
		for k := range c.Aliases {
			if strings.EqualFold(k, lp+"@"+d) {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return len(c.LocalDomains) > 0
}

// checkFiles reports every file and user the config names that the daemon
// could not use at start (a missing key, an unknown trusted user), each
// with its key path and line, as a *ConfigError; nil when all is there.
func (c *Config) checkFiles(path string) error {
	v := &validator{}
	if c.TLS.CertFile != "" {
		if _, err := tls.LoadX509KeyPair(c.TLS.CertFile, c.TLS.KeyFile); err != nil {
			v.add("tls.cert_file", "%v", err)
		}
	}
	if c.UsersFile != "" {
		if _, err := loadUsersFile(c.UsersFile); err != nil {
			v.add("users_file", "%v", err)
		}
	}
	for i, k := range c.DKIM {
		if _, err := loadDKIMKey(k.KeyFile); err != nil {
			v.add(fmt.Sprintf("dkim[%d].key_file", i), "%v", err)
		}
	}
	for _, d := range sortedKeys(c.Routes) {
		checkPasswordFile(v, "routes."+d, c.Routes[d])
	}
	if c.Relayhost != nil {
		checkPasswordFile(v, "relayhost", c.Relayhost.Route)
	}
	for i, u := range c.SendmailTrust {
		if _, err := strconv.Atoi(u); err == nil {
			continue
		}
		if _, err := user.Lookup(u); err != nil {
			v.add(fmt.Sprintf("sendmail_trusted_users[%d]", i), "%v", err)
		}
	}
	if len(v.problems) == 0 {
		return nil
	}
	lines := map[string]int{}
	if data, err := os.ReadFile(path); err == nil {
		lines = keyLines(data)
	}
	for i, p := range v.problems {
		v.problems[i] = withLine(p, lines)
	}
	return &ConfigError{File: path, Problems: v.problems}
}

func checkPasswordFile(v *validator, path string, r Route) {
	if r.Auth == nil {
		return
	}
	if _, err := os.ReadFile(r.Auth.PasswordFile); err != nil {
		v.add(path+".auth.password_file", "%v", err)
	}
}
