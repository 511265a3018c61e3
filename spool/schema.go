package spool

import (
	"bytes"
	"encoding/binary"
	"time"

	bolt "go.etcd.io/bbolt"
)

// schemaVersion is the layout described in this file. A file with another
// version is refused with ErrVersion: this binary cannot know what a newer
// one wrote, and an older layout needs a migration written for it.
//
// Version 1 had no leases bucket and no leased flag: a claim lived in the
// daemon's memory only, its recipient's key staying in due. Open upgrades
// such a file by adding the empty bucket (a version 1 file has no claim a
// new process could hold).
const schemaVersion = 2

// The spool file holds these top-level buckets. "id" is a message ID (see
// validID: never contains NUL, so NUL separates it from what follows),
// "rcpt" the recipient's index in the envelope as 2 bytes big-endian, and
// "time" a time as 8 bytes big-endian of its Unix nanoseconds with the sign
// bit flipped (so keys sort by time, before 1970 included). Values are the
// records of record.go; each starts with a record-format byte.
const (
	// meta: "version" → 4 bytes big-endian schemaVersion.
	bucketMeta = "meta"
	// msgs: id → envelope record (sender, recipients' addresses and DSN
	// parameters, origin, size, and whether the body is a file). One key
	// per live message: a message is live exactly while this key exists.
	bucketMsgs = "msgs"
	// rcpts: id NUL rcpt → recipient state record (state, held, leased,
	// next attempt, attempt count, delay notified, done, arrival, domain).
	// Exactly one per recipient of a live message.
	bucketRcpts = "rcpts"
	// attempts: id NUL rcpt seq → attempt record, seq being 4 bytes
	// big-endian of the attempt's number (1 for the first); the record holds
	// the attempt's route steps too. Only the last Options.MaxAttemptLog are
	// kept.
	bucketAttempts = "attempts"
	// bodies: id → the body, for bodies up to Options.InlineBodyBytes.
	// Larger bodies are the file bodies/<id> beside the spool file, and the
	// envelope record says so.
	bucketBodies = "bodies"
	// due: time id NUL rcpt → empty. One key per live recipient that is
	// neither final, held nor leased, at its next attempt time: "due now,
	// up to N" is a cursor from the first key, and the first key is the
	// earliest recipient Claim may take.
	bucketDue = "due"
	// leases: time id NUL rcpt → empty. One key per live recipient that is
	// leased (claimed by Claim, its result not recorded) and not final,
	// held or not, at its next attempt time (the lease). Claims are kept
	// apart from due so that neither Claim nor NextDue ever steps over
	// them; Open gives back every lease left by an earlier process.
	bucketLeases = "leases"
	// domains: domain → domain counter record (pending, deferred, held
	// recipients). Deleted when all three are zero.
	bucketDomains = "domains"
	// bydomain: domain NUL time id NUL rcpt → empty, time being the
	// message's arrival. One key per live recipient that is not final; the
	// first key under a domain gives its oldest message.
	bucketByDomain = "bydomain"
	// retired: id → retired record (when it retired, the envelope, and
	// every recipient's final state and attempt log).
	bucketRetired = "retired"
	// retired_at: time id → empty, time being when the message retired.
	// Oldest first, so the bounds are kept by deleting from the front;
	// ListRetired pages through it from the back.
	bucketRetiredAt = "retired_at"
	// counters: name → 8 bytes big-endian: "messages" (live messages),
	// "retired" (retired records), and by recipient of a live message
	// "pending", "deferred", "held" (held counts only there).
	bucketCounters = "counters"
)

// allBuckets lists every bucket; a file missing one is corrupt.
func allBuckets() []string {
	return []string{
		bucketMeta, bucketMsgs, bucketRcpts, bucketAttempts, bucketBodies, bucketDue, bucketLeases,
		bucketDomains, bucketByDomain, bucketRetired, bucketRetiredAt, bucketCounters,
	}
}

// counter indexes the counters bucket.
type counter int

const (
	cMessages counter = iota
	cRetired
	cPending
	cDeferred
	cHeld
	numCounters
)

func (c counter) key() []byte {
	return []byte([...]string{"messages", "retired", "pending", "deferred", "held"}[c])
}

// bk holds a transaction's bucket handles.
type bk struct {
	meta, msgs, rcpts, attempts, bodies, due, leases, domains, byDomain, retired, retiredAt, counters *bolt.Bucket
}

// bucketSet names some buckets, in the order of allBuckets: a read
// transaction opens only those it uses (opening one is a lookup and an
// allocation).
type bucketSet uint16

