package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"mta/delivery"
	"mta/internal/mailaddr"
	"mta/smtpd"
	"mta/spool"
)

// openSpool opens the spool with the delivery engine's DSN builder as its
// bounce hook and the engine's kick as its due signal.
func (d *daemonState) openSpool() error {
	aliases, err := loadAliases(d.cfg)
	if err != nil {
		return err
	}
	d.aliases.table.Store(aliases)
	dir := filepath.Join(d.dirs.State, spoolSubdir)
	sp, err := spool.Open(dir, spool.Options{
		// smtpd enforces limits.max_message_bytes on what the client
		// sends (the SIZE it advertises, changed by SIGHUP). The stored
		// copy is larger by the header fix-ups and DKIM signature, so the
		// spool must not apply the same number again.
		MaxMessageBytes: -1,
		MinFreeBytes:    d.cfg.Spool.MinFreeBytes,
		RetiredMaxAge:   time.Duration(d.cfg.Spool.RetiredMaxAge),
		RetiredMaxCount: d.cfg.Spool.RetiredMaxCount,
		Bounce:          delivery.Bouncer(d.dsnConfig()),
		OnDue:           d.kick,
		Observer:        spoolObserver{d.metrics},
		Logger:          d.log.With("subsystem", "spool"),
	})
	if err != nil {
		return fmt.Errorf("open spool %s: %w", dir, err)
	}
	d.sp = sp
	d.metrics.watchSpool(sp, dir)
	if c, err := sp.Counts(); err == nil {
		d.log.Info("spool open", "dir", dir, "messages", c.Messages, "pending", c.ByState["pending"], "deferred", c.ByState["deferred"], "held", c.ByState["held"])
	}
	return nil
}

func (d *daemonState) dsnConfig() delivery.DSNConfig {
	return delivery.DSNConfig{Hostname: d.cfg.Hostname, Lifetime: time.Duration(d.cfg.Delivery.Lifetime), Aliases: &d.aliases}
}

// liveAliases is the alias table the DSNs follow; SIGHUP replaces it
// (smtpd keeps its own copy for RCPT).
type liveAliases struct {
	table atomic.Pointer[mailaddr.Aliases]
}

func (l *liveAliases) Expand(a mailaddr.Address) ([]mailaddr.Address, bool, error) {
	return l.table.Load().Expand(a)
}

// loadAliases builds the alias table of the local domains.
func loadAliases(c *Config) (*mailaddr.Aliases, error) {
	a, err := mailaddr.NewAliases(aliasMap(c.Aliases), c.LocalDomains)
	if err != nil {
		return nil, fmt.Errorf("aliases: %w", err)
	}
	return a, nil
}

// kick wakes the delivery scheduler; before it exists there is nothing to
// wake (it claims everything due when it starts).
func (d *daemonState) kick() {
	if e := d.engine.Load(); e != nil {
		e.Kick()
	}
}

// startDelivery starts the scheduler.
func (d *daemonState) startDelivery(ctx context.Context) error {
	dc, err := d.deliveryConfig()
	if err != nil {
		return err
	}
	e, err := delivery.New(dc)
	if err != nil {
		return err
	}
	d.engine.Store(e)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := e.Run(ctx); err != nil {
			d.log.Error("delivery scheduler stopped", "err", err)
		}
	}()
	return nil
}

