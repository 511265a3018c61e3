package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sys/unix"
)

// openPTY opens a pseudo-terminal: the master end the test types on, and
// the slave end the command reads as its terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { _ = master.Close() })
	rc, err := master.SyscallConn() // not Fd(): the master stays non-blocking, so deadlines work
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var ioctlErr error
	if err := rc.Control(func(fd uintptr) {
		if ioctlErr = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); ioctlErr == nil {
			n, ioctlErr = unix.IoctlGetInt(int(fd), unix.TIOCGPTN)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if ioctlErr != nil {
		t.Fatalf("unlocking the pty: %v", ioctlErr)
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = slave.Close() })
	return master, slave
}

// typePasswords runs `mta user ARGS` with the pty as its stdin and, once
// the terminal's echo is off, types input. It returns what the command wrote
// its stderr and everything the terminal echoed, then the command's error.
func typePasswords(t *testing.T, input string, args ...string) (prompts, screen string, err error) {
	t.Helper()
	master, slave := openPTY(t)
	probe, perr := os.OpenFile(slave.Name(), os.O_RDWR|unix.O_NOCTTY, 0) // reads the termios
	if perr != nil {
		t.Fatal(perr)
	}
	defer probe.Close()
	var out, errOut bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(context.Background(), append([]string{"mta", "user"}, args...), Stdio{In: slave, Out: &out, Err: &errOut})
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		tio, err := unix.IoctlGetTermios(int(probe.Fd()), unix.TCGETS)
		if err != nil {
			t.Fatal(err)
		}
		if tio.Lflag&unix.ECHO == 0 {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("the command ended before reading a password: %v\n%s", err, errOut.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the terminal's echo was never turned off")
		}
		time.Sleep(2 * time.Millisecond)
	}
	if _, err := master.WriteString(input); err != nil {
		t.Fatal(err)
	}
	var runErr error
	select {
	case runErr = <-done:
	case <-time.After(time.Minute):
		t.Fatal("the command is still waiting for the password")
	}
	// Echo is back on now: a marker line typed after the command comes
	// back after whatever was echoed before it.
	if _, err := master.WriteString("MARKER\n"); err != nil {
		t.Fatal(err)
	}
	_ = master.SetReadDeadline(time.Now().Add(20 * time.Second)) // a hung test fails instead
	var shown []byte
	buf := make([]byte, 4096)
	for !bytes.Contains(shown, []byte("MARKER")) {
		n, err := master.Read(buf)
		if err != nil {
			t.Fatalf("reading the terminal: %v (so far %q)", err, shown)
		}
		shown = append(shown, buf[:n]...)
	}
	return errOut.String(), string(shown), runErr
}

func TestUserPasswordFromTerminal(t *testing.T) {
	file := filepath.Join(t.TempDir(), "users")
	t.Run("asked twice without echo", func(t *testing.T) {
		prompts, screen, err := typePasswords(t, "tty secret\ntty secret\n", "add", "--file", file, "tty", "--address", "t@example.test", "--cost", "4")
		if err != nil {
			t.Fatalf("%v\n%s", err, prompts)
		}
		if !strings.Contains(prompts, "New password: ") || !strings.Contains(prompts, "Again: ") {
			t.Errorf("prompts %q", prompts)
		}
		if strings.Contains(screen, "secret") {
			t.Errorf("the terminal showed the password: %q", screen)
		}
		u, ok := readUsers(t, file).Lookup("tty")
		if !ok || bcrypt.CompareHashAndPassword([]byte(u.Hash), []byte("tty secret")) != nil {
			t.Errorf("stored user %+v does not have the typed password", u)
		}
	})
	t.Run("two different passwords change nothing", func(t *testing.T) {
		before, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = typePasswords(t, "one\ntwo\n", "passwd", "--file", file, "tty", "--cost", "4")
		if err == nil || !strings.Contains(err.Error(), "differ") {
			t.Fatalf("got %v, want the passwords differ", err)
		}
		if after, _ := os.ReadFile(file); !bytes.Equal(after, before) {
			t.Error("the users file changed")
		}
	})
	t.Run("never from the command line", func(t *testing.T) {
		if _, _, err := runUserCmd(t, "pw\n", "add", "--file", file, "argv", "--address", "a@example.test", "--password", "pw"); err == nil {
			t.Error("a --password flag was accepted")
		}
		if _, ok := readUsers(t, file).Lookup("argv"); ok {
			t.Error("the user was added")
		}
	})
}
