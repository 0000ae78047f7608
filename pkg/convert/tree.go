package convert

import (
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// Whiteout markers of the OCI layer format.
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
	// whiteoutMeta prefixes aufs metadata entries (e.g. .wh..wh.plnk) that
	// carry no filesystem content and are dropped.
	whiteoutMeta = ".wh..wh."
)

// maxSymlinkFollows bounds symlink resolution of parent directories, as
// the kernel's MAXSYMLINKS does.
const maxSymlinkFollows = 40

// chunkRef is one chunk of a file as seen while reading a layer.
type chunkRef struct {
	digest bootstrap.Digest
	size   uint32
	zero   bool
}

// inode is a file while the tree is being merged; hard links share one.
type inode struct {
	mode      uint32
	uid, gid  uint32
	mtimeSec  int64
	mtimeNsec uint32
	size      int64
	devMajor  uint32
	devMinor  uint32
	target    string
	xattrs    []bootstrap.Xattr
	chunks    []chunkRef
	id        uint32 // assigned when the bootstrap is built; 0 = unassigned
}

func (in *inode) isDir() bool     { return in.mode&bootstrap.ModeType == bootstrap.ModeDir }
func (in *inode) isSymlink() bool { return in.mode&bootstrap.ModeType == bootstrap.ModeSymlink }

type node struct {
	ino      *inode
	children map[string]*node // directories only
}

// tree is the merged filesystem of the layers applied so far.
type tree struct {
	root *node
}

func newTree() *tree {
	return &tree{root: &node{ino: &inode{mode: bootstrap.ModeDir | 0o755}, children: map[string]*node{}}}
}

// entryKind says what a layer entry does to the tree.
type entryKind uint8

const (
	kindFile     entryKind = iota // anything with its own inode
	kindHardlink                  // a new name for an existing inode
	kindWhiteout                  // removes a lower-layer path
	kindOpaque                    // hides a directory's lower-layer contents
)

// entry is one normalised tar entry of a layer.
type entry struct {
	path string // clean, relative to the root; "" is the root itself
	kind entryKind
	ino  *inode // kindFile
	link string // kindHardlink: clean target path
}

// cleanPath turns a tar name into a clean path relative to the root.
// Absolute names are taken relative to the root, as every extractor does;
// a ".." component is refused outright rather than clamped, since no honest
// image needs one and clamping could silently overwrite an unrelated file.
func cleanPath(name string) (string, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("path %q contains a NUL byte", name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("path %q escapes the root (contains \"..\")", name)
		}
	}
	p := path.Clean("/" + name)
	p = strings.TrimPrefix(p, "/")
	for _, part := range strings.Split(p, "/") {
		if len(part) > bootstrap.MaxNameLen {
			return "", fmt.Errorf("path %q: component longer than %d bytes", name, bootstrap.MaxNameLen)
		}
	}
	return p, nil
}

func splitPath(p string) (dir, base string) {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return "", p
	}
	return p[:i], p[i+1:]
}

// apply merges one layer into the tree: first the layer's whiteouts and
// opaque markers remove lower-layer content, then its entries are added in
// stream order (a later duplicate replaces an earlier one, as extraction
// would).
func (t *tree) apply(entries []entry) error {
	for _, e := range entries {
		switch e.kind {
		case kindOpaque:
			if n := t.whiteoutDir(e.path); n != nil {
				n.children = map[string]*node{}
			}
		case kindWhiteout:
			dir, base := splitPath(e.path)
			if n := t.whiteoutDir(dir); n != nil {
				delete(n.children, base)
			}
		}
	}
	for _, e := range entries {
		if e.kind == kindOpaque || e.kind == kindWhiteout {
			continue
		}
		if e.path == "" {
			if e.kind != kindFile || !e.ino.isDir() {
				return fmt.Errorf("entry for the root directory is not a directory")
			}
			t.root.ino = e.ino
			continue
		}
		dir, base := splitPath(e.path)
		parent, err := t.mkdirAll(dir)
		if err != nil {
			return fmt.Errorf("%s: %w", e.path, err)
		}
		switch e.kind {
		case kindHardlink:
			target, err := t.resolveLink(e.link)
			if err != nil {
				return fmt.Errorf("hard link %s -> %s: %w", e.path, e.link, err)
			}
			parent.children[base] = &node{ino: target.ino}
		case kindFile:
			if old := parent.children[base]; old != nil && old.ino.isDir() && e.ino.isDir() {
				old.ino = e.ino // a directory entry over a directory keeps the contents
				continue
			}
			n := &node{ino: e.ino}
			if e.ino.isDir() {
				n.children = map[string]*node{}
			}
			parent.children[base] = n
		}
	}
	return nil
}