func (d *daemonState) deliveryConfig() (delivery.Config, error) {
	c := d.cfg
	routes, relay, policies, err := nextHops(c)
	if err != nil {
		return delivery.Config{}, err
	}
	for _, w := range c.Warnings() {
		if strings.Contains(w, "insecure_skip_verify") {
			d.log.Warn(w)
		}
	}
	dc := delivery.Config{
		Spool:               d.sp,
		Resolver:            d.res,
		Hostname:            c.Hostname,
		Port:                c.Delivery.Port,
		IPFamily:            delivery.IPFamily(c.Delivery.IPFamily),
		MaxConns:            c.Delivery.MaxConnections,
		PerDestinationConns: c.Delivery.PerDestination,
		MaxRcptsPerTxn:      c.Delivery.MaxRcptsPerMessage,
		Backoff:             delivery.Backoff{Min: time.Duration(c.Delivery.RetryMin), Max: time.Duration(c.Delivery.RetryMax)},
		Timeouts:            d.timeouts,
		Lifetime:            time.Duration(c.Delivery.Lifetime),
		DelayWarning:        time.Duration(c.Delivery.DelayWarning),
		Routes:              routes,
		Relayhost:           relay,
		TLSPolicies:         policies,
		Aliases:             &d.aliases,
		Logger:              d.log.With("subsystem", "delivery"),
		Observer:            deliveryObserver{d.metrics},
	}
	dc.MaxAddrsPerAttempt, dc.MaxSessionsPerAttempt = c.Delivery.MaxAddrsPerAttempt, c.Delivery.MaxSessionsPerAttempt
	if dc.DelayWarning == 0 {
		dc.DelayWarning = -1 // the config's 0 turns delay notices off
	}
	for _, s := range c.Delivery.SourceAddrs {
		ip := netip.MustParseAddr(s) // validated with the config
		if ip.Is4() {
			dc.SourceIPv4 = ip
		} else {
			dc.SourceIPv6 = ip
		}
	}
	return dc, nil
}

// nextHops turns routes, relayhost and TLS policies into delivery's
// types, reading the AUTH password files.
func nextHops(c *Config) (map[string]delivery.NextHop, *delivery.Relayhost, map[string]delivery.TLSPolicy, error) {
	routes := map[string]delivery.NextHop{}
	for dom, r := range c.Routes {
		hop, err := nextHop(r)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("routes.%s: %w", dom, err)
		}
		routes[dom] = hop
	}
	var relay *delivery.Relayhost
	if c.Relayhost != nil {
		hop, err := nextHop(c.Relayhost.Route)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("relayhost: %w", err)
		}
		relay = &delivery.Relayhost{NextHop: hop, Domains: c.Relayhost.Domains}
	}
	policies := map[string]delivery.TLSPolicy{}
	for dom, p := range c.TLSPolicies {
		policies[dom] = delivery.TLSPolicy(p)
	}
	return routes, relay, policies, nil
}

func nextHop(r Route) (delivery.NextHop, error) {
	hop := hopOf(r)
	if r.Auth != nil {
		pw, err := os.ReadFile(r.Auth.PasswordFile)
		if err != nil {
			return hop, fmt.Errorf("auth password: %w", err)
		}
		hop.Auth.Password = strings.TrimRight(string(pw), "\r\n")
	}
	return hop, nil
}

// hopOf is r as delivery's next hop, with the AUTH login but not its
// password (nextHop reads that).
func hopOf(r Route) delivery.NextHop {
	hop := delivery.NextHop{Hosts: r.Hosts, TLS: delivery.TLSPolicy(r.TLS)}
	if r.InsecureSkipVerify && (hop.TLS == "" || hop.TLS == delivery.TLSVerify) {
		hop.TLS = delivery.TLSRequire // encrypted, certificate not checked
	}
	if r.Auth != nil {
		hop.Auth = &delivery.Auth{Username: r.Auth.Username}
	}
	return hop
}

// startSMTP starts the listeners bound earlier.
func (d *daemonState) startSMTP(listeners []boundListener) error {
	sc, err := d.smtpdConfig()
	if err != nil {
		return err
	}
	srv, err := smtpd.New(sc)
	if err != nil {
		return err
	}
	d.srv = srv
	for _, b := range listeners {
		d.serve(b.ln, b.kind)
	}
	return nil
}

// serve runs one listener until smtpd's Shutdown closes it.
func (d *daemonState) serve(ln net.Listener, kind smtpd.Kind) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		err := d.srv.Serve(ln, kind)
		if err != nil && !errors.Is(err, smtpd.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			d.log.Error("listener stopped", "kind", kind.String(), "addr", ln.Addr().String(), "err", err)
		}
	}()
}

