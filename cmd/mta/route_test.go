package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"mta/internal/peer"
	"mta/internal/testpeer"
	"mta/resolver"
)

const routeCmdZone = `$ORIGIN test.
$TTL 300
@           IN SOA ns.test. hostmaster.test. 1 3600 600 86400 60
plain       IN MX 10 mx1.plain
plain       IN MX 20 mx2.plain
mx1.plain   IN A 192.0.2.1
mx2.plain   IN A 192.0.2.2
mx2.plain   IN AAAA 2001:db8::2
nullmx      IN MX 0 .
servfail    IN MX 10 mx1.plain
lab         IN MX 10 mx.lab
lab         IN MX 20 gone.lab
mx.lab      IN A 127.0.0.2
selfaddr    IN MX 10 mx.lab
selfaddr    IN MX 20 proxy.selfaddr
selfaddr    IN MX 30 listener.selfaddr
proxy.selfaddr    IN A 192.0.2.25
listener.selfaddr IN A 127.0.0.9
`

// routeCmd runs `mta route args...` in-process and returns stdout, the exit
// status and what the process would print on stderr.
func routeCmd(t *testing.T, args ...string) (stdout string, status int, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	err := run(t.Context(), append([]string{"mta", "route"}, args...), Stdio{In: strings.NewReader(""), Out: &out, Err: &errb})
	status = exitCode(err, &errb)
	return out.String(), status, errb.String()
}

func TestRouteCommand(t *testing.T) {
	d := testpeer.NewDNS(t, routeCmdZone)
	d.Set("servfail.test", peer.ModeServfail)
	srv := "--server=" + d.Addr()
	cases := []routeCase{
		{name: "route_found", args: []string{"plain.test", srv}, status: exitOK, stdout: []string{
			"route to plain.test", "DNS steps:", "1 MX plain.test. NOERROR " + d.Addr() + " udp",
			"plain.test. 300 MX 10 mx1.plain.test.", "2 A mx1.plain.test. NOERROR", "hosts, in the order delivery tries them (MX)",
			"1. mx1.plain.test pref 10 192.0.2.1", "2. mx2.plain.test pref 20 192.0.2.2 2001:db8::2"}},
		{name: "flags_before_domain", args: []string{srv, "plain.test"}, status: exitOK, stdout: []string{"1. mx1.plain.test"}},
		{name: "null_MX_is_permanent", args: []string{"nullmx.test", srv}, status: exitNoHost,
			stdout: []string{"nullmx.test. 300 MX 0 .", "no route: domain accepts no mail"}, message: "permanent: no route to nullmx.test"},
		{name: "NXDOMAIN_is_permanent", args: []string{"missing.test", srv}, status: exitNoHost,
			stdout: []string{"NXDOMAIN"}, message: "permanent: no route to missing.test: domain does not exist"},
		{name: "SERVFAIL_is_temporary", args: []string{"servfail.test", srv}, status: exitTempFail,
			stdout: []string{"SERVFAIL"}, message: "temporary: no route to servfail.test now, try later"},
		{name: "lab_addresses_prohibited", args: []string{"lab.test", srv}, status: exitNoHost,
			stdout: []string{"dropped:", "mx.lab.test pref 10 no usable address (all prohibited)", "skipped 127.0.0.2: prohibited: loopback",
				"gone.lab.test pref 20 host does not exist (NXDOMAIN)"}, message: "permanent: no route to lab.test: no usable mail host"},
		{name: "lab_allowed", args: []string{"lab.test", srv, "--allow-private"}, status: exitOK,
			stdout: []string{"1. mx.lab.test pref 10 127.0.0.2", "dropped:", "gone.lab.test"}},
		{name: "self_by_hostname", args: []string{"plain.test", srv, "--hostname", "MX1.plain.test"}, status: exitNoHost,
			stdout: []string{"self: our host name", "preference 20 is not better than ours (10)"}, message: "permanent: no route to plain.test: mail loops back to myself (5.4.6)"},
		{name: "address_literal", args: []string{"[192.0.2.7]", srv}, status: exitOK,
			stdout: []string{"none (address literal)", "(address literal)", "1. [192.0.2.7]"}},
		{name: "dotless_refused", args: []string{"plain", srv}, status: exitNoHost,
			stdout: []string{"DNS steps: none (not a domain that can be looked up)", "no route: invalid domain"}, message: "permanent: no route to plain: invalid domain"},
		{name: "no_domain", args: []string{srv}, status: exitUsage},
		{name: "two_domains", args: []string{"a.test", "b.test", srv}, status: exitUsage},
		{name: "bad_server", args: []string{"plain.test", "--server", "dns.example"}, status: exitUsage},
	}
	runRouteCases(t, cases)
}

