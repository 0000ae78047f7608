package lazyfs

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/hanwen/go-fuse/v2/splice"
	"golang.org/x/sys/unix"

	"github.com/skiff-dev/skiff/pkg/atomicfile"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// The filesystem speaks go-fuse's raw protocol interface rather than its
// node tree: the tree is the bootstrap, so a FUSE node ID is simply the
// inode index plus one and a handle carries no state. Nothing the kernel
// holds (node IDs, lookup counts, handles) lives only in this process,
// which is what lets another process take the connection over (see
// Resume) and answer for every node the kernel knows.

// fileSystem serves one bootstrap. It implements fuse.RawFileSystem.
type fileSystem struct {
	fuse.RawFileSystem // ENOSYS for everything not served here

	b       *bootstrap.Bootstrap
	r       ChunkReader
	backing BackingFiler // nil: no passthrough
	splice  bool         // cached chunks may be spliced to the kernel
	log     *slog.Logger
	timeout time.Duration
	server  *fuse.Server // set by Init, before any request
	// ready is closed once the kernel knows that this filesystem does not
	// implement poll. Until then, opening a file from this very process
	// could deadlock it: the Go runtime adds every opened file to its
	// epoll set while holding a scheduler slot, and the kernel would ask
	// this server to poll the file. Holding back lookups until then keeps
	// every file unopenable (lookups block like ordinary system calls and
	// hold no slot).
	ready chan struct{}

	files []atomic.Pointer[fileState] // by inode index, made on first use

	parentsOnce sync.Once
	parents     []uint32 // parent of each directory

	totalOnce  sync.Once
	totalBytes int64

	// opens mirrors the open counts of every file open through a
	// passthrough mount, written to stateFile on each change.
	stateFile string
	stateMu   sync.Mutex
	opens     map[uint32]openRecord
}

// openRecord is how the kernel has one inode open.
type openRecord struct {
	Ino     uint32   `json:"ino"`
	Cached  int      `json:"cached,omitempty"`
	Backing int32    `json:"backing,omitempty"`
	Refs    int      `json:"refs,omitempty"`
	Handles []uint64 `json:"handles,omitempty"`
}

// fileState is what reading one regular file needs beyond the bootstrap.
type fileState struct {
	offs []int64 // file offset of each chunk, plus the size
	// next is where the furthest read so far ended; see sequential.
	next atomic.Int64

	mu sync.Mutex
	// cachedOpens counts open handles served through the mount: the
	// kernel refuses (EIO) a passthrough open while an inode has any.
	cachedOpens int
	backingID   int32 // registered backing file, 0: none
	backingRefs int   // passthrough handles using backingID
	// handles are the handles of the opens counted above, but for those
	// of servers from before handles named their opens (fhOldCached,
	// fhOldPassthrough), which are only counted.
	handles []uint64
}

// An open's handle is the number of its OPEN request, which the kernel
// gives no other request of the connection, with fhPassthrough set for a
// passthrough open. A server that dies between counting an open and
// answering it leaves the request to its successor, which the kernel
// sends it again (see Server.Start) under that number, with
// uniqueResend: the open is then counted once and answered the same. The
// kernel numbers requests evenly from 2, INIT's, so no open's handle is
// fhOldCached or fhOldPassthrough, which servers before named every
// cached and every passthrough open by. Only passthrough mounts hand
// handles out; other mounts never see OPEN (see Open).
const (
	fhPassthrough = 1       // a bit of a handle: request numbers are even
	uniqueResend  = 1 << 63 // FUSE_UNIQUE_RESEND
)

// Whole handles of servers from before handles named their opens.
const (
	fhOldCached      = 1
	fhOldPassthrough = 2
)

func newFileSystem(b *bootstrap.Bootstrap, r ChunkReader, opts Options) *fileSystem {
	fsys := &fileSystem{
		RawFileSystem: fuse.NewDefaultRawFileSystem(),
		b:             b,
		r:             r,
		log:           opts.Logger,
		timeout:       opts.CacheTimeout,
		ready:         make(chan struct{}),
		splice:        os.Geteuid() == 0,
		files:         make([]atomic.Pointer[fileState], len(b.Inodes)),
	}
	if bf, ok := r.(BackingFiler); ok && opts.Passthrough {
		fsys.backing = bf
		fsys.stateFile = opts.OpenState
		fsys.opens = map[uint32]openRecord{}
	}
	return fsys
}

