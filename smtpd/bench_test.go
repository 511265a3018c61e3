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
// MAIL, RCPT, DATA of a 4 KiB message (100 KiB where the name says so),
// QUIT; one message per session. The test user's bcrypt cost is the
// minimum, so AUTH costs little here.
//
// Besides time it reports figures that a busy machine disturbs less:
// writes/msg and reads/msg, the Write and Read calls the server made on
// its sockets (each one a system call), counted by a wrapper under the
// listener; and cpu-us/msg, the CPU time of the whole process (server,
// client and spool) per message.
func BenchmarkSession(b *testing.B) {
	head := "From: <zbird1@163.example>\r\nTo: <rcpt@example.test>\r\nSubject: bench\r\n\r\n"
	cases := []struct {
		name     string
		kind     Kind
		parallel bool
		noSync   bool
		lines    int // of 72 octets in the body
	}{
		{"relay", Relay, false, false, 55},
		{"relay_parallel", Relay, true, false, 55},
		{"relay_nosync", Relay, false, true, 55},
		{"relay_nosync_100KiB", Relay, false, true, 1420},
		{"submissions_tls_auth", Submissions, false, false, 55},
		{"submissions_tls_auth_parallel", Submissions, true, false, 55},
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			msg := head + stringsRepeatLines(bc.lines, 70)
			var n socketCalls
			setup := testSetup{
				spool: spool.Options{UnsafeNoSync: bc.noSync},
				wrap:  func(ln net.Listener) net.Listener { return countingListener{ln, &n} },
			}
			ts := startTestServer(b, setup, func(c *Config) {
				c.Limits.ConnsPerIP = 10000
				c.Limits.UserMessagesPerDay = 1 << 30
				c.Limits.UserRecipientsPerHour = 1 << 30
			})
			b.ReportAllocs()
			b.SetBytes(int64(len(msg)))
			writes0, reads0 := n.writes.Load(), n.reads.Load()
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
			b.ReportMetric(float64(n.writes.Load()-writes0)/float64(b.N), "writes/msg")
			b.ReportMetric(float64(n.reads.Load()-reads0)/float64(b.N), "reads/msg")
			if cpu1, ok := processCPU(); ok && cpuOK {
				b.ReportMetric(float64((cpu1-cpu0).Microseconds())/float64(b.N), "cpu-us/msg")
			}
		})
	}
}

// socketCalls counts Read and Write calls on sockets.
type socketCalls struct{ reads, writes atomic.Int64 }

// countingListener counts the calls on the server's side of the
// connections it accepts.
type countingListener struct {
	net.Listener
	n *socketCalls
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{c, l.n}, nil
}

type countingConn struct {
	net.Conn
	n *socketCalls
}

func (c countingConn) Read(p []byte) (int, error) {
	c.n.reads.Add(1)
	return c.Conn.Read(p)
}

func (c countingConn) Write(p []byte) (int, error) {
	c.n.writes.Add(1)
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