func TestRouteCommandJSON(t *testing.T) {
	d := testpeer.NewDNS(t, routeCmdZone)
	d.Set("servfail.test", peer.ModeServfail)
	for _, tc := range []struct {
		name, domain string
		status       int
		hosts        []string
		enhanced     string
	}{
		{"route", "plain.test", exitOK, []string{"mx1.plain.test", "mx2.plain.test"}, ""},
		{"permanent_error", "nullmx.test", exitNoHost, nil, "5.1.10"},
		{"temporary_error", "servfail.test", exitTempFail, nil, "4.4.3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, status, stderr := routeCmd(t, tc.domain, "--json", "--server", d.Addr())
			if status != tc.status {
				t.Fatalf("exit %d, want %d: %s", status, tc.status, stderr)
			}
			var got struct {
				Domain string
				Hosts  []struct {
					Name  string
					Addrs []string
				}
				Trace []struct {
					Type, Rcode string
					Answer      []struct{ Data string }
				}
				Error *struct {
					Permanent bool
					Enhanced  string
				}
			}
			if (tc.hosts != nil && !strings.Contains(out, `"data": `)) || !strings.Contains(out, `"duration_ms": `) {
				t.Errorf("JSON keys are not snake_case:\n%s", out)
			}
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("stdout is not JSON: %v\n%s", err, out)
			}
			var names []string
			for _, h := range got.Hosts {
				names = append(names, h.Name)
			}
			if got.Domain != tc.domain || !slices.Equal(names, tc.hosts) || len(got.Trace) == 0 || got.Trace[0].Type != "MX" {
				t.Errorf("JSON %+v: want domain %s, hosts %v and an MX step", got, tc.domain, tc.hosts)
			}
			if (got.Error == nil) != (tc.enhanced == "") ||
				(got.Error != nil && (got.Error.Enhanced != tc.enhanced || got.Error.Permanent != strings.HasPrefix(tc.enhanced, "5."))) {
				t.Errorf("JSON error %+v, want %q (permanent for 5.x.x)", got.Error, tc.enhanced)
			}
		})
	}
}

// TestSystemServers checks reading DNS servers from a resolv.conf file:
// nameservers only (search and options are ignored), port 53 added.
func TestSystemServers(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	got, err := systemServers(write("ok", "search corp.example\noptions ndots:5\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n"))
	if err != nil || !slices.Equal(got, []string{"192.0.2.53:53", "[2001:db8::53]:53"}) {
		t.Errorf("got %v, %v", got, err)
	}
	if _, err := systemServers(write("empty", "search corp.example\n")); err == nil {
		t.Error("a resolv.conf without nameservers was accepted")
	}
	if _, err := systemServers(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing resolv.conf was accepted")
	}
}

// TestRouteCommandConfig checks that --config brings the daemon's DNS
// servers, host name and allow_private_mx, and that flags win over it.
func TestRouteCommandConfig(t *testing.T) {
	d := testpeer.NewDNS(t, routeCmdZone)
	path := filepath.Join(t.TempDir(), "mta.yaml")
	writeFile(t, path, "hostname: mx2.plain.test\nlisteners:\n  relay: [\"127.0.0.9:2525\"]\ndns:\n  servers: [\""+d.Addr()+"\"]\n  timeout: 1s\n"+
		"delivery:\n  allow_private_mx: true\n  proxy_addresses: [\"192.0.2.25\"]\n")
	cases := []routeCase{
		{"servers_and_allow_private", []string{"lab.test", "--config", path}, exitOK, []string{"1. mx.lab.test pref 10 127.0.0.2"}, ""},
		{"hostname_is_self", []string{"plain.test", "--config", path}, exitOK, []string{"1. mx1.plain.test", "dropped:", "mx2.plain.test pref 20 self: our host name"}, ""},
		{"flag_wins", []string{"lab.test", "--config", path, "--allow-private=false"}, exitNoHost, []string{"prohibited: loopback"}, ""},
		{"proxy_address_is_self", []string{"selfaddr.test", "--config", path}, exitOK, []string{"1. mx.lab.test pref 10 127.0.0.2", "dropped:", "proxy.selfaddr.test pref 20 self: one of our addresses", "skipped 192.0.2.25: self"}, ""},
		{"listener_address_is_self", []string{"selfaddr.test", "--config", path}, exitOK, []string{"listener.selfaddr.test pref 30 self: one of our addresses", "skipped 127.0.0.9: self"}, ""},
	}
	runRouteCases(t, cases)
	if _, status, _ := routeCmd(t, "plain.test", "--config", filepath.Join(t.TempDir(), "missing.yaml")); status != exitConfig {
		t.Errorf("missing config: exit %d, want %d", status, exitConfig)
	}
}

