package peer

import (
	"bytes"
	"crypto/rand"
	"strconv"
	"sync"
)

// MailboxMessage is one message in a Mailbox.
type MailboxMessage struct {
	// UID is unique within the mailbox and never reused: 1 to 70 printable
	// ASCII characters (RFC 1939 §7, UIDL). A random part per mailbox keeps
	// a client that remembers UIDs from an earlier run from confusing them.
	UID string
	// Data is the message with CRLF line ends, ending in CRLF (unless
	// empty); its length is the size POP3 reports. It is shared: never
	// modify it.
	Data []byte
}

// Mailbox holds the messages a host received, in arrival order. It is safe
// for concurrent use: the SMTP peer appends while POP3 sessions read.
type Mailbox struct {
	prefix string

	mu     sync.Mutex
	seq    uint64
	msgs   []MailboxMessage
	locked bool // a POP3 session holds the maildrop (RFC 1939 §4)
}

// NewMailbox returns an empty mailbox.
func NewMailbox() *Mailbox {
	return &Mailbox{prefix: rand.Text()[:10]}
}

// Append stores a copy of data as a new message, with every line end made
// CRLF and a final CRLF added when missing, and returns its UID.
func (m *Mailbox) Append(data []byte) string {
	msg := canonicalCRLF(data)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seq++
	uid := m.prefix + "." + strconv.FormatUint(m.seq, 10)
	m.msgs = append(m.msgs, MailboxMessage{UID: uid, Data: msg})
	return uid
}

// List returns the messages in arrival order. The slice is the caller's;
// the Data it points to is shared.
func (m *Mailbox) List() []MailboxMessage {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]MailboxMessage(nil), m.msgs...)
}

// Get returns the message with this UID, if it is still there.
func (m *Mailbox) Get(uid string) (MailboxMessage, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, msg := range m.msgs {
		if msg.UID == uid {
			return msg, true
		}
	}
	return MailboxMessage{}, false
}

// Delete removes the messages with these UIDs and returns how many it
// found. The other messages keep their UIDs and order.
func (m *Mailbox) Delete(uids ...string) int {
	gone := make(map[string]bool, len(uids))
	for _, u := range uids {
		gone[u] = true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	kept := m.msgs[:0]
	for _, msg := range m.msgs {
		if !gone[msg.UID] {
			kept = append(kept, msg)
		}
	}
	n := len(m.msgs) - len(kept)
	clear(m.msgs[len(kept):]) // drop references to deleted bodies
	m.msgs = kept
	return n
}

// lock takes the maildrop for one POP3 session; it reports false when
// another session holds it.
func (m *Mailbox) lock() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.locked {
		return false
	}
	m.locked = true
	return true
}

func (m *Mailbox) unlock() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.locked = false
}

// canonicalCRLF copies data with every line ending in CRLF: a bare LF
// becomes CRLF, and a last line without an end gets one.
func canonicalCRLF(data []byte) []byte {
	out := make([]byte, 0, len(data)+bytes.Count(data, []byte("\n"))+2)
	for i, c := range data {
		if c == '\n' && (i == 0 || data[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, c)
	}
	if len(out) > 0 && !bytes.HasSuffix(out, []byte("\r\n")) {
		if out[len(out)-1] == '\r' {
			out = append(out, '\n')
		} else {
			out = append(out, '\r', '\n')
		}
	}
	return out
}
