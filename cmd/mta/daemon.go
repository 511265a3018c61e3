package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"mta/delivery"
	"mta/internal/mailaddr"
	"mta/resolver"
	"mta/smtpd"
	"mta/spool"
)

// daemonState is the running daemon: every part `mta serve` starts, in
// the order it starts them, so stop can undo a partial start.
type daemonState struct {
	cfg        *Config
	configPath string
	// configLabel names the config in the log when there is no file to
	// name (the lab's).
	configLabel string
	zero        bool // no config file: embedded defaults, fallback ports
	log         *slog.Logger
	dirs        dirs
	// timeouts of outgoing sessions; zero fields take RFC 5321's (the lab
	// shortens them).
	timeouts delivery.Timeouts

	metrics  *metrics
	certs    certStore
	res      *resolver.Resolver
	sp       *spool.Spool
	aliases  liveAliases // for DSNs; smtpd keeps its own copy
	engine   atomic.Pointer[delivery.Scheduler]
	srv      *smtpd.Server
	local    *pipeListener // maildrop imports enter the Local intake here
	listenOn []string      // "relay 127.0.0.1:25", for the log and the lab

	hup    chan os.Signal     // SIGHUP, caught before start; nil: loop catches it
	cancel context.CancelFunc // ends the background goroutines
	wg     sync.WaitGroup
	closes []func() // listeners and sockets, closed first at stop
}

// start brings the daemon up: state directory, certificate, resolver,
// spool, delivery, listeners, sockets, metrics. On error the caller runs
// stop, which undoes what was started.
func (d *daemonState) start(ctx context.Context) error {
	d.dirs = resolveDirs(d.cfg, os.Getenv)
	d.log.Info("starting mta", "version", version(), "hostname", d.cfg.Hostname, "config", d.configName(),
		"state_dir", d.dirs.State, "runtime_dir", d.dirs.Runtime)
	for _, dir := range []string{d.dirs.State, d.dirs.Runtime} {
		if err := os.MkdirAll(dir, 0o751); err != nil {
			return err
		}
	}
	if err := ensureMaildrop(filepath.Join(d.dirs.State, maildropSubdir)); err != nil {
		return fmt.Errorf("maildrop: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d.cancel = cancel
	d.metrics = newMetrics()
	profileOnSignals(runCtx, os.Getenv(profileDirEnv), d.log)
	if err := d.certs.load(d.cfg, d.dirs.State, d.log); err != nil {
		return err
	}
	listeners, err := d.bind()
	if err != nil {
		return err
	}
	if err := d.newResolver(listeners); err != nil {
		return err
	}
	d.checkHostname(ctx)
	if err := d.openSpool(); err != nil {
		return err
	}
	if err := d.startDelivery(runCtx); err != nil {
		return err
	}
	if err := d.startSMTP(listeners); err != nil {
		return err
	}
	if err := d.startSockets(); err != nil {
		return err
	}
	d.startMetrics(runCtx)
	d.runMaildrop(runCtx, time.Minute)
	return nil
}

func (d *daemonState) configName() string {
	if d.configPath == "" && d.configLabel != "" {
		return d.configLabel
	}
	if d.configPath == "" {
		return "(embedded defaults)"
	}
	return d.configPath
}

// stop drains and closes everything start opened: listeners first (no new
// mail), then sessions and deliveries in flight (bounded by drain_timeout),
// then the spool. Nothing accepted is lost: what is not delivered stays
// due in the spool.
func (d *daemonState) stop() {
	for _, c := range d.closes {
		c()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(d.cfg.DrainTimeout))
	defer cancel()
	var wg sync.WaitGroup
	if d.srv != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.srv.Shutdown(ctx); err != nil && !errors.Is(err, smtpd.ErrServerClosed) {
				d.log.Warn("smtpd shutdown", "err", err)
			}
		}()
	}
	if e := d.engine.Load(); e != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := e.Shutdown(ctx); err != nil {
				d.log.Warn("delivery shutdown: in-flight attempts abandoned; they are due again", "err", err)
			}
		}()
	}
	wg.Wait()
	if d.cancel != nil {
		d.cancel()
	}
	d.wg.Wait()
	if d.sp != nil {
		if err := d.sp.Close(); err != nil {
			d.log.Error("close spool", "err", err)
		}
	}
}

// boundListener is a bound TCP listener and the role it serves.
type boundListener struct {
	ln   net.Listener
	kind smtpd.Kind
}

