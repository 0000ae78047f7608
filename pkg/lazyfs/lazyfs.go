// Package lazyfs serves a Skiff image as a read-only FUSE filesystem. The
// tree comes straight from the bootstrap, looked up one name at a time so
// that an image of any size mounts at once; file content is read chunk by
// chunk through a ChunkReader only when the kernel asks for it. The image
// is immutable, so the kernel is told to cache names, attributes and pages
// for as long as it likes. In image mode (Options.Image) the mount serves
// the image as one EROFS image file instead, which the kernel's EROFS
// mounts: the tree is then the kernel's, and only reads of file content
// reach this package.
package lazyfs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/erofs"
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

// Fetcher is implemented by chunk readers that can bring many chunks in
// with few requests, which a read spanning many of them asks for first.
// *fetch.Fetcher implements it.
type Fetcher interface {
	Fetch(ctx context.Context, b *bootstrap.Bootstrap, chunks []uint32)
}

// Caller returns the id of the thread whose read ctx serves, as the
// kernel gave it with a request (a thread id, not a process id), or false
// for a context that did not come from a request. A reader that reads
// through its own mount tells its reads apart from a container's by it.
func Caller(ctx context.Context) (int, bool) {
	c, ok := ctx.(*fuse.Context)
	if !ok || c.Caller.Pid == 0 {
		return 0, false
	}
	return int(c.Caller.Pid), true
}

// warmAhead is how many chunks past the one a sequential read enters are
// warmed.
const warmAhead = 8

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
	// OpenState, with Passthrough, is a file where the mount keeps how
	// the kernel has its files open, for a process that takes the mount
	// over (see Resume): the kernel fails an open whose mode (passthrough
	// with a given backing file, or cached) conflicts with the opens
	// before it, so a successor must know them.
	OpenState string
	// Logger receives read failures; default slog.Default().
	Logger *slog.Logger
	// Debug logs every FUSE request to the Logger.
	Debug bool
	// CacheTimeout is how long the kernel may cache names and attributes;
	// default 24h, since nothing in an image ever changes.
	CacheTimeout time.Duration
	// Image, when set, serves the bootstrap in image mode (see
	// ImageName): the FUSE connection is mounted at ImageDir and holds
	// the image file, which the kernel's EROFS mounts where the tree is
	// wanted. Image must be the bootstrap's layout; Passthrough does not
	// apply. Root only, Linux 6.12 or later.
	Image    *erofs.Image
	ImageDir string
}