// whiteoutDir finds the directory a whiteout or opaque marker in dir acts
// on. Symlinks are followed as when entries are placed (and as containerd's
// applier does), so a marker under lib -> usr/lib reaches what was put there
// through either name. Nothing is created: when dir does not resolve to a
// directory, no lower layer can have anything in it to remove.
func (t *tree) whiteoutDir(dir string) *node {
	n, err := t.walkDir(dir, false)
	if err != nil {
		return nil
	}
	return n
}

// lookup finds a path without following symlinks.
func (t *tree) lookup(p string) *node {
	n := t.root
	if p == "" {
		return n
	}
	for _, part := range strings.Split(p, "/") {
		if n.children == nil {
			return nil
		}
		n = n.children[part]
		if n == nil {
			return nil
		}
	}
	return n
}

// resolveLink finds a hard link's target, following symlinks in its parent
// directories but not in the final component; the target must be a
// non-directory.
func (t *tree) resolveLink(p string) (*node, error) {
	dir, base := splitPath(p)
	parent, err := t.walkDir(dir, false)
	if err != nil {
		return nil, err
	}
	if parent == nil {
		return nil, fmt.Errorf("target does not exist")
	}
	n := parent.children[base]
	switch {
	case n == nil:
		return nil, fmt.Errorf("target does not exist")
	case n.ino.isDir():
		return nil, fmt.Errorf("target is a directory")
	}
	return n, nil
}

// mkdirAll returns directory p, creating missing directories, and following
// symlinks within the root the way a careful extractor (securejoin) does.
func (t *tree) mkdirAll(p string) (*node, error) {
	return t.walkDir(p, true)
}

// walkDir resolves p as a directory. Symlinks are resolved inside the tree:
// ".." stops at the root and absolute targets start from it, so resolution
// can never leave the image.
func (t *tree) walkDir(p string, create bool) (*node, error) {
	follows := 0
	parts := splitParts(p)
	var stack []*node // path from the root to the current directory
	cur := t.root
	for len(parts) > 0 {
		part := parts[0]
		parts = parts[1:]
		switch part {
		case "", ".":
			continue
		case "..":
			if len(stack) > 0 {
				cur = stack[len(stack)-1]
				stack = stack[:len(stack)-1]
			}
			continue
		}
		next := cur.children[part]
		if next == nil {
			if !create {
				return nil, nil
			}
			next = &node{ino: &inode{mode: bootstrap.ModeDir | 0o755}, children: map[string]*node{}}
			cur.children[part] = next
		}
		if next.ino.isSymlink() {
			follows++
			if follows > maxSymlinkFollows {
				return nil, fmt.Errorf("too many levels of symbolic links")
			}
			target := next.ino.target
			if strings.HasPrefix(target, "/") {
				stack, cur = nil, t.root
			}
			parts = append(splitParts(target), parts...)
			continue
		}
		if !next.ino.isDir() {
			return nil, fmt.Errorf("parent %q is not a directory", part)
		}
		stack = append(stack, cur)
		cur = next
	}
	return cur, nil
}

func splitParts(p string) []string {
	if p == "" {
		return nil
	}
	return strings.Split(p, "/")
}

// chunkLocator maps a chunk digest to where its bytes are stored.
type chunkLocator interface {
	locate(d bootstrap.Digest) (loc chunkLoc, ok bool)
}

// chunkLoc is a stored chunk's position: a frame of a blob.
type chunkLoc struct {
	blob   bootstrap.Digest
	frame  bootstrap.Frame // Blob field unused here
	offset uint32
}

