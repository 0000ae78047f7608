// Package lazyfs serves a Skiff image as a read-only FUSE filesystem. The
// tree comes straight from the bootstrap, looked up one name at a time so
// that an image of any size mounts at once; file content is read chunk by
// chunk through a ChunkReader only when the kernel asks for it. The image
// is immutable, so the kernel is told to cache names, attributes and pages
// for as long as it likes.
package lazyfs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/hanwen/go-fuse/v2/splice"
	"golang.org/x/sys/unix"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// ChunkReader returns the verified content of a chunk. *fetch.Fetcher
// implements it. The returned slice is not modified.
type ChunkReader interface {
	ReadChunk(ctx context.Context, b *bootstrap.Bootstrap, idx uint32) ([]byte, error)
}

// Warmer is implemented by chunk readers that can bring chunks off the
// disk ahead of a sequential reader, so the next read does not wait for
// it. *fetch.Fetcher implements it.
type Warmer interface {
	Warm(b *bootstrap.Bootstrap, chunks []uint32)
}

// ChunkFiler is implemented by chunk readers that can point at a local
// file holding a chunk's content, so a read is answered by splicing the
// bytes from that file to the kernel instead of copying them through this
// process. *fetch.Fetcher implements it.
type ChunkFiler interface {
	// ChunkFile returns an open file holding chunk idx of b from the
	// returned offset, or false. The caller closes the file.
	ChunkFile(b *bootstrap.Bootstrap, idx uint32) (*os.File, int64, bool)
}

// warmAhead is how many chunks past the one a sequential read enters are
// warmed.
const warmAhead = 4

// BackingFiler provides files on local disk holding the whole content of
// an image file, which the kernel then reads directly (FUSE passthrough)
// instead of asking the mount for every page. *fetch.Fetcher implements
// it.
type BackingFiler interface {
	// BackingFile returns a read-only file with exactly the content of
	// regular file ino of b, or false when there is none (yet).
	BackingFile(ctx context.Context, b *bootstrap.Bootstrap, ino uint32) (*os.File, bool)
}

// PassthroughMinSize is the smallest file served by passthrough. Smaller
// files gain little once in the kernel's page cache, and each would be
// stored a second time as a backing file.
const PassthroughMinSize = 1 << 20

// Options tune a mount.
type Options struct {
	// Passthrough lets the kernel read files the ChunkReader can back
	// with a local file (it must implement BackingFiler) straight from
	// that file, at native speed (FUSE passthrough, Linux 6.9, root).
	// Files not yet entirely local are served through the mount as usual.
	Passthrough bool
	// Logger receives read failures; default slog.Default().
	Logger *slog.Logger
	// Debug logs every FUSE request to the Logger.
	Debug bool
	// CacheTimeout is how long the kernel may cache names and attributes;
	// default 24h, since nothing in an image ever changes.
	CacheTimeout time.Duration
}

// Server is a mounted image.
type Server struct {
	mountpoint string
	server     *fuse.Server
}

// blockSize is the st_blksize reported for every file and the unit of
// Statfs; st_blocks are 512-byte units as everywhere.
const blockSize = 4096

