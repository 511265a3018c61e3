package smtpd

import (
	"crypto/tls"
	"io"
	"net"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"mta/spool"
)

// BenchmarkSession measures whole sessions over loopback into a real spool
// (fsynced unless the name says nosync): connect, EHLO, (TLS and AUTH),
// MAIL, RCPT, DATA of a 4 KiB message, QUIT; one message per session.
// The test user's bcrypt cost is the minimum, so AUTH costs little here.
//
// Besides time it reports two figures that a busy machine disturbs less:
// writes/msg, the Write calls the server made on its sockets (each one a
// write(2)), counted by a wrapper under the listener; and cpu-us/msg, the
// CPU time of the whole process (server, client and spool) per message.
func BenchmarkSession(b *testing.B) {
	msg := "From: <zbird1@163.example>\r\nTo: <rcpt@example.test>\r\nSubject: bench\r\n\r\n" + stringsRepeatLines(55, 70)
	cases := []struct {
		name     string
		kind     Kind
		parallel bool
		noSync   bool
	}{
		{"relay", Relay, false, false},
		{"relay_parallel", Relay, true, false},
		{"relay_nosync", Relay, false, true},
		{"submissions_tls_auth", Submissions, false, false},
		{"submissions_tls_auth_parallel", Submissions, true, false},
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			var writes atomic.Int64
			setup := testSetup{
				spool: spool.Options{UnsafeNoSync: bc.noSync},
				wrap:  func(ln net.Listener) net.Listener { return countingListener{ln, &writes} },
			}
			ts := startTestServer(b, setup, func(c *Config) {
				c.Limits.ConnsPerIP = 10000
				c.Limits.UserMessagesPerDay = 1 << 30
				c.Limits.UserRecipientsPerHour = 1 << 30
			})
			b.ReportAllocs()
			b.SetBytes(int64(len(msg)))
			writes0 := writes.Load()
			cpu0, cpuOK := processCPU()
			if bc.parallel {
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := benchOne(ts, bc.kind, msg); err != nil {
							b.Error(err)
							return
						}
					}
				})
			} else {
				for b.Loop() {
					if err := benchOne(ts, bc.kind, msg); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			b.ReportMetric(float64(writes.Load()-writes0)/float64(b.N), "writes/msg")
			if cpu1, ok := processCPU(); ok && cpuOK {
				b.ReportMetric(float64((cpu1-cpu0).Microseconds())/float64(b.N), "cpu-us/msg")
			}
		})
	}
}

// countingListener counts the Write calls on the server's side of the
// connections it accepts.
type countingListener struct {
	net.Listener
	writes *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{c, l.writes}, nil
}

type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

func benchOne(ts *testServer, kind Kind, msg string) error {
	conn, err := net.Dial("tcp", ts.addr[kind])
	if err != nil {
		return err
	}
	if kind == Submissions {
		conn = tls.Client(conn, ts.clientTLS())
	}
	c := smtp.NewClient(conn)
	defer c.Close()
	if err := c.Hello("bench.test"); err != nil {
		return err
	}
	if kind == Submissions {
		if err := c.Auth(sasl.NewPlainClient("", testLogin, testPassword)); err != nil {
			return err
		}
	}
	if err := c.Mail("zbird1@163.example", nil); err != nil {
		return err
	}
	if err := c.Rcpt("rcpt@example.test", nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, msg); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}
