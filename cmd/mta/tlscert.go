package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"mta/internal/selfsigned"
)

// certStore serves the listeners' certificate and swaps it on SIGHUP.
type certStore struct {
	cert atomic.Pointer[tls.Certificate]
	desc string // where it came from, for the log
}

// serverTLS is the listeners' TLS configuration: TLS 1.2 or newer, the
// certificate from certStore.
func (s *certStore) serverTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.cert.Load(), nil
		},
	}
}

// loadCert loads the configured certificate; a configured file that is
// missing or bad is an error (never a silent fallback). With none
// configured, a self-signed certificate is made once in stateDir (0600)
// and reused.
func (s *certStore) load(c *Config, stateDir string, log *slog.Logger) error {
	if c.TLS.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.TLS.CertFile, c.TLS.KeyFile)
		if err != nil {
			return fmt.Errorf("tls: %w", err)
		}
		s.cert.Store(&cert)
		s.desc = c.TLS.CertFile
		return nil
	}
	certPath := filepath.Join(stateDir, selfCertFile)
	keyPath := filepath.Join(stateDir, selfKeyFile)
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if errors.Is(err, fs.ErrNotExist) {
		gen, gerr := selfsigned.Generate([]string{c.Hostname}, time.Now(), 10*365*24*time.Hour)
		if gerr != nil {
			return gerr
		}
		if err := writeFileSync(keyPath, gen.KeyPEM, 0o600); err != nil {
			return fmt.Errorf("tls: save self-signed key: %w", err)
		}
		if err := writeFileSync(certPath, gen.CertPEM, 0o600); err != nil {
			return fmt.Errorf("tls: save self-signed certificate: %w", err)
		}
		log.Warn("no tls.cert_file configured: made a self-signed certificate; mail clients will not trust it", "cert", certPath, "host", c.Hostname)
		cert, err = gen.TLS, nil
	}
	if err != nil {
		return fmt.Errorf("tls: self-signed certificate in %s: %w", stateDir, err)
	}
	s.cert.Store(&cert)
	s.desc = certPath + " (self-signed)"
	return nil
}

// writeFileSync replaces path atomically: a temporary file in the same
// directory with mode, the old file's owner and group kept when allowed
// (root), fsynced, renamed over path, and the directory fsynced.
func writeFileSync(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	err = f.Chmod(mode)
	if st, serr := os.Stat(path); err == nil && serr == nil {
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			_ = f.Chown(int(sys.Uid), int(sys.Gid)) // only root may; others keep their own
		}
	}
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp) // best effort cleanup of our own temp file
		return err
	}
	return syncDir(dir)
}
