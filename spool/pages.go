package spool

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"os"
	"runtime/debug"
)

// bbolt reads its file through a memory map at offsets the file itself
// gives, unchecked: a damaged page can send a read outside the map, or
// into a cycle of pages. In the spool's goroutines such a fault becomes a
// panic (debug.SetPanicOnFault) and then ErrCorrupt, but bbolt walks the
// whole tree in goroutines of its own, where nothing can catch it: in
// Tx.Check, and when it opens a file whose freelist was left out (see
// freelistSyncPages). checkPages walks the same pages first, over a
// bounds-checked view of the file, so that a file those walks could not
// survive is refused with ErrCorrupt instead of killing the process.
//
// It reads bbolt's file format (version 2): a page is a 16-byte header
// (id, flags, element count, overflow pages) and its elements; a branch
// element is pos, key size and child page id, a leaf element flags, pos,
// key and value sizes, pos counting from the element itself; a bucket is
// a leaf value of 16 bytes (root page id, sequence), followed by the
// bucket's own leaf page when the root is 0 (inline).

// bbolt's file format.
const (
	boltPageHeader   = 16
	boltElement      = 16
	boltBucketHeader = 16
	boltMetaSize     = 64 // magic … txid, then the checksum of those 56 bytes
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	boltNoFreelist   = ^uint64(0)
	boltBranch       = 0x01
	boltLeaf         = 0x02
	boltFreelist     = 0x10
	boltBucketLeaf   = 0x01
	boltMaxDepth     = 64 // far deeper than any B+tree bbolt builds
)

// boltMeta is the part of a meta page the walk needs.
type boltMeta struct {
	pageSize uint32
	root     uint64 // the root bucket's page
	freelist uint64 // boltNoFreelist when left out
	hwm      uint64 // pages in use: the high water mark
	txid     uint64
}

var ne = binary.NativeEndian // bbolt writes its structures in the machine's byte order

// parseMeta reads the meta page at b, or reports false when it is not a
// valid one (bbolt's own test: magic, version, checksum).
func parseMeta(b []byte) (boltMeta, bool) {
	if len(b) < boltPageHeader+boltMetaSize {
		return boltMeta{}, false
	}
	m := b[boltPageHeader : boltPageHeader+boltMetaSize]
	h := fnv.New64a()
	_, _ = h.Write(m[:56]) // a hash never fails
	if ne.Uint32(m[0:]) != boltMagic || ne.Uint32(m[4:]) != boltVersion || h.Sum64() != ne.Uint64(m[56:]) {
		return boltMeta{}, false
	}
	return boltMeta{pageSize: ne.Uint32(m[8:]), root: ne.Uint64(m[16:]), freelist: ne.Uint64(m[32:]),
		hwm: ne.Uint64(m[40:]), txid: ne.Uint64(m[48:])}, true
}

// fileMeta picks the meta page bbolt would use: of the two, the valid one
// with the higher transaction id. The second is found at the first's page
// size, or at a likely one when the first is damaged.
func fileMeta(data []byte) (boltMeta, bool) {
	m0, ok0 := parseMeta(data)
	sizes := []int{os.Getpagesize(), 4096, 16384, 65536}
	if ok0 {
		sizes = []int{int(m0.pageSize)}
	}
	for _, size := range sizes {
		if size <= 0 || len(data) <= size {
			continue
		}
		if m1, ok1 := parseMeta(data[size:]); ok1 && (!ok0 || m1.txid > m0.txid) {
			return m1, true
		}
	}
	return m0, ok0
}

// pageWalk is one walk over a file's pages.
type pageWalk struct {
	data     []byte
	pageSize uint64
	hwm      uint64
	seen     []bool
	free     []uint64 // the pages the freelist lists
	problems []string
	extra    int
}

func (w *pageWalk) bad(format string, args ...any) {
	if len(w.problems) >= maxProblems {
		w.extra++
		return
	}
	w.problems = append(w.problems, fmt.Sprintf(format, args...))
}

