package selfsigned

import (
	"crypto/tls"
	"io"

	"testing"
	"time"
)

// TestHandshake proves a generated certificate verifies for its names in a
// real TLS handshake on loopback, and fails for another name.
func TestHandshake(t *testing.T) {
	c, err := Generate([]string{"mx.example.test", "127.0.0.1"}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{c.TLS}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_, _ = conn.Write([]byte("ok"))
				_, _ = io.Copy(io.Discard, conn)
			}()
		}
	}()
	for _, tc := range []struct {
		name   string
		server string
		ok     bool
	}{
		{"DNS name verifies", "mx.example.test", true},
		{"IP verifies", "127.0.0.1", true},
		{"other name fails", "other.example.test", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: c.Pool(), ServerName: tc.server})
			if err == nil {
				defer conn.Close()
				_, err = conn.Read(make([]byte, 2))
			}
			if (err == nil) != tc.ok {
				t.Fatalf("dial as %s: err = %v, want ok=%v", tc.server, err, tc.ok)
			}
		})
	}
}
