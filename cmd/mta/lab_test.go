package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"mta/internal/testpeer"
)

// labTestConfig is the shipped lab.yaml made fit for tests: every port
// free, short timeouts and retries, a quiet log. Each edit must apply, so
// a change to the shipped file shows here.
func labTestConfig(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("../../configs/lab.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	for _, r := range [][2]string{
		{"dns: 127.0.0.1:5300", "dns: 127.0.0.1:0"},
		{"# ports:\n#   smtp: 2500\n#   pop3: 1100", "ports:\n  smtp: 0\n  pop3: 0"},
		{"session_timeout: 10s", "session_timeout: 1s"},
		{"delay: 1s", "delay: 20ms"},
		{"daemon:\n  delivery:\n    retry_min: 10s\n    retry_max: 1m",
			"daemon:\n  listeners:\n    relay: [\"127.0.0.1:0\"]\n    submission: [\"127.0.0.1:0\"]\n    submissions: [\"127.0.0.1:0\"]\n  log:\n    level: warn\n" +
				"  delivery:\n    retry_min: 200ms\n    retry_max: 1s"},
	} {
		if !strings.Contains(s, r[0]) {
			t.Fatalf("the shipped lab.yaml no longer has %q", r[0])
		}
		s = strings.Replace(s, r[0], r[1], 1)
	}
	path := filepath.Join(t.TempDir(), "lab.yaml")
	writeFile(t, path, s)
	return path
}

// startTestLab runs `mta lab` in-process until the test ends, with the
// built-in zone and the test config, or with the args given (--zone,
// --config), and returns the lab's description and its --dir.
func startTestLab(t *testing.T, args ...string) (*labInfo, string) {
	t.Helper()
	dir := t.TempDir()
	if len(args) == 0 {
		args = []string{"--config", labTestConfig(t)}
	}
	args = append([]string{"mta", "lab", "--dir", dir}, args...)
	ctx, cancel := context.WithCancel(context.Background())
	var out, logs testpeer.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, args, Stdio{In: strings.NewReader(""), Out: &out, Err: &logs})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("mta lab: %v", err)
			}
		case <-time.After(time.Minute):
			t.Errorf("mta lab did not stop")
		}
		if _, err := os.Stat(filepath.Join(dir, labInfoFile)); err == nil {
			t.Errorf("lab.json left behind")
		}
		if t.Failed() {
			t.Logf("lab output:\n%s\nlab log:\n%s", out.String(), logs.String())
		}
	})
	var info *labInfo
	waitUntil(t, "the lab to start", func() bool {
		select {
		case err := <-done:
			t.Fatalf("mta lab ended: %v\n%s", err, logs.String())
		default:
		}
		var err error
		info, err = readLabInfo(filepath.Join(dir, labInfoFile))
		return err == nil
	})
	if !strings.Contains(out.String(), "Lab hosts") {
		t.Errorf("the lab printed:\n%s", out.String())
	}
	return info, dir
}

// waitUntil polls cond until it holds, failing the test after a minute.
// It waits on what the lab records; it never paces the test.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// labSend sends a message over SMTP (as a go-smtp client) and returns the
// MTA's queue ID and the message's unique Message-ID.
func labSend(t *testing.T, addr string, auth sasl.Client, rcpts ...string) (id, msgID string) {
	t.Helper()
	return labSendTLS(t, addr, auth, false, rcpts...)
}

