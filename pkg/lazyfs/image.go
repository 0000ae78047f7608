package lazyfs

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/skiff-dev/skiff/pkg/erofs"
)

// In image mode the FUSE mount serves one file, the image laid out as
// EROFS (see package erofs), and the kernel's EROFS mounts that file
// where the tree is wanted. Names, attributes, directories and every page
// read once are then answered inside the kernel: a program opening
// thousands of small files costs this process nothing but the reads of
// data not yet fetched, and the kernel reads the image ahead in large
// requests, so neighbouring small files arrive together.

// ImageName is the image file in the root of an image-mode FUSE mount.
const ImageName = "image"

// Node IDs of an image-mode mount.
const (
	imageRoot = fuse.FUSE_ROOT_ID
	imageNode = imageRoot + 1
)

// imageFS serves an image file. Reads of file content go through the
// tree filesystem's path (chunks, splicing, warming), so it embeds one;
// every request that names a node is answered here.
type imageFS struct {
	*fileSystem
	img *erofs.Image
}

// zeros supplies the padding and gaps of replies: a reply is at most
// maxRequest bytes.
var zeros = make([]byte, maxRequest)

// maxVecs bounds the slices of a reply written with one writev(2), whose
// limit is 1024 (IOV_MAX) including go-fuse's headers; a reply of more is
// copied into one buffer.
const maxVecs = 1000

func (fsys *imageFS) attr(id uint64, a *fuse.Attr) bool {
	root := &fsys.b.Inodes[0]
	sec, nsec := uint64(root.MtimeSec), root.MtimeNsec
	*a = fuse.Attr{Ino: id, Blksize: blockSize, Owner: fuse.Owner{}}
	a.Mtime, a.Mtimensec, a.Atime, a.Atimensec, a.Ctime, a.Ctimensec = sec, nsec, sec, nsec, sec, nsec
	switch id {
	case imageRoot:
		a.Mode, a.Nlink = fuse.S_IFDIR|0o555, 2
	case imageNode:
		// Readable by root only: the kernel mounts it, nobody else needs it.
		a.Mode, a.Nlink = fuse.S_IFREG|0o400, 1
		a.Size = uint64(fsys.img.Size())
		a.Blocks = a.Size / 512
	default:
		return false
	}
	return true
}

// Lookup implements fuse.RawFileSystem.
func (fsys *imageFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	select {
	case <-fsys.ready:
	case <-cancel:
		return fuse.EINTR
	}
	if h.NodeId != imageRoot {
		return status(syscall.ENOTDIR)
	}
	*out = fuse.EntryOut{}
	out.SetEntryTimeout(fsys.timeout)
	if name != ImageName {
		return fuse.OK
	}
	out.NodeId = imageNode
	fsys.attr(imageNode, &out.Attr)
	out.SetAttrTimeout(fsys.timeout)
	return fuse.OK
}

// GetAttr implements fuse.RawFileSystem.
func (fsys *imageFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	if !fsys.attr(in.NodeId, &out.Attr) {
		return errStale
	}
	out.SetTimeout(fsys.timeout)
	return fuse.OK
}

// OpenDir implements fuse.RawFileSystem.
func (fsys *imageFS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if in.NodeId != imageRoot {
		return status(syscall.ENOTDIR)
	}
	out.OpenFlags = fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE
	return fuse.OK
}

// ReadDir implements fuse.RawFileSystem.
func (fsys *imageFS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	if in.NodeId != imageRoot {
		return status(syscall.ENOTDIR)
	}
	ents := []fuse.DirEntry{
		{Name: ".", Ino: imageRoot, Mode: fuse.S_IFDIR},
		{Name: "..", Ino: imageRoot, Mode: fuse.S_IFDIR},
		{Name: ImageName, Ino: imageNode, Mode: fuse.S_IFREG},
	}
	for pos := in.Offset; pos < uint64(len(ents)); pos++ {
		e := ents[pos]
		e.Off = pos + 1
		if !out.AddDirEntry(e) {
			break
		}
	}
	return fuse.OK
}

// ReadDirPlus implements fuse.RawFileSystem; plain entries suffice for
// a directory of one file.
func (fsys *imageFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return fuse.ENOSYS
}

// Open implements fuse.RawFileSystem. The image never changes: its pages
// stay cached whoever opens it.
func (fsys *imageFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if in.NodeId != imageNode {
		return fuse.EINVAL
	}
	if in.Flags&syscall.O_ACCMODE != syscall.O_RDONLY || in.Flags&syscall.O_TRUNC != 0 {
		return fuse.EROFS
	}
	out.OpenFlags = fuse.FOPEN_KEEP_CACHE
	return fuse.OK
}

