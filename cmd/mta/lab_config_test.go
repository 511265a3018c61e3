package main

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"mta/spool"
)

// The built-in lab is a copy of the user-facing files in configs/.
func TestLabFilesMatchConfigs(t *testing.T) {
	for _, name := range []string{"lab.zone", "lab.yaml"} {
		shipped, err := os.ReadFile(filepath.Join("../../configs", name))
		if err != nil {
			t.Fatal(err)
		}
		built, err := os.ReadFile(filepath.Join("labdata", name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(shipped, built) {
			t.Errorf("cmd/mta/labdata/%s differs from configs/%s: copy configs/%s over it", name, name, name)
		}
	}
}

func TestLabShippedConfig(t *testing.T) {
	lc, err := loadLabConfig("../../configs/lab.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if lc.DNS != "127.0.0.1:5300" || lc.POP3Password != "lab" || time.Duration(lc.SessionTimeout) != 10*time.Second {
		t.Errorf("lab settings: %+v", lc)
	}
	if h := lc.Hosts["mx.picky.test"]; h.Behaviour != "reject" || h.Reject["nobody@picky.test"] != 550 || h.Reject["later@picky.test"] != 450 {
		t.Errorf("picky host: %+v", h)
	}
	d := lc.Daemon
	if d.Hostname != labHostname || time.Duration(d.Delivery.RetryMin) != 10*time.Second || d.Metrics.Address != "" ||
		!slices.Equal(d.Listeners.Relay, []string{"127.0.0.1:2525"}) || len(d.Listeners.Submissions) != 0 {
		t.Errorf("daemon config: %+v", d)
	}
	built, err := loadLabConfig("")
	if err != nil || built.Hosts["mx1.hang.test"].Hang != "greeting" {
		t.Errorf("built-in config: %+v, %v", built, err)
	}
	// ports: left out, the standard ports as root, else high ones.
	smtp, pop3 := 2500, 1100
	if os.Geteuid() == 0 {
		smtp, pop3 = 25, 110
	}
	if lc.smtpPort() != smtp || lc.pop3Port() != pop3 {
		t.Errorf("default ports %d, %d; want %d, %d", lc.smtpPort(), lc.pop3Port(), smtp, pop3)
	}
	set, err := parseLabConfig([]byte("ports:\n  smtp: 0\n  pop3: 1110\n"), "lab.yaml", "")
	if err != nil || set.smtpPort() != 0 || set.pop3Port() != 1110 {
		t.Errorf("configured ports: %v, %v", set, err)
	}
}

func TestLabConfigErrors(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "mta.yaml"), "delivery:\n  retry_min: 1s\n  retry_max: 2s\n")
	tests := []struct {
		name string
		yaml string
		want []string // each must appear in the error
	}{
		{"unknown key", "dns: 127.0.0.1:5300\npop3_pasword: x\n", []string{`line 2: unknown key "pop3_pasword"`}},
		{"unknown key in a host", "hosts:\n  mx.a.test:\n    behavior: refuse\n", []string{`line 3: unknown key "behavior"`}},
		{"unknown key in the daemon section", "daemon:\n  delivery:\n    retry_mni: 1s\n", []string{`line 3: unknown key "retry_mni"`}},
		{"daemon problem with its line", "daemon:\n  log:\n    level: loud\n", []string{`line 3: daemon.log.level`}},
		{"bad behaviour", "hosts:\n  mx.a.test:\n    behaviour: explode\n", []string{`line 3: hosts.mx.a.test.behaviour: "explode" is not one of`}},
		{"reject without recipients", "hosts:\n  mx.a.test:\n    behaviour: reject\n", []string{"hosts.mx.a.test.reject: needs at least one"}},
		{"reject code", "hosts:\n  mx.a.test:\n    behaviour: reject\n    reject:\n      '*': 250\n", []string{"250 is not a 4xx or 5xx"}},
		{"slow without delay", "hosts:\n  mx.a.test:\n    behaviour: slow\n", []string{"hosts.mx.a.test.delay: a positive delay goes with behaviour: slow"}},
		{"hang phase", "hosts:\n  mx.a.test:\n    behaviour: hang\n    hang: never\n", []string{`hosts.mx.a.test.hang: "never" is not one of`}},
		{"dns off loopback", "dns: 192.0.2.1:53\n", []string{`dns: "192.0.2.1:53" is not a loopback address`}},
		{"port", "ports:\n  smtp: 70000\n", []string{"ports.smtp: 70000 is not a TCP port"}},
		{"public listener", "daemon:\n  listeners:\n    relay: [\"0.0.0.0:25\"]\n", []string{`daemon.listeners.relay[0]: "0.0.0.0:25": the lab listens on loopback only`}},
		{"both daemon configs", "daemon_config: mta.yaml\ndaemon:\n  hostname: a.test\n", []string{"daemon_config: give the daemon's config either here or under daemon:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseLabConfig([]byte(tt.yaml), "lab.yaml", dir)
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
	t.Run("daemon_config is read over the lab's defaults", func(t *testing.T) {
		lc, err := parseLabConfig([]byte("daemon_config: mta.yaml\n"), "lab.yaml", dir)
		if err != nil {
			t.Fatal(err)
		}
		if time.Duration(lc.Daemon.Delivery.RetryMax) != 2*time.Second || lc.Daemon.Hostname != labHostname {
			t.Errorf("daemon config: %+v", lc.Daemon)
		}
	})
}

func TestLabHosts(t *testing.T) {
	lc, err := loadLabConfig("../../configs/lab.yaml")
	if err != nil {
		t.Fatal(err)
	}
	z, err := newLabZoneView(labZone)
	if err != nil {
		t.Fatal(err)
	}
	hosts, notes, err := labHosts(z, lc.Hosts, []netip.Addr{netip.MustParseAddr("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, h := range hosts {
		got[h.Addr.String()] = strings.Join(h.Names, ",") + " " + h.Conf.Behaviour
	}
	want := map[string]string{
		"127.0.0.2": "inbox.lab.test accept", "127.0.0.11": "mx1.priority.test accept", "127.0.0.12": "mx2.priority.test accept",
		"127.0.0.21": "mx1.refused.test refuse", "127.0.0.22": "mx2.refused.test accept",
		"127.0.0.31": "mx1.greet421.test greet421", "127.0.0.32": "mx2.greet421.test accept",
		"127.0.0.41": "mx1.spread.test accept", "127.0.0.42": "mx2.spread.test accept",
		"127.0.0.51": "mx.target.test accept", "127.0.0.61": "implicit.test accept",
		"127.0.0.101": "mx.picky.test reject", "127.0.0.102": "mx.slow.test slow",
		"127.0.0.103": "mx1.hang.test hang", "127.0.0.104": "mx2.hang.test accept",
	}
	if len(got) != len(want) {
		t.Errorf("%d hosts, want %d: %v", len(got), len(want), got)
	}
	for a, w := range want {
		if got[a] != w {
			t.Errorf("host %s = %q, want %q", a, got[a], w)
		}
	}
	if len(notes) != 0 {
		t.Errorf("notes for the shipped zone: %v", notes)
	}

	t.Run("CNAME targets, the MTA's address and conflicts", func(t *testing.T) {
		zone := `
a.test. 60 IN MX 10 mx.a.test.
a.test. 60 IN MX 20 alias.a.test.
a.test. 60 IN MX 30 self.a.test.
a.test. 60 IN MX 40 far.a.test.
mx.a.test. 60 IN A 127.0.0.5
alias.a.test. 60 IN CNAME mx.a.test.
self.a.test. 60 IN A 127.0.0.1
far.a.test. 60 IN A 192.0.2.1
`
		z, err := newLabZoneView(zone)
		if err != nil {
			t.Fatal(err)
		}
		hosts, notes, err := labHosts(z, nil, []netip.Addr{netip.MustParseAddr("127.0.0.1")})
		if err != nil {
			t.Fatal(err)
		}
		if len(hosts) != 1 || hosts[0].Addr.String() != "127.0.0.5" || !slices.Equal(hosts[0].Names, []string{"alias.a.test", "mx.a.test"}) {
			t.Errorf("hosts %+v, want one at 127.0.0.5 with both names", hosts)
		}
		if len(notes) != 2 || !strings.Contains(notes[0], "MTA's own address") || !strings.Contains(notes[1], "not a 127.0.0.x") {
			t.Errorf("notes %q", notes)
		}
		_, _, err = labHosts(z, map[string]labHostConfig{"mx.a.test": {Behaviour: "refuse"}, "alias.a.test": {Behaviour: "accept"}}, nil)
		if err == nil || !strings.Contains(err.Error(), "are one host") {
			t.Errorf("two behaviours for one host: %v", err)
		}
		_, _, err = labHosts(z, map[string]labHostConfig{"missing.a.test": {}}, nil)
		if err == nil || !strings.Contains(err.Error(), "gives it no address") {
			t.Errorf("a host the zone lacks: %v", err)
		}
	})
}

func TestLabStatusWithoutALab(t *testing.T) {
	var out, errb bytes.Buffer
	err := run(t.Context(), []string{"mta", "lab", "status", "--dir", t.TempDir()}, Stdio{Out: &out, Err: &errb})
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != exitTempFail || !strings.Contains(ee.msg, "no lab is running in") {
		t.Errorf("lab status without a lab: %v", err)
	}
	// A lab killed without Ctrl-C leaves its lab.json; nothing answers.
	dir := t.TempDir()
	if err := writeLabInfo(filepath.Join(dir, labInfoFile), &labInfo{PID: 4242, Admin: filepath.Join(dir, adminSocket)}); err != nil {
		t.Fatal(err)
	}
	err = run(t.Context(), []string{"mta", "lab", "status", "--dir", dir}, Stdio{Out: &out, Err: &errb})
	if !errors.As(err, &ee) || ee.code != exitTempFail || ee.msg != "the lab in "+dir+" (pid 4242) does not answer: it was stopped without Ctrl-C (start it again)" {
		t.Errorf("lab status of a killed lab: %v", err)
	}
	out.Reset()
	if err := run(t.Context(), []string{"mta", "lab", "--help"}, Stdio{Out: &out, Err: &errb}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"usage: mta lab [--zone FILE]", "mta lab status [--dir DIR]", "-zone"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("mta lab --help lacks %q:\n%s", want, out.String())
		}
	}
}

// mta queue show prints an attempt's route under it when it went past
// more than one host.
func TestQueueShowPrintsTheRoute(t *testing.T) {
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	m := &spool.Message{ID: "x", Envelope: spool.Envelope{Sender: "a@lab.test", Arrival: at, Origin: spool.Origin{Listener: "relay", UID: -1},
		Recipients: []spool.Recipient{{Addr: "b@refused.test", State: spool.Delivered, AttemptCount: 1, Attempts: []spool.Attempt{{
			Time: at, Host: "mx2.refused.test", IP: "127.0.0.22", Phase: "data", Code: 250, Enhanced: "2.0.0", Text: "ok",
			Route: []spool.RouteStep{
				{Host: "mx0.refused.test", Phase: "skip", Text: "host does not exist (NXDOMAIN)"},
				{Host: "mx1.refused.test", IP: "127.0.0.21", Phase: "dial", Enhanced: "4.4.1", Text: "connect: connection refused"},
				{Host: "mx2.refused.test", IP: "127.0.0.22", Phase: "data", Code: 250, Enhanced: "2.0.0", Text: "ok"},
			}}}}}}}
	var b bytes.Buffer
	printMessage(&b, m, at)
	for _, want := range []string{
		"      1. mx0.refused.test  skipped: host does not exist (NXDOMAIN)\n",
		"      2. mx1.refused.test [127.0.0.21]  dial: connect: connection refused (4.4.1)\n",
		"      3. mx2.refused.test [127.0.0.22]  data: 250 2.0.0 ok\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("queue show lacks %q:\n%s", want, b.String())
		}
	}
}

// Lab hosts name their clients as a receiving MTA would: by the zone's PTR
// record, when the name it gives leads back to the address.
func TestLabReverseName(t *testing.T) {
	z, err := newLabZoneView(labZone + `
$ORIGIN 127.in-addr.arpa.
250.0.0  IN PTR  liar.test.
`)
	if err != nil {
		t.Fatal(err)
	}
	for ip, want := range map[string]string{
		"127.0.0.1":          "mta.lab.test",
		"127.0.0.22":         "mx2.refused.test",
		"::ffff:127.0.0.22":  "mx2.refused.test", // as a dual-stack socket reports it
		"127.0.0.250":        "",                 // the PTR name has no address
		"127.0.0.99":         "",                 // no PTR record
		"not an address":     "",
		"2001:db8::1":        "",
		"127.0.0.61":         "implicit.test",
		"127.0.0.101":        "mx.picky.test",
		"127.0.0.1%loopback": "",
	} {
		if got := z.reverseName(ip); got != want {
			t.Errorf("reverseName(%q) = %q, want %q", ip, got, want)
		}
	}
}

// mta lab status prints each attempt's route: hosts skipped and why, hosts
// that failed with their reply or dial error, and the host that took it,
// with the time each attempt started.
func TestLabStatusText(t *testing.T) {
	ended := time.Date(2030, 1, 2, 3, 4, 5, 0, time.Local)
	m := &spool.Message{ID: "m1", Retired: true, Envelope: spool.Envelope{Sender: "student@lab.test", Arrival: ended.Add(-time.Minute),
		Recipients: []spool.Recipient{
			{Addr: "a@refused.test", State: spool.Delivered, Attempts: []spool.Attempt{{
				Time: ended, Duration: 1500 * time.Millisecond, Host: "mx2.refused.test", IP: "127.0.0.22", Phase: "data", Code: 250, Enhanced: "2.0.0", Text: "OK: queued",
				Route: []spool.RouteStep{
					{Host: "mx0.refused.test", Phase: "skip", Text: "host does not exist (NXDOMAIN)"},
					{Host: "mx1.refused.test", IP: "127.0.0.21", Phase: "dial", Enhanced: "4.4.1", Text: "connect: connection refused"},
					{Host: "mx2.refused.test", IP: "127.0.0.22", Phase: "data", Code: 250, Enhanced: "2.0.0", Text: "OK: queued"},
				}}}},
			{Addr: "b@nullmx.test", State: spool.Failed, Attempts: []spool.Attempt{{
				Time: ended, Host: "nullmx.test", Phase: "dns", Enhanced: "5.1.10", Text: "domain accepts no mail (null MX, RFC 7505)",
				Route: []spool.RouteStep{{Host: "nullmx.test", Phase: "dns", Enhanced: "5.1.10", Text: "domain accepts no mail (null MX, RFC 7505)"}}}}},
		}}}
	st := labStatus{Lab: &labInfo{DNS: "127.0.0.1:5300", Relay: []string{"127.0.0.1:2525"}}, Messages: []labMessage{newLabMessage(m)}}
	var b bytes.Buffer
	st.print(&b, ended)
	want := `lab: DNS 127.0.0.1:5300, MTA relay 127.0.0.1:2525

message m1 from student@lab.test, arrived 03:03:05, finished
  to <a@refused.test>: delivered, taken by mx2.refused.test [127.0.0.22]
    attempt 1 at 03:04:03.500, took 1500ms:
      1. mx0.refused.test  skipped: host does not exist (NXDOMAIN)
      2. mx1.refused.test [127.0.0.21]  dial: connect: connection refused (4.4.1)
      3. mx2.refused.test [127.0.0.22]  data: 250 2.0.0 OK: queued  <- took it
  to <b@nullmx.test>: failed, domain accepts no mail (null MX, RFC 7505) (5.1.10)
    attempt 1 at 03:04:05.000, took 0ms:
      1. nullmx.test  dns: domain accepts no mail (null MX, RFC 7505) (5.1.10)
`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}

// A zone or lab.yaml that does not fit is the user's to fix: exit 78
// (EX_CONFIG) with the file and what is wrong, before anything starts.
func TestLabStartErrors(t *testing.T) {
	dir := t.TempDir()
	badZone := filepath.Join(dir, "bad.zone")
	writeFile(t, badZone, "$ORIGIN test.\nfoo IN MX ten bar\n")
	missing := filepath.Join(dir, "missing.yaml")
	writeFile(t, missing, "hosts:\n  mx.missing.test:\n    behaviour: refuse\n")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"zone syntax", []string{"--zone", badZone}, badZone + `: zone: dns: bad MX Pref: "ten" at line: 2:14`},
		{"zone file missing", []string{"--zone", filepath.Join(dir, "none.zone")}, "no such file"},
		{"host not in the zone", []string{"--config", missing}, "lab config: hosts.mx.missing.test: the zone gives it no address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			err := run(t.Context(), append([]string{"mta", "lab", "--dir", t.TempDir()}, tc.args...), Stdio{Out: &out, Err: &errb})
			var ee *exitError
			if !errors.As(err, &ee) || ee.code != exitConfig || !strings.Contains(ee.msg, tc.want) {
				t.Errorf("got %v, want exit %d with %q", err, exitConfig, tc.want)
			}
			if out.Len() != 0 {
				t.Errorf("printed %q: nothing should have started", out.String())
			}
		})
	}
}
