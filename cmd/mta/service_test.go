package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"mta/smtpd"
)

// notifySocket is a NOTIFY_SOCKET the way systemd offers it: a unixgram
// socket that collects the daemon's sd_notify datagrams.
type notifySocket struct {
	path string
	msgs chan string
}

func newNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	// Unix socket paths are short (108 bytes); t.TempDir can be long.
	dir, err := os.MkdirTemp("", "mta-notify")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	n := &notifySocket{path: filepath.Join(dir, "notify"), msgs: make(chan string, 100)}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				close(n.msgs)
				return
			}
			n.msgs <- string(buf[:k])
		}
	}()
	return n
}

// expect waits for a datagram holding every line of want.
func (n *notifySocket) expect(t *testing.T, want ...string) string {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case m, ok := <-n.msgs:
			if !ok {
				t.Fatalf("notify socket closed waiting for %q", want)
			}
			all := true
			for _, w := range want {
				all = all && strings.Contains("\n"+m+"\n", "\n"+w+"\n") || all && strings.HasPrefix(w, "STATUS=") && strings.Contains(m, w)
			}
			if all {
				return m
			}
		case <-timeout:
			t.Fatalf("no sd_notify datagram with %q", want)
		}
	}
}

// authenticate logs in on the submission listener (STARTTLS, AUTH PLAIN).
func authenticate(addr, user, pass string) error {
	c, err := smtp.DialStartTLS(addr, &tls.Config{InsecureSkipVerify: true}) // the daemon's self-signed certificate
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Auth(sasl.NewPlainClient("", user, pass))
}

func userLine(t *testing.T, login, pass, owns string) string {
	t.Helper()
	hash, err := smtpd.HashPassword([]byte(pass), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%s:%s:%s\n", login, hash, owns)
}

// TestServiceLifecycle runs the daemon as systemd would: it reports READY
// on NOTIFY_SOCKET, SIGHUP reloads the users file (RELOADING, then READY
// again), a broken config is refused on reload while the daemon keeps
// serving, and SIGTERM reports STOPPING and exits 0.
func TestServiceLifecycle(t *testing.T) {
	notify := newNotifySocket(t)
	users := filepath.Join(t.TempDir(), "users")
	writeFile(t, users, userLine(t, "alice", "old password", "@src.bench.test"))
	r := newRig(t, rigOptions{Messages: 1, Daemon: daemonOptions{Submission: true,
		Extra: fmt.Sprintf("users_file: %q\n", users), Env: []string{"NOTIFY_SOCKET=" + notify.path}}})
	r.start()
	if m := notify.expect(t, "READY=1"); !strings.Contains(m, "STATUS=0 message(s) queued") {
		t.Errorf("READY datagram without the queue status: %q", m)
	}
	var se *smtp.SMTPError
	if err := authenticate(r.d.Submission, "bob", "new password"); !errors.As(err, &se) || se.Code != 535 {
		t.Fatalf("bob before reload: %v, want 535", err)
	}

	writeFile(t, users, userLine(t, "alice", "old password", "@src.bench.test")+userLine(t, "bob", "new password", "@src.bench.test"))
	if err := r.d.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	notify.expect(t, "RELOADING=1")
	notify.expect(t, "READY=1")
	if err := authenticate(r.d.Submission, "bob", "new password"); err != nil {
		t.Fatalf("bob after reload: %v", err)
	}
	if !strings.Contains(r.d.LogTail(20000), "applied=users,tls,limits,aliases,routes") {
		t.Errorf("reload not logged:\n%s", r.d.LogTail(3000))
	}

	good, err := os.ReadFile(r.d.Config)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, r.d.Config, string(good)+"bogus_key: 1\n")
	if err := r.d.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	notify.expect(t, "READY=1")
	if log := r.d.LogTail(20000); !strings.Contains(log, "reload refused") || !strings.Contains(log, `unknown key \"bogus_key\"`) {
		t.Errorf("broken config not refused with its reason:\n%s", r.d.LogTail(3000))
	}
	if err := authenticate(r.d.Submission, "bob", "new password"); err != nil {
		t.Fatalf("daemon stopped serving after a refused reload: %v", err)
	}

	if err := r.d.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	notify.expect(t, "STOPPING=1")
	select {
	case <-r.d.exited:
		if r.d.err != nil {
			t.Errorf("exit after SIGTERM: %v", r.d.err)
		}
	case <-time.After(40 * time.Second):
		t.Fatal("no exit within 40s of SIGTERM")
	}
	r.d.cmd = nil
}

// TestServeRefusesBadConfig: `mta serve` with a config that has problems
// names each with its line and exits EX_CONFIG without starting.
func TestServeRefusesBadConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.yaml")
	writeFile(t, path, "hostname: mta.example.test\nlisteners:\n  relay: [\"127.0.0.1:0\"]\n  smtp: [\"127.0.0.1:25\"]\ndelivery:\n  lifetime: forever\n")
	var out, errb strings.Builder
	err := run(t.Context(), []string{"mta", "serve", "--config", path}, Stdio{In: strings.NewReader(""), Out: &out, Err: &errb})
	if code := exitCode(err, &errb); code != exitConfig {
		t.Fatalf("exit %d, want %d (EX_CONFIG); stderr:\n%s", code, exitConfig, errb.String())
	}
	for _, want := range []string{`line 4: unknown key "smtp" in listeners`, `line 6: delivery.lifetime: "forever" is not a duration`} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errb.String())
		}
	}
}