func (d *daemonState) smtpdConfig() (smtpd.Config, error) {
	c := d.cfg
	sc := smtpd.Config{
		Hostname:             c.Hostname,
		Spool:                d.sp,
		TLS:                  d.certs.serverTLS(),
		LocalDomains:         c.LocalDomains,
		MyOrigin:             c.MyOrigin,
		Aliases:              aliasMap(c.Aliases),
		Limits:               smtpdLimits(c.Limits),
		AllowUnownedFrom:     allowUnownedFrom(c.Limits),
		SendmailTrustedUsers: c.SendmailTrust,
		LookupPTR:            d.lookupPTR,
		CachedPTR:            d.cachedPTR,
		TempDir:              filepath.Join(d.dirs.State, "tmp"),
		Logger:               d.log.With("subsystem", "smtpd"),
		Observer:             smtpdObserver{d.metrics},
	}
	if err := os.MkdirAll(sc.TempDir, 0o700); err != nil {
		return sc, err
	}
	for _, n := range c.TrustedNets {
		sc.TrustedNetworks = append(sc.TrustedNetworks, netip.MustParsePrefix(n)) // validated
	}
	var err error
	if c.UsersFile != "" {
		if sc.Users, err = loadUsersFile(c.UsersFile); err != nil {
			return sc, fmt.Errorf("users_file: %w", err)
		}
	}
	if sc.DKIM, err = loadDKIM(c.DKIM); err != nil {
		return sc, err
	}
	return sc, nil
}

func (d *daemonState) lookupPTR(ctx context.Context, ip netip.Addr) (string, error) {
	names, err := d.res.LookupPTR(ctx, ip)
	if err != nil || len(names) == 0 {
		return "", err
	}
	return strings.TrimSuffix(names[0], "."), nil
}

func (d *daemonState) cachedPTR(ip netip.Addr) (string, bool) {
	names, ok := d.res.CachedPTR(ip)
	if !ok || len(names) == 0 {
		return "", ok
	}
	return strings.TrimSuffix(names[0], "."), true
}

// allowUnownedFrom is limits.from_header_must_match turned around (on
// when left out).
func allowUnownedFrom(l Limits) bool {
	return l.FromHeaderMustMatch != nil && !*l.FromHeaderMustMatch
}

func smtpdLimits(l Limits) smtpd.Limits {
	return smtpd.Limits{
		MaxMessageBytes:       l.MaxMessageBytes,
		MaxRecipients:         l.MaxRecipients,
		ConnsPerIP:            l.ConnsPerIP,
		ConnsTotal:            l.ConnsTotal,
		DataConcurrency:       l.DataConcurrency,
		UserMessagesPerDay:    l.UserMessagesPerDay,
		UserRecipientsPerHour: l.UserRecipientsPerHour,
	}
}

func aliasMap(m map[string]string) map[string][]string {
	out := map[string][]string{}
	for k, v := range m {
		out[k] = splitList(v)
	}
	return out
}

func loadDKIM(keys []DKIMKey) (map[string]smtpd.DKIMKey, error) {
	out := map[string]smtpd.DKIMKey{}
	for i, k := range keys {
		signer, err := loadDKIMKey(k.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("dkim[%d]: %w", i, err)
		}
		out[k.Domain] = smtpd.DKIMKey{Selector: k.Selector, Signer: signer}
	}
	return out, nil
}

// everyPhase is t for every phase of an outgoing session, so a hanging
// host is left after t rather than minutes (the lab, delivery.session_timeout);
// t of 0 keeps every phase at RFC 5321's time.
func everyPhase(t time.Duration) delivery.Timeouts {
	return delivery.Timeouts{Connect: t, Greeting: t, Command: t, StartTLS: t, DataInit: t, DataBlock: t, FinalDot: t}
}