const (
	setMeta bucketSet = 1 << iota
	setMsgs
	setRcpts
	setAttempts
	setBodies
	setDue
	setLeases
	setDomains
	setByDomain
	setRetired
	setRetiredAt
	setCounters
	setAll = 1<<iota - 1
)

// buckets opens every bucket of tx; a missing one means a damaged file.
func buckets(tx *bolt.Tx) (bk, error) { return openBuckets(tx, setAll) }

// openBuckets opens the buckets of set; the others stay nil.
func openBuckets(tx *bolt.Tx, set bucketSet) (bk, error) {
	var b bk
	ptrs := [...]**bolt.Bucket{
		&b.meta, &b.msgs, &b.rcpts, &b.attempts, &b.bodies, &b.due, &b.leases,
		&b.domains, &b.byDomain, &b.retired, &b.retiredAt, &b.counters,
	}
	for i, name := range allBuckets() {
		if set&(1<<i) == 0 {
			continue
		}
		*ptrs[i] = tx.Bucket([]byte(name))
		if *ptrs[i] == nil {
			return bk{}, corrupt("bucket %q missing", name)
		}
	}
	return b, nil
}

const keyVersion = "version"

// timeKey encodes t for a key so that keys sort by time.
func timeKey(t time.Time) uint64 {
	if t.IsZero() {
		return 1 << 63
	}
	return uint64(t.UnixNano()) ^ 1<<63
}

func keyTime(v uint64) time.Time { return time.Unix(0, int64(v^1<<63)) }

// rcptKey is id NUL rcpt.
func rcptKey(id string, rcpt int) []byte {
	k := make([]byte, 0, len(id)+3)
	k = append(k, id...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint16(k, uint16(rcpt))
}

// msgPrefix is id NUL: every rcpts and attempts key of the message.
func msgPrefix(id string) []byte { return append([]byte(id), 0) }

// attemptKey is id NUL rcpt seq.
func attemptKey(id string, rcpt int, seq uint32) []byte {
	return binary.BigEndian.AppendUint32(rcptKey(id, rcpt), seq)
}

// dueKey is time id NUL rcpt.
func dueKey(at time.Time, id string, rcpt int) []byte {
	k := make([]byte, 8, 8+len(id)+3)
	binary.BigEndian.PutUint64(k, timeKey(at))
	k = append(k, id...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint16(k, uint16(rcpt))
}

// parseIDRcpt splits id NUL rcpt.
func parseIDRcpt(k []byte) (string, int, error) {
	if len(k) < 4 || k[len(k)-3] != 0 {
		return "", 0, corrupt("bad key %q", k)
	}
	id := string(k[:len(k)-3])
	if !validID(id) {
		return "", 0, corrupt("bad id in key %q", k)
	}
	return id, int(binary.BigEndian.Uint16(k[len(k)-2:])), nil
}

// parseDueKey splits a due key.
func parseDueKey(k []byte) (time.Time, string, int, error) {
	if len(k) < 8 {
		return time.Time{}, "", 0, corrupt("bad due key %q", k)
	}
	id, rcpt, err := parseIDRcpt(k[8:])
	return keyTime(binary.BigEndian.Uint64(k)), id, rcpt, err
}

// byDomainKey is domain NUL arrival id NUL rcpt.
func byDomainKey(domain string, arrival time.Time, id string, rcpt int) []byte {
	k := make([]byte, 0, len(domain)+12+len(id)+3)
	k = append(k, domain...)
	k = append(k, 0)
	k = binary.BigEndian.AppendUint64(k, timeKey(arrival))
	k = append(k, id...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint16(k, uint16(rcpt))
}

// parseByDomainKey splits a bydomain key.
func parseByDomainKey(k []byte) (domain string, arrival time.Time, id string, rcpt int, err error) {
	i := bytes.IndexByte(k, 0)
	if i < 0 || len(k) < i+1+8 {
		return "", time.Time{}, "", 0, corrupt("bad bydomain key %q", k)
	}
	id, rcpt, err = parseIDRcpt(k[i+9:])
	return string(k[:i]), keyTime(binary.BigEndian.Uint64(k[i+1:])), id, rcpt, err
}

// retiredAtKey is time id.
func retiredAtKey(at time.Time, id string) []byte {
	k := make([]byte, 8, 8+len(id))
	binary.BigEndian.PutUint64(k, timeKey(at))
	return append(k, id...)
}

func putUint64(v int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(v)) }

func getUint64(v []byte) (int64, error) {
	if v == nil {
		return 0, nil
	}
	if len(v) != 8 {
		return 0, corrupt("counter of %d bytes", len(v))
	}
	return int64(binary.BigEndian.Uint64(v)), nil
}