// inoOf maps an inode index to st_ino and the FUSE node ID. Hard links
// share the index and so one kernel inode; +1 keeps 0, which FUSE
// reserves, unused, and makes the root FUSE_ROOT_ID.
func inoOf(ino uint32) uint64 { return uint64(ino) + 1 }

// inode maps a node ID from the kernel back to an inode index.
func (fsys *fileSystem) inode(id uint64) (uint32, bool) {
	if id == 0 || id > uint64(len(fsys.b.Inodes)) {
		return 0, false
	}
	return uint32(id - 1), true
}

func (fsys *fileSystem) file(ino uint32) *fileState {
	p := &fsys.files[ino]
	if st := p.Load(); st != nil {
		return st
	}
	st := &fileState{offs: fsys.b.ChunkOffsets(ino)}
	if !p.CompareAndSwap(nil, st) {
		return p.Load()
	}
	return st
}

// status maps an errno to a FUSE status.
func status(errno syscall.Errno) fuse.Status { return fuse.Status(errno) }

// errStale answers a node ID this image does not have: only a kernel
// confused about which filesystem it talks to sends one.
const errStale = fuse.Status(syscall.ESTALE)

func (fsys *fileSystem) String() string { return "skiff" }

// Init implements fuse.RawFileSystem.
func (fsys *fileSystem) Init(s *fuse.Server) { fsys.server = s }

// Forget implements fuse.RawFileSystem. Nodes are the bootstrap's inodes,
// which live as long as the mount: there is nothing to let go of.
func (fsys *fileSystem) Forget(nodeid, nlookup uint64) {}

// entry fills out for inode ino.
func (fsys *fileSystem) entry(ino uint32, out *fuse.EntryOut) {
	out.NodeId = inoOf(ino)
	fsys.fill(&out.Attr, ino)
	out.SetEntryTimeout(fsys.timeout)
	out.SetAttrTimeout(fsys.timeout)
}

// Lookup implements fuse.RawFileSystem. Names that do not exist are
// cached by the kernel too (a zero node ID with a timeout), since they
// never will.
func (fsys *fileSystem) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	select {
	case <-fsys.ready:
	case <-cancel:
		return fuse.EINTR
	}
	dir, ok := fsys.inode(h.NodeId)
	if !ok {
		return errStale
	}
	if !fsys.b.Inodes[dir].IsDir() {
		return status(syscall.ENOTDIR)
	}
	child, ok := fsys.b.Lookup(dir, name)
	if !ok {
		*out = fuse.EntryOut{}
		out.SetEntryTimeout(fsys.timeout)
		return fuse.OK
	}
	fsys.entry(child, out)
	return fuse.OK
}

// GetAttr implements fuse.RawFileSystem.
func (fsys *fileSystem) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	ino, ok := fsys.inode(in.NodeId)
	if !ok {
		return errStale
	}
	fsys.fill(&out.Attr, ino)
	out.SetTimeout(fsys.timeout)
	return fuse.OK
}

func (fsys *fileSystem) fill(a *fuse.Attr, ino uint32) {
	in := &fsys.b.Inodes[ino]
	a.Ino = inoOf(ino)
	a.Mode = in.Mode
	a.Nlink = in.Nlink
	a.Owner = fuse.Owner{Uid: in.UID, Gid: in.GID}
	a.Size = uint64(in.Size)
	a.Blocks = (uint64(in.Size) + 511) / 512
	a.Blksize = blockSize
	if t := in.Type(); t == bootstrap.ModeChar || t == bootstrap.ModeBlock {
		// FUSE carries the kernel's 32-bit new_encode_dev form, which is
		// the low half of glibc's makedev.
		a.Rdev = uint32(unix.Mkdev(in.DevMajor, in.DevMinor))
	}
	sec, nsec := uint64(in.MtimeSec), in.MtimeNsec
	a.Mtime, a.Mtimensec = sec, nsec
	a.Atime, a.Atimensec = sec, nsec
	a.Ctime, a.Ctimensec = sec, nsec
}

