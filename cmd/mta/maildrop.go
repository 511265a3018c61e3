package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// The maildrop is where `mta sendmail` leaves a message when the daemon is
// down: a world-writable, sticky, unlistable directory (mode 1733, like
// Postfix's maildrop). Each file is written under a "tmp." name, fsynced,
// renamed, and the directory fsynced; the daemon imports finished files at
// start and while it runs, taking the submitter's uid from the file owner.
const maildropMagic = "X-Mta-Maildrop: 1"

// Prefixes of maildrop files the daemon set aside: unreadable, or refused
// for good by the intake. Scans skip them.
const (
	maildropBad      = "bad."
	maildropRejected = "rejected."
)

// writeMaildrop stores sub in dir and returns the file's path.
func writeMaildrop(dir string, sub *submission, now time.Time) (string, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s\nMail-From: <%s>\n", maildropMagic, sub.From)
	for _, r := range sub.Rcpts {
		if strings.ContainsAny(r, "\r\n") {
			return "", fmt.Errorf("recipient %q has a line break", r)
		}
		fmt.Fprintf(&b, "Rcpt-To: <%s>\n", r)
	}
	b.WriteString("\n")
	b.Write(sub.Data)

	name := fmt.Sprintf("%s.%d.%s", now.UTC().Format("20060102T150405"), os.Getpid(), randomHex(6))
	tmp := filepath.Join(dir, "tmp."+name)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	_, err = f.Write(b.Bytes())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	final := filepath.Join(dir, name)
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err == nil {
		err = syncDir(dir)
		if errors.Is(err, fs.ErrPermission) {
			// An ordinary user may create files in the maildrop (mode
			// 1733) but not open it to fsync the new entry. The file's
			// own data is on disk; the entry is as durable as the file
			// system makes a rename, and the message is there now.
			err = nil
		}
	}
	if err != nil {
		_ = os.Remove(tmp) // best effort; the daemon sweeps stale tmp files
		return "", err
	}
	return final, nil
}

// maildropEntry is a parsed maildrop file.
type maildropEntry struct {
	Path string
	UID  int
	Sub  submission
}

// readMaildrop parses one finished maildrop file.
func readMaildrop(path string) (*maildropEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil, errors.New("no owner information")
	}
	e := &maildropEntry{Path: path, UID: int(st.Uid)}
	br := bufio.NewReader(io.LimitReader(f, 1<<40))
	first, err := br.ReadString('\n')
	if err != nil || strings.TrimRight(first, "\n") != maildropMagic {
		return nil, errors.New("not a maildrop file")
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return nil, errors.New("truncated envelope")
		}
		line = strings.TrimRight(line, "\n")
		if line == "" {
			break
		}
		key, val, _ := strings.Cut(line, ": ")
		val = strings.TrimSuffix(strings.TrimPrefix(val, "<"), ">")
		switch key {
		case "Mail-From":
			e.Sub.From = val
		case "Rcpt-To":
			e.Sub.Rcpts = append(e.Sub.Rcpts, val)
		default:
			return nil, fmt.Errorf("unknown envelope field %q", key)
		}
	}
	if len(e.Sub.Rcpts) == 0 {
		return nil, errors.New("no recipients")
	}
	if e.Sub.Data, err = io.ReadAll(br); err != nil {
		return nil, err
	}
	return e, nil
}

// listMaildrop returns the finished files in dir, oldest first, and
// removes "tmp." files older than an hour (a sendmail killed mid-write).
func listMaildrop(dir string, now time.Time) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		if strings.HasPrefix(e.Name(), maildropBad) || strings.HasPrefix(e.Name(), maildropRejected) {
			continue
		}
		if strings.HasPrefix(e.Name(), "tmp.") {
			if fi, err := e.Info(); err == nil && now.Sub(fi.ModTime()) > time.Hour {
				_ = os.Remove(filepath.Join(dir, e.Name())) // stale partial write
			}
			continue
		}
		out = append(out, filepath.Join(dir, e.Name()))
	}
	return out, nil // ReadDir sorts by name, and names start with the time
}

// ensureMaildrop makes dir with mode 1733 (chmod, since umask would strip
// the bits).
func ensureMaildrop(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.Chmod(dir, os.ModeSticky|0o733)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