// Mount mounts b read-only at mountpoint, with content from r. The mount
// is suitable as an overlay lower directory: other users may access it,
// the kernel enforces the image's permissions, setuid bits work and device
// nodes cannot be opened through it. ctx bounds only the mount itself.
func Mount(ctx context.Context, mountpoint string, b *bootstrap.Bootstrap, r ChunkReader, opts Options) (*Server, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	if len(b.Inodes) == 0 || !b.Inodes[bootstrap.RootInode].IsDir() {
		return nil, fmt.Errorf("mount %s: bootstrap has no root directory", mountpoint)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.CacheTimeout <= 0 {
		opts.CacheTimeout = 24 * time.Hour
	}
	fsys := &fileSystem{b: b, r: r, log: opts.Logger, ready: make(chan struct{}), splice: os.Geteuid() == 0}
	var disabled int64
	if bf, ok := r.(BackingFiler); ok && opts.Passthrough {
		fsys.backing = bf
	} else {
		// Negotiating passthrough raises the mount's stacking depth even
		// when no file uses it.
		disabled = fuse.CAP_PASSTHROUGH
	}
	root := &node{fs: fsys, ino: bootstrap.RootInode}
	timeout := opts.CacheTimeout
	// go-fuse only logs requests (with Debug) and otherwise things it
	// cannot return as errors.
	fuseLevel := slog.LevelWarn
	if opts.Debug {
		fuseLevel = slog.LevelInfo
	}
	server, err := fs.Mount(mountpoint, root, &fs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther:       allowOther(opts.Logger),
			FsName:           "skiff",
			Name:             "skiff",
			Options:          []string{"ro", "default_permissions"},
			DirectMount:      true,
			DirectMountFlags: unix.MS_RDONLY | unix.MS_NODEV,
			// Requests of almost a whole default chunk (see maxRequest).
			MaxWrite:      maxRequest,
			MaxReadAhead:  maxRequest,
			MaxBackground: 64,
			// Large reads of cached chunks are spliced (see
			// node.splice). Pipes of 1 MiB are only certain for root:
			// other users' pipes count against per-user limits.
			DisableSplice: os.Geteuid() != 0,
			Debug:         opts.Debug,
			Logger:        slog.NewLogLogger(opts.Logger.Handler(), fuseLevel),
			// Backing files live on an ordinary filesystem; the mount
			// itself may be an overlay lower directory.
			MaxStackDepth:        1,
			DisabledCapabilities: uint64(disabled),
		},
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		// Modes are exactly the image's, 0000 included.
		NullPermissions: true,
		RootStableAttr:  &fs.StableAttr{Ino: inoOf(bootstrap.RootInode)},
	})
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	close(fsys.ready)
	raiseReadahead(mountpoint, opts.Logger)
	return &Server{mountpoint: mountpoint, server: server}, nil
}

// allowOther reports whether the mount can admit other users, which an
// overlay lower directory used by containers needs. Root always can; other
// users only if the FUSE configuration permits it, and otherwise get a
// private mount rather than a failure.
func allowOther(log *slog.Logger) bool {
	if os.Geteuid() == 0 {
		return true
	}
	conf, _ := os.ReadFile("/etc/fuse.conf")
	for _, line := range strings.Split(string(conf), "\n") {
		if strings.TrimSpace(line) == "user_allow_other" {
			return true
		}
	}
	log.Warn("lazyfs: mounting for this user only; set user_allow_other in /etc/fuse.conf to share it")
	return false
}

// maxRequest is the largest read the kernel asks for at once. It stays
// under 1 MiB so that a reply and its header fit an unprivileged pipe's
// limit (fs.pipe-max-size, 1 MiB by default) and can be spliced.
const maxRequest = 1<<20 - 64<<10

// readaheadKB is the kernel readahead window asked for. The kernel starts
// FUSE mounts at 128 KiB, which makes a sequential read a stream of small
// synchronous requests; a window of four default chunks keeps several
// 1 MiB requests in flight, each served while the next is on its way.
const readaheadKB = 4096

// raiseReadahead widens the mount's readahead window through sysfs. It
// needs root; without it reads still work, only with more round trips.
func raiseReadahead(mountpoint string, log *slog.Logger) {
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		return
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	if err := os.WriteFile(p, []byte(strconv.Itoa(readaheadKB)), 0); err != nil {
		log.Debug("lazyfs: cannot raise readahead", "path", p, "err", err)
	}
}

// Mountpoint returns where the image is mounted.
func (m *Server) Mountpoint() string { return m.mountpoint }

// Unmount detaches the filesystem. If it is busy, it is detached lazily:
// it disappears from the namespace now and the kernel lets go of it, ending
// Wait, when the last open file closes.
func (m *Server) Unmount() error {
	err := m.server.Unmount()
	if err == nil {
		return nil
	}
	if lerr := unix.Unmount(m.mountpoint, unix.MNT_DETACH); lerr != nil {
		return fmt.Errorf("unmount %s: %w", m.mountpoint, errors.Join(err, lerr))
	}
	return nil
}

// Wait blocks until the filesystem is unmounted, by Unmount or from outside.
func (m *Server) Wait() { m.server.Wait() }

// fileSystem is the state shared by every node of one mount.
type fileSystem struct {
	b       *bootstrap.Bootstrap
	r       ChunkReader
	backing BackingFiler // nil: no passthrough
	splice  bool         // cached chunks may be spliced to the kernel
	log     *slog.Logger
	// ready is closed once go-fuse has taught the kernel that this
	// filesystem does not implement poll. Until then, opening a file from
	// this very process could deadlock it: the Go runtime adds every
	// opened file to its epoll set while holding a scheduler slot, and the
	// kernel would ask this server to poll the file. Holding back lookups
	// until then keeps every file unopenable (lookups block like ordinary
	// system calls and hold no slot).
	ready chan struct{}

	totalOnce  sync.Once
	totalBytes int64
}