// Server is a mounted image.
type Server struct {
	mountpoint string
	// imageDir is where the FUSE connection of an image-mode mount is
	// mounted; empty for a tree mount, whose connection is at mountpoint.
	imageDir string
	server   *fuse.Server
	// dev is this process' own descriptor of the FUSE connection, kept to
	// hand the connection over (see Handover); nil when the mount was
	// made by fusermount, which keeps the device to itself.
	dev       *os.File
	closeOnce sync.Once
	// resumed is the filesystem of a mount taken over, served from
	// Start on; nil for a mount made here.
	resumed *fileSystem
	started bool
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
	opts = opts.withDefaults()
	if opts.Image != nil {
		return mountImage(mountpoint, b, r, opts)
	}
	fsys := newFileSystem(b, r, opts)
	mo := mountOptions(opts, fsys.backing != nil)
	if os.Geteuid() != 0 {
		// Only root can mount(2); fusermount mounts for others.
		server, err := fuse.NewServer(fsys, mountpoint, &mo)
		if err != nil {
			return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
		}
		go server.Serve()
		if err := server.WaitMount(); err != nil {
			server.Unmount()
			return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
		}
		close(fsys.ready)
		return &Server{mountpoint: mountpoint, server: server}, nil
	}
	dev, err := mountDevice(mountpoint, mo.AllowOther)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	s, err := serveMounted(fsys, fsys, dev, mountpoint, &mo)
	if err != nil {
		unix.Unmount(mountpoint, unix.MNT_DETACH)
		dev.Close()
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	raiseReadahead(mountpoint, opts.Logger)
	return s, nil
}

// newServed returns the filesystem serving b and what go-fuse is to serve:
// the same, or in image mode the image file read through it.
func newServed(b *bootstrap.Bootstrap, r ChunkReader, opts Options) (*fileSystem, fuse.RawFileSystem, error) {
	if opts.Image == nil {
		fsys := newFileSystem(b, r, opts)
		return fsys, fsys, nil
	}
	if err := opts.Image.Check(b); err != nil {
		return nil, nil, err
	}
	opts.Passthrough = false
	fsys := newFileSystem(b, r, opts)
	return fsys, &imageFS{fileSystem: fsys, img: opts.Image}, nil
}

// mountImage mounts b in image mode (see Options.Image).
func mountImage(mountpoint string, b *bootstrap.Bootstrap, r ChunkReader, opts Options) (*Server, error) {
	if err := imageModeUser(); err != nil {
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	fsys, raw, err := newServed(b, r, opts)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	mo := mountOptions(opts, false)
	dev, err := mountDevice(opts.ImageDir, mo.AllowOther)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", opts.ImageDir, err)
	}
	s, err := serveMounted(raw, fsys, dev, opts.ImageDir, &mo)
	if err != nil {
		unix.Unmount(opts.ImageDir, unix.MNT_DETACH)
		dev.Close()
		return nil, fmt.Errorf("mount %s: %w", opts.ImageDir, err)
	}
	// The kernel reads the image ahead in large requests, which is how
	// neighbouring small files arrive together.
	raiseReadahead(opts.ImageDir, opts.Logger)
	if err := mountEROFS(opts.ImageDir, mountpoint); err != nil {
		s.Unmount()
		s.Wait()
		return nil, err
	}
	s.imageDir, s.mountpoint = opts.ImageDir, mountpoint
	// EROFS reads its metadata a block at a time as it looks files up,
	// without readahead: each block would be a round trip to this process
	// that the reader waits for. The kernel is handed all of it now
	// instead (it is local, a few bytes per file); pages it drops later
	// are read the usual way.
	if st := s.server.InodeNotifyStoreCache(imageNode, 0, opts.Image.Meta()); !st.Ok() {
		opts.Logger.Debug("lazyfs: store image metadata in the page cache", "mountpoint", mountpoint, "status", st)
	}
	return s, nil
}

// serveMounted serves the connection dev, just mounted at mountpoint,
// with raw, which is fsys or serves through it. go-fuse gets a descriptor
// of its own, which it closes when serving ends; dev stays with the
// Server for a handover.
func serveMounted(raw fuse.RawFileSystem, fsys *fileSystem, dev *os.File, mountpoint string, mo *fuse.MountOptions) (*Server, error) {
	fd, err := unix.FcntlInt(dev.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	server, err := fuse.NewServer(raw, "/dev/fd/"+strconv.Itoa(fd), mo)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	go server.Serve()
	if err := pollHack(mountpoint); err != nil {
		unix.Unmount(mountpoint, unix.MNT_DETACH)
		server.Wait()
		return nil, err
	}
	close(fsys.ready)
	return &Server{mountpoint: mountpoint, server: server, dev: dev}, nil
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.CacheTimeout <= 0 {
		o.CacheTimeout = 24 * time.Hour
	}
	return o
}

// mountOptions are go-fuse's settings for a mount, which decide what it
// negotiates with the kernel.
func mountOptions(opts Options, passthrough bool) fuse.MountOptions {
	var disabled int64
	if !passthrough {
		// Negotiating passthrough raises the mount's stacking depth even
		// when no file uses it.
		disabled = fuse.CAP_PASSTHROUGH
	}
	// go-fuse only logs requests (with Debug) and otherwise things it
	// cannot return as errors.
	fuseLevel := slog.LevelWarn
	if opts.Debug {
		fuseLevel = slog.LevelInfo
	}
	return fuse.MountOptions{
		AllowOther: allowOther(opts.Logger),
		FsName:     "skiff",
		Name:       "skiff",
		Options:    []string{"ro", "default_permissions"},
		// Requests of almost a whole default chunk (see maxRequest).
		MaxWrite:      maxRequest,
		MaxReadAhead:  maxRequest,
		MaxBackground: 64,
		// Large reads of cached chunks are spliced (see
		// fileSystem.spliced). Pipes of 1 MiB are only certain for root:
		// other users' pipes count against per-user limits.
		DisableSplice: os.Geteuid() != 0,
		Debug:         opts.Debug,
		Logger:        slog.NewLogLogger(opts.Logger.Handler(), fuseLevel),
		// Backing files live on an ordinary filesystem; the mount
		// itself may be an overlay lower directory.
		MaxStackDepth:        1,
		DisabledCapabilities: uint64(disabled),
	}
}

// mountDevice mounts a new FUSE connection at mountpoint and returns its
// device descriptor. The kernel then waits for a server to answer INIT on
// it.
func mountDevice(mountpoint string, allowOther bool) (*os.File, error) {
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/fuse: %w", err)
	}
	data := fmt.Sprintf("fd=%d,rootmode=%o,user_id=0,group_id=0,max_read=%d,default_permissions", fd, unix.S_IFDIR, maxRequest)
	if allowOther {
		data += ",allow_other"
	}
	// Setuid bits work (no MS_NOSUID): images rely on them.
	if err := unix.Mount("skiff", mountpoint, "fuse.skiff", unix.MS_RDONLY|unix.MS_NODEV, data); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("mount(2): %w", err)
	}
	return os.NewFile(uintptr(fd), "/dev/fuse"), nil
}

