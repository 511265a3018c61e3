package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mta/internal/selfsigned"
)

func TestCertStore(t *testing.T) {
	t.Run("a configured file that is missing is an error", func(t *testing.T) {
		dir := t.TempDir()
		var s certStore
		c := &Config{Hostname: "mx.example.test", TLS: TLSFiles{CertFile: filepath.Join(dir, "no-cert.pem"), KeyFile: filepath.Join(dir, "no-key.pem")}}
		err := s.load(c, dir, slog.New(slog.DiscardHandler))
		if err == nil || !strings.Contains(err.Error(), "no-cert.pem") {
			t.Fatalf("got %v, want an error naming the missing file", err)
		}
		if s.cert.Load() != nil {
			t.Error("a certificate was stored anyway")
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("a missing configured file made %d files in the state directory", len(entries))
		}
	})
	t.Run("the configured certificate is served", func(t *testing.T) {
		dir := t.TempDir()
		gen, err := selfsigned.Generate([]string{"mail.example.test"}, time.Now(), 24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
		writeFile(t, certFile, string(gen.CertPEM))
		writeFile(t, keyFile, string(gen.KeyPEM))
		var s certStore
		if err := s.load(&Config{Hostname: "mx.example.test", TLS: TLSFiles{CertFile: certFile, KeyFile: keyFile}}, dir, slog.New(slog.DiscardHandler)); err != nil {
			t.Fatal(err)
		}
		if got := leaf(t, &s); got.DNSNames[0] != "mail.example.test" {
			t.Errorf("serving %q", got.DNSNames)
		}
	})
	t.Run("with none, a self-signed one is made once, 0600, and logged", func(t *testing.T) {
		dir := t.TempDir()
		var logBuf bytes.Buffer
		log := slog.New(slog.NewTextHandler(&logBuf, nil))
		c := &Config{Hostname: "mx.example.test"}
		var first certStore
		if err := first.load(c, dir, log); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{selfCertFile, selfKeyFile} {
			st, err := os.Stat(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("%s has mode %04o, want 0600", name, st.Mode().Perm())
			}
		}
		if !strings.Contains(logBuf.String(), "self-signed") || !strings.Contains(logBuf.String(), filepath.Join(dir, selfCertFile)) {
			t.Errorf("not logged with its path: %q", logBuf.String())
		}
		cert := leaf(t, &first)
		if len(cert.DNSNames) != 1 || cert.DNSNames[0] != "mx.example.test" {
			t.Errorf("self-signed for %q", cert.DNSNames)
		}
		logBuf.Reset()
		var second certStore // a restart
		if err := second.load(c, dir, log); err != nil {
			t.Fatal(err)
		}
		if !leaf(t, &second).Equal(cert) {
			t.Error("a second start made a new certificate")
		}
		if strings.Contains(logBuf.String(), "made a self-signed") {
			t.Errorf("a second start says it made one: %q", logBuf.String())
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 2 {
			t.Errorf("state directory holds %d entries, want the two files", len(entries))
		}
	})
	t.Run("TLS 1.2 or newer", func(t *testing.T) {
		var s certStore
		if v := s.serverTLS().MinVersion; v != tls.VersionTLS12 {
			t.Errorf("MinVersion %x", v)
		}
	})
}

// leaf parses the certificate the store serves.
func leaf(t *testing.T, s *certStore) *x509.Certificate {
	t.Helper()
	c, err := s.serverTLS().GetCertificate(&tls.ClientHelloInfo{})
	if err != nil || c == nil || len(c.Certificate) == 0 {
		t.Fatalf("no certificate served: %v", err)
	}
	x, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return x
}