// inoOf maps an inode index to st_ino. Hard links share the index and so
// one kernel inode; +1 keeps 0, which FUSE reserves, unused.
func inoOf(ino uint32) uint64 { return uint64(ino) + 1 }

// node is one inode of the image.
type node struct {
	fs.Inode
	fs  *fileSystem
	ino uint32

	offsOnce sync.Once
	offs     []int64 // file offset of each chunk, plus the size

	// next is where the furthest read so far ended; see sequential.
	next atomic.Int64

	// cachedOpens counts open handles served through the mount: the
	// kernel refuses (EIO) a passthrough open while an inode has any.
	mu          sync.Mutex
	cachedOpens int
}

var (
	_ fs.NodeLookuper       = (*node)(nil)
	_ fs.NodeGetattrer      = (*node)(nil)
	_ fs.NodeOpendirHandler = (*node)(nil)
	_ fs.NodeReadlinker     = (*node)(nil)
	_ fs.NodeGetxattrer     = (*node)(nil)
	_ fs.NodeListxattrer    = (*node)(nil)
	_ fs.NodeOpener         = (*node)(nil)
	_ fs.NodeReader         = (*node)(nil)
	_ fs.NodeStatfser       = (*node)(nil)
	_ fs.NodeFlusher        = (*node)(nil)
)

// Flush implements fs.NodeFlusher. Nothing is ever written, and ENOSYS
// tells the kernel to stop sending flushes, sparing every close(2) a
// round trip to this process.
func (n *node) Flush(ctx context.Context, f fs.FileHandle) syscall.Errno {
	return syscall.ENOSYS
}

func (n *node) inode() *bootstrap.Inode { return &n.fs.b.Inodes[n.ino] }

// Lookup implements fs.NodeLookuper.
func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	select {
	case <-n.fs.ready:
	case <-ctx.Done():
		return nil, syscall.EINTR
	}
	if !n.inode().IsDir() {
		return nil, syscall.ENOTDIR
	}
	child, ok := n.fs.b.Lookup(n.ino, name)
	if !ok {
		return nil, syscall.ENOENT
	}
	n.fs.fill(&out.Attr, child)
	return n.NewInode(ctx, &node{fs: n.fs, ino: child}, fs.StableAttr{Mode: n.fs.b.Inodes[child].Type(), Ino: inoOf(child)}), 0
}

// Getattr implements fs.NodeGetattrer.
func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.fs.fill(&out.Attr, n.ino)
	return 0
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

// OpendirHandle implements fs.NodeOpendirHandler. Listings never change,
// so the kernel may cache them (FOPEN_CACHE_DIR).
func (n *node) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if !n.inode().IsDir() {
		return nil, 0, syscall.ENOTDIR
	}
	parent := inoOf(n.ino)
	if _, p := n.Parent(); p != nil {
		parent = p.StableAttr().Ino
	}
	return &dirHandle{fs: n.fs, self: inoOf(n.ino), parent: parent, ents: n.fs.b.Children(n.ino)}, fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}

// dirHandle lists a directory straight from the bootstrap, "." and ".."
// first, then the entries in their stored (name) order. Position i (the
// offset after the i-th entry) is all the state, so seeking is exact.
type dirHandle struct {
	fs           *fileSystem
	self, parent uint64
	ents         []bootstrap.Dirent

	mu  sync.Mutex
	pos int
}

var (
	_ fs.FileReaddirenter = (*dirHandle)(nil)
	_ fs.FileSeekdirer    = (*dirHandle)(nil)
)

// Readdirent implements fs.FileReaddirenter.
func (d *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pos >= len(d.ents)+2 {
		return nil, 0
	}
	d.pos++
	e := fuse.DirEntry{Off: uint64(d.pos)}
	switch d.pos {
	case 1:
		e.Name, e.Mode, e.Ino = ".", fuse.S_IFDIR, d.self
	case 2:
		e.Name, e.Mode, e.Ino = "..", fuse.S_IFDIR, d.parent
	default:
		de := d.ents[d.pos-3]
		e.Name, e.Mode, e.Ino = de.Name, d.fs.b.Inodes[de.Inode].Mode, inoOf(de.Inode)
	}
	return &e, 0
}