// pollHackName is the file go-fuse answers for itself so that the kernel
// learns, through the poll of it, that this filesystem does not poll.
const pollHackName = ".go-fuse-epoll-hack"

// pollHack does what go-fuse's WaitMount does for mounts it made itself:
// it makes the kernel send one POLL, which go-fuse answers with ENOSYS, so
// that files of the mount are never polled (see fileSystem.ready).
func pollHack(mountpoint string) error {
	fd, err := unix.Open(filepath.Join(mountpoint, pollHackName), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("poll setup: %w", err)
	}
	defer unix.Close(fd)
	unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLPRI | unix.POLLOUT}}, 0)
	return nil
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
const readaheadKB = erofs.ReadaheadGap >> 10

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
	if m.imageDir != "" {
		// EROFS first: it holds the image file open.
		if err := unix.Unmount(m.mountpoint, 0); err != nil {
			if lerr := unix.Unmount(m.mountpoint, unix.MNT_DETACH); lerr != nil && !errors.Is(lerr, unix.EINVAL) {
				return fmt.Errorf("unmount %s: %w", m.mountpoint, errors.Join(err, lerr))
			}
		}
		if err := unix.Unmount(m.imageDir, 0); err == nil {
			return nil
		}
		if err := unix.Unmount(m.imageDir, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount %s: %w", m.imageDir, err)
		}
		return nil
	}
	var err error
	if m.dev == nil {
		if err = m.server.Unmount(); err == nil {
			return nil
		}
	} else if err = unix.Unmount(m.mountpoint, 0); err == nil {
		return nil
	}
	if lerr := unix.Unmount(m.mountpoint, unix.MNT_DETACH); lerr != nil {
		return fmt.Errorf("unmount %s: %w", m.mountpoint, errors.Join(err, lerr))
	}
	return nil
}

// Wait blocks until the filesystem is unmounted, by Unmount or from outside.
func (m *Server) Wait() {
	m.server.Wait()
	m.closeOnce.Do(func() {
		if m.dev != nil {
			m.dev.Close()
		}
	})
}
