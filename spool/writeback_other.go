//go:build !linux

package spool

import "os"

// startWriteback and waitWriteback pace large body files on Linux; other
// systems rely on the final fsync alone.
func startWriteback(*os.File, int64, int64) {}
func waitWriteback(*os.File, int64, int64)  {}
