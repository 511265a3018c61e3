package smtpd

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
)

// dkimKey is a signing key and the TXT record that publishes it.
type dkimKey struct {
	signer crypto.Signer
	txt    string
}

func newDKIMKeys(t *testing.T) map[string]dkimKey {
	t.Helper()
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]dkimKey{
		"ed25519": {edKey, "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(edKey.Public().(ed25519.PublicKey))},
		"rsa":     {rsaKey, "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)},
	}
}

// verifyGo checks a message's DKIM signature with go-msgauth against one
// published TXT record.
func verifyGo(t *testing.T, msg, name, txt string) {
	t.Helper()
	vs, err := dkim.VerifyWithOptions(strings.NewReader(msg), &dkim.VerifyOptions{
		LookupTXT: func(domain string) ([]string, error) {
			if domain != name {
				t.Errorf("looked up %q, want %q", domain, name)
			}
			return []string{txt}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 1 || vs[0].Err != nil || vs[0].Domain != "163.example" {
		t.Fatalf("verifications %+v (%v)", vs, vs[0].Err)
	}
}

// verifyPython checks the signature with Debian's python3-dkim, an
// independent implementation.
func verifyPython(t *testing.T, msg, name, txt string) {
	t.Helper()
	if err := runPythonVerify(t, msg, name, txt); err != nil {
		t.Fatalf("python dkim.verify failed: %v", err)
	}
	// The same check must fail on a changed body, or it proves nothing.
	if err := runPythonVerify(t, strings.Replace(msg, "\r\n\r\n", "\r\n\r\nchanged ", 1), name, txt); err == nil {
		t.Fatal("python dkim.verify accepted a changed body")
	}
}

func runPythonVerify(t *testing.T, msg, name, txt string) error {
	t.Helper()
	const py = "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Skip("no /usr/bin/python3")
	}
	if err := exec.Command(py, "-c", "import dkim, nacl").Run(); err != nil {
		t.Skip("/usr/bin/python3 lacks the dkim or nacl module (python3-dkim, python3-nacl)")
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "msg.eml")
	if err := os.WriteFile(file, []byte(msg), 0o600); err != nil {
		t.Fatal(err)
	}
	script := `
import sys, dkim
name, txt, path = sys.argv[1].encode(), sys.argv[2].encode(), sys.argv[3]
def dnsfunc(q, timeout=5):
    return txt if q.rstrip(b".") == name else None
msg = open(path, "rb").read()
sys.exit(0 if dkim.verify(msg, dnsfunc=dnsfunc) else 1)
`
	out, err := exec.Command(py, "-c", script, name, txt, file).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v\n%s", err, out)
	}
	return nil
}

func TestDKIM(t *testing.T) {
	keys := newDKIMKeys(t)
	for _, alg := range []string{"ed25519", "rsa"} {
		t.Run(alg, func(t *testing.T) {
			k := keys[alg]
			ts := startServer(t, func(c *Config) {
				c.DKIM = map[string]DKIMKey{"163.EXAMPLE": {Selector: "s1", Signer: k.signer}}
				c.TrustedNetworks = mustPrefixes("127.0.0.1/32")
			})
			c := ts.submit(Submissions)
			small := "From: Zbird <zbird1@163.example>\r\nTo: a@example.test\r\nBcc: hidden@example.test\r\nSubject: signed\r\n\r\nHello,  world \r\n\r\n\r\n"
			large := "From: <zbird1@163.example>\r\nSubject: large\r\n\r\n" + stringsRepeatLines(30000, 70)
			for name, msg := range map[string]string{"small": small, "spilled to a file": large} {
				t.Run(name, func(t *testing.T) {
					_, body := ts.stored(mustSend(t, c, "zbird1@163.example", []string{"a@example.test"}, msg))
					if !strings.HasPrefix(body, "DKIM-Signature: ") || !strings.Contains(body, "d=163.example") {
						t.Fatalf("not signed:\n%.300s", body)
					}
					if p := canonical(body); p != "" {
						t.Error(p)
					}
					verifyGo(t, body, "s1._domainkey.163.example", k.txt)
					verifyPython(t, body, "s1._domainkey.163.example", k.txt)
				})
			}
			t.Run("trusted relay client", func(t *testing.T) {
				rc := ts.dial(Relay, "127.0.0.1")
				_, body := ts.stored(mustSend(t, rc, "app@163.example", []string{"a@example.test"}, small))
				verifyGo(t, body, "s1._domainkey.163.example", k.txt)
			})
			t.Run("not for mail from the internet to a local domain", func(t *testing.T) {
				rc := ts.dial(Relay, "127.0.0.2")
				_, body := ts.stored(mustSend(t, rc, "forger@elsewhere.test", []string{"postmaster@local.test"}, small))
				if strings.Contains(body, "DKIM-Signature") {
					t.Error("signed mail from an untrusted client")
				}
			})
			t.Run("not for another domain", func(t *testing.T) {
				_, body := ts.stored(mustSend(t, c, "anyone@own.example", []string{"a@example.test"}, "From: <anyone@own.example>\r\n\r\nx\r\n"))
				if strings.Contains(body, "DKIM-Signature") {
					t.Error("signed with another domain's key")
				}
			})
		})
	}
}

func TestDKIMKeyChecks(t *testing.T) {
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	for name, keys := range map[string]map[string]DKIMKey{
		"RSA under 2048 bits": {"a.example": {Selector: "s", Signer: small}},
		"no selector":         {"a.example": {Signer: ed}},
		"bad domain":          {"nodot": {Selector: "s", Signer: ed}},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := normalizeDKIM(keys); err == nil {
				t.Error("accepted")
			}
		})
	}
}

// failingSigner is a DKIM key whose signing fails, as a key held in a
// hardware module or agent can.
type failingSigner struct{ crypto.Signer }

func (failingSigner) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("signing module unplugged")
}

// TestDKIMSigningFails: a signature that cannot be made is a temporary
// local error with the generic text, nothing is stored, and the session
// goes on.
func TestDKIMSigningFails(t *testing.T) {
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, func(c *Config) {
		c.DKIM = map[string]DKIMKey{"163.example": {Selector: "s1", Signer: failingSigner{ed}}}
	})
	c := ts.submit(Submissions)
	_, err = send(c, "zbird1@163.example", nil, []string{"a@example.test"}, "From: <zbird1@163.example>\r\nSubject: x\r\n\r\nx\r\n")
	wantCode(t, err, 451, "4.3.0")
	if strings.Contains(err.Error(), "unplugged") {
		t.Errorf("the reply tells the client why: %v", err)
	}
	if n := ts.messages(); n != 0 {
		t.Errorf("%d messages stored", n)
	}
	mustSend(t, c, "anyone@own.example", []string{"a@example.test"}, "From: <anyone@own.example>\r\n\r\nunsigned\r\n")
}
