package main

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"

	"mta/internal/mailaddr"
)

func runDKIM(ctx context.Context, args []string, stdio Stdio) error {
	if len(args) == 0 || args[0] != "keygen" {
		if len(args) > 0 && (args[0] == "--help" || args[0] == "-h") {
			fmt.Fprintln(stdio.Out, "usage: mta dkim keygen --domain D --selector S [--type ed25519|rsa] [--out FILE]")
			return nil
		}
		fmt.Fprintln(stdio.Err, "usage: mta dkim keygen --domain D --selector S [--type ed25519|rsa] [--out FILE]")
		return errUsage
	}
	fs := newFlagSet("dkim keygen", "--domain D --selector S [--type ed25519|rsa] [--out FILE]", stdio)
	domain := fs.String("domain", "", "the signing domain (d=)")
	selector := fs.String("selector", "", "the selector (s=), e.g. s2026")
	typ := fs.String("type", "rsa", "key type: rsa (2048 bits, verified everywhere) or ed25519 (RFC 8463)")
	out := fs.String("out", "", "key file to write (default DOMAIN.SELECTOR.key)")
	if done, err := parseFlags(fs, args[1:], stdio); done {
		return err
	}
	d, err := mailaddr.NormalizeDomain(*domain)
	if err != nil || *selector == "" || strings.ContainsAny(*selector, " ;=") {
		fs.Usage()
		return exitf(exitUsage, "dkim keygen: need a valid --domain and --selector")
	}
	path := *out
	if path == "" {
		path = d + "." + *selector + ".key"
	}
	key, err := newDKIMKey(*typ)
	if err != nil {
		return exitf(exitUsage, "dkim keygen: %v", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return exitf(exitFailure, "dkim keygen: %v (an existing key is never overwritten)", err)
	}
	err = pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return exitf(exitFailure, "dkim keygen: write %s: %v", path, err)
	}
	txt, err := dkimTXT(key.Public())
	if err != nil {
		return err
	}
	fmt.Fprintf(stdio.Out, "wrote %s (mode 0600)\n\npublish this DNS record:\n\n%s._domainkey.%s. IN TXT %s\n\nand add to the config:\n\ndkim:\n  - domain: %s\n    selector: %s\n    key_file: %s\n",
		path, *selector, d, quoteTXT(txt), d, *selector, path)
	return nil
}

func newDKIMKey(typ string) (crypto.Signer, error) {
	switch typ {
	case "rsa":
		return rsa.GenerateKey(rand.Reader, 2048)
	case "ed25519":
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	return nil, fmt.Errorf("unknown key type %q (rsa or ed25519)", typ)
}

// dkimTXT is the DKIM key record (RFC 6376 §3.6.1; RFC 8463 for ed25519,
// whose p= is the raw 32-octet key).
func dkimTXT(pub crypto.PublicKey) (string, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			return "", err
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der), nil
	case ed25519.PublicKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(k), nil
	}
	return "", fmt.Errorf("unsupported key type %T", pub)
}

// quoteTXT splits a record into quoted strings of at most 255 octets, as
// zone files need for RSA keys.
func quoteTXT(s string) string {
	var parts []string
	for len(s) > 255 {
		parts = append(parts, `"`+s[:255]+`"`)
		s = s[255:]
	}
	parts = append(parts, `"`+s+`"`)
	return "( " + strings.Join(parts, " ") + " )"
}

// loadDKIMKey reads a PKCS#8 (or PKCS#1 RSA) PEM private key for signing.
func loadDKIMKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM key", path)
	}
	var key any
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		err = fmt.Errorf("PEM type %q", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if k.N.BitLen() < 1024 {
			return nil, fmt.Errorf("%s: RSA key of %d bits is too weak for DKIM", path, k.N.BitLen())
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, errors.New(path + ": DKIM keys are RSA or Ed25519")
}
