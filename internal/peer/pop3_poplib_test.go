package peer

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"reflect"
	"testing"
)

// poplibScript drives the server with Python's poplib, an independent
// client: login, STAT, LIST, UIDL, TOP, RETR (poplib undoes the
// byte-stuffing), NOOP, DELE + RSET, DELE + QUIT, a new session that must
// not see the deleted message, and a wrong password.
const poplibScript = `
import json, poplib, sys
host, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
d = lambda lines: [l.decode() for l in lines]
out = {}
p = poplib.POP3(host, port, timeout=30)
out["welcome"] = p.getwelcome().decode()
out["capa"] = sorted(p.capa().keys())
p.user(user)
out["pass"] = p.pass_(pw).decode()
out["stat"] = list(p.stat())
out["list"] = d(p.list()[1])
out["list2"] = p.list(2).decode()
out["uidl"] = d(p.uidl()[1])
out["top"] = d(p.top(1, 1)[1])
out["retr"] = d(p.retr(1)[1])
out["noop"] = p.noop().decode()
p.dele(1)
out["stat_after_dele"] = list(p.stat())
p.rset()
out["stat_after_rset"] = list(p.stat())
p.dele(2)
out["quit"] = p.quit().decode()
p = poplib.POP3(host, port, timeout=30)
p.user(user)
p.pass_(pw)
out["stat_next_session"] = list(p.stat())
out["uidl_next_session"] = d(p.uidl()[1])
p.quit()
p = poplib.POP3(host, port, timeout=30)
p.user(user)
try:
    p.pass_("wrong")
    out["bad_pass"] = "accepted"
except poplib.error_proto as e:
    out["bad_pass"] = e.args[0].decode()
p.quit()
print(json.dumps(out))
`

func TestPOP3WithPythonPoplib(t *testing.T) {
	const python = "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		t.Skipf("%s absent (.ci/install-peers installs it): %v", python, err)
	}
	p := startPOP3(t, 0)
	host, port, err := net.SplitHostPort(p.addr)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), python, "-c", poplibScript, host, port, pop3User, pop3Pass)
	cmd.Stderr = t.Output()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("poplib: %v", err)
	}
	var got map[string]any
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("decode %s: %v", out, err)
	}
	want := map[string]any{
		"welcome":           "+OK mx1.lab.test POP3 server ready",
		"capa":              []any{"IMPLEMENTATION", "PIPELINING", "RESP-CODES", "TOP", "UIDL", "USER"},
		"pass":              "+OK mx1.lab.test has 3 messages (133 octets)",
		"stat":              []any{3.0, 133.0},
		"list":              []any{"1 77", "2 26", "3 30"},
		"list2":             "+OK 2 26",
		"uidl":              []any{"1 " + p.uids[0], "2 " + p.uids[1], "3 " + p.uids[2]},
		"top":               []any{"Subject: one", "From: a@example.test", "", "first line"},
		"retr":              []any{"Subject: one", "From: a@example.test", "", "first line", ".hidden dot line", ".", "last"},
		"noop":              "+OK",
		"stat_after_dele":   []any{2.0, 56.0},
		"stat_after_rset":   []any{3.0, 133.0},
		"quit":              "+OK bye, 1 messages deleted",
		"stat_next_session": []any{2.0, 107.0},
		"uidl_next_session": []any{"1 " + p.uids[0], "2 " + p.uids[2]},
		"bad_pass":          "-ERR [AUTH] invalid user name or password",
	}
	for k, w := range want {
		if !reflect.DeepEqual(got[k], w) {
			t.Errorf("%s = %#v, want %#v", k, got[k], w)
		}
	}
	p.expectLeft(t, 0, 2)
}