// Seekdir implements fs.FileSeekdirer.
func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pos = int(min(off, uint64(len(d.ents)+2)))
	return 0
}

// Readlink implements fs.NodeReadlinker.
func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	in := n.inode()
	if in.Type() != bootstrap.ModeSymlink {
		return nil, syscall.EINVAL
	}
	return []byte(in.Target), 0
}

// Getxattr implements fs.NodeGetxattrer. A buffer too small for the value
// gets ERANGE with the needed size, as getxattr(2) requires.
func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if len(n.fs.b.Xattrs) == 0 {
		// An image without any xattrs says so once: after ENOSYS the
		// kernel answers every getxattr itself (EOPNOTSUPP, which the
		// kernel's capability check and overlayfs read as "none"). An
		// overlay on the mount asks for its own trusted.overlay.* names
		// on every file a new container looks up; that is a round trip
		// per file otherwise, since FUSE caches no xattrs.
		return 0, syscall.ENOSYS
	}
	xs := n.fs.b.InodeXattrs(n.ino)
	i := sort.Search(len(xs), func(i int) bool { return xs[i].Name >= attr })
	if i == len(xs) || xs[i].Name != attr {
		return 0, syscall.ENODATA
	}
	v := xs[i].Value
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

// Listxattr implements fs.NodeListxattrer.
func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	xs := n.fs.b.InodeXattrs(n.ino)
	size := 0
	for _, x := range xs {
		size += len(x.Name) + 1
	}
	if len(dest) < size {
		return uint32(size), syscall.ERANGE
	}
	pos := 0
	for _, x := range xs {
		pos += copy(dest[pos:], x.Name)
		dest[pos] = 0
		pos++
	}
	return uint32(size), 0
}

// Open implements fs.NodeOpener. Pages stay cached across opens: the
// content behind an inode never changes. A large file that is entirely
// local is opened in passthrough mode when the mount allows it.
func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if n.fs.backing == nil {
		// Without passthrough there is nothing to decide at open time.
		// ENOSYS makes the kernel stop sending OPEN and RELEASE for the
		// rest of the connection and keep pages cached (FUSE no-open):
		// opening a file then costs no round trip, which is most of the
		// cost of a program reading many small cached files. Write opens
		// never get here: the mount is read-only.
		return nil, 0, syscall.ENOSYS
	}
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0 {
		return nil, 0, syscall.EROFS
	}
	in := n.inode()
	if in.Type() != bootstrap.ModeRegular {
		return nil, 0, syscall.EINVAL
	}
	if n.fs.backing == nil || in.Size < PassthroughMinSize {
		return nil, fuse.FOPEN_KEEP_CACHE, 0
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cachedOpens == 0 {
		if f, ok := n.fs.backing.BackingFile(ctx, n.fs.b, n.ino); ok {
			return &fileHandle{node: n, backing: f}, 0, 0
		}
	}
	n.cachedOpens++
	return &fileHandle{node: n}, fuse.FOPEN_KEEP_CACHE, 0
}

// fileHandle is an open file of a mount that may use passthrough.
type fileHandle struct {
	node    *node
	backing *os.File // nil: served through the mount
}

var (
	_ fs.FilePassthroughFder = (*fileHandle)(nil)
	_ fs.FileReleaser        = (*fileHandle)(nil)
)

// PassthroughFd implements fs.FilePassthroughFder. go-fuse registers the
// descriptor with the kernel once per inode and reuses it for every
// passthrough open while one is open.
func (h *fileHandle) PassthroughFd() (int, bool) {
	if h.backing == nil {
		return 0, false
	}
	return int(h.backing.Fd()), true
}

// Release implements fs.FileReleaser.
func (h *fileHandle) Release(ctx context.Context) syscall.Errno {
	if h.backing != nil {
		h.backing.Close()
		return 0
	}
	h.node.mu.Lock()
	h.node.cachedOpens--
	h.node.mu.Unlock()
	return 0
}

func (n *node) offsets() []int64 {
	n.offsOnce.Do(func() { n.offs = n.fs.b.ChunkOffsets(n.ino) })
	return n.offs
}

// sequential records a read of [off, end) and reports whether it
// continues the reads before it: it starts the file, or starts at most a
// readahead window behind the furthest read so far. The kernel has several
// readahead requests in flight at once, and they may arrive in any order.
func (n *node) sequential(off, end int64) bool {
	for {
		furthest := n.next.Load()
		if end <= furthest || n.next.CompareAndSwap(furthest, end) {
			return off == 0 || (off <= furthest && furthest-off <= readaheadKB<<10)
		}
	}
}