// Release implements fuse.RawFileSystem: opens hold nothing.
func (fsys *imageFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {}

// Readlink implements fuse.RawFileSystem.
func (fsys *imageFS) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	return nil, fuse.EINVAL
}

// GetXAttr implements fuse.RawFileSystem: the image's own xattrs are in
// the image; the file and its directory have none, ever.
func (fsys *imageFS) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	return 0, fuse.ENOSYS
}

// ListXAttr implements fuse.RawFileSystem.
func (fsys *imageFS) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	return 0, fuse.ENOSYS
}

// Read implements fuse.RawFileSystem. A read within one file's content
// takes the tree's path, spliced from the cache when it can be; a read
// across files, metadata and padding is written from all of them at once.
func (fsys *imageFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	if in.NodeId != imageNode {
		return nil, fuse.EINVAL
	}
	off := int64(in.Offset)
	if off < 0 {
		return nil, fuse.EINVAL
	}
	end := min(off+int64(len(buf)), fsys.img.Size())
	if off >= end {
		return fuse.ReadResultData(nil), fuse.OK
	}
	ctx := readContext(in)
	pieces := fsys.img.Pieces(off, end)
	if f, ok := fsys.r.(Fetcher); ok {
		// The kernel reads the image ahead in requests of up to 1 MiB,
		// which may span many small files in several frames: fetched
		// one by one, each would wait for its own request.
		f.Fetch(ctx, fsys.b, fsys.chunks(pieces))
	}
	if len(pieces) == 1 && pieces[0].Meta == nil && !pieces[0].Zero {
		p := pieces[0]
		return fsys.readFile(ctx, p.Inode, p.FileOffset, p.FileOffset+p.Len)
	}
	var vecs [][]byte
	for _, p := range pieces {
		switch {
		case p.Meta != nil:
			vecs = append(vecs, p.Meta)
		case p.Zero:
			for n := p.Len; n > 0; n -= int64(len(zeros)) {
				vecs = append(vecs, zeros[:min(n, int64(len(zeros)))])
			}
		default:
			var errno syscall.Errno
			if vecs, errno = fsys.fileVecs(ctx, p.Inode, p.FileOffset, p.FileOffset+p.Len, vecs); errno != 0 {
				return nil, status(errno)
			}
		}
	}
	if len(vecs) > maxVecs {
		n := 0
		for _, v := range vecs {
			n += copy(buf[n:], v)
		}
		return fuse.ReadResultData(buf[:n]), fuse.OK
	}
	return fuse.ReadResultVector(vecs), fuse.OK
}

// chunks lists the chunks holding the file content of pieces.
func (fsys *imageFS) chunks(pieces []erofs.Piece) []uint32 {
	var cs []uint32
	for _, p := range pieces {
		if p.Meta != nil || p.Zero {
			continue
		}
		offs := fsys.file(p.Inode).offs
		refs := fsys.b.FileChunks(p.Inode)
		i := sort.Search(len(refs), func(i int) bool { return offs[i+1] > p.FileOffset })
		for ; i < len(refs) && offs[i] < p.FileOffset+p.Len; i++ {
			cs = append(cs, refs[i])
		}
	}
	return cs
}

// mountEROFS mounts the image file served at dir on mountpoint. Setuid
// bits work (no MS_NOSUID), device nodes cannot be opened through it, as
// for a tree mount.
func mountEROFS(dir, mountpoint string) error {
	src := dir + "/" + ImageName
	if err := unix.Mount(src, mountpoint, "erofs", unix.MS_RDONLY|unix.MS_NODEV, ""); err != nil {
		if errors.Is(err, unix.ENOTBLK) || errors.Is(err, unix.ENODEV) {
			// Before Linux 6.12 EROFS mounts block devices only.
			return fmt.Errorf("mount erofs %s: kernel cannot mount a file as EROFS: %w: %w", mountpoint, err, ErrNoImageMode)
		}
		return fmt.Errorf("mount erofs %s: %w", mountpoint, err)
	}
	return nil
}

// ErrNoImageMode marks a failure to mount in image mode because this
// kernel or this user cannot; a tree mount works there.
var ErrNoImageMode = errors.New("image mode unavailable")

// imageModeUser reports whether this process may mount EROFS at all.
func imageModeUser() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("mounting EROFS needs root: %w", ErrNoImageMode)
	}
	return nil
}
