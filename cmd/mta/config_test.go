package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
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
		{"unknown nested key names its mapping", "delivery:\n  retry_mni: 5m\n", []string{`line 2: unknown key "retry_mni" in delivery`}},
		{"bad duration names the key", "delivery:\n  lifetime: forever\n", []string{`line 2: delivery.lifetime: "forever" is not a duration`}},
		{"bad values on one line told apart", "spool: {min_free_bytes: lots, retired_max_count: 12}\ndns: {servers: [\"1.1.1.1\"], timeout: soon}\n", []string{
			"line 1: spool.min_free_bytes: cannot unmarshal !!str `lots` into int64", `line 2: dns.timeout: "soon" is not a duration`}},
		{"a mapping where a string goes", "trusted_networks:\n  - 127.0.0.0/8\n  - {a: b}\n", []string{"line 3: trusted_networks[1]: cannot unmarshal !!map into string"}},
		{"bad enum with line", "delivery:\n  ip_family: ipv5\n", []string{`line 2: delivery.ip_family: "ipv5" is not one of`}},
		{"every problem at once", "log:\n  format: xml\n  level: loud\ntrusted_networks: [nonsense]\nbogus: 1\n", []string{
			`line 5: unknown key "bogus"`, `line 2: log.format`, `line 3: log.level`, `line 4: trusted_networks[0]`}},
		{"route without hosts", "routes:\n  example.org:\n    tls: verify\n", []string{"routes.example.org.hosts: needs at least one"}},
		{"auth without tls", "relayhost:\n  hosts: [\"smtp.example.org:587\"]\n  tls: none\n  auth: {username: u, password_file: /p}\n", []string{"relayhost.auth: AUTH is only ever sent over TLS"}},
		{"bad tls policy", "tls_policies:\n  example.org: maybe\n", []string{`line 2: tls_policies.example.org: "maybe" is not one of`}},
		{"cert without key", "tls:\n  cert_file: /x\n", []string{"line 1: tls: cert_file and key_file go together"}},
		{"bad alias target", "aliases:\n  root: not-an-address\n", []string{`aliases.root: target "not-an-address"`}},
		{"bad listener", "listeners:\n  relay: [\"localhost\"]\n", []string{`listeners.relay[0]: "localhost" is not an address`}},
		{"attempt budget", "delivery:\n  max_addresses_per_attempt: 0\n  max_sessions_per_attempt: -1\n", []string{
			"line 2: delivery.max_addresses_per_attempt", "line 3: delivery.max_sessions_per_attempt"}},
		{"dotless hostname", "hostname: mail\n", []string{`line 1: hostname: "mail" is not a fully qualified domain name`}},
		{"wrong type names the key", "limits:\n  max_recipients: many\n", []string{"line 2: limits.max_recipients: cannot unmarshal"}},
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

	// What the daemon would fail on at start: every file it cannot use
	// and every unknown user, at once.
	missing := dir + "/missing.yaml"
	writeFile(t, missing, "hostname: mx.example.test\nusers_file: "+dir+"/no-users\ntls: {cert_file: "+dir+"/no.crt, key_file: "+dir+"/no.key}\n"+
		"dkim:\n  - {domain: example.test, selector: s1, key_file: "+dir+"/no-dkim.key}\nsendmail_trusted_users: [root, no-such-user-here]\n"+
		"relayhost:\n  hosts: [smtp.example.test]\n  auth: {username: u, password_file: "+dir+"/no-password}\n")
	errb.Reset()
	err = run(t.Context(), []string{"mta", "check-config", missing}, Stdio{Out: &out, Err: &errb})
	if exitCode(err, &errb) != exitConfig {
		t.Errorf("config naming missing files: exit %d", exitCode(err, &errb))
	}
	for _, want := range []string{"5 problem(s)", "line 2: users_file: open", "line 3: tls.cert_file: open", "line 5: dkim[0].key_file: open",
		`line 6: sendmail_trusted_users[1]: user: unknown user no-such-user-here`, "line 9: relayhost.auth.password_file: open"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("check-config does not say %q:\n%s", want, errb.String())
		}
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("hostname: a.example\ndelivery:\n  lifetime: 5d\n"))
	f.Add([]byte("routes:\n  example.org:\n    hosts: ['[::1]:25']\n"))
	f.Add([]byte("aliases: {root: 'a@b.example, c@d.example'}\n"))
	f.Add([]byte("spool: {min_free_bytes: x, retired_max_count: [1]}\nlisteners:\n  smtp: []\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data, "fuzz.yaml")
		if err == nil && len(c.Validate()) > 0 {
			t.Fatalf("accepted a config with problems")
		}
	})
}