// labSendTLS is labSend with AUTH after STARTTLS or, with implicit, over
// TLS from the first byte (the submissions listener).
func labSendTLS(t *testing.T, addr string, auth sasl.Client, implicit bool, rcpts ...string) (id, msgID string) {
	t.Helper()
	var c *smtp.Client
	var err error
	tc := &tls.Config{InsecureSkipVerify: true} // the lab's self-signed certificate
	switch {
	case implicit:
		c, err = smtp.DialTLS(addr, tc)
	case auth != nil:
		c, err = smtp.DialStartTLS(addr, tc)
	default:
		c, err = smtp.Dial(addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.lab.test"); err != nil {
		t.Fatal(err)
	}
	if auth != nil {
		if err := c.Auth(auth); err != nil {
			t.Fatalf("AUTH: %v", err)
		}
	}
	if err := c.Mail("student@lab.test", nil); err != nil {
		t.Fatal(err)
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			t.Fatalf("RCPT %s: %v", r, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	msgID = rand.Text() + "@client.lab.test"
	fmt.Fprintf(w, "From: student@lab.test\r\nTo: %s\r\nSubject: lab test\r\nMessage-ID: <%s>\r\n\r\nHello, lab.\r\n", strings.Join(rcpts, ", "), msgID)
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Errorf("QUIT: %v", err)
	}
	f := strings.Fields(resp.StatusText)
	return f[len(f)-1], msgID // "Ok: queued as ID"
}

// labStatusOf runs `mta lab status --json` in-process, for every message
// the tests send.
func labStatusOf(t *testing.T, dir string) labStatus {
	t.Helper()
	var out, errb bytes.Buffer
	if err := run(t.Context(), []string{"mta", "lab", "status", "--json", "--limit", "1000", "--dir", dir}, Stdio{Out: &out, Err: &errb}); err != nil {
		t.Fatalf("lab status: %v\n%s", err, errb.String())
	}
	var st labStatus
	if err := json.Unmarshal(out.Bytes(), &st); err != nil {
		t.Fatalf("lab status --json: %v\n%s", err, out.String())
	}
	return st
}

// waitLabMessage waits until `mta lab status` shows message id with every
// recipient past its first attempt and, when final, finished.
func waitLabMessage(t *testing.T, dir, id string, final bool) labMessage {
	t.Helper()
	var got labMessage
	waitUntil(t, "message "+id+" in mta lab status", func() bool {
		for _, m := range labStatusOf(t, dir).Messages {
			if m.ID != id {
				continue
			}
			got = m
			if final {
				return m.Finished
			}
			for _, r := range m.Recipients {
				if len(r.Attempts) == 0 {
					return false
				}
			}
			return true
		}
		return false
	})
	return got
}

// routeOf is an attempt's route as "host phase code enhanced" lines.
func routeOf(a labAttempt) []string {
	var out []string
	for _, s := range a.Route {
		out = append(out, fmt.Sprintf("%s %s %d %s", s.Host, s.Phase, s.Code, s.Enhanced))
	}
	return out
}

// labHostAddr is a lab host's SMTP or POP3 address by name.
func labHostAddr(t *testing.T, info *labInfo, name string, pop3 bool) string {
	t.Helper()
	for _, h := range info.Hosts {
		if slices.Contains(h.Names, name) {
			if pop3 {
				return h.POP3
			}
			return h.SMTP
		}
	}
	t.Fatalf("no lab host %s", name)
	return ""
}

// pop3Retrieve logs in to a lab host's POP3 server as user and returns
// every message there. A mailbox another session holds is an error.
func pop3Retrieve(addr, user, pass string) ([]string, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c := textproto.NewConn(conn)
	defer c.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	ok := func() (string, error) {
		line, err := c.ReadLine()
		if err == nil && !strings.HasPrefix(line, "+OK") {
			err = fmt.Errorf("pop3: %s", line)
		}
		return line, err
	}
	if _, err := ok(); err != nil {
		return nil, err
	}
	for _, cmd := range []string{"USER " + user, "PASS " + pass, "LIST"} {
		if err := c.PrintfLine("%s", cmd); err != nil {
			return nil, err
		}
		if _, err := ok(); err != nil {
			return nil, err
		}
	}
	list, err := c.ReadDotLines()
	if err != nil {
		return nil, err
	}
	var msgs []string
	for _, l := range list {
		n, _, _ := strings.Cut(l, " ")
		if err := c.PrintfLine("RETR %s", n); err != nil {
			return nil, err
		}
		if _, err := ok(); err != nil {
			return nil, err
		}
		b, err := c.ReadDotBytes()
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, string(b))
	}
	_ = c.PrintfLine("QUIT") // read-only session: nothing to apply
	return msgs, nil
}

// waitMailbox waits until the lab host's mailbox (read over POP3) holds a
// message containing each of want, and returns it.
func waitMailbox(t *testing.T, info *labInfo, host string, want ...string) string {
	t.Helper()
	addr := labHostAddr(t, info, host, true)
	var found string
	waitUntil(t, fmt.Sprintf("%q at %s over POP3", want, host), func() bool {
		msgs, err := pop3Retrieve(addr, host, info.Password)
		if err != nil {
			return false // another session holds the mailbox: look again
		}
		for _, m := range msgs {
			if containsAll(m, want) {
				found = m
				return true
			}
		}
		return false
	})
	return found
}

func containsAll(s string, want []string) bool {
	for _, w := range want {
		if !strings.Contains(s, w) {
			return false
		}
	}
	return true
}
