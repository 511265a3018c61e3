package main

import (
	"os"
	"strings"
	"syscall"
	"testing"
)

// sizedMessage is a message of about n octets (never more).
func sizedMessage(n int) (msg, body string) {
	head := "Subject: sized\r\n\r\n"
	line := strings.Repeat("x", 98) + "\r\n"
	body = strings.Repeat(line, (n-len(head))/len(line))
	return head + body, body
}

// TestMessageUpToTheSizeLimit: a message as large as limits.max_message_bytes
// (the SIZE the relay listener advertises) is taken, though the header
// fix-ups make the stored copy larger than that.
func TestMessageUpToTheSizeLimit(t *testing.T) {
	s, hosts := serveWorld(t, "limits: {max_message_bytes: 8192}\n")
	msg, body := sizedMessage(8192)
	if len(msg) < 8192-100 {
		t.Fatalf("test message is only %d octets", len(msg))
	}
	sendSMTP(t, s.relay, "a@sender.test", []string{"b@example.test"}, msg)
	got := waitMessages(t, hosts["127.0.0.2"], 1)
	if !strings.HasSuffix(string(got[0].Data), body) {
		t.Errorf("delivered message lacks the body")
	}
}

// TestReloadRaisesSizeLimit: a limits.max_message_bytes raised by SIGHUP
// applies to the whole intake, spool included.
func TestReloadRaisesSizeLimit(t *testing.T) {
	s, hosts := serveWorld(t, "limits: {max_message_bytes: 4096}\n")
	cfg, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, s.config, strings.Replace(string(cfg), "max_message_bytes: 4096", "max_message_bytes: 16384", 1))
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	s.log.wait(t, `msg=reloaded`, "limits")
	msg, body := sizedMessage(12000)
	sendSMTP(t, s.relay, "a@sender.test", []string{"b@example.test"}, msg)
	got := waitMessages(t, hosts["127.0.0.2"], 1)
	if !strings.HasSuffix(string(got[0].Data), body) {
		t.Errorf("delivered message lacks the body")
	}
}