// OpenDir implements fuse.RawFileSystem. Listings never change, so the
// kernel may cache them (FOPEN_CACHE_DIR).
func (fsys *fileSystem) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	ino, ok := fsys.inode(in.NodeId)
	if !ok {
		return errStale
	}
	if !fsys.b.Inodes[ino].IsDir() {
		return status(syscall.ENOTDIR)
	}
	out.OpenFlags = fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE
	return fuse.OK
}

// ReleaseDir implements fuse.RawFileSystem.
func (fsys *fileSystem) ReleaseDir(in *fuse.ReleaseIn) {}

// ReadDir implements fuse.RawFileSystem.
func (fsys *fileSystem) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return fsys.readDir(in, out, false)
}

// ReadDirPlus implements fuse.RawFileSystem.
func (fsys *fileSystem) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return fsys.readDir(in, out, true)
}

// readDir lists a directory straight from the bootstrap, "." and ".."
// first, then the entries in their stored (name) order. The offset after
// the i-th entry is i, so any offset the kernel passes back is exact.
func (fsys *fileSystem) readDir(in *fuse.ReadIn, out *fuse.DirEntryList, plus bool) fuse.Status {
	dir, ok := fsys.inode(in.NodeId)
	if !ok {
		return errStale
	}
	if !fsys.b.Inodes[dir].IsDir() {
		return status(syscall.ENOTDIR)
	}
	ents := fsys.b.Children(dir)
	for pos := in.Offset; pos < uint64(len(ents))+2; pos++ {
		e := fuse.DirEntry{Off: pos + 1, Mode: fuse.S_IFDIR}
		child := uint32(0)
		switch pos {
		case 0:
			e.Name, e.Ino = ".", inoOf(dir)
		case 1:
			e.Name, e.Ino = "..", inoOf(fsys.parent(dir))
		default:
			de := ents[pos-2]
			child = de.Inode
			e.Name, e.Mode, e.Ino = de.Name, fsys.b.Inodes[child].Mode, inoOf(child)
		}
		if !plus {
			if !out.AddDirEntry(e) {
				break
			}
			continue
		}
		eo := out.AddDirLookupEntry(e)
		if eo == nil {
			break
		}
		// A zero node ID gives the kernel a name without a lookup, which
		// is all "." and ".." may be.
		*eo = fuse.EntryOut{}
		if pos >= 2 {
			fsys.entry(child, eo)
		}
	}
	return fuse.OK
}

// parent returns the directory holding inode ino (the root for the
// root). Directories have exactly one name, so for them this is well
// defined; a file with several names gets one of them.
func (fsys *fileSystem) parent(ino uint32) uint32 {
	fsys.parentsOnce.Do(func() {
		fsys.parents = make([]uint32, len(fsys.b.Inodes))
		for i := range fsys.b.Inodes {
			if !fsys.b.Inodes[i].IsDir() {
				continue
			}
			for _, e := range fsys.b.Children(uint32(i)) {
				fsys.parents[e.Inode] = uint32(i)
			}
		}
	})
	return fsys.parents[ino]
}

// path names inode ino for logs: one of its names. A failed read logs
// it, and while a store is down every read fails: it costs the depth of
// the tree, not a scan of the image.
func (fsys *fileSystem) path(ino uint32) string {
	var names []string
	// A validated tree has no cycles; the bound is for safety only.
	for cur := ino; cur != bootstrap.RootInode && len(names) < len(fsys.b.Inodes); {
		dir := fsys.parent(cur)
		for _, e := range fsys.b.Children(dir) {
			if e.Inode == cur {
				names = append(names, e.Name)
				break
			}
		}
		cur = dir
	}
	slices.Reverse(names)
	return "/" + path.Join(names...)
}

