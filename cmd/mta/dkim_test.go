package main

import (
	"crypto/ed25519"
	"crypto/rsa"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDKIMKeygen(t *testing.T) {
	for _, typ := range []string{"ed25519", "rsa"} {
		t.Run(typ, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "k.key")
			var out, errb strings.Builder
			args := []string{"mta", "dkim", "keygen", "--domain", "Example.ORG", "--selector", "s1", "--type", typ, "--out", path}
			if err := run(t.Context(), args, Stdio{Out: &out, Err: &errb}); err != nil {
				t.Fatalf("%v: %s", err, errb.String())
			}
			fi, err := os.Stat(path)
			if err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("key file mode %v, %v", fi.Mode(), err)
			}
			key, err := loadDKIMKey(path)
			if err != nil {
				t.Fatal(err)
			}
			txt, _ := dkimTXT(key.Public())
			if !strings.Contains(out.String(), "s1._domainkey.example.org. IN TXT") || !strings.Contains(strings.ReplaceAll(out.String(), `" "`, ""), txt) {
				t.Errorf("output lacks the record:\n%s", out.String())
			}
			switch k := key.(type) {
			case *rsa.PrivateKey:
				if typ != "rsa" || k.N.BitLen() != 2048 {
					t.Errorf("got RSA %d bits for %s", k.N.BitLen(), typ)
				}
			case ed25519.PrivateKey:
				if typ != "ed25519" {
					t.Errorf("got ed25519 for %s", typ)
				}
			}
			if err := run(t.Context(), args, Stdio{Out: &out, Err: &errb}); err == nil {
				t.Error("an existing key file was overwritten")
			}
		})
	}
}
