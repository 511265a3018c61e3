package smtpd

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestPythonSmtplib submits with Python's smtplib: STARTTLS, AUTH LOGIN,
// To/Cc/Bcc recipients, then checks the spooled envelope and that Bcc is
// gone from the stored message.
func TestPythonSmtplib(t *testing.T) {
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		if py, err = exec.LookPath("python3"); err != nil {
			t.Skip("no python3")
		}
	}
	ts := startServer(t)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, ts.cert.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(ts.addr[Submission])
	script := `
import smtplib, ssl, sys
host, port, ca, user, pw = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False  # the test certificate names mx.test
s = smtplib.SMTP(host, int(port), local_hostname="py.test")
s.ehlo()
s.starttls(context=ctx)
s.ehlo()
assert "login" in s.esmtp_features.get("auth", "").lower(), s.esmtp_features
s.user, s.password = user, pw
code, resp = s.auth("LOGIN", s.auth_login)
assert code == 235, (code, resp)
msg = ("From: Zbird <zbird1@163.example>\r\n"
       "To: <to@example.test>\r\n"
       "Cc: <cc@example.test>\r\n"
       "Bcc: <bcc@example.test>\r\n"
       "Subject: from smtplib\r\n"
       "\r\n"
       "Hello from Python.\r\n")
s.mail("zbird1@163.example")
# "postmaster" without a domain: RCPT TO:<postmaster> (RFC 5321 §4.5.1)
for r in ("to@example.test", "cc@example.test", "bcc@example.test", "postmaster"):
    code, resp = s.rcpt(r)
    assert code == 250, (r, code, resp)
code, resp = s.data(msg)
assert code == 250, (code, resp)
print(resp.decode())
s.quit()
`
	out, err := exec.Command(py, "-c", script, host, port, ca, testLogin, testPassword).CombinedOutput()
	if err != nil {
		t.Fatalf("smtplib: %v\n%s", err, out)
	}
	m := queuedRe.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("no queue ID in %q", out)
	}
	msg, body := ts.stored(m[1])
	var rcpts []string
	for _, r := range msg.Envelope.Recipients {
		rcpts = append(rcpts, r.Addr)
	}
	if want := []string{"to@example.test", "cc@example.test", "bcc@example.test", "admin@example.test"}; !slices.Equal(rcpts, want) {
		t.Errorf("recipients %q, want %q", rcpts, want)
	}
	if msg.Envelope.Sender != "zbird1@163.example" || msg.Envelope.Origin.AuthUser != testLogin || msg.Envelope.Origin.HELO != "py.test" {
		t.Errorf("envelope %+v", msg.Envelope)
	}
	if strings.Contains(body, "Bcc") || strings.Contains(body, "bcc@") {
		t.Errorf("Bcc still in the stored message:\n%s", body)
	}
	if !strings.Contains(body, "Cc: <cc@example.test>\r\n") || !strings.Contains(body, "with ESMTPSA") {
		t.Errorf("stored message:\n%s", body)
	}
}

// TestSwaks submits with swaks: STARTTLS, AUTH PLAIN and PIPELINING.
func TestSwaks(t *testing.T) {
	swaks, err := exec.LookPath("swaks")
	if err != nil {
		t.Skip("swaks not installed (apt-get install swaks)")
	}
	if err := exec.Command("perl", "-MNet::SSLeay", "-e1").Run(); err != nil {
		t.Skip("swaks cannot do TLS without Net::SSLeay (apt-get install libnet-ssleay-perl)")
	}
	ts := startServer(t)
	out, err := exec.Command(swaks,
		"--server", ts.addr[Submission], "--ehlo", "swaks.test", "--tls",
		"--auth", "PLAIN", "--auth-user", testLogin, "--auth-password", testPassword,
		"--from", "zbird1@163.example", "--to", "a@example.test,b@example.test",
		"--header", "From: <zbird1@163.example>", "--header", "Bcc: secret@example.test",
		"--pipeline", "--timeout", "20",
	).CombinedOutput()
	if err != nil {
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "PIPELINING") {
		t.Errorf("swaks did not see PIPELINING:\n%s", out)
	}
	m := queuedRe.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("no queue ID in swaks output:\n%s", out)
	}
	msg, body := ts.stored(m[1])
	if len(msg.Envelope.Recipients) != 2 || msg.Envelope.Origin.HELO != "swaks.test" {
		t.Errorf("envelope %+v", msg.Envelope)
	}
	if strings.Contains(body, "secret@") || !strings.Contains(body, "with ESMTPSA") {
		t.Errorf("stored message:\n%s", body)
	}
	if p := canonical(body); p != "" {
		t.Error(p)
	}
}
