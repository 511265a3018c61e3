package main

import (
	"bufio"
	"bytes"
	"net"
	"testing"
	"time"
)

// bytesConn is a connection whose client sent in and then closed: what
// the session writes is kept in out.
type bytesConn struct {
	net.Conn // nil: only the methods below are used
	in       *bytes.Reader
	out      bytes.Buffer
}

func (c *bytesConn) Read(p []byte) (int, error)      { return c.in.Read(p) }
func (c *bytesConn) Write(p []byte) (int, error)     { return c.out.Write(p) }
func (c *bytesConn) SetDeadline(time.Time) error     { return nil }
func (c *bytesConn) SetReadDeadline(time.Time) error { return nil }

// FuzzSinkSession feeds raw client bytes to a sink session: it must end
// when the client does, never panic, answer only well-formed reply lines,
// and report arrivals only for messages it read to the final dot.
func FuzzSinkSession(f *testing.F) {
	f.Add([]byte("EHLO a\r\nMAIL FROM:<s@a>\r\nRCPT TO:<r0@b>\r\nDATA\r\nX-Bench-Id: t-1\r\n\r\nbody\r\n.\r\nQUIT\r\n"))
	f.Add([]byte("MAIL FROM:<>\r\nRCPT TO:<r3@b>\r\nRCPT TO:<x@b>\r\nDATA\r\nx-bench-id:t-9\r\n\r\n..dot\r\n.\n"))
	f.Add([]byte("DATA\r\nRCPT TO:<r@b>\r\nRCPT TO:<r99999999999999999999@b>\r\nDATA\r\n" + string(bytes.Repeat([]byte("y"), 9000)) + "\r\n.\r\n"))
	f.Add([]byte("HELO\r\nNOOP\r\nRSET\r\nVRFY x\r\n\r\n\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		arrivals := 0
		s := &sinks{opts: sinkOptions{Arrive: func(string, int, int, time.Time) { arrivals++ }}}
		c := &bytesConn{in: bytes.NewReader(in)}
		ss := &sinkSession{h: &sinkHost{s: s}, c: c, rd: bufio.NewReaderSize(c, 8192), wr: bufio.NewWriterSize(c, 4096)}
		_ = ss.run() // ends at the end of the input
		out := c.out.Bytes()
		for _, line := range bytes.SplitAfter(out, []byte("\r\n")) {
			if len(line) == 0 {
				continue
			}
			if len(line) < 6 || line[0] < '2' || line[0] > '5' || !bytes.HasSuffix(line, []byte("\r\n")) {
				t.Fatalf("malformed reply line %q", line)
			}
		}
		if dots := bytes.Count(in, []byte("\n.")) + bytes.Count(in, []byte(".\r\n")); arrivals > 0 && dots == 0 {
			t.Fatalf("%d arrivals without a final dot in the input", arrivals)
		}
	})
}