// TestRouteCommandNextHop: with --config, a domain that routes: or the
// relayhost takes shows that next hop and its hosts' addresses, as delivery
// would dial them, without asking for the domain's MX records; the AUTH
// password file is not read; other domains still show their MX route.
func TestRouteCommandNextHop(t *testing.T) {
	d := testpeer.NewDNS(t, routeCmdZone)
	dir := t.TempDir()
	path := filepath.Join(dir, "mta.yaml")
	writeFile(t, path, "hostname: mta.route.test\ndns:\n  servers: [\""+d.Addr()+"\"]\n  timeout: 1s\n"+
		"routes:\n  own.test:\n    hosts: [\"mx.lab.test:2525\", \"gone.lab.test\"]\n    tls: none\n"+
		"  down.test:\n    hosts: [\"gone.lab.test:25\"]\n"+
		"  v6.test:\n    hosts: [\"[IPv6:2001:db8::1]:2525\"]\n"+
		"relayhost:\n  hosts: [\"[192.0.2.99]:465\"]\n  domains: [relayed.test]\n"+
		"  auth:\n    username: relayuser\n    password_file: "+filepath.Join(dir, "no-such-password")+"\n")
	cases := []routeCase{
		{"routes", []string{"own.test", "--config", path}, exitOK, []string{"configured next hop: routes in " + path,
			"tls none", "1. mx.lab.test port 2525 (no TLS) 127.0.0.2", "2. gone.lab.test port 25 (no TLS)", "NXDOMAIN"}, ""},
		{"relayhost", []string{"RELAYED.test.", "--config", path}, exitOK, []string{"configured next hop: relayhost",
			"tls verify, AUTH as relayuser after TLS", "1. 192.0.2.99 port 465 (implicit TLS) 192.0.2.99"}, ""},
		{"IPv6_literal", []string{"v6.test", "--config", path}, exitOK, []string{"1. 2001:db8::1 port 2525 (STARTTLS) 2001:db8::1"}, ""},
		{"no_host_has_an_address", []string{"down.test", "--config", path}, exitTempFail, []string{"1. gone.lab.test port 25 (STARTTLS)"}, ""},
		{"not_covered_goes_by_MX", []string{"plain.test", "--config", path}, exitOK, []string{"1. mx1.plain.test pref 10 192.0.2.1"}, ""},
	}
	runRouteCases(t, cases)
	for _, q := range d.Queries() {
		if q.Type == "MX" && q.Name != "plain.test." {
			t.Errorf("asked %s %s: a configured next hop needs no MX lookup", q.Type, q.Name)
		}
	}
	out, status, stderr := routeCmd(t, "own.test", "--config", path, "--json")
	if status != exitOK {
		t.Fatalf("--json: exit %d\n%s", status, stderr)
	}
	var got struct {
		Domain  string `json:"domain"`
		NextHop struct {
			Via   string `json:"via"`
			TLS   string `json:"tls"`
			Hosts []struct {
				Host  string   `json:"host"`
				Port  int      `json:"port"`
				Addrs []string `json:"addrs"`
				Err   string   `json:"error"`
			} `json:"hosts"`
		} `json:"next_hop"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	h := got.NextHop.Hosts
	if got.NextHop.Via != "routes" || got.NextHop.TLS != "none" || len(h) != 2 ||
		h[0].Host != "mx.lab.test" || h[0].Port != 2525 || len(h[0].Addrs) != 1 || h[0].Addrs[0] != "127.0.0.2" || h[1].Err == "" {
		t.Errorf("--json: %+v", got)
	}
}

// routeCase is `mta route args...` with the exit status it must give,
// what its stdout must contain, in order (compared with runs of spaces
// folded: columns are padded), and how its stderr line must start after
// "mta: " ("" for anything).
type routeCase struct {
	name    string
	args    []string
	status  int
	stdout  []string
	message string
}

func runRouteCases(t *testing.T, cases []routeCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, status, stderr := routeCmd(t, tc.args...)
			if status != tc.status {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr: %s", status, tc.status, out, stderr)
			}
			rest := strings.Join(strings.Fields(out), " ")
			for _, want := range tc.stdout {
				i := strings.Index(rest, want)
				if i < 0 {
					t.Fatalf("stdout lacks %q (in order):\n%s", want, out)
				}
				rest = rest[i+len(want):]
			}
			if tc.message != "" && !strings.HasPrefix(stderr, "mta: "+tc.message) {
				t.Errorf("stderr %q, want it to start with %q", stderr, "mta: "+tc.message)
			}
		})
	}
}

// A query asked again without EDNS0 says so in the trace, as text and JSON.
func TestRouteShowsNoEDNS(t *testing.T) {
	ex := resolver.Exchange{Name: "old.test.", Type: "MX", Server: "192.0.2.53:53", Proto: "udp", Rcode: "NOERROR", NoEDNS: true}
	var b strings.Builder
	writeExchange(&b, 2, 9, ex)
	if !strings.Contains(b.String(), "without EDNS0") {
		t.Errorf("trace line %q does not say the query went without EDNS0", b.String())
	}
	var out bytes.Buffer
	if err := printRouteJSON(&out, &resolver.Route{Domain: "old.test", Trace: []resolver.Exchange{ex}}, nil); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"no_edns": true`) {
		t.Errorf("JSON lacks no_edns:\n%s", out.String())
	}
}
