package delivery

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// textprotoDot is the message as go-smtp's client sends it: through
// textproto's DotWriter, in the blocks io.Copy reads.
func textprotoDot(t testing.TB, body []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	dw := textproto.NewWriter(bw).DotWriter()
	if _, err := io.Copy(dw, readerOnly{bytes.NewReader(body)}); err != nil {
		t.Fatal(err)
	}
	if err := dw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// ourDot is the message as the wire sends it, fed in blocks of block octets.
func ourDot(t testing.TB, body []byte, block int) []byte {
	t.Helper()
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	dw := &dotWriter{w: bw}
	for p := body; len(p) > 0; {
		n := min(block, len(p))
		if _, err := dw.Write(p[:n]); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
	dw.close()
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func TestDotWriter(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"empty", "", "\r\n.\r\n"},
		{"crlf_lines", "a\r\nb\r\n", "a\r\nb\r\n.\r\n"},
		{"no_final_line_break", "a\r\nb", "a\r\nb\r\n.\r\n"},
		{"ends_in_cr", "a\r", "a\r\n.\r\n"},
		{"leading_dots_doubled", ".a\r\n..b\r\n.\r\nc.d\r\n", "..a\r\n...b\r\n..\r\nc.d\r\n.\r\n"},
		{"bare_lf_made_crlf", "a\nb\n.c\n", "a\r\nb\r\n..c\r\n.\r\n"},
		{"bare_cr_kept", "a\rb\r\n\r.x\r\n", "a\rb\r\n\r.x\r\n.\r\n"},
		{"cr_cr_lf_unchanged", "a\r\r\nb\r\n", "a\r\r\nb\r\n.\r\n"}, // textproto sends a\r\r\r\n
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, block := range []int{1, 2, 3, 4096} {
				if got := string(ourDot(t, []byte(tc.in), block)); got != tc.want {
					t.Errorf("blocks of %d: %q, want %q", block, got, tc.want)
				}
			}
		})
	}
}

// FuzzDotWriter checks the wire sends what go-smtp's client sent (through
// textproto's DotWriter) for any body, in any blocks, apart from the one
// place textproto changes the stored bytes: it puts a CR before the LF of
// CR CR LF.
func FuzzDotWriter(f *testing.F) {
	for _, s := range []string{"", "a\r\n.b\r\n", ".\r\n", "x\n.\n", "\r.\r\n.", "a\r\r\n"} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, body []byte, block uint8) {
		if bytes.Contains(body, []byte("\r\r")) {
			return
		}
		got, want := ourDot(t, body, int(block)+1), textprotoDot(t, body)
		if !bytes.Equal(got, want) {
			t.Errorf("%q in blocks of %d: sent %q, textproto %q", body, int(block)+1, got, want)
		}
	})
}

// BenchmarkDotWriter compares the body's way out: textproto's DotWriter
// (octet by octet, as go-smtp's client sent it) and the wire's, for the
// bench's 2 KiB message and a 100 KB one.
func BenchmarkDotWriter(b *testing.B) {
	line := strings.Repeat("x", 76) + "\r\n"
	for _, size := range []int{2 * 1024, 100 * 1000} {
		body := []byte(strings.Repeat(line, size/len(line)+1)[:size])
		bw := bufio.NewWriterSize(io.Discard, wireWriteBytes)
		buf := make([]byte, bodyCopyBytes)
		name := "2KiB"
		if size > 4096 {
			name = "100KB"
		}
		b.Run("textproto/"+name, func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				dw := textproto.NewWriter(bw).DotWriter()
				_, _ = io.CopyBuffer(dw, readerOnly{bytes.NewReader(body)}, buf)
				_ = dw.Close()
			}
		})
		b.Run("wire/"+name, func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				dw := &dotWriter{w: bw}
				_, _ = io.CopyBuffer(dw, readerOnly{bytes.NewReader(body)}, buf)
				dw.close()
				_ = bw.Flush()
			}
		})
	}
}

// replayConn is a connection that reads from a script and discards writes.
type replayConn struct {
	net.Conn
	r io.Reader
}

func (c replayConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c replayConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c replayConn) Close() error                     { return nil }
func (c replayConn) SetDeadline(time.Time) error      { return nil }
func (c replayConn) SetReadDeadline(time.Time) error  { return nil }
func (c replayConn) SetWriteDeadline(time.Time) error { return nil }

// goSMTPReply is how go-smtp's client takes b as the reply to MAIL.
func goSMTPReply(b []byte) error {
	c := smtp.NewClient(replayConn{r: io.MultiReader(strings.NewReader("220 x\r\n250 x\r\n"), bytes.NewReader(b))})
	if err := c.Hello("mta.test"); err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	return c.Mail("a@b.test", nil)
}

func wireReply(b []byte, expect int) (string, error) {
	w := newWire(replayConn{r: bytes.NewReader(b)}, nil)
	return w.reply(expect)
}

// FuzzWireReply checks the wire reads any reply as go-smtp's client did:
// the same success, or the same *smtp.SMTPError (code, enhanced code,
// text), or both some other error. Lines past 1000 octets are left out:
// the two line limits count a little differently.
func FuzzWireReply(f *testing.F) {
	for _, s := range []string{"250 2.1.0 ok\r\n", "250-a\r\n250 b\r\n", "550 5.1.1 no\r\n", "550-5.1.1 a\r\n550 5.1.1 b\r\n",
		"451 try later\r\n", "421 4.3.2 bye\r\n", "250\r\n", "25 x\r\n", "251 2.1.5 ok\r\n", "250-a\r\n251 b\r\n", "550 5.1 x\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, l := range bytes.Split(b, []byte("\n")) {
			if len(l) > 1000 {
				return
			}
		}
		_, got := wireReply(b, 250)
		want := goSMTPReply(b)
		var gse, wse *smtp.SMTPError
		switch {
		case got == nil && want == nil:
		case errors.As(got, &gse) && errors.As(want, &wse):
			if gse.Code != wse.Code || gse.EnhancedCode != wse.EnhancedCode || gse.Message != wse.Message {
				t.Errorf("%q: wire %#v, go-smtp %#v", b, gse, wse)
			}
		case got != nil && want != nil && gse == nil && wse == nil:
		default:
			t.Errorf("%q: wire says %v, go-smtp %v", b, got, want)
		}
	})
}

func TestWireReplyLineLimit(t *testing.T) {
	long := "250 " + strings.Repeat("x", replyLineBytes) + "\r\n"
	if _, err := wireReply([]byte(long), 250); !errors.Is(err, errReplyLineTooLong) {
		t.Errorf("a %d-octet line read with err %v", len(long), err)
	}
	ok := "250-" + strings.Repeat("x", replyLineBytes-10) + "\r\n250 " + strings.Repeat("y", replyLineBytes-10) + "\r\n"
	if text, err := wireReply([]byte(ok), 250); err != nil || len(text) < 2*(replyLineBytes-10) {
		t.Errorf("long lines within the limit: %d octets, err %v", len(text), err)
	}
}