// Readlink implements fuse.RawFileSystem.
func (fsys *fileSystem) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	ino, ok := fsys.inode(h.NodeId)
	if !ok {
		return nil, errStale
	}
	in := &fsys.b.Inodes[ino]
	if in.Type() != bootstrap.ModeSymlink {
		return nil, fuse.EINVAL
	}
	return []byte(in.Target), fuse.OK
}

// GetXAttr implements fuse.RawFileSystem. A buffer too small for the value
// gets ERANGE with the needed size, as getxattr(2) requires.
func (fsys *fileSystem) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	if len(fsys.b.Xattrs) == 0 {
		// An image without any xattrs says so once: after ENOSYS the
		// kernel answers every getxattr itself (EOPNOTSUPP, which the
		// kernel's capability check and overlayfs read as "none"). An
		// overlay on the mount asks for its own trusted.overlay.* names
		// on every file a new container looks up; that is a round trip
		// per file otherwise, since FUSE caches no xattrs.
		return 0, fuse.ENOSYS
	}
	ino, ok := fsys.inode(h.NodeId)
	if !ok {
		return 0, errStale
	}
	xs := fsys.b.InodeXattrs(ino)
	i := sort.Search(len(xs), func(i int) bool { return xs[i].Name >= attr })
	if i == len(xs) || xs[i].Name != attr {
		return 0, status(syscall.ENODATA)
	}
	v := xs[i].Value
	if len(dest) < len(v) {
		return uint32(len(v)), fuse.ERANGE
	}
	return uint32(copy(dest, v)), fuse.OK
}

// ListXAttr implements fuse.RawFileSystem.
func (fsys *fileSystem) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	ino, ok := fsys.inode(h.NodeId)
	if !ok {
		return 0, errStale
	}
	xs := fsys.b.InodeXattrs(ino)
	size := 0
	for _, x := range xs {
		size += len(x.Name) + 1
	}
	if len(dest) < size {
		return uint32(size), fuse.ERANGE
	}
	pos := 0
	for _, x := range xs {
		pos += copy(dest[pos:], x.Name)
		dest[pos] = 0
		pos++
	}
	return uint32(size), fuse.OK
}

// Flush implements fuse.RawFileSystem. Nothing is ever written, and
// ENOSYS tells the kernel to stop sending flushes, sparing every close(2)
// a round trip to this process.
func (fsys *fileSystem) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	return fuse.ENOSYS
}

// Open implements fuse.RawFileSystem. Pages stay cached across opens: the
// content behind an inode never changes. A large file that is entirely
// local is opened in passthrough mode when the mount allows it.
func (fsys *fileSystem) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if fsys.backing == nil {
		// Without passthrough there is nothing to decide at open time.
		// ENOSYS makes the kernel stop sending OPEN and RELEASE for the
		// rest of the connection and keep pages cached (FUSE no-open):
		// opening a file then costs no round trip, which is most of the
		// cost of a program reading many small cached files. Write opens
		// never get here: the mount is read-only.
		return fuse.ENOSYS
	}
	ino, ok := fsys.inode(in.NodeId)
	if !ok {
		return errStale
	}
	if in.Flags&syscall.O_ACCMODE != syscall.O_RDONLY || in.Flags&syscall.O_TRUNC != 0 {
		return fuse.EROFS
	}
	node := &fsys.b.Inodes[ino]
	if node.Type() != bootstrap.ModeRegular {
		return fuse.EINVAL
	}
	if node.Size < PassthroughMinSize {
		out.OpenFlags = fuse.FOPEN_KEEP_CACHE
		return fuse.OK
	}
	st := fsys.file(ino)
	st.mu.Lock()
	defer st.mu.Unlock()
	fh := in.Unique &^ uniqueResend
	if i := slices.IndexFunc(st.handles, func(h uint64) bool { return h&^fhPassthrough == fh }); i >= 0 {
		// Counted by a server that died before answering.
		fh = st.handles[i]
	} else {
		if st.cachedOpens == 0 && fsys.passthrough(&fuse.Context{Caller: in.Caller, Cancel: cancel}, ino, st) {
			st.backingRefs++
			fh |= fhPassthrough
		} else {
			st.cachedOpens++
		}
		st.handles = append(st.handles, fh)
		// Recorded before the kernel hears of the open: a successor must
		// not know less than the kernel.
		fsys.saveOpens(ino, st)
	}
	out.Fh = fh
	if fh&fhPassthrough != 0 {
		out.BackingID = st.backingID
		out.OpenFlags = fuse.FOPEN_PASSTHROUGH
	} else {
		out.OpenFlags = fuse.FOPEN_KEEP_CACHE
	}
	return fuse.OK
}

