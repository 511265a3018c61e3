package delivery

import (
	"bytes"
	"strings"
	"testing"
)

func FuzzReadReply(f *testing.F) {
	for _, s := range []string{"220 2.0.0 ready\r\n", "250-a\r\n250-b\r\n250 c\r\n", "454 TLS not available\r\n",
		"220\r\n", "2x0 bad\r\n", "220-unterminated", "999 odd\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		code, text, err := readReply(bytes.NewReader(b))
		if err != nil {
			return
		}
		if code < 100 || code > 599 {
			t.Errorf("code %d accepted from %q", code, b)
		}
		if strings.Contains(text, "\n") {
			t.Errorf("text %q holds a line break", text)
		}
	})
}

func FuzzParseHop(f *testing.F) {
	for _, s := range []string{"smtp.example.org:587", "[smtp.example.org]:465", "[192.0.2.1]:25",
		"[IPv6:2001:db8::1]:25", "[2001:db8::1]:2525", "relay.test", "bad host:99999", ":25", "[]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := parseHop(s)
		if err != nil {
			return
		}
		if h.port <= 0 || h.port > 65535 {
			t.Errorf("%q: port %d", s, h.port)
		}
		if (h.name == "") == !h.addr.IsValid() {
			t.Errorf("%q: want exactly one of a name and an address, got %+v", s, h)
		}
		if strings.ContainsAny(h.name, " \r\n[]") {
			t.Errorf("%q: name %q", s, h.name)
		}
	})
}