// bind opens every configured listener before anything else, so a port
// in use fails the start at once.
func (d *daemonState) bind() ([]boundListener, error) {
	var out []boundListener
	for _, l := range []struct {
		kind  smtpd.Kind
		addrs []string
	}{{smtpd.Relay, d.cfg.Listeners.Relay}, {smtpd.Submission, d.cfg.Listeners.Submission}, {smtpd.Submissions, d.cfg.Listeners.Submissions}} {
		for _, addr := range l.addrs {
			ln, err := listenTCP(addr, d.zero, d.log)
			if err != nil {
				for _, b := range out {
					b.ln.Close()
				}
				return nil, fmt.Errorf("listen %s (%s): %w", addr, l.kind, err)
			}
			out = append(out, boundListener{ln, l.kind})
			d.listenOn = append(d.listenOn, fmt.Sprintf("%s=%s", l.kind, ln.Addr()))
		}
	}
	return out, nil
}

// newResolver sets up DNS with our own addresses as "self".
func (d *daemonState) newResolver(listeners []boundListener) error {
	servers, err := dnsServers(d.cfg)
	if err != nil {
		return err
	}
	res, err := resolver.New(resolver.Config{
		Servers:      servers,
		Timeout:      time.Duration(d.cfg.DNS.Timeout),
		Hostname:     d.cfg.Hostname,
		SelfAddrs:    selfAddrs(listeners, d.cfg.Delivery.ProxyAddrs),
		AllowPrivate: d.cfg.Delivery.AllowPrivateMX,
		Logger:       d.log.With("subsystem", "resolver"),
		Observer:     resolverObserver{d.metrics},
	})
	if err != nil {
		return fmt.Errorf("resolver: %w", err)
	}
	d.res = res
	d.log.Info("dns", "servers", servers, "allow_private_mx", d.cfg.Delivery.AllowPrivateMX)
	return nil
}

// dnsServers are the configured DNS servers (port 53 by default) or those
// of /etc/resolv.conf.
func dnsServers(c *Config) ([]string, error) {
	if len(c.DNS.Servers) == 0 {
		return systemServers(resolvConf)
	}
	var out []string
	for _, s := range c.DNS.Servers {
		out = append(out, withPort(s, "53"))
	}
	return out, nil
}

// selfAddrs are the addresses an MX host must not have: every address we
// listen on (all interface addresses for a wildcard listener) and the
// configured proxy addresses.
func selfAddrs(listeners []boundListener, proxies []string) []netip.Addr {
	var out []netip.Addr
	wildcard := false
	for _, l := range listeners {
		if a, ok := l.ln.Addr().(*net.TCPAddr); ok {
			ip := a.AddrPort().Addr().Unmap()
			if ip.IsUnspecified() {
				wildcard = true
				continue
			}
			out = append(out, ip)
		}
	}
	if wildcard {
		if addrs, err := net.InterfaceAddrs(); err == nil {
			for _, a := range addrs {
				if p, err := netip.ParsePrefix(a.String()); err == nil {
					out = append(out, p.Addr().Unmap())
				}
			}
		}
	}
	for _, p := range proxies {
		if ip, err := netip.ParseAddr(p); err == nil {
			out = append(out, ip)
		}
	}
	return out
}

// checkHostname warns when our name is not an FQDN, does not resolve, or
// its addresses' PTR records do not name it (RFC 5321 §4.1.4; receivers
// check all three).
func (d *daemonState) checkHostname(ctx context.Context) {
	host := d.cfg.Hostname
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := mailaddr.NormalizeDomain(host); err != nil || strings.HasSuffix(host, ".localdomain") {
		d.log.Warn("hostname is not a fully qualified domain name; set hostname: in the config (RFC 5321 §4.1.4)", "hostname", host)
		return
	}
	addrs, err := d.res.LookupAddrs(ctx, host)
	if err != nil || len(addrs) == 0 {
		d.log.Warn("hostname does not resolve; receivers may refuse our EHLO", "hostname", host, "err", err)
		return
	}
	for _, a := range addrs {
		names, err := d.res.LookupPTR(ctx, a)
		if err != nil || !containsFold(names, host) {
			d.log.Warn("the PTR record of our address does not name our hostname; receivers may distrust our mail", "hostname", host, "ip", a, "ptr", names, "err", err)
		}
	}
}

func containsFold(names []string, host string) bool {
	for _, n := range names {
		if equalFoldDot(n, host) {
			return true
		}
	}
	return false
}

func equalFoldDot(a, b string) bool {
	trim := func(s string) string {
		if len(s) > 0 && s[len(s)-1] == '.' {
			return s[:len(s)-1]
		}
		return s
	}
	return len(trim(a)) == len(trim(b)) && strings.EqualFold(trim(a), trim(b))
}
