package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseSendmailArgs(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want sendmailArgs
		err  bool
	}{
		{"recipients only", []string{"a@example.org", "b"}, sendmailArgs{rcpts: []string{"a@example.org", "b"}}, false},
		{"cron style", []string{"-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"}, sendmailArgs{fullName: "CronDaemon", ignoreDot: true, rcpts: []string{"root"}}, false},
		{"separate values", []string{"-t", "-f", "<me@example.org>", "-F", "Me Myself", "-oi"}, sendmailArgs{extract: true, sender: "me@example.org", fullName: "Me Myself", ignoreDot: true}, false},
		{"attached -f and --", []string{"-fme@example.org", "--", "-odd@example.org"}, sendmailArgs{sender: "me@example.org", rcpts: []string{"-odd@example.org"}}, false},
		{"config file", []string{"-C", "/etc/x.yaml", "a@example.org"}, sendmailArgs{config: "/etc/x.yaml", rcpts: []string{"a@example.org"}}, false},
		{"null sender", []string{"-f", "<>", "a@example.org"}, sendmailArgs{nullSender: true, rcpts: []string{"a@example.org"}}, false},
		{"missing value", []string{"-f"}, sendmailArgs{}, true},
		{"daemon mode refused", []string{"-bd"}, sendmailArgs{}, true},
		{"unknown option", []string{"-Z"}, sendmailArgs{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseSendmailArgs(tt.args)
			if (err != nil) != tt.err {
				t.Fatalf("err = %v, want error %v", err, tt.err)
			}
			if !tt.err && !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestReadSendmailInput(t *testing.T) {
	in := "Subject: x\n\nline\r\n.\nafter\n"
	got, err := readSendmailInput(strings.NewReader(in), false)
	if err != nil || string(got) != "Subject: x\r\n\r\nline\r\n" {
		t.Errorf("dot ends input: %q, %v", got, err)
	}
	got, _ = readSendmailInput(strings.NewReader(in), true)
	if string(got) != "Subject: x\r\n\r\nline\r\n.\r\nafter\r\n" {
		t.Errorf("-i keeps the dot: %q", got)
	}
	got, _ = readSendmailInput(strings.NewReader("no newline at end"), true)
	if string(got) != "no newline at end\r\n" {
		t.Errorf("last line: %q", got)
	}
}

func TestBuildSubmission(t *testing.T) {
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	msg := []byte("To: a@example.org, Bob <b@example.net>\r\nCc: c\r\nBcc: secret@example.com,\r\n  other@example.com\r\nSubject: hi\r\n\r\nbody\r\n")
	sub, err := buildSubmission(sendmailArgs{extract: true, fullName: "Cron Daemon", rcpts: []string{"x@example.org"}}, msg, "alice", "host.example.test", now)
	if err != nil {
		t.Fatal(err)
	}
	wantRcpts := []string{"x@example.org", "a@example.org", "b@example.net", "c@host.example.test", "secret@example.com", "other@example.com"}
	if !reflect.DeepEqual(sub.Rcpts, wantRcpts) {
		t.Errorf("rcpts = %v, want %v", sub.Rcpts, wantRcpts)
	}
	data := string(sub.Data)
	for _, want := range []string{"From: \"Cron Daemon\" <alice@host.example.test>\r\n", "Date: Wed, 25 Nov 2026 10:00:00 +0000\r\n", "Message-ID: <20261125100000.", "@host.example.test>\r\n", "Subject: hi\r\n\r\nbody\r\n"} {
		if !strings.Contains(data, want) {
			t.Errorf("message lacks %q:\n%s", want, data)
		}
	}
	if strings.Contains(data, "secret") || strings.Contains(data, "Bcc") {
		t.Errorf("Bcc survived:\n%s", data)
	}
	if sub.From != "alice@host.example.test" || !sub.OwnSender {
		t.Errorf("envelope sender = %q (own %v), want the user's alice@host.example.test", sub.From, sub.OwnSender)
	}
	sub, err = buildSubmission(sendmailArgs{nullSender: true, rcpts: []string{"x@example.org"}}, msg, "alice", "host.example.test", now)
	if err != nil || sub.From != "" || sub.OwnSender || !strings.Contains(string(sub.Data), "From: <alice@host.example.test>\r\n") {
		t.Errorf("-f '<>': envelope sender %q (own %v), %v\n%s", sub.From, sub.OwnSender, err, sub.Data)
	}

	kept := []byte("From: me@example.org\r\nDate: x\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n")
	sub, err = buildSubmission(sendmailArgs{rcpts: []string{"root"}, sender: "me@example.org"}, kept, "alice", "h.example", now)
	if err != nil || string(sub.Data) != string(kept) || sub.Rcpts[0] != "root@h.example" || sub.From != "me@example.org" {
		t.Errorf("existing headers changed or rcpt not qualified: %+v %v", sub, err)
	}
	if _, err := buildSubmission(sendmailArgs{}, kept, "alice", "h.example", now); err == nil {
		t.Error("no recipients accepted")
	}
}

func TestMaildropRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "maildrop")
	if err := ensureMaildrop(dir); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o733 {
		t.Fatalf("maildrop mode = %v, %v", fi.Mode(), err)
	}
	sub := &submission{From: "a@example.org", Rcpts: []string{"b@example.org", "c@example.net"}, Data: []byte("Subject: x\r\n\r\nhello\r\n")}
	path, err := writeMaildrop(dir, sub, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// A stale partial write is swept, a fresh one left alone.
	stale := filepath.Join(dir, "tmp.old")
	writeFile(t, stale, "partial")
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "tmp.new"), "partial")
	files, err := listMaildrop(dir, time.Now())
	if err != nil || len(files) != 1 || files[0] != path {
		t.Fatalf("listMaildrop = %v, %v", files, err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Error("stale tmp file not removed")
	}
	e, err := readMaildrop(path)
	if err != nil {
		t.Fatal(err)
	}
	if e.UID != os.Getuid() || !reflect.DeepEqual(e.Sub, *sub) {
		t.Errorf("read back %+v uid %d", e.Sub, e.UID)
	}
	writeFile(t, filepath.Join(dir, "junk"), "hello\n")
	if _, err := readMaildrop(filepath.Join(dir, "junk")); err == nil {
		t.Error("junk file parsed")
	}
}

func TestReadSendmailInputLongLines(t *testing.T) {
	long := strings.Repeat("x", 2500)
	got, err := readSendmailInput(strings.NewReader("Subject: "+long+"\n\n"+long+"\n"), true)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(got), "\r\n"), "\r\n")
	var rebuilt strings.Builder
	for i, l := range lines {
		if len(l) > maxLineOctets {
			t.Fatalf("line %d has %d octets", i, len(l))
		}
		if i > 0 && i < 3 && !strings.HasPrefix(l, " ") {
			t.Errorf("header continuation %d not folded: %.20q", i, l)
		}
		rebuilt.WriteString(strings.TrimPrefix(l, " "))
	}
	if want := "Subject: " + long + long; rebuilt.String() != want {
		t.Errorf("content changed when wrapping (%d octets, want %d)", rebuilt.Len(), len(want))
	}
}