// walkAlwaysPages is the size (in pages: 64 MiB) up to which Open walks
// every page of the file, freelist or not: a few milliseconds. Past it
// Open walks only when bbolt will (the freelist was left out: whenever
// many pages are free, so after most crashes), so that reopening a large
// spool after a clean stop reads only what bbolt reads. A damaged page
// there still becomes ErrCorrupt when the daemon reads it, but two kinds
// of damage only the walk catches: a branch page pointing to its own
// ancestor sends bbolt's writer into endless recursion, which kills the
// process (the Open after the restart walks the file if the last commit
// left the freelist out); and a freelist listing a page in use makes
// bbolt hand that page out again, overwriting what it holds.
const walkAlwaysPages = 1 << 14

// checkPages walks the pages of the bbolt file at path before bbolt opens
// it: the meta and freelist pages, and the pages reachable from the root
// bucket always with walkFull, and with walkAuto when the freelist was
// left out or the file is small. It returns the damage it found; an error
// when the file cannot be read at all (ErrCorrupt: no valid meta page, or
// cut short) or another process holds it (ErrLocked). A missing or empty
// file has nothing to check.
func checkPages(path string, mode walkMode) (problems []string, err error) {
	data, release, err := mapFile(path)
	if err != nil || data == nil {
		return nil, err
	}
	defer release()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer catchFault(&err)
	return walkPages(data, mode)
}

// walkMode says how much of the tree checkPages walks.
type walkMode int

const (
	walkAuto   walkMode = iota // when bbolt will, or the file is small
	walkFull                   // always
	walkNoTree                 // never (tests of what lies behind the walk)
)

// walkPages checks the bbolt file in data (see checkPages).
func walkPages(data []byte, mode walkMode) ([]string, error) {
	m, ok := fileMeta(data)
	if !ok {
		return nil, corrupt("no valid meta page")
	}
	w := &pageWalk{data: data, pageSize: uint64(m.pageSize), hwm: m.hwm}
	if w.pageSize < 512 || w.hwm < 2 || w.hwm > uint64(len(data))/w.pageSize {
		return nil, corrupt("file is truncated: %d bytes, its meta page counts %d pages of %d", len(data), m.hwm, m.pageSize)
	}
	w.seen = make([]bool, w.hwm)
	w.seen[0], w.seen[1] = true, true
	if m.freelist != boltNoFreelist {
		w.freelist(m.freelist)
	}
	auto := m.freelist == boltNoFreelist || m.hwm <= walkAlwaysPages
	if mode == walkFull || (mode == walkAuto && auto) {
		w.tree(m.root, 0)
		w.freeInUse()
	}
	if w.extra > 0 {
		w.problems = append(w.problems, fmt.Sprintf("and %d more damaged pages", w.extra))
	}
	return w.problems, nil
}

// page returns page id with its overflow pages, marking them seen, or nil
// when it is out of range or was reached before.
func (w *pageWalk) page(id uint64, what string) []byte {
	if id < 2 || id >= w.hwm {
		w.bad("%s: page %d out of range [2, %d)", what, id, w.hwm)
		return nil
	}
	off := id * w.pageSize
	hdr := w.data[off : off+boltPageHeader]
	n := uint64(ne.Uint32(hdr[12:])) + 1
	if n > w.hwm-id {
		w.bad("%s: page %d runs %d pages past the end", what, id, n)
		return nil
	}
	for i := id; i < id+n; i++ {
		if w.seen[i] {
			w.bad("%s: page %d reached twice", what, i)
			return nil
		}
		w.seen[i] = true
	}
	if got := ne.Uint64(hdr); got != id {
		w.bad("%s: page %d says it is page %d", what, id, got)
		return nil
	}
	return w.data[off : off+n*w.pageSize]
}

