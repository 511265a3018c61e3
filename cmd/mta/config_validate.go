package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"mta/internal/mailaddr"
)

// Default is the configuration `mta serve` runs on without a file: state
// in ./mta-data (or systemd's directories), listeners on 127.0.0.1, DNS from
// /etc/resolv.conf.
func Default() *Config {
	host, _ := os.Hostname() // checked (FQDN, resolves, PTR) at start
	if host != "" && !strings.Contains(host, ".") {
		// Like Postfix: a dotless system name gets ".localdomain", so the
		// EHLO is at least syntactically an FQDN; the start warns.
		host += ".localdomain"
	}
	return &Config{
		Hostname:     host,
		DrainTimeout: Duration(30 * time.Second),
		TrustedNets:  []string{"127.0.0.0/8", "::1/128"},
		Listeners: Listeners{
			Relay:       []string{"127.0.0.1:25"},
			Submission:  []string{"127.0.0.1:587"},
			Submissions: []string{"127.0.0.1:465"},
		},
		Limits: Limits{
			MaxMessageBytes:       50 << 20,
			MaxRecipients:         1000,
			ConnsPerIP:            20,
			ConnsTotal:            1000,
			DataConcurrency:       200,
			UserMessagesPerDay:    1000,
			UserRecipientsPerHour: 200,
		},
		Delivery: DeliveryConfig{
			MaxConnections:     500,
			PerDestination:     20,
			RetryMin:           Duration(5 * time.Minute),
			RetryMax:           Duration(70 * time.Minute),
			Lifetime:           Duration(5 * 24 * time.Hour),
			DelayWarning:       Duration(4 * time.Hour),
			IPFamily:           "any",
			Port:               25,
			MaxRcptsPerMessage: 50,

			MaxAddrsPerAttempt:    5,
			MaxSessionsPerAttempt: 2,
		},
		DNS:     DNSConfig{Timeout: Duration(2 * time.Second)},
		Spool:   SpoolConfig{MinFreeBytes: 100 << 20, RetiredMaxAge: Duration(7 * 24 * time.Hour), RetiredMaxCount: 100000},
		Metrics: MetricsConfig{Address: "127.0.0.1:9925"},
		Log:     LogConfig{Format: "text", Level: "info"},
		Admin:   AdminConfig{Group: "mta-admin"},
	}
}

// tlsPolicies are the values of a route's or a domain's tls key.
var tlsPolicies = []string{"none", "opportunistic", "require", "verify"}

// Validate returns every problem in c, each prefixed with its key path.
func (c *Config) Validate() []string {
	v := &validator{}
	if c.Hostname == "" {
		v.add("hostname", "is empty and the system host name is unknown")
	} else if _, err := mailaddr.NormalizeDomain(c.Hostname); err != nil || strings.HasPrefix(c.Hostname, "[") {
		// Delivery says it in every EHLO: RFC 5321 §4.1.4 wants an FQDN.
		// (Zero-config runs on a dotless system name with ".localdomain"
		// added, and the start warns.)
		v.add("hostname", "%q is not a fully qualified domain name (RFC 5321 §4.1.4)", c.Hostname)
	}
	if c.DrainTimeout <= 0 {
		v.add("drain_timeout", "must be positive")
	}
	if c.MyOrigin != "" {
		v.domain("myorigin", c.MyOrigin)
	}
	for i, d := range c.LocalDomains {
		v.domain(fmt.Sprintf("local_domains[%d]", i), d)
	}
	c.validateAliases(v)
	for i, n := range c.TrustedNets {
		if _, err := netip.ParsePrefix(n); err != nil {
			v.add(fmt.Sprintf("trusted_networks[%d]", i), "%q is not a network like 192.0.2.0/24", n)
		}
	}
	v.addrs("listeners.relay", c.Listeners.Relay)
	v.addrs("listeners.submission", c.Listeners.Submission)
	v.addrs("listeners.submissions", c.Listeners.Submissions)
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		v.add("tls", "cert_file and key_file go together")
	}
	for i, k := range c.DKIM {
		p := fmt.Sprintf("dkim[%d]", i)
		v.domain(p+".domain", k.Domain)
		if k.Selector == "" || strings.ContainsAny(k.Selector, " ;=") {
			v.add(p+".selector", "%q is not a DKIM selector", k.Selector)
		}
		if k.KeyFile == "" {
			v.add(p+".key_file", "is required")
		}
	}
	for _, d := range sortedKeys(c.Routes) {
		v.domain("routes."+d, d)
		v.route("routes."+d, c.Routes[d])
	}
	if c.Relayhost != nil {
		v.route("relayhost", c.Relayhost.Route)
		for i, d := range c.Relayhost.Domains {
			v.domain(fmt.Sprintf("relayhost.domains[%d]", i), d)
		}
	}
	for _, d := range sortedKeys(c.TLSPolicies) {
		v.domain("tls_policies."+d, d)
		v.oneOf("tls_policies."+d, c.TLSPolicies[d], tlsPolicies)
	}
	c.validateLimits(v)
	c.validateDelivery(v)
	if c.DNS.Timeout <= 0 {
		v.add("dns.timeout", "must be positive")
	}
	for i, s := range c.DNS.Servers {
		if _, err := netip.ParseAddrPort(withPort(s, "53")); err != nil {
			v.add(fmt.Sprintf("dns.servers[%d]", i), "%q is not an IP address (optionally with :port)", s)
		}
	}
	if c.Metrics.Address != "" {
		v.addrs("metrics.address", []string{c.Metrics.Address})
	}
	v.oneOf("log.format", c.Log.Format, []string{"text", "json"})
	v.oneOf("log.level", c.Log.Level, []string{"debug", "info", "warn", "error"})
	return v.problems
}

