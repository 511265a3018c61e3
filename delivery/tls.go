package delivery

import (
	"crypto/tls"
	"crypto/x509"
	"strings"
	"sync"
	"time"
)

// tlsConfig is the client configuration for a host under policy p. SNI is
// the MX (or relay) host name. Opportunistic and require accept any
// certificate (RFC 7435: any encryption beats none) and TLS 1.0 upwards;
// verify checks the chain against RootCAs and the name.
func (e *Scheduler) tlsConfig(p TLSPolicy, serverName string) *tls.Config {
	cfg := &tls.Config{ServerName: serverName, RootCAs: e.cfg.RootCAs}
	if p != TLSVerify {
		cfg.InsecureSkipVerify = true
		cfg.MinVersion = tls.VersionTLS10
	}
	return cfg
}

// verdict says how a session is secured, as kept in spool.Attempt.TLS:
// "none", or "TLS1.3 verified" / "TLS1.2 unverified".
func (e *Scheduler) verdict(st tls.ConnectionState, serverName string) (string, bool) {
	verified := len(st.VerifiedChains) > 0
	if !verified && len(st.PeerCertificates) > 0 && serverName != "" {
		// Opportunistic sessions skip verification; check anyway so the
		// record says whether the certificate would have passed.
		inter := x509.NewCertPool()
		for _, c := range st.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := st.PeerCertificates[0].Verify(x509.VerifyOptions{
			DNSName: serverName, Roots: e.cfg.RootCAs, Intermediates: inter,
		})
		verified = err == nil
	}
	v := strings.ReplaceAll(tls.VersionName(st.Version), " ", "")
	if verified {
		return v + " verified", true
	}
	return v + " unverified", false
}

// brokenTLS remembers hosts whose TLS handshake failed, so opportunistic
// delivery speaks plain text to them for a while instead of failing the
// handshake on every connection. It is bounded.
type brokenTLS struct {
	mu    sync.Mutex
	until map[string]time.Time
	max   int
}

func newBrokenTLS(max int) *brokenTLS {
	return &brokenTLS{until: make(map[string]time.Time), max: max}
}

func (b *brokenTLS) mark(key string, until time.Time, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.until) >= b.max {
		for k, t := range b.until {
			if !t.After(now) {
				delete(b.until, k)
			}
		}
		for k := range b.until {
			if len(b.until) < b.max {
				break
			}
			delete(b.until, k) // still full: forget an arbitrary one
		}
	}
	b.until[key] = until
}

func (b *brokenTLS) broken(key string, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	t, ok := b.until[key]
	if ok && !t.After(now) {
		delete(b.until, key)
		return false
	}
	return ok
}
