package smtpd

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/emersion/go-msgauth/dkim"

	"mta/internal/mailaddr"
	"mta/spool"
)

// dkimHeaderKeys are the fields signed (RFC 6376 §5.4.1). From is listed
// twice so that a From field added later breaks the signature.
var dkimHeaderKeys = []string{
	"From", "From", "Reply-To", "Subject", "Date", "To", "Cc", "Message-ID",
	"In-Reply-To", "References", "MIME-Version", "Content-Type",
	"Content-Transfer-Encoding", "Resent-Date", "Resent-From", "Resent-To",
	"Resent-Cc", "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post",
}

// spillMemBytes: a body being signed is held in memory up to this size,
// then in an unlinked temporary file.
const spillMemBytes = 1 << 20

func normalizeDKIM(keys map[string]DKIMKey) (map[string]DKIMKey, error) {
	out := make(map[string]DKIMKey, len(keys))
	for d, k := range keys {
		n, err := mailaddr.NormalizeDomain(d)
		if err != nil {
			return nil, fmt.Errorf("smtpd: DKIM domain: %w", err)
		}
		if k.Selector == "" || k.Signer == nil {
			return nil, fmt.Errorf("smtpd: DKIM key for %s: needs a selector and a signer", n)
		}
		switch pub := k.Signer.Public().(type) {
		case ed25519.PublicKey:
		case *rsa.PublicKey:
			if pub.N.BitLen() < 2048 {
				return nil, fmt.Errorf("smtpd: DKIM key for %s: RSA keys need 2048 bits or more", n)
			}
		default:
			return nil, fmt.Errorf("smtpd: DKIM key for %s: %T is neither RSA nor Ed25519", n, pub)
		}
		out[n] = k
	}
	return out, nil
}

// signingKey picks the key for the message: by the From: domain, else the
// sender's domain. Only mail from a trusted source is signed: an
// authenticated user, the local socket, or a trusted relay client, never
// mail from the internet to a local domain.
func (s *session) signingKey(h *header) (DKIMKey, string, bool) {
	if len(s.srv.dkim) == 0 || !(s.user != nil || s.kind == Local || s.kind == Relay && s.trusted) {
		return DKIMKey{}, "", false
	}
	domain := ""
	if froms := h.values("from"); len(froms) > 0 {
		if addrs, err := parseFromHeader(froms[0]); err == nil {
			domain = addrs[0].Domain
		}
	}
	if domain == "" && s.sender != "" {
		domain = s.sender[strings.LastIndexByte(s.sender, '@')+1:]
	}
	k, ok := s.srv.dkim[domain]
	return k, domain, ok
}

// writeSigned writes the DKIM-Signature, the fixed header and the rest of
// the message. The signature depends on the whole body but comes first,
// so the message waits in a spill buffer while it is hashed.
func (s *session) writeSigned(bw *spool.BodyWriter, head []byte, lr *lineReader, key DKIMKey, domain string) error {
	signer, err := dkim.NewSigner(&dkim.SignOptions{
		Domain:                 domain,
		Selector:               key.Selector,
		Signer:                 key.Signer,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed,
		BodyCanonicalization:   dkim.CanonicalizationRelaxed,
		HeaderKeys:             dkimHeaderKeys,
	})
	if err != nil {
		return fmt.Errorf("dkim: %w", err)
	}
	closed := false
	defer func() {
		if !closed {
			_ = signer.Close() // error path: only its goroutine needs ending
		}
	}()
	sp := &spill{srv: s.srv}
	defer sp.close()
	sw := bufio.NewWriterSize(signer, writeBufferBytes)
	w := io.MultiWriter(sp, sw)
	if _, err := w.Write(head); err != nil {
		return &spoolWriteError{err}
	}
	if err := copyLines(w, lr); err != nil {
		return err
	}
	if err := sw.Flush(); err != nil {
		return fmt.Errorf("dkim: %w", err)
	}
	closed = true
	if err := signer.Close(); err != nil {
		return fmt.Errorf("dkim sign: %w", err)
	}
	out := bufio.NewWriterSize(bw, writeBufferBytes)
	if _, err := io.WriteString(out, signer.Signature()); err != nil {
		return &spoolWriteError{err}
	}
	if err := sp.writeTo(out); err != nil {
		return err
	}
	if err := out.Flush(); err != nil {
		return &spoolWriteError{err}
	}
	return nil
}

// spill holds a message in memory up to spillMemBytes and in an unlinked
// temporary file past that.
type spill struct {
	srv *Server
	mem []byte
	f   *os.File
	w   *bufio.Writer
}

func (sp *spill) Write(p []byte) (int, error) {
	if sp.f == nil && len(sp.mem)+len(p) <= spillMemBytes {
		sp.mem = append(sp.mem, p...)
		return len(p), nil
	}
	if sp.f == nil {
		f, err := sp.srv.tempFile()
		if err != nil {
			return 0, err
		}
		sp.f, sp.w = f, bufio.NewWriterSize(f, writeBufferBytes)
		if _, err := sp.w.Write(sp.mem); err != nil {
			return 0, err
		}
		sp.mem = nil
	}
	return sp.w.Write(p)
}

// writeTo copies what was held to w; errors writing w are
// *spoolWriteError.
func (sp *spill) writeTo(w io.Writer) error {
	if sp.f == nil {
		if _, err := w.Write(sp.mem); err != nil {
			return &spoolWriteError{err}
		}
		return nil
	}
	if err := sp.w.Flush(); err != nil {
		return fmt.Errorf("spill file: %w", err)
	}
	if _, err := sp.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("spill file: %w", err)
	}
	_, err := io.Copy(onlyWriter{w}, sp.f)
	var we *spoolWriteError
	if err != nil && !errors.As(err, &we) {
		return fmt.Errorf("spill file: %w", err)
	}
	return err
}

func (sp *spill) close() {
	if sp.f != nil {
		_ = sp.f.Close() // unlinked already; closing frees it
	}
}

// onlyWriter hides ReadFrom so io.Copy's write errors can be told from
// read errors; they come back as *spoolWriteError.
type onlyWriter struct{ w io.Writer }

func (o onlyWriter) Write(p []byte) (int, error) {
	n, err := o.w.Write(p)
	if err != nil {
		return n, &spoolWriteError{err}
	}
	return n, nil
}
