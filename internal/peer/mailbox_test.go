package peer

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

func TestMailboxAppend(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"CRLF kept", "a\r\nb\r\n", "a\r\nb\r\n"},
		{"bare LF becomes CRLF", "a\nb\n", "a\r\nb\r\n"},
		{"mixed", "a\r\nb\nc\r\n", "a\r\nb\r\nc\r\n"},
		{"last line gets its CRLF", "a\r\nb", "a\r\nb\r\n"},
		{"a trailing CR is completed", "a\r", "a\r\n"},
		{"bare CR inside a line stays", "a\rb\n", "a\rb\r\n"},
		{"leading LF", "\nx", "\r\n" + "x\r\n"},
		{"empty stays empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			box := NewMailbox()
			in := []byte(tt.in)
			uid := box.Append(in)
			for i := range in {
				in[i] = 'X' // the mailbox keeps its own copy
			}
			m, ok := box.Get(uid)
			if !ok {
				t.Fatalf("Get(%q) found nothing", uid)
			}
			if string(m.Data) != tt.want {
				t.Errorf("stored %q, want %q", m.Data, tt.want)
			}
		})
	}
}

func TestMailboxUIDs(t *testing.T) {
	a, b := NewMailbox(), NewMailbox()
	u1, u2, u3 := a.Append([]byte("1")), a.Append([]byte("2")), a.Append([]byte("3"))
	if u1 == u2 || u2 == u3 || u1 == u3 {
		t.Fatalf("UIDs repeat: %q %q %q", u1, u2, u3)
	}
	if ub := b.Append([]byte("1")); ub == u1 {
		t.Errorf("two mailboxes gave the same UID %q", ub)
	}
	for _, u := range []string{u1, u2, u3} {
		if len(u) < 1 || len(u) > 70 || strings.ContainsFunc(u, func(r rune) bool { return r < 0x21 || r > 0x7e }) {
			t.Errorf("UID %q is not 1-70 printable characters (RFC 1939 §7)", u)
		}
	}
	if n := a.Delete(u2, "no-such-uid"); n != 1 {
		t.Errorf("Delete removed %d, want 1", n)
	}
	if _, ok := a.Get(u2); ok {
		t.Error("deleted message still there")
	}
	u4 := a.Append([]byte("4"))
	var got []string
	for _, m := range a.List() {
		got = append(got, m.UID)
	}
	if want := []string{u1, u3, u4}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("List UIDs %v, want %v (order kept, UIDs not reused)", got, want)
	}
}

func TestMailboxListIsASnapshot(t *testing.T) {
	box := NewMailbox()
	u := box.Append([]byte("a"))
	list := box.List()
	box.Delete(u)
	box.Append([]byte("b"))
	if len(list) != 1 || list[0].UID != u || string(list[0].Data) != "a\r\n" {
		t.Errorf("earlier List changed: %+v", list)
	}
}

// TestMailboxConcurrent appends, lists and deletes from several goroutines;
// run under -race it checks the locking, and no message may be lost or
// doubled.
func TestMailboxConcurrent(t *testing.T) {
	box := NewMailbox()
	const writers, each = 4, 100
	var wg sync.WaitGroup
	uids := make(chan string, writers*each)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				uids <- box.Append(fmt.Appendf(nil, "%d-%d", w, i))
				_ = box.List() // exercise readers alongside writers
			}
		})
	}
	wg.Wait()
	close(uids)
	seen := map[string]bool{}
	var odd []string
	for u := range uids {
		if seen[u] {
			t.Fatalf("UID %q given twice", u)
		}
		seen[u] = true
		if len(seen)%2 == 1 {
			odd = append(odd, u)
		}
	}
	if n := box.Delete(odd...); n != len(odd) {
		t.Errorf("Delete removed %d, want %d", n, len(odd))
	}
	if n := len(box.List()); n != writers*each-len(odd) {
		t.Errorf("%d messages left, want %d", n, writers*each-len(odd))
	}
}
