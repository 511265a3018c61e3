package delivery_test

// rawHost is a hand-written SMTP host for what go-smtp's server never
// does: answer 354 to a DATA after every RCPT was refused, or close a
// connection right after a transaction, as an idle timeout would.

import (
	"bufio"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
)

type rawScript struct {
	pipelining bool
	// refuse lists recipients answered 550.
	refuse []string
	// closeFirst closes the first connection right after the reply to its
	// first final dot.
	closeFirst bool
	// ehlo, when set, is the reply to EHLO (HELO is still answered 250).
	ehlo string
	// refuseData, when set, is the reply to the first connection's first
	// DATA command, instead of 354.
	refuseData string
}

type rawHost struct {
	script rawScript
	port   int
	mu     sync.Mutex
	conns  [][]string // lines read, per connection; message lines start with "| "
}

func newRawHost(t *testing.T, ip string, script rawScript) *rawHost {
	t.Helper()
	return newRawHostOn(t, ip, 0, script)
}

// newRawHostOn is newRawHost on a given port (0: any).
func newRawHostOn(t *testing.T, ip string, port int, script rawScript) *rawHost {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	h := &rawHost{script: script, port: ln.Addr().(*net.TCPAddr).Port}
	var wg sync.WaitGroup
	var open sync.Map
	t.Cleanup(func() {
		_ = ln.Close()
		open.Range(func(c, _ any) bool { _ = c.(net.Conn).Close(); return true })
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			open.Store(c, true)
			h.mu.Lock()
			h.conns = append(h.conns, nil)
			n := len(h.conns) - 1
			h.mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				h.serve(n, c)
			})
		}
	})
	return h
}

// lines is what connection n read.
func (h *rawHost) lines(n int) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if n >= len(h.conns) {
		return nil
	}
	return append([]string(nil), h.conns[n]...)
}

func (h *rawHost) connections() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.conns)
}

func (h *rawHost) serve(n int, c net.Conn) {
	r := bufio.NewReader(c)
	say := func(s string) bool { _, err := c.Write([]byte(s + "\r\n")); return err == nil }
	read := func(prefix string) (string, bool) {
		l, err := r.ReadString('\n')
		if err != nil {
			return "", false
		}
		l = strings.TrimRight(l, "\r\n")
		h.mu.Lock()
		h.conns[n] = append(h.conns[n], prefix+l)
		h.mu.Unlock()
		return l, true
	}
	if !say("220 raw.test ESMTP") {
		return
	}
	datas := 0
	for {
		l, ok := read("")
		if !ok {
			return
		}
		verb := strings.ToUpper(strings.SplitN(l, " ", 2)[0])
		reply := "250 2.0.0 ok"
		switch verb {
		case "EHLO":
			reply = "250-raw.test\r\n250-8BITMIME\r\n250 SIZE"
			if h.script.pipelining {
				reply = "250-raw.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE"
			}
			if h.script.ehlo != "" {
				reply = h.script.ehlo
			}
		case "HELO":
			reply = "250 raw.test"
		case "RCPT":
			for _, a := range h.script.refuse {
				if strings.Contains(l, "<"+a+">") {
					reply = "550 5.1.1 no such user"
				}
			}
		case "DATA":
			if datas++; datas == 1 && n == 0 && h.script.refuseData != "" {
				reply = h.script.refuseData
				break
			}
			if !say("354 go ahead") {
				return
			}
			for l != "." {
				if l, ok = read("| "); !ok {
					return
				}
			}
		case "QUIT":
			say("221 2.0.0 bye")
			return
		}
		if !say(reply) || (verb == "DATA" && h.script.closeFirst && n == 0) {
			return
		}
	}
}