func (c *Config) validateAliases(v *validator) {
	for _, k := range sortedKeys(c.Aliases) {
		p := "aliases." + k
		if strings.Contains(k, "@") {
			if _, err := mailaddr.Parse(k); err != nil {
				v.add(p, "%q is not an address: %v", k, err)
			}
		} else if k == "" || strings.ContainsAny(k, " \t,") {
			v.add(p, "%q is not a local part", k)
		}
		targets := splitList(c.Aliases[k])
		if len(targets) == 0 {
			v.add(p, "has no target address")
		}
		for _, t := range targets {
			if _, err := mailaddr.Parse(t); err != nil {
				v.add(p, "target %q is not an address: %v", t, err)
			}
		}
	}
}

func (c *Config) validateLimits(v *validator) {
	l := c.Limits
	v.positive("limits.max_message_bytes", int(min(l.MaxMessageBytes, 1<<40)))
	v.positive("limits.max_recipients", l.MaxRecipients)
	v.positive("limits.conns_per_ip", l.ConnsPerIP)
	v.positive("limits.conns_total", l.ConnsTotal)
	v.positive("limits.data_concurrency", l.DataConcurrency)
	v.positive("limits.user_messages_per_day", l.UserMessagesPerDay)
	v.positive("limits.user_recipients_per_hour", l.UserRecipientsPerHour)
}

func (c *Config) validateDelivery(v *validator) {
	d := c.Delivery
	v.positive("delivery.max_connections", d.MaxConnections)
	v.positive("delivery.per_destination", d.PerDestination)
	v.positive("delivery.max_recipients_per_transaction", d.MaxRcptsPerMessage)
	v.positive("delivery.max_addresses_per_attempt", d.MaxAddrsPerAttempt)
	v.positive("delivery.max_sessions_per_attempt", d.MaxSessionsPerAttempt)
	if d.Port <= 0 || d.Port > 65535 {
		v.add("delivery.port", "%d is not a TCP port", d.Port)
	}
	if d.RetryMin <= 0 || d.RetryMax < d.RetryMin {
		v.add("delivery.retry_min", "must be positive and not above retry_max")
	}
	if d.Lifetime < d.RetryMin {
		v.add("delivery.lifetime", "must be at least retry_min")
	}
	if d.DelayWarning < 0 {
		v.add("delivery.delay_warning", "must not be negative (0 turns delay notices off)")
	}
	v.oneOf("delivery.ip_family", d.IPFamily, []string{"any", "ipv4", "ipv6", "prefer-ipv4"})
	for i, s := range d.SourceAddrs {
		if _, err := netip.ParseAddr(s); err != nil {
			v.add(fmt.Sprintf("delivery.source_addresses[%d]", i), "%q is not an IP address", s)
		}
	}
	for i, s := range d.ProxyAddrs {
		if _, err := netip.ParseAddr(s); err != nil {
			v.add(fmt.Sprintf("delivery.proxy_addresses[%d]", i), "%q is not an IP address", s)
		}
	}
}

type validator struct{ problems []string }

func (v *validator) add(path, format string, args ...any) {
	v.problems = append(v.problems, path+": "+fmt.Sprintf(format, args...))
}

func (v *validator) domain(path, d string) {
	if _, err := mailaddr.NormalizeDomain(d); err != nil || strings.HasPrefix(d, "[") {
		v.add(path, "%q is not a domain name", d)
	}
}

func (v *validator) positive(path string, n int) {
	if n <= 0 {
		v.add(path, "must be positive, not %d", n)
	}
}

func (v *validator) oneOf(path, val string, allowed []string) {
	for _, a := range allowed {
		if val == a {
			return
		}
	}
	v.add(path, "%q is not one of %s", val, strings.Join(allowed, ", "))
}

func (v *validator) addrs(path string, addrs []string) {
	for i, a := range addrs {
		host, port, err := net.SplitHostPort(a)
		if err == nil {
			_, err = strconv.ParseUint(port, 10, 16)
		}
		if err == nil && host != "" {
			_, err = netip.ParseAddr(host)
		}
		if err != nil {
			v.add(fmt.Sprintf("%s[%d]", path, i), "%q is not an address like 127.0.0.1:25", a)
		}
	}
}

func (v *validator) route(path string, r Route) {
	if len(r.Hosts) == 0 {
		v.add(path+".hosts", "needs at least one host[:port]")
	}
	for i, h := range r.Hosts {
		host, port := splitHostPortDefault(h, "25")
		if _, err := strconv.ParseUint(port, 10, 16); err != nil || host == "" {
			v.add(fmt.Sprintf("%s.hosts[%d]", path, i), "%q is not host[:port]", h)
		}
	}
	if r.TLS != "" {
		v.oneOf(path+".tls", r.TLS, tlsPolicies)
	}
	if r.Auth != nil && (r.Auth.Username == "" || r.Auth.PasswordFile == "") {
		v.add(path+".auth", "needs username and password_file")
	}
	if r.Auth != nil && r.TLS == "none" {
		v.add(path+".auth", "AUTH is only ever sent over TLS, but tls is none")
	}
}

// splitHostPortDefault splits "host[:port]", IPv6 in brackets.
func splitHostPortDefault(s, port string) (string, string) {
	if h, p, err := net.SplitHostPort(s); err == nil {
		return h, p
	}
	return strings.Trim(s, "[]"), port
}

func withPort(s, port string) string {
	if _, _, err := net.SplitHostPort(s); err == nil {
		return s
	}
	return net.JoinHostPort(s, port)
}

// splitList splits a comma- or space-separated list of addresses.
func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' })
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
