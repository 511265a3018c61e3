package smtpd

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"mta/spool"
)

// FuzzFixHeader runs the header fix-ups over arbitrary message bytes (as
// go-smtp's data reader hands them over) and checks what would be stored:
// canonical lines, our Received field first and intact, no Bcc,
// Resent-Bcc or Return-Path, a Message-ID and a Date.
func FuzzFixHeader(f *testing.F) {
	f.Add([]byte("From: a@example.test\r\nBcc: x@example.test\r\n\r\nbody\r\n"))
	f.Add([]byte(" continued\r\nSubject: x\r\n\r\n"))
	f.Add([]byte("Subject: x\nBCC : y\n  folded\nnot a header\n"))
	f.Add([]byte("Return-Path: <>\r\nMessage-ID: <a@b>\r\nDate: x\r\n"))
	f.Add([]byte(""))
	st := stamp{
		received:  "Received: from client.test (unknown [192.0.2.1])\r\n\tby mx.test (mta) with ESMTP id X;\r\n\tMon, 02 Jan 2006 15:04:05 +0000\r\n",
		messageID: "<X@mx.test>",
		date:      "Mon, 02 Jan 2006 15:04:05 +0000",
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		lr := newLineReader(bytes.NewReader(data), true, 1<<20)
		h, err := readHeader(lr)
		if err != nil {
			return
		}
		for _, v := range h.values("from") {
			_, _ = parseFromHeader(v) // must not panic; errors are the client's
		}
		var out bytes.Buffer
		out.Write(fixHeader(h, st))
		if err := copyLines(&out, lr); err != nil {
			return
		}
		stored := out.String()
		if p := canonical(stored); p != "" {
			t.Fatalf("%s\ninput %q\nstored %q", p, data, stored)
		}
		again, err := readHeader(newLineReader(strings.NewReader(stored), false, 1<<30))
		if err != nil {
			t.Fatalf("stored header does not read back: %v\n%q", err, stored)
		}
		if len(again.fields) == 0 || string(again.fields[0].raw) != st.received {
			t.Fatalf("our Received field was changed:\n%q", stored)
		}
		for _, name := range []string{"bcc", "resent-bcc", "return-path"} {
			if again.count(name) != 0 {
				t.Fatalf("%s kept:\n%q", name, stored)
			}
		}
		if again.count("message-id") == 0 || again.count("date") == 0 {
			t.Fatalf("no Message-ID or Date:\n%q", stored)
		}
	})
}

// FuzzParseMailbox: an address that parses prints as one that parses to
// itself.
func FuzzParseMailbox(f *testing.F) {
	for _, s := range []string{"a@example.test", `a b@example.test`, `"q"@example.test`, "\u00fc@b\u00fccher.example", "x@[192.0.2.1]", `a\"b@x.test`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := parseMailbox(s)
		if err != nil {
			return
		}
		b, err := parseMailbox(a.String())
		if err != nil {
			t.Fatalf("%q parsed as %q, which does not parse: %v", s, a.String(), err)
		}
		if b.String() != a.String() {
			t.Fatalf("%q -> %q -> %q", s, a.String(), b.String())
		}
	})
}

// FuzzSession feeds raw client bytes to a relay session over loopback and
// checks that no hook panics and every stored message is canonical.
func FuzzSession(f *testing.F) {
	f.Add([]byte("MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\nSubject: x\r\n\r\nbody\n.\nMAIL FROM:<evil@x.test>\r\n.\r\n"))
	f.Add([]byte("MAIL FROM:<a@example.test> SIZE=10 BODY=8BITMIME\r\nRCPT TO:<b@example.test> NOTIFY=SUCCESS ORCPT=rfc822;x+40y\r\nBDAT 5 LAST\r\nRSET\r\n"))
	f.Add([]byte("STARTTLS\r\nMAIL FROM:<>\r\n"))
	f.Add([]byte("AUTH PLAIN AGFiYwB4\r\nVRFY root\r\nRCPT TO:<postmaster@local.test>\r\n"))
	ts := startServer(f, func(c *Config) {
		c.Timeouts = Timeouts{Command: 2 * time.Second, DataIdle: 2 * time.Second}
	})
	var mu sync.Mutex
	after := ""
	f.Fuzz(func(t *testing.T, data []byte) {
		mu.Lock()
		defer mu.Unlock()
		conn, err := net.Dial("tcp", ts.addr[Relay])
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second)) // never hang the fuzzer
		go func() {
			_, _ = conn.Write(append([]byte("EHLO fuzz.test\r\n"), data...)) // the server may close first
			_ = conn.(*net.TCPConn).CloseWrite()                             // then EOF ends the session
		}()
		if _, err := io.Copy(io.Discard, conn); err != nil {
			t.Fatalf("session did not end: %v", err)
		}
		if n := ts.obs.get(func() int { return ts.obs.panics }); n != 0 {
			t.Fatalf("%d panics", n)
		}
		msgs, _, err := ts.spool.List(context.Background(), spool.Filter{}, after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			after = m.ID
			r, err := ts.spool.Body(m.ID)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(r)
			r.Close()
			if err != nil {
				t.Fatal(err)
			}
			if p := canonical(string(body)); p != "" {
				t.Fatalf("stored message not canonical: %s\ninput %q", p, data)
			}
		}
	})
}
