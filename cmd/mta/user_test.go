package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"mta/smtpd"
)

// runUserCmd runs `mta user ARGS...` in-process with stdin as given.
func runUserCmd(t *testing.T, stdin string, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), append([]string{"mta", "user"}, args...), Stdio{In: strings.NewReader(stdin), Out: &out, Err: &errOut})
	return out.String(), errOut.String(), err
}

func readUsers(t *testing.T, path string) *smtpd.Users {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u, err := smtpd.ParseUsers(data)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestUserCommand(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "users")

	t.Run("add creates the file", func(t *testing.T) {
		out, _, err := runUserCmd(t, "s3cret pass\n", "add", "--file", file, "abc", "--address", "zbird1@163.example", "--address", "@Own.Example", "--cost", "4")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "added abc") {
			t.Errorf("output %q", out)
		}
		st, err := os.Stat(file)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o640 {
			t.Errorf("mode %04o, want 0640", st.Mode().Perm())
		}
		u, ok := readUsers(t, file).Lookup("abc")
		if !ok || strings.Join(u.Addresses, ",") != "zbird1@163.example,@own.example" {
			t.Fatalf("user %+v", u)
		}
		if bcrypt.CompareHashAndPassword([]byte(u.Hash), []byte("s3cret pass")) != nil {
			t.Error("the stored hash does not match the password")
		}
	})
	t.Run("add an existing login", func(t *testing.T) {
		if _, _, err := runUserCmd(t, "x\n", "add", "--file", file, "ABC", "--address", "a@example.test", "--cost", "4"); err == nil {
			t.Error("added a second abc")
		}
	})
	t.Run("a login that is an address owns itself", func(t *testing.T) {
		if _, _, err := runUserCmd(t, "pw\n", "add", "--file", file, "--cost", "4", "me@example.test"); err != nil {
			t.Fatal(err)
		}
		if u, _ := readUsers(t, file).Lookup("me@example.test"); len(u.Addresses) != 1 || u.Addresses[0] != "me@example.test" {
			t.Errorf("addresses %q", u.Addresses)
		}
	})
	t.Run("bad input is refused before the password", func(t *testing.T) {
		for _, args := range [][]string{
			{"add", "--file", file, "nobody"},                                   // no address, login not one
			{"add", "--file", file, "bad:login", "--address", "a@example.test"}, // ':' in login
			{"add", "--file", file, "x", "--address", "not an address"},
			{"add", "x", "--address", "a@example.test"}, // no --file
			{"passwd", "--file", file},                  // no login
		} {
			if _, _, err := runUserCmd(t, "pw\n", args...); err == nil {
				t.Errorf("%q accepted", args)
			}
		}
	})
	t.Run("empty password", func(t *testing.T) {
		if _, _, err := runUserCmd(t, "\n", "add", "--file", file, "y", "--address", "y@example.test"); err == nil {
			t.Error("empty password accepted")
		}
	})
	t.Run("passwd keeps addresses and comments", func(t *testing.T) {
		data, _ := os.ReadFile(file)
		if err := os.WriteFile(file, append([]byte("# operator's note\n"), data...), 0o640); err != nil {
			t.Fatal(err)
		}
		if _, _, err := runUserCmd(t, "new pass\r\n", "passwd", "--file", file, "abc", "--cost", "4"); err != nil {
			t.Fatal(err)
		}
		data, _ = os.ReadFile(file)
		if !strings.HasPrefix(string(data), "# operator's note\n") {
			t.Errorf("comment lost:\n%s", data)
		}
		u, _ := readUsers(t, file).Lookup("abc")
		if bcrypt.CompareHashAndPassword([]byte(u.Hash), []byte("new pass")) != nil || len(u.Addresses) != 2 {
			t.Errorf("after passwd: %+v", u)
		}
	})
	t.Run("a tighter mode is kept", func(t *testing.T) {
		if err := os.Chmod(file, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, _, err := runUserCmd(t, "pw3\n", "add", "--file", file, "third", "--address", "t@example.test", "--cost", "4"); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(file)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("mode after add %04o, want 0600", st.Mode().Perm())
		}
		if _, _, err := runUserCmd(t, "", "del", "--file", file, "third"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("list", func(t *testing.T) {
		out, _, err := runUserCmd(t, "", "list", "--file", file)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "abc ") || !strings.Contains(out, "zbird1@163.example, @own.example") || strings.Contains(out, "$2") {
			t.Errorf("list:\n%s", out)
		}
	})
	t.Run("del", func(t *testing.T) {
		if _, _, err := runUserCmd(t, "", "del", "--file", file, "abc"); err != nil {
			t.Fatal(err)
		}
		if _, ok := readUsers(t, file).Lookup("abc"); ok {
			t.Error("abc still there")
		}
		if _, _, err := runUserCmd(t, "", "del", "--file", file, "abc"); err == nil {
			t.Error("deleted twice")
		}
	})
	t.Run("no temporary files left", func(t *testing.T) {
		entries, _ := os.ReadDir(dir)
		if len(entries) != 1 {
			t.Errorf("directory holds %d entries", len(entries))
		}
	})
	t.Run("a group-writable file is refused", func(t *testing.T) {
		if err := os.Chmod(file, 0o660); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{"list", "--file", file}, {"del", "--file", file, "me@example.test"}} {
			_, _, err := runUserCmd(t, "", args...)
			if err == nil || !strings.Contains(err.Error(), "writable by group or others") {
				t.Errorf("%q: %v", args, err)
			}
		}
	})
}
