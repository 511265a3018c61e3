package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"mta/smtpd"
)

// startSockets opens the submit socket (mode 0666: any local user may
// submit; the daemon learns who from SO_PEERCRED) and the admin socket
// (mode 0660, group admin.group; the peer's uid is checked too), and the
// in-process Local intake the maildrop import uses.
func (d *daemonState) startSockets() error {
	submit, err := listenUnix(filepath.Join(d.dirs.Runtime, submitSocket), 0o666, "", d.log)
	if err != nil {
		return fmt.Errorf("submit socket: %w", err)
	}
	d.serve(submit, smtpd.Local)
	d.local = newPipeListener()
	d.serve(d.local, smtpd.Local)

	adminLn, err := listenUnix(filepath.Join(d.dirs.Runtime, adminSocket), 0o660, d.cfg.Admin.Group, d.log)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	d.closes = append(d.closes, func() { _ = adminLn.Close() }) // serve returns when it is closed
	adm := &adminServer{spool: d.sp, kick: d.kick, now: time.Now, log: d.log.With("subsystem", "admin"), allowed: adminAllowed(d.cfg.Admin.Group)}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		adm.serve(adminLn)
	}()
	d.listenOn = append(d.listenOn, "submit="+submit.Addr().String(), "admin="+adminLn.Addr().String())
	return nil
}

// startMetrics serves /metrics and /healthz. Without a config file a busy
// port only costs the metrics; with one it is logged as an error too, but
// mail keeps flowing either way.
func (d *daemonState) startMetrics(ctx context.Context) {
	addr := d.cfg.Metrics.Address
	if addr == "" {
		return
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		d.log.Error("metrics listener: serving mail without metrics", "addr", addr, "err", err)
		return
	}
	d.listenOn = append(d.listenOn, "metrics="+ln.Addr().String())
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.metrics.serve(ctx, ln, d.healthy, d.log)
	}()
}

// healthy reports whether the daemon can take and keep mail: the spool
// answers and still takes writes.
func (d *daemonState) healthy() error {
	if err := d.sp.Err(); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	if _, err := d.sp.Counts(); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	return nil
}

// pipeListener hands in-process connections to a Local smtpd listener.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (p *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-p.conns:
		return c, nil
	case <-p.done:
		return nil, net.ErrClosed
	}
}

func (p *pipeListener) Close() error {
	p.once.Do(func() { close(p.done) })
	return nil
}

func (p *pipeListener) Addr() net.Addr { return pipeAddr{} }

// dial gives the Local intake a connection from uid.
func (p *pipeListener) dial(uid int) (net.Conn, error) {
	client, server := net.Pipe()
	select {
	case p.conns <- &smtpd.LocalConn{Conn: server, UID: uid}:
		return client, nil
	case <-p.done:
		client.Close()
		server.Close()
		return nil, net.ErrClosed
	}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "maildrop" }

// importMaildrop submits the messages `mta sendmail` left while the daemon
// was down, each as its file's owner, through the same intake as the
// submit socket; a file is removed only after its 250. A sender the owner
// may not use is replaced by the owner's own address rather than losing
// the message (the submitter was already told it was queued).
func (d *daemonState) importMaildrop(ctx context.Context) {
	dir := filepath.Join(d.dirs.State, maildropSubdir)
	files, err := listMaildrop(dir, time.Now())
	if err != nil {
		d.log.Error("maildrop", "dir", dir, "err", err)
		return
	}
	for _, f := range files {
		if ctx.Err() != nil {
			return
		}
		if err := d.importOne(ctx, f); err != nil {
			d.log.Error("maildrop import", "file", f, "err", err)
		}
	}
}

func (d *daemonState) importOne(ctx context.Context, path string) error {
	e, err := readMaildrop(path)
	if err != nil {
		return setAside(path, maildropBad, err)
	}
	submit := func(sub *submission) error {
		conn, err := d.local.dial(e.UID)
		if err != nil {
			return err
		}
		return submitOverConn(ctx, conn, sub)
	}
	err = submit(&e.Sub)
	var se *smtp.SMTPError
	if errors.As(err, &se) && senderNotOwned(se) && e.Sub.From != "" {
		d.log.Warn("maildrop: sender not allowed for this user; sending as the user", "file", path, "uid", e.UID, "sender", e.Sub.From)
		e.Sub.From = ""
		err = submit(&e.Sub)
	}
	if errors.As(err, &se) && !se.Temporary() {
		// Refused for good (an unknown local user, a malformed line): kept
		// for the operator rather than retried every minute forever.
		return setAside(path, maildropRejected, err)
	}
	if err != nil {
		return err // stays in the maildrop; the next scan tries again
	}
	d.log.Info("maildrop message imported", "file", path, "uid", e.UID, "rcpts", len(e.Sub.Rcpts))
	return os.Remove(path)
}

// setAside renames a maildrop file the daemon will not import, so the
// operator finds it (and the reason in the log) and scans skip it.
func setAside(path, prefix string, why error) error {
	aside := filepath.Join(filepath.Dir(path), prefix+filepath.Base(path))
	if err := os.Rename(path, aside); err != nil {
		return fmt.Errorf("%w (and could not set it aside: %v)", why, err)
	}
	return fmt.Errorf("%w: set aside as %s", why, aside)
}

// runMaildrop imports the maildrop at start and every interval after, in
// its own goroutine: a large backlog neither delays READY nor the
// watchdog.
func (d *daemonState) runMaildrop(ctx context.Context, interval time.Duration) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			d.importMaildrop(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}
