package delivery_test

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"mta/delivery"
	"mta/internal/testpeer"
	"mta/spool"
)

// TestDeliverToPostfixSmtpSink delivers to an independent server, Postfix's
// smtp-sink, which offers PIPELINING, and reads what it dumped: one message
// on a new connection, then two more on the same one, reused.
func TestDeliverToPostfixSmtpSink(t *testing.T) {
	const sink = "/usr/sbin/smtp-sink"
	if _, err := os.Stat(sink); err != nil {
		t.Skipf("%s not installed (Debian package postfix): skipping the interop test", sink)
	}
	const ip = "127.0.0.9"
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir := t.TempDir()
	args := []string{"-d", filepath.Join(dir, "%M."), ip + ":" + strconv.Itoa(port), "10"}
	if os.Geteuid() == 0 {
		args = append([]string{"-u", "root"}, args...)
	}
	cmd := exec.CommandContext(t.Context(), sink, args...)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start smtp-sink: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	testpeer.WaitFor(t, "smtp-sink to listen", func() bool {
		c, err := net.Dial("tcp", ip+":"+strconv.Itoa(port))
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	zone := "sink.test. 300 IN MX 10 mx.sink.test.\nmx.sink.test. 300 IN A " + ip + "\n"
	w := newWorld(t, setup{zone: zone, cfg: func(c *delivery.Config) { c.Port, c.IdleTimeout = port, time.Minute }})
	id := w.send("s@sender.test", []string{"a@sink.test", "b@sink.test"}, body7)
	w.waitStates(id, spool.Delivered, spool.Delivered)
	for _, to := range []string{"c@sink.test", "d@sink.test"} {
		w.waitStates(w.send("s@sender.test", []string{to}, body7), spool.Delivered)
	}
	if n := w.sched.OpenConnections(); n != 1 {
		t.Errorf("%d connections open, want the one reused", n)
	}

	dumps := map[string]string{} // by recipient
	testpeer.WaitFor(t, "smtp-sink to dump the messages", func() bool {
		files, _ := filepath.Glob(filepath.Join(dir, "*"))
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil || !strings.Contains(string(b), "Hello there.") {
				return false
			}
			for _, to := range []string{"a", "c", "d"} {
				if strings.Contains(string(b), "X-Rcpt-Args: <"+to+"@sink.test>") {
					dumps[to] = string(b)
				}
			}
		}
		return len(files) == 3 && len(dumps) == 3
	})
	for _, want := range []string{"X-Helo-Args: " + ourHost, "X-Mail-Args: <s@sender.test>",
		"X-Rcpt-Args: <a@sink.test>", "X-Rcpt-Args: <b@sink.test>", "Subject: hello", "Message-ID: <1@sender.test>"} {
		if !strings.Contains(dumps["a"], want) {
			t.Errorf("smtp-sink dump lacks %q:\n%s", want, dumps["a"])
		}
	}
}