// passthrough makes sure st has a backing file registered with the
// kernel, which then holds it: one registration serves every passthrough
// open of the inode until the last is released. st.mu is held.
func (fsys *fileSystem) passthrough(ctx context.Context, ino uint32, st *fileState) bool {
	if st.backingID != 0 {
		return true
	}
	if st.backingRefs != 0 {
		return false
	}
	f, ok := fsys.backing.BackingFile(ctx, fsys.b, ino)
	if !ok {
		return false
	}
	defer f.Close()
	id, errno := fsys.server.RegisterBackingFd(&fuse.BackingMap{Fd: int32(f.Fd())})
	if errno != 0 {
		fsys.log.Warn("lazyfs: register passthrough file", "path", fsys.path(ino), "err", errno)
		return false
	}
	st.backingID = id
	return true
}

// Release implements fuse.RawFileSystem. A handle not counted holds
// nothing here: that of a small file (0), or one a server that died
// before answering the release counted out already.
func (fsys *fileSystem) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	ino, ok := fsys.inode(in.NodeId)
	if !ok || in.Fh == 0 {
		return
	}
	st := fsys.file(ino)
	st.mu.Lock()
	defer st.mu.Unlock()
	passthrough := in.Fh&fhPassthrough != 0
	switch i := slices.Index(st.handles, in.Fh); {
	case i >= 0:
		st.handles = slices.Delete(st.handles, i, i+1)
	case in.Fh == fhOldCached && st.cachedOpens > st.named(false):
		passthrough = false
	case in.Fh == fhOldPassthrough && st.backingRefs > st.named(true):
		passthrough = true
	default:
		return
	}
	if !passthrough {
		st.cachedOpens--
	} else {
		st.backingRefs--
		if st.backingRefs == 0 && st.backingID != 0 {
			if errno := fsys.server.UnregisterBackingFd(st.backingID); errno != 0 {
				fsys.log.Warn("lazyfs: unregister passthrough file", "path", fsys.path(ino), "err", errno)
			}
			st.backingID = 0
		}
	}
	fsys.saveOpens(ino, st)
}

// named counts the handles of st's passthrough or cached opens.
func (st *fileState) named(passthrough bool) int {
	n := 0
	for _, h := range st.handles {
		if (h&fhPassthrough != 0) == passthrough {
			n++
		}
	}
	return n
}

// saveOpens records st, the state of inode ino, whose lock the caller
// holds, and writes every record to the state file.
func (fsys *fileSystem) saveOpens(ino uint32, st *fileState) {
	if fsys.stateFile == "" {
		return
	}
	fsys.stateMu.Lock()
	defer fsys.stateMu.Unlock()
	if st.cachedOpens == 0 && st.backingRefs == 0 {
		delete(fsys.opens, ino)
	} else {
		fsys.opens[ino] = openRecord{Ino: ino, Cached: st.cachedOpens, Backing: st.backingID, Refs: st.backingRefs, Handles: slices.Clone(st.handles)}
	}
	recs := make([]openRecord, 0, len(fsys.opens))
	for _, r := range fsys.opens {
		recs = append(recs, r)
	}
	data, err := json.Marshal(recs)
	if err == nil {
		err = atomicfile.WriteFile(fsys.stateFile, data, 0o600)
	}
	if err != nil {
		fsys.log.Warn("lazyfs: record open files", "file", fsys.stateFile, "err", err)
	}
}