// Read implements fs.NodeReader. The reply never passes through a buffer
// of this process: a large read of cached chunks is spliced from the
// cache files, any other is written from the chunks themselves.
func (n *node) Read(ctx context.Context, f fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	in := n.inode()
	if in.Type() != bootstrap.ModeRegular {
		return nil, syscall.EINVAL
	}
	if off < 0 {
		return nil, syscall.EINVAL
	}
	if off >= in.Size || len(dest) == 0 {
		return fuse.ReadResultData(nil), 0
	}
	end := min(off+int64(len(dest)), in.Size)
	offs := n.offsets()
	refs := n.fs.b.FileChunks(n.ino)
	// The chunk holding off is the last one starting at or before it.
	i := sort.Search(len(refs), func(i int) bool { return offs[i+1] > off })
	if w, ok := n.fs.r.(Warmer); ok && n.sequential(off, end) {
		// Have the chunks after this read ready for a sequential
		// reader. Kernel readahead requests need not start on chunk
		// boundaries, so every sequential read asks; chunks already
		// in memory or on their way cost nothing.
		last := sort.Search(len(refs), func(j int) bool { return offs[j+1] >= end })
		if last+1 < len(refs) {
			w.Warm(n.fs.b, refs[last+1:min(last+1+warmAhead, len(refs))])
		}
	}
	if res, ok := n.splice(refs, offs, i, off, end); ok {
		return res, 0
	}
	if end <= offs[i+1] {
		data, errno := n.chunk(ctx, refs[i])
		if errno != 0 {
			return nil, errno
		}
		return fuse.ReadResultData(data[off-offs[i] : end-offs[i]]), 0
	}
	// Spanning chunks: the reply is written straight from the chunks
	// (writev), without assembling it in dest.
	var vecs [][]byte
	for pos := off; pos < end; i++ {
		data, errno := n.chunk(ctx, refs[i])
		if errno != 0 {
			return nil, errno
		}
		stop := min(end, offs[i+1])
		vecs = append(vecs, data[pos-offs[i]:stop-offs[i]])
		pos = stop
	}
	return fuse.ReadResultVector(vecs), 0
}

// spliceMin is the smallest read worth splicing: opening a cache file costs
// more than copying a few KiB of a chunk that is in memory anyway.
const spliceMin = 256 << 10

// splice answers a read of [off, end), starting in chunk i, by splicing
// the bytes from the chunk files into a pipe, when every chunk involved
// is in a local file (see ChunkFiler); the kernel then moves them to the
// reader without a copy in this process.
func (n *node) splice(refs []uint32, offs []int64, i int, off, end int64) (fuse.ReadResult, bool) {
	cf, ok := n.fs.r.(ChunkFiler)
	if !ok || !n.fs.splice || end-off < spliceMin {
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
		f, base, ok := cf.ChunkFile(n.fs.b, refs[j])
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

// chunk reads one chunk of the file, mapping failure to EIO (or EINTR when
// the reader gave up).
func (n *node) chunk(ctx context.Context, ci uint32) ([]byte, syscall.Errno) {
	c := n.fs.b.Chunks[ci]
	data, err := n.fs.r.ReadChunk(ctx, n.fs.b, ci)
	if err == nil && len(data) != int(c.Size) {
		err = fmt.Errorf("chunk reader returned %d bytes, want %d", len(data), c.Size)
	}
	if err == nil {
		return data, 0
	}
	if ctx.Err() != nil {
		return nil, syscall.EINTR
	}
	n.fs.log.Error("lazyfs: read failed", "path", "/"+n.Path(nil), "ino", inoOf(n.ino), "chunk", c.Digest, "err", err)
	return nil, syscall.EIO
}

// Statfs implements fs.NodeStatfser with the image's totals, so df shows
// something meaningful; there is never free space.
func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	n.fs.totalOnce.Do(func() {
		for i := range n.fs.b.Inodes {
			n.fs.totalBytes += n.fs.b.Inodes[i].Size
		}
	})
	bytes := n.fs.totalBytes
	out.Bsize = blockSize
	out.Frsize = blockSize
	out.Blocks = uint64(bytes+blockSize-1) / blockSize
	out.Files = uint64(len(n.fs.b.Inodes))
	out.NameLen = bootstrap.MaxNameLen
	return 0
}