// freelist checks the freelist page: its ids fit in it and name pages in
// use.
func (w *pageWalk) freelist(id uint64) {
	p := w.page(id, "freelist")
	if p == nil {
		return
	}
	if f := ne.Uint16(p[8:]); f != boltFreelist {
		w.bad("freelist: page %d has flags %#x", id, f)
		return
	}
	start, count := uint64(boltPageHeader), uint64(ne.Uint16(p[10:]))
	if count == 0xFFFF {
		count, start = ne.Uint64(p[start:]), start+8
	}
	if count > (uint64(len(p))-start)/8 {
		w.bad("freelist: page %d lists %d pages, more than it holds", id, count)
		return
	}
	for i := range count {
		free := ne.Uint64(p[start+8*i:])
		if free < 2 || free >= w.hwm {
			w.bad("freelist: page %d lists page %d, out of range", id, free)
			return
		}
		w.free = append(w.free, free)
	}
}

// freeInUse checks, after the tree walk, that no page the freelist lists
// is in use: bbolt would hand it out again and overwrite it.
func (w *pageWalk) freeInUse() {
	for _, id := range w.free {
		if w.seen[id] {
			w.bad("freelist lists page %d, which is in use", id)
		}
	}
}

// tree checks the branch or leaf page id and everything below it.
func (w *pageWalk) tree(id uint64, depth int) {
	if depth > boltMaxDepth {
		w.bad("page %d: tree deeper than %d", id, boltMaxDepth)
		return
	}
	p := w.page(id, "tree")
	if p == nil {
		return
	}
	w.node(where{id, false}, p, depth)
}

// where names a page in a problem: page id, or the inline bucket in it.
type where struct {
	id     uint64
	inline bool
}

func (at where) String() string {
	if at.inline {
		return fmt.Sprintf("page %d inline bucket", at.id)
	}
	return fmt.Sprintf("page %d", at.id)
}

// node checks the elements of the branch or leaf page p, and walks its
// children and the buckets it holds.
func (w *pageWalk) node(what where, p []byte, depth int) {
	// Inline buckets nest without passing through tree: bound them here too,
	// or a crafted file could overflow the walk's stack (a fatal error).
	if depth > boltMaxDepth {
		w.bad("%s: buckets nested deeper than %d", what, boltMaxDepth)
		return
	}
	flags, count := ne.Uint16(p[8:]), uint64(ne.Uint16(p[10:]))
	if flags != boltBranch && flags != boltLeaf {
		w.bad("%s: flags %#x, not a branch or leaf page", what, flags)
		return
	}
	size := uint64(len(p))
	if count > (size-boltPageHeader)/boltElement || (flags == boltBranch && count == 0) {
		w.bad("%s: %d elements", what, count)
		return
	}
	for i := range count {
		e := p[boltPageHeader+i*boltElement:]
		at := boltPageHeader + i*boltElement
		if flags == boltBranch {
			pos, ksize := uint64(ne.Uint32(e[0:])), uint64(ne.Uint32(e[4:]))
			if at+pos+ksize > size {
				w.bad("%s: key %d past the end of the page", what, i)
				return
			}
			w.tree(ne.Uint64(e[8:]), depth+1)
			continue
		}
		leaf, pos := ne.Uint32(e[0:]), uint64(ne.Uint32(e[4:]))
		ksize, vsize := uint64(ne.Uint32(e[8:])), uint64(ne.Uint32(e[12:]))
		if at+pos+ksize+vsize > size {
			w.bad("%s: element %d past the end of the page", what, i)
			return
		}
		if leaf&boltBucketLeaf != 0 {
			w.bucket(what, p[at+pos+ksize:at+pos+ksize+vsize], depth+1)
		}
	}
}

// bucket checks the bucket whose header is v: its root page's tree, or
// its inline page.
func (w *pageWalk) bucket(what where, v []byte, depth int) {
	if len(v) < boltBucketHeader {
		w.bad("%s: bucket header of %d bytes", what, len(v))
		return
	}
	if root := ne.Uint64(v); root != 0 {
		w.tree(root, depth)
		return
	}
	inline := v[boltBucketHeader:]
	if len(inline) < boltPageHeader || ne.Uint16(inline[8:]) != boltLeaf {
		w.bad("%s: inline bucket without its leaf page", what)
		return
	}
	w.node(where{what.id, true}, inline, depth)
}