// loadOpens takes the records a previous server of the mount kept.
func (fsys *fileSystem) loadOpens() error {
	data, err := os.ReadFile(fsys.stateFile)
	if err != nil {
		return err
	}
	var recs []openRecord
	if err := json.Unmarshal(data, &recs); err != nil {
		return fmt.Errorf("%s: %w", fsys.stateFile, err)
	}
	for _, r := range recs {
		st := &fileState{cachedOpens: r.Cached, backingRefs: r.Refs, handles: r.Handles}
		if int(r.Ino) >= len(fsys.b.Inodes) || r.Cached < 0 || r.Refs < 0 || (r.Refs > 0) != (r.Backing != 0) ||
			st.named(false) > r.Cached || st.named(true) > r.Refs || slices.ContainsFunc(r.Handles, func(h uint64) bool { return h <= fhOldPassthrough }) {
			return fmt.Errorf("%s: bad record %+v", fsys.stateFile, r)
		}
	}
	fsys.stateMu.Lock()
	defer fsys.stateMu.Unlock()
	for _, r := range recs {
		st := fsys.file(r.Ino)
		st.mu.Lock()
		st.cachedOpens, st.backingID, st.backingRefs, st.handles = r.Cached, r.Backing, r.Refs, slices.Clone(r.Handles)
		st.mu.Unlock()
		fsys.opens[r.Ino] = r
	}
	return nil
}

// sequential records a read of [off, end) and reports whether it
// continues the reads before it: it starts the file, or starts at most a
// readahead window behind the furthest read so far. The kernel has several
// readahead requests in flight at once, and they may arrive in any order.
func (st *fileState) sequential(off, end int64) bool {
	for {
		furthest := st.next.Load()
		if end <= furthest || st.next.CompareAndSwap(furthest, end) {
			return off == 0 || (off <= furthest && furthest-off <= readaheadKB<<10)
		}
	}
}

// Read implements fuse.RawFileSystem. The reply never passes through a
// buffer of this process: a large read of cached chunks is spliced from
// the cache files, any other is written from the chunks themselves.
func (fsys *fileSystem) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	ino, ok := fsys.inode(in.NodeId)
	if !ok {
		return nil, errStale
	}
	node := &fsys.b.Inodes[ino]
	if node.Type() != bootstrap.ModeRegular {
		return nil, fuse.EINVAL
	}
	off := int64(in.Offset)
	if off < 0 {
		return nil, fuse.EINVAL
	}
	if off >= node.Size || len(buf) == 0 {
		return fuse.ReadResultData(nil), fuse.OK
	}
	return fsys.readFile(readContext(in), ino, off, min(off+int64(len(buf)), node.Size))
}

// readContext is the context of a read. It ignores the kernel's
// interrupts, as libfuse does unless told otherwise: a read of a regular
// file is not expected to fail with EINTR, and where EROFS reads the image
// file for a container, an interrupted read is an I/O error that program
// sees, not a restart. Signals arrive often (Go programs preempt their
// threads with SIGURG), and the kernel keeps waiting for the reply after
// sending the interrupt anyway; only a fatal signal ends the wait, and the
// chunks then fetched still land in the caches.
func readContext(in *fuse.ReadIn) *fuse.Context {
	return &fuse.Context{Caller: in.Caller}
}

// readFile answers a read of [off, end) of regular file ino, which ends
// within the file.
func (fsys *fileSystem) readFile(ctx *fuse.Context, ino uint32, off, end int64) (fuse.ReadResult, fuse.Status) {
	st := fsys.file(ino)
	offs := st.offs
	refs := fsys.b.FileChunks(ino)
	// The chunk holding off is the last one starting at or before it.
	i := sort.Search(len(refs), func(i int) bool { return offs[i+1] > off })
	if w, ok := fsys.r.(Warmer); ok && st.sequential(off, end) {
		// Have the chunks after this read ready for a sequential
		// reader. Kernel readahead requests need not start on chunk
		// boundaries, so every sequential read asks; chunks already
		// in memory or on their way are not read again.
		last := sort.Search(len(refs), func(j int) bool { return offs[j+1] >= end })
		if last+1 < len(refs) {
			w.Warm(fsys.b, refs[last+1:min(last+1+warmAhead, len(refs))])
		}
	}
	if res, ok := fsys.spliced(refs, offs, i, off, end); ok {
		return res, fuse.OK
	}
	// The reply is written straight from the chunks (writev), without
	// assembling it in a buffer.
	vecs, errno := fsys.fileVecs(ctx, ino, off, end, nil)
	if errno != 0 {
		return nil, status(errno)
	}
	return fuse.ReadResultVector(vecs), fuse.OK
}

