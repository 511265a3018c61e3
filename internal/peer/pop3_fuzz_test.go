package peer

import (
	"bytes"
	"slices"
	"testing"
)

// FuzzPOP3Session runs a whole session from raw client bytes (seed corpus
// in testdata/fuzz/FuzzPOP3Session). Whatever the client sends, the
// session must not panic, must answer in CRLF lines starting with a
// greeting, must leave the mailbox unlocked, and may remove messages only
// when the input holds a QUIT, and only messages that were there.
func FuzzPOP3Session(f *testing.F) {
	f.Add([]byte("USER " + pop3User + "\r\nPASS " + pop3Pass + "\r\nSTAT\r\nRETR 1\r\nDELE 1\r\nQUIT\r\n"))
	f.Fuzz(func(t *testing.T, input []byte) {
		box := NewMailbox()
		for _, m := range pop3Messages {
			box.Append([]byte(m))
		}
		before := box.List()
		srv := NewPOP3(POP3Config{Accounts: map[string]POP3Account{pop3User: {Password: pop3Pass, Mailbox: box}}})
		var out bytes.Buffer
		srv.runSession(bytes.NewReader(input), &out, nil)
		if n := srv.Panics(); n != 0 {
			t.Fatalf("session panicked on %q", input)
		}
		if !box.lock() {
			t.Fatal("mailbox left locked")
		}
		box.unlock()
		if !bytes.HasPrefix(out.Bytes(), []byte("+OK ")) {
			t.Fatalf("no greeting: %q", out.Bytes())
		}
		if bytes.Count(out.Bytes(), []byte("\n")) != bytes.Count(out.Bytes(), []byte("\r\n")) {
			t.Fatalf("a reply line does not end in CRLF: %q", out.Bytes())
		}
		after := box.List()
		if !bytes.Contains(bytes.ToUpper(input), []byte("QUIT")) && len(after) != len(before) {
			t.Fatalf("messages removed without QUIT: %q", input)
		}
		for _, m := range after {
			if !slices.ContainsFunc(before, func(b MailboxMessage) bool { return b.UID == m.UID }) {
				t.Fatalf("unknown message %q after the session", m.UID)
			}
		}
	})
}
