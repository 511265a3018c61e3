//go:build !linux

package smtpd

import (
	"errors"
	"net"
)

// peerUID needs SO_PEERCRED, which only Linux has; elsewhere the local
// socket refuses every client.
func peerUID(c net.Conn) (int, error) {
	if lc, ok := c.(*LocalConn); ok {
		return lc.UID, nil
	}
	return -1, errors.New("peer credentials are only supported on Linux")
}