// build emits the merged tree as a bootstrap. Each directory's children
// are numbered together, in name order, before its subdirectories are
// visited in that order: the same tree always encodes to the same bytes.
func (t *tree) build(chunkSize uint32, loc chunkLocator) (*bootstrap.Bootstrap, error) {
	b := &bootstrap.Bootstrap{ChunkSize: chunkSize}
	blobIdx := map[bootstrap.Digest]uint32{}
	type frameKey struct {
		blob   bootstrap.Digest
		offset int64
	}
	frameIdx := map[frameKey]uint32{}
	chunkIdx := map[chunkRef]uint32{}

	chunkOf := func(c chunkRef) (uint32, error) {
		if i, ok := chunkIdx[c]; ok {
			return i, nil
		}
		ch := bootstrap.Chunk{Digest: c.digest, Size: c.size, Frame: bootstrap.NoFrame}
		if !c.zero {
			l, ok := loc.locate(c.digest)
			if !ok {
				return 0, fmt.Errorf("chunk %s has no stored location", c.digest)
			}
			bi, ok := blobIdx[l.blob]
			if !ok {
				bi = uint32(len(b.Blobs))
				b.Blobs = append(b.Blobs, l.blob)
				blobIdx[l.blob] = bi
			}
			fk := frameKey{l.blob, l.frame.Offset}
			fi, ok := frameIdx[fk]
			if !ok {
				fi = uint32(len(b.Frames))
				f := l.frame
				f.Blob = bi
				b.Frames = append(b.Frames, f)
				frameIdx[fk] = fi
			}
			ch.Frame, ch.Offset = fi, l.offset
		}
		i := uint32(len(b.Chunks))
		b.Chunks = append(b.Chunks, ch)
		chunkIdx[c] = i
		return i, nil
	}

	var assign func(n *node) error
	emit := func(in *inode) error {
		in.id = uint32(len(b.Inodes))
		bi := bootstrap.Inode{
			Mode: in.mode, UID: in.uid, GID: in.gid, MtimeSec: in.mtimeSec, MtimeNsec: in.mtimeNsec,
			DevMajor: in.devMajor, DevMinor: in.devMinor, Target: in.target,
		}
		switch in.mode & bootstrap.ModeType {
		case bootstrap.ModeRegular:
			bi.Size = in.size
			bi.ChunkStart = uint32(len(b.ChunkRefs))
			for _, c := range in.chunks {
				ci, err := chunkOf(c)
				if err != nil {
					return err
				}
				b.ChunkRefs = append(b.ChunkRefs, ci)
			}
			bi.ChunkCount = uint32(len(in.chunks))
		case bootstrap.ModeSymlink:
			bi.Size = int64(len(in.target))
		}
		bi.XattrStart = uint32(len(b.Xattrs))
		bi.XattrCount = uint32(len(in.xattrs))
		b.Xattrs = append(b.Xattrs, in.xattrs...)
		b.Inodes = append(b.Inodes, bi)
		return nil
	}
	// Each directory's entries must be contiguous, so a directory's children
	// are appended as a block before recursing.
	assign = func(n *node) error {
		names := make([]string, 0, len(n.children))
		for name := range n.children {
			names = append(names, name)
		}
		sort.Strings(names)
		dirIno := n.ino.id
		start := uint32(len(b.Dirents))
		for _, name := range names {
			c := n.children[name]
			if c.ino.id == 0 {
				if err := emit(c.ino); err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
			}
			b.Dirents = append(b.Dirents, bootstrap.Dirent{Name: name, Inode: c.ino.id})
		}
		b.Inodes[dirIno].DirentStart = start
		b.Inodes[dirIno].DirentCount = uint32(len(names))
		for _, name := range names {
			c := n.children[name]
			if c.ino.isDir() {
				if err := assign(c); err != nil {
					return err
				}
			}
		}
		return nil
	}
	resetIDs(t.root)
	if err := emit(t.root.ino); err != nil {
		return nil, err
	}
	if err := assign(t.root); err != nil {
		return nil, err
	}
	if err := b.Finish(); err != nil {
		return nil, fmt.Errorf("build bootstrap: %w", err)
	}
	return b, nil
}

func resetIDs(n *node) {
	n.ino.id = 0
	for _, c := range n.children {
		resetIDs(c)
	}
}

// liveChunks returns the digests of every stored chunk the tree uses.
func (t *tree) liveChunks() map[bootstrap.Digest]bool {
	live := map[bootstrap.Digest]bool{}
	var walk func(n *node)
	walk = func(n *node) {
		for _, c := range n.ino.chunks {
			if !c.zero {
				live[c.digest] = true
			}
		}
		for _, child := range n.children {
			walk(child)
		}
	}
	walk(t.root)
	return live
}
