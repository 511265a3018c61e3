package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/user"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"mta/spool"
)

// The admin socket speaks one JSON request and one JSON response per
// connection. Only the daemon opens the spool; `mta queue` asks it here.

// maxAdminRequest bounds what the daemon reads of a request.
const maxAdminRequest = 64 << 10

// adminRequest is one queue operation.
type adminRequest struct {
	Op     string       `json:"op"` // list, show, retired, retry, hold, release, delete, flush
	ID     string       `json:"id,omitempty"`
	Filter spool.Filter `json:"filter,omitempty"`
	Limit  int          `json:"limit,omitempty"`
	Bounce bool         `json:"bounce,omitempty"`
	// Cursor: retired goes on after this cursor of an earlier answer.
	Cursor string `json:"cursor,omitempty"`
}

// adminResponse carries the result or the error text.
type adminResponse struct {
	Error    string `json:"error,omitempty"`
	NotFound bool   `json:"not_found,omitempty"`
	// Denied: the caller is not root, the daemon's user or in admin.group.
	Denied   bool            `json:"denied,omitempty"`
	Counts   *spool.Counts   `json:"counts,omitempty"`
	Messages []spool.Message `json:"messages,omitempty"`
	More     bool            `json:"more,omitempty"`
	Message  *spool.Message  `json:"message,omitempty"`
	Changed  int             `json:"changed,omitempty"`
	// Cursor asks retired for the next (older) page; "" at the end.
	Cursor string `json:"cursor,omitempty"`
}

// adminServer answers queue operations on the admin socket.
type adminServer struct {
	spool   *spool.Spool
	kick    func()
	now     func() time.Time
	log     *slog.Logger
	allowed func(uid int) bool
	wg      sync.WaitGroup
}

// serve accepts connections until ln is closed.
func (a *adminServer) serve(ln net.Listener) {
	backoff := 5 * time.Millisecond
	for {
		conn, err := ln.Accept()
		if err != nil && !errors.Is(err, net.ErrClosed) {
			// EMFILE and the like pass; the socket stays open.
			a.log.Error("admin socket accept", "err", err)
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		if err != nil {
			a.wg.Wait()
			return
		}
		backoff = 5 * time.Millisecond
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			defer conn.Close()
			a.handle(conn)
		}()
	}
}

func (a *adminServer) handle(conn net.Conn) {
	defer func() {
		if r := recover(); r != nil {
			a.log.Error("admin request panicked", "panic", r)
		}
	}()
	_ = conn.SetDeadline(time.Now().Add(time.Minute))
	uid, err := peerUID(conn)
	if err != nil || !a.allowed(uid) {
		a.log.Warn("admin socket: peer refused", "uid", uid, "err", err)
		_ = json.NewEncoder(conn).Encode(adminResponse{Error: "permission denied: not in the admin group", Denied: true})
		return
	}
	var req adminRequest
	if err := json.NewDecoder(bufio.NewReader(io.LimitReader(conn, maxAdminRequest))).Decode(&req); err != nil {
		_ = json.NewEncoder(conn).Encode(adminResponse{Error: "bad request: " + err.Error()})
		return
	}
	resp := a.do(context.Background(), req)
	a.log.Info("admin request", "op", req.Op, "id", req.ID, "uid", uid, "err", resp.Error)
	_ = json.NewEncoder(conn).Encode(resp) // the client may have gone; nothing to do
}

func (a *adminServer) do(ctx context.Context, req adminRequest) adminResponse {
	var resp adminResponse
	var err error
	switch req.Op {
	case "list":
		resp, err = a.list(ctx, req)
	case "show":
		resp.Message, err = a.spool.Message(req.ID)
	case "retired":
		resp.Messages, resp.Cursor, err = a.spool.ListRetired(ctx, req.Cursor, req.Limit)
	case "retry", "flush":
		resp.Changed, err = a.spool.Retry(ctx, req.ID, a.now())
		a.kick()
	case "hold":
		err = a.spool.Hold(ctx, req.ID)
	case "release":
		err = a.spool.Release(ctx, req.ID)
		a.kick()
	case "delete":
		err = a.spool.Delete(ctx, req.ID, req.Bounce, "") // the spool says who deleted it
	default:
		err = fmt.Errorf("unknown operation %q", req.Op)
	}
	if err != nil {
		resp.Error = err.Error()
		resp.NotFound = errors.Is(err, spool.ErrNotFound)
	}
	return resp
}

// list returns the counts and up to req.Limit matching messages, paging
// through the spool in short read transactions.
func (a *adminServer) list(ctx context.Context, req adminRequest) (adminResponse, error) {
	var resp adminResponse
	counts, err := a.spool.Counts()
	if err != nil {
		return resp, err
	}
	resp.Counts = &counts
	limit := req.Limit
	if limit <= 0 {
		limit = 100
	}
	cursor := ""
	for {
		page, next, err := a.spool.List(ctx, req.Filter, cursor, min(500, limit-len(resp.Messages)))
		if err != nil {
			return resp, err
		}
		for _, m := range page {
			// Pages carry states without attempt logs; the list shows
			// each message's last reply, so read it whole (bounded by
			// limit, one short transaction each).
			if full, err := a.spool.Message(m.ID); err == nil {
				m = *full
			}
			resp.Messages = append(resp.Messages, m)
		}
		if next == "" {
			return resp, nil
		}
		if len(resp.Messages) >= limit {
			resp.More = true
			return resp, nil
		}
		cursor = next
	}
}

// peerUID reads the uid of the process at the other end of a unix socket.
func peerUID(conn net.Conn) (int, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return -1, errors.New("not a unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return -1, err
	}
	var cred *unix.Ucred
	var cerr error
	err = raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err == nil {
		err = cerr
	}
	if err != nil {
		return -1, err
	}
	return int(cred.Uid), nil
}

// adminAllowed admits root, the daemon's own user and members of group.
func adminAllowed(group string) func(uid int) bool {
	self := os.Getuid()
	return func(uid int) bool {
		if uid == 0 || uid == self {
			return true
		}
		g, err := user.LookupGroup(group)
		if err != nil {
			return false
		}
		u, err := user.LookupId(strconv.Itoa(uid))
		if err != nil {
			return false
		}
		gids, err := u.GroupIds()
		if err != nil {
			return false
		}
		for _, gid := range append(gids, u.Gid) {
			if gid == g.Gid {
				return true
			}
		}
		return false
	}
}

// adminCall sends one request to the daemon's admin socket.
func adminCall(ctx context.Context, path string, req adminRequest) (*adminResponse, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if errors.Is(err, fs.ErrPermission) {
		return nil, fmt.Errorf("not allowed to use the daemon's admin socket %s: %w", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot reach the daemon at %s (is \"mta serve\" running?): %w", path, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Minute))
	// A daemon that refuses the caller answers without reading the
	// request and closes: the answer is there even when the write failed.
	werr := json.NewEncoder(conn).Encode(req)
	var resp adminResponse
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		if werr != nil {
			return nil, werr
		}
		return nil, fmt.Errorf("reading the daemon's answer: %w", err)
	}
	return &resp, nil
}
