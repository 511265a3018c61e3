package delivery

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// silentPeer accepts one connection on loopback and neither reads nor
// writes until the test ends.
func silentPeer(t *testing.T) net.Conn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	srv := <-accepted
	if tc, ok := srv.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(4096) // fill up quickly when it stops reading
	}
	t.Cleanup(func() { c.Close(); srv.Close() })
	return c
}

func TestDeadlineConnWins(t *testing.T) {
	tests := []struct {
		name string
		run  func(c *deadlineConn) error
	}{
		{"cleared_read_deadline_still_times_out", func(c *deadlineConn) error {
			c.setPhase(phaseMail, 50*time.Millisecond)
			_ = c.SetDeadline(time.Time{}) // what go-smtp does after each command
			_, err := c.Read(make([]byte, 10))
			return err
		}},
		{"longer_deadline_is_tightened", func(c *deadlineConn) error {
			c.setPhase(phaseRcpt, 50*time.Millisecond)
			_ = c.SetReadDeadline(time.Now().Add(time.Hour))
			_, err := c.Read(make([]byte, 10))
			return err
		}},
		{"blocked_body_write_times_out", func(c *deadlineConn) error {
			c.setStreamPhase(phaseData, 50*time.Millisecond)
			_ = c.SetDeadline(time.Time{}) // go-smtp writes the body with none
			block := make([]byte, 1<<20)
			for range 1024 { // bounded: 1 GiB never fits in socket buffers
				if _, err := c.Write(block); err != nil {
					return err
				}
			}
			return nil
		}},
		{"greeting_then_ehlo_on_first_write", func(c *deadlineConn) error {
			c.setPhase(phaseGreeting, time.Hour)
			c.thenOnWrite(phaseEHLO, 50*time.Millisecond)
			if _, err := c.Write([]byte("EHLO x\r\n")); err != nil {
				return err
			}
			if p := c.currentPhase(); p != phaseEHLO {
				t.Errorf("phase %q after the first write, want ehlo", p)
			}
			_, err := c.Read(make([]byte, 10))
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newDeadlineConn(t.Context(), silentPeer(t))
			if err := tc.run(c); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("err = %v, want a deadline error", err)
			}
		})
	}
}

func TestDeadlineConnClosesWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	closed := make(chan struct{})
	c := newDeadlineConn(ctx, silentPeer(t))
	c.onClose = func() { close(closed) }
	c.setPhase(phaseMail, time.Hour)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 10))
		errc <- err
	}()
	cancel()
	if err := <-errc; err == nil {
		t.Errorf("read returned no error after the context ended")
	}
	c.shut()
	<-closed
}
