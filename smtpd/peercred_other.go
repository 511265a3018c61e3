//go:build !linux

package smtpd

import (
	"errors"
	"net"
)

// peerUID needs SO_PEERCRED, which only Linux has; elsewhere the local
// socket refuses every client.
func peerUID(net.Conn) (int, error) {
	return -1, errors.New("peer credentials are only supported on Linux")
}