// fileVecs appends to vecs the slices of chunks holding [off, end) of
// regular file ino.
func (fsys *fileSystem) fileVecs(ctx context.Context, ino uint32, off, end int64, vecs [][]byte) ([][]byte, syscall.Errno) {
	offs := fsys.file(ino).offs
	refs := fsys.b.FileChunks(ino)
	i := sort.Search(len(refs), func(i int) bool { return offs[i+1] > off })
	for pos := off; pos < end; i++ {
		data, errno := fsys.chunk(ctx, ino, refs[i])
		if errno != 0 {
			return nil, errno
		}
		stop := min(end, offs[i+1])
		vecs = append(vecs, data[pos-offs[i]:stop-offs[i]])
		pos = stop
	}
	return vecs, 0
}

// spliceMin is the smallest read worth splicing: opening a cache file costs
// more than copying a few KiB of a chunk that is in memory anyway.
const spliceMin = 256 << 10

// spliced answers a read of [off, end), starting in chunk i, by splicing
// the bytes from the chunk files into a pipe, when every chunk involved
// is in a local file (see ChunkFiler); the kernel then moves them to the
// reader without a copy in this process.
func (fsys *fileSystem) spliced(refs []uint32, offs []int64, i int, off, end int64) (fuse.ReadResult, bool) {
	cf, ok := fsys.r.(ChunkFiler)
	if !ok || !fsys.splice || end-off < spliceMin {
		return nil, false
	}
	var files []*os.File
	var at []int64
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for j := i; j < len(refs) && offs[j] < end; j++ {
		f, base, ok := cf.ChunkFile(fsys.b, refs[j])
		if !ok {
			return nil, false
		}
		files = append(files, f)
		at = append(at, base)
	}
	pair, err := splice.Get()
	if err != nil {
		return nil, false
	}
	size := int(end - off)
	if err := pair.Grow(size); err != nil {
		splice.Done(pair)
		return nil, false
	}
	pos := off
	for k, f := range files {
		j := i + k
		stop := min(end, offs[j+1])
		want := int(stop - pos)
		if got, err := pair.LoadFromAt(f.Fd(), want, at[k]+pos-offs[j]); err != nil || got != want {
			// A short file: let the ordinary path find out and report it.
			splice.Drop(pair)
			return nil, false
		}
		pos = stop
	}
	return fuse.ReadResultPipe(pair, size), true
}

// chunk reads chunk ci of file ino, mapping failure to EIO. Reads are
// never cancelled (see readContext); a reader the kernel gives up on, at a
// fatal signal, is gone before the reply.
func (fsys *fileSystem) chunk(ctx context.Context, ino, ci uint32) ([]byte, syscall.Errno) {
	c := fsys.b.Chunks[ci]
	data, err := fsys.r.ReadChunk(ctx, fsys.b, ci)
	if err == nil && len(data) != int(c.Size) {
		err = fmt.Errorf("chunk reader returned %d bytes, want %d", len(data), c.Size)
	}
	if err == nil {
		return data, 0
	}
	fsys.log.Error("lazyfs: read failed", "path", fsys.path(ino), "ino", inoOf(ino), "chunk", c.Digest, "err", err)
	return nil, syscall.EIO
}

// StatFs implements fuse.RawFileSystem with the image's totals, so df
// shows something meaningful; there is never free space.
func (fsys *fileSystem) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	fsys.totalOnce.Do(func() {
		for i := range fsys.b.Inodes {
			fsys.totalBytes += fsys.b.Inodes[i].Size
		}
	})
	bytes := fsys.totalBytes
	out.Bsize = blockSize
	out.Frsize = blockSize
	out.Blocks = uint64(bytes+blockSize-1) / blockSize
	out.Files = uint64(len(fsys.b.Inodes))
	out.NameLen = bootstrap.MaxNameLen
	return fuse.OK
}
