package main

import (
	"context"
	"errors"
	"fmt"
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
