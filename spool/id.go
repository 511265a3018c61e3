package spool

import (
	"math/rand/v2"
	"time"
)

// idAlphabet is Crockford's base32 in lower case: digits first, so the
// encoding of a number sorts like the number, and no letter that reads as
// a digit (i, l, o, u). IDs are safe in file names, log lines and replies.
const idAlphabet = "0123456789abcdefghjkmnpqrstvwxyz"

// idTimeChars encode the 64-bit creation time in nanoseconds, idRandChars
// 60 random bits.
const (
	idTimeChars = 13
	idRandChars = 12
	maxIDLen    = 64
)

// NewID returns a new unique message ID. IDs sort by creation time; they
// are safe in file names, log lines and SMTP replies.
//
// An ID is 25 characters: the wall-clock time in nanoseconds (13) and 60
// random bits (12). It does no I/O and keeps no state: two IDs collide only
// when made in the same nanosecond and the 60 random bits agree.
func NewID() string {
	var b [idTimeChars + idRandChars]byte
	ns := uint64(time.Now().UnixNano())
	for i := idTimeChars - 1; i >= 0; i-- {
		b[i] = idAlphabet[ns&31]
		ns >>= 5
	}
	r := rand.Uint64() // the runtime's ChaCha8 source, seeded per process
	for i := len(b) - 1; i >= idTimeChars; i-- {
		b[i] = idAlphabet[r&31]
		r >>= 5
	}
	return string(b[:])
}

// validID reports whether id can name a message: 1 to 64 characters of
// ASCII letters, digits, '-' and '_'. It is also a body file's name, so
// nothing else may pass (no '/', no leading '.', no NUL, which the keys
// use as a separator).
func validID(id string) bool {
	if len(id) == 0 || len(id) > maxIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}
