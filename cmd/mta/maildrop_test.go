package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"mta/internal/peer"
	"mta/internal/testpeer"
)

// nobodyUID is the unprivileged user the maildrop test submits as.
const nobodyUID = 65534

// TestSendmailMaildropAsUser: with the daemon down, `mta sendmail` run by an
// ordinary user (not root, not the daemon's user) keeps the message in the
// maildrop and exits 0, though it may not list that directory (mode 1733);
// the next start delivers it as that user's mail.
func TestSendmailMaildropAsUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("running sendmail as another user needs root")
	}
	port, hosts := testpeer.SMTPHosts(t, map[string]peer.Behaviour{"127.0.0.2": {}})
	dns := testpeer.NewDNS(t, worldZone)
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o751); err != nil {
		t.Fatal(err)
	}
	if err := ensureMaildrop(filepath.Join(state, maildropSubdir)); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "mta.yaml")
	writeFile(t, path, fmt.Sprintf("hostname: mta.example.test\nmyorigin: example.test\nstate_dir: %s\nruntime_dir: %s\n"+
		"listeners: {relay: [\"127.0.0.1:0\"], submission: [], submissions: []}\n"+
		"dns: {servers: [%q]}\ndelivery: {port: %d, allow_private_mx: true}\nmetrics: {address: \"\"}\n",
		state, filepath.Join(dir, "run"), dns.Addr(), port))
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	bin := copyTestBinary(t, filepath.Join(dir, "mta"))

	cmd := exec.CommandContext(t.Context(), bin, "sendmail", "-C", path, "b@example.test")
	cmd.Env = append(os.Environ(), asMTAEnv+"=1")
	cmd.Stdin = strings.NewReader("Subject: cron\n\nbackup done\n")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobodyUID, Gid: nobodyUID}}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) || err != nil || !strings.Contains(string(out), "kept in") {
		t.Fatalf("sendmail as uid %d with the daemon down: %v\n%s", nobodyUID, err, out)
	}

	startServe(t, path)
	got := waitMessages(t, hosts["127.0.0.2"], 1)
	if !strings.Contains(string(got[0].Data), "backup done") || !strings.Contains(string(got[0].Data), fmt.Sprintf("(uid %d)", nobodyUID)) {
		t.Errorf("imported message:\n%s", got[0].Data)
	}
	testpeer.WaitFor(t, "the maildrop emptied", func() bool {
		files, err := listMaildrop(filepath.Join(state, maildropSubdir), time.Now())
		return err == nil && len(files) == 0
	})
}

// copyTestBinary copies the running test binary (which acts as mta when
// asMTAEnv is set) to path, executable by anyone.
func copyTestBinary(t *testing.T, path string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}
