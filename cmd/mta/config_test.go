package main

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestShippedConfigParses(t *testing.T) {
	c, err := LoadConfig("../../configs/mta.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Hostname != "mail.example.org" || c.Relayhost == nil || c.Relayhost.Hosts[0] != "smtp.provider.example:465" {
		t.Errorf("shipped config decoded wrongly: %+v", c)
	}
	if time.Duration(c.Delivery.Lifetime) != 5*24*time.Hour {
		t.Errorf("lifetime = %v, want 5 days", time.Duration(c.Delivery.Lifetime))
	}
	if got := c.Aliases["abuse@example.org"]; splitList(got)[1] != "security@example.org" {
		t.Errorf("alias list = %q", got)
	}
}

func TestDefaultIsValid(t *testing.T) {
	c := Default()
	c.Hostname = "mail.example.test"
	if p := c.Validate(); len(p) > 0 {
		t.Fatalf("Default() has problems: %v", p)
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // each must appear in the error
	}{
		{"unknown key names key and line", "hostname: a.example\nrelayhots: x\n", []string{`line 2: unknown key "relayhots"`}},
		{"unknown nested key", "delivery:\n  retry_mni: 5m\n", []string{`line 2: unknown key "retry_mni"`}},
		{"bad duration", "delivery:\n  lifetime: forever\n", []string{`line 2: "forever" is not a duration`}},
		{"bad enum with line", "delivery:\n  ip_family: ipv5\n", []string{`line 2: delivery.ip_family: "ipv5" is not one of`}},
		{"every problem at once", "log:\n  format: xml\n  level: loud\ntrusted_networks: [nonsense]\nbogus: 1\n", []string{
			`line 5: unknown key "bogus"`, `line 2: log.format`, `line 3: log.level`, `line 4: trusted_networks[0]`}},
		{"route without hosts", "routes:\n  example.org:\n    tls: verify\n", []string{"routes.example.org.hosts: needs at least one"}},
		{"auth without tls", "relayhost:\n  hosts: [\"smtp.example.org:587\"]\n  tls: none\n  auth: {username: u, password_file: /p}\n", []string{"relayhost.auth: AUTH is only ever sent over TLS"}},
		{"bad tls policy", "tls_policies:\n  example.org: maybe\n", []string{`line 2: tls_policies.example.org: "maybe" is not one of`}},
		{"cert without key", "tls:\n  cert_file: /x\n", []string{"line 1: tls: cert_file and key_file go together"}},
		{"bad alias target", "aliases:\n  root: not-an-address\n", []string{`aliases.root: target "not-an-address"`}},
		{"bad listener", "listeners:\n  relay: [\"localhost\"]\n", []string{`listeners.relay[0]: "localhost" is not an address`}},
		{"wrong type", "limits:\n  max_recipients: many\n", []string{"line 2: cannot unmarshal"}},
		{"attempt budget", "delivery:\n  max_addresses_per_attempt: 0\n  max_sessions_per_attempt: -1\n", []string{
			"line 2: delivery.max_addresses_per_attempt", "line 3: delivery.max_sessions_per_attempt"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tt.yaml), "test.yaml")
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v, want a *ConfigError", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{"30s": 30 * time.Second, "5d": 120 * time.Hour, "1h30m": 90 * time.Minute, "0": 0} {
		got, err := parseDuration(in)
		if err != nil || got != want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"-5m", "xd", "5", "1.5d", "-1d"} {
		if _, err := parseDuration(bad); err == nil {
			t.Errorf("parseDuration(%q) succeeded", bad)
		}
	}
}

func TestCheckConfigCommand(t *testing.T) {
	dir := t.TempDir()
	good := dir + "/good.yaml"
	bad := dir + "/bad.yaml"
	writeFile(t, good, "hostname: mx.example.test\nlocal_domains: [example.test]\naliases:\n  postmaster: a@example.org\n")
	writeFile(t, bad, "hostname: mx.example.test\nlistners: {}\n")

	var out, errb strings.Builder
	if err := run(t.Context(), []string{"mta", "check-config", good}, Stdio{Out: &out, Err: &errb}); err != nil {
		t.Fatalf("good config: %v", err)
	}
	if !strings.Contains(out.String(), `no alias for "root"`) || strings.Contains(out.String(), `"postmaster"`) {
		t.Errorf("warnings wrong:\n%s", out.String())
	}
	out.Reset()
	err := run(t.Context(), []string{"mta", "check-config", bad}, Stdio{Out: &out, Err: &errb})
	if exitCode(err, &errb) != exitConfig || !strings.Contains(errb.String(), `line 2: unknown key "listners"`) {
		t.Errorf("bad config: err %v, stderr %q", err, errb.String())
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("hostname: a.example\ndelivery:\n  lifetime: 5d\n"))
	f.Add([]byte("routes:\n  example.org:\n    hosts: ['[::1]:25']\n"))
	f.Add([]byte("aliases: {root: 'a@b.example, c@d.example'}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data, "fuzz.yaml")
		if err == nil && len(c.Validate()) > 0 {
			t.Fatalf("accepted a config with problems")
		}
	})
}