// TestShippedConfigHasEveryKey: configs/mta.yaml, the documented example,
// sets every key the daemon reads, so a new Config field cannot go
// undocumented. A struct type used in several places (a route, in routes
// and relayhost) counts as documented when each of its keys appears in one
// of them.
func TestShippedConfigHasEveryKey(t *testing.T) {
	data, err := os.ReadFile("../../configs/mta.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	documentedKeys(doc.Content[0], reflect.TypeFor[Config](), seen)
	for _, key := range configKeys(reflect.TypeFor[Config]()) {
		if !seen[key] {
			t.Errorf("configs/mta.yaml does not document %s", key)
		}
	}
}

// yamlField is a struct field and the struct that declares it (an inline
// struct's own type for its fields).
type yamlField struct {
	reflect.StructField
	owner reflect.Type
}

// yamlFields maps a struct's YAML keys to their fields, inline ones
// included.
func yamlFields(st reflect.Type) map[string]yamlField {
	out := map[string]yamlField{}
	for i := range st.NumField() {
		f := st.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if opts == "inline" {
			for k, g := range yamlFields(f.Type) {
				out[k] = g
			}
			continue
		}
		out[name] = yamlField{f, st}
	}
	return out
}

// structOf is the struct type a field's values decode into, if any.
func structOf(t reflect.Type) (reflect.Type, bool) {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
		t = t.Elem()
	}
	return t, t.Kind() == reflect.Struct && t != reflect.TypeFor[Duration]()
}

// configKeys lists every "Type.key" a config may set.
func configKeys(st reflect.Type) []string {
	var out []string
	done := map[reflect.Type]bool{}
	var walk func(st reflect.Type)
	walk = func(st reflect.Type) {
		if done[st] {
			return
		}
		done[st] = true
		fields := yamlFields(st)
		for _, k := range sortedKeys(fields) {
			if fields[k].owner != st {
				walk(fields[k].owner) // inline
				continue
			}
			out = append(out, st.Name()+"."+k)
			if sub, ok := structOf(fields[k].Type); ok {
				walk(sub)
			}
		}
	}
	walk(st)
	return out
}

// documentedKeys records the "Type.key" of every key in node, a mapping
// decoded into st.
func documentedKeys(node *yaml.Node, st reflect.Type, seen map[string]bool) {
	if node.Kind != yaml.MappingNode {
		return
	}
	fields := yamlFields(st)
	for i := 0; i+1 < len(node.Content); i += 2 {
		key, val := node.Content[i].Value, node.Content[i+1]
		f, ok := fields[key]
		if !ok {
			continue
		}
		seen[f.owner.Name()+"."+key] = true
		sub, ok := structOf(f.Type)
		if !ok {
			continue
		}
		switch ft := f.Type; {
		case ft.Kind() == reflect.Map:
			for j := 1; j < len(val.Content); j += 2 {
				documentedKeys(val.Content[j], sub, seen)
			}
		case ft.Kind() == reflect.Slice:
			for _, c := range val.Content {
				documentedKeys(c, sub, seen)
			}
		default:
			documentedKeys(val, sub, seen)
		}
	}
}

// TestSystemdUnit: configs/mta.service runs the daemon as the README and
// the issue say (Type=notify with a watchdog, its own user, systemd's
// state and runtime directories, the capability for ports 25/465/587,
// hardening, SIGHUP for reload) and gives a stop more time than the
// default drain_timeout; systemd-analyze, where present, accepts it.
func TestSystemdUnit(t *testing.T) {
	data, err := os.ReadFile("../../configs/mta.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := map[string][]string{}
	for line := range strings.Lines(string(data)) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if ok && !strings.HasPrefix(k, "#") {
			unit[k] = append(unit[k], v)
		}
	}
	for k, want := range map[string]string{
		"Type": "notify", "NotifyAccess": "main", "ExecReload": "/bin/kill -HUP $MAINPID", "KillSignal": "SIGTERM",
		"User": "mta", "StateDirectory": "mta", "RuntimeDirectory": "mta", "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
		"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes", "ProtectHome": "yes",
	} {
		if got := unit[k]; len(got) != 1 || got[0] != want {
			t.Errorf("%s=%v, want %s", k, got, want)
		}
	}
	if !strings.Contains(strings.Join(unit["ExecStart"], ""), "mta serve --config /etc/mta/mta.yaml") {
		t.Errorf("ExecStart=%v", unit["ExecStart"])
	}
	for _, k := range []string{"WatchdogSec", "TimeoutStopSec"} {
		if len(unit[k]) != 1 {
			t.Fatalf("%s=%v", k, unit[k])
		}
	}
	stop, err := time.ParseDuration(unit["TimeoutStopSec"][0])
	if err != nil || stop <= time.Duration(Default().DrainTimeout) {
		t.Errorf("TimeoutStopSec=%s does not outlast drain_timeout %s: the drain would be killed", unit["TimeoutStopSec"][0], time.Duration(Default().DrainTimeout))
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "mta.service")
	writeFile(t, path, strings.ReplaceAll(string(data), "/usr/local/bin/mta", self))
	if out, err := exec.CommandContext(t.Context(), analyze, "verify", path).CombinedOutput(); err != nil {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
