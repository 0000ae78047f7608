package bootstrap

import (
	"fmt"
	"math"
	"strings"
)

// Limits enforced on every bootstrap, so that a reader can size buffers from
// metadata without trusting it.
const (
	MaxChunkSize = 16 << 20
	MaxFrameSize = 64 << 20
	MaxNameLen   = 255
)

// Validate checks the structural invariants every reader relies on: indexes
// in range, chunk sizes adding up to file sizes, directory entries sorted
// and unique, and a tree (each directory named exactly once, every inode
// reachable from the root, no cycles).
func (b *Bootstrap) Validate() error {
	if len(b.Inodes) == 0 || !b.Inodes[RootInode].IsDir() {
		return fmt.Errorf("root inode is missing or not a directory")
	}
	if b.ChunkSize == 0 || b.ChunkSize > MaxChunkSize {
		return fmt.Errorf("chunk size %d out of range (1..%d)", b.ChunkSize, MaxChunkSize)
	}
	for i, f := range b.Frames {
		switch {
		case int(f.Blob) >= len(b.Blobs):
			return fmt.Errorf("frame %d: blob %d out of range", i, f.Blob)
		case f.Compression > None:
			return fmt.Errorf("frame %d: unknown compression %d", i, f.Compression)
		case f.Size == 0 || f.Size > MaxFrameSize || f.CompressedSize == 0 || f.CompressedSize > MaxFrameSize+MaxFrameSize/64:
			return fmt.Errorf("frame %d: size %d (compressed %d) out of range", i, f.Size, f.CompressedSize)
		case f.Offset < 0:
			return fmt.Errorf("frame %d: negative offset", i)
		case f.Offset > math.MaxInt64-int64(f.CompressedSize):
			// Readers compute the frame's end as Offset+CompressedSize.
			return fmt.Errorf("frame %d: offset %d plus compressed size %d overflows", i, f.Offset, f.CompressedSize)
		case f.Compression == None && f.Size != f.CompressedSize:
			return fmt.Errorf("frame %d: uncompressed frame with differing sizes", i)
		}
	}
	for i, c := range b.Chunks {
		if c.Size == 0 || c.Size > MaxChunkSize {
			return fmt.Errorf("chunk %d: size %d out of range", i, c.Size)
		}
		if c.Zero() {
			continue
		}
		if int(c.Frame) >= len(b.Frames) {
			return fmt.Errorf("chunk %d: frame %d out of range", i, c.Frame)
		}
		if uint64(c.Offset)+uint64(c.Size) > uint64(b.Frames[c.Frame].Size) {
			return fmt.Errorf("chunk %d: extends past the end of frame %d", i, c.Frame)
		}
	}
	for i := range b.Inodes {
		if err := b.validateInode(uint32(i)); err != nil {
			return fmt.Errorf("inode %d: %w", i, err)
		}
	}
	return b.validateTree()
}

func inRange(start, count uint32, n int) bool {
	return uint64(start)+uint64(count) <= uint64(n)
}

func (b *Bootstrap) validateInode(ino uint32) error {
	in := &b.Inodes[ino]
	if !inRange(in.XattrStart, in.XattrCount, len(b.Xattrs)) {
		return fmt.Errorf("xattrs out of range")
	}
	prev := ""
	for i, x := range b.InodeXattrs(ino) {
		if x.Name == "" || strings.IndexByte(x.Name, 0) >= 0 {
			return fmt.Errorf("invalid xattr name %q", x.Name)
		}
		if i > 0 && x.Name <= prev {
			return fmt.Errorf("xattrs not sorted or duplicated at %q", x.Name)
		}
		prev = x.Name
	}
	if in.MtimeNsec >= 1e9 {
		return fmt.Errorf("mtime nanoseconds %d out of range", in.MtimeNsec)
	}
	t := in.Type()
	if t != ModeRegular && in.ChunkCount != 0 {
		return fmt.Errorf("non-regular file has chunks")
	}
	if t != ModeDir && in.DirentCount != 0 {
		return fmt.Errorf("non-directory has entries")
	}
	switch t {
	case ModeRegular:
		if !inRange(in.ChunkStart, in.ChunkCount, len(b.ChunkRefs)) {
			return fmt.Errorf("chunk list out of range")
		}
		var size int64
		for _, c := range b.FileChunks(ino) {
			if int(c) >= len(b.Chunks) {
				return fmt.Errorf("chunk %d out of range", c)
			}
			size += int64(b.Chunks[c].Size)
		}
		if size != in.Size {
			return fmt.Errorf("chunks hold %d bytes, file size is %d", size, in.Size)
		}
	case ModeSymlink:
		if in.Target == "" {
			return fmt.Errorf("empty symlink target")
		}
	case ModeDir:
		if !inRange(in.DirentStart, in.DirentCount, len(b.Dirents)) {
			return fmt.Errorf("entries out of range")
		}
		prev := ""
		for i, e := range b.Children(ino) {
			if !ValidName(e.Name) {
				return fmt.Errorf("invalid entry name %q", e.Name)
			}
			if i > 0 && e.Name <= prev {
				return fmt.Errorf("entries not sorted or duplicated at %q", e.Name)
			}
			if int(e.Inode) >= len(b.Inodes) || e.Inode == RootInode {
				return fmt.Errorf("entry %q: inode %d out of range", e.Name, e.Inode)
			}
			prev = e.Name
		}
	case ModeChar, ModeBlock, ModeFIFO, ModeSocket:
	default:
		return fmt.Errorf("unknown file type %#o", t)
	}
	return nil
}

// ValidName reports whether name can be a directory entry.
func ValidName(name string) bool {
	return name != "" && name != "." && name != ".." && len(name) <= MaxNameLen &&
		strings.IndexByte(name, '/') < 0 && strings.IndexByte(name, 0) < 0
}

func (b *Bootstrap) validateTree() error {
	seen := make([]bool, len(b.Inodes))
	seen[RootInode] = true
	stack := []uint32{RootInode}
	for len(stack) > 0 {
		dir := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, e := range b.Children(dir) {
			child := &b.Inodes[e.Inode]
			if child.IsDir() {
				if seen[e.Inode] {
					return fmt.Errorf("directory inode %d is named more than once", e.Inode)
				}
				stack = append(stack, e.Inode)
			}
			seen[e.Inode] = true
		}
	}
	for i, s := range seen {
		if !s {
			return fmt.Errorf("inode %d is not reachable from the root", i)
		}
	}
	return nil
}

// link derives Nlink from the tree.
func (b *Bootstrap) link() {
	for i := range b.Inodes {
		if b.Inodes[i].IsDir() {
			b.Inodes[i].Nlink = 2
		} else {
			b.Inodes[i].Nlink = 0
		}
	}
	for i := range b.Inodes {
		if !b.Inodes[i].IsDir() {
			continue
		}
		for _, e := range b.Children(uint32(i)) {
			if b.Inodes[e.Inode].IsDir() {
				b.Inodes[i].Nlink++
			} else {
				b.Inodes[e.Inode].Nlink++
			}
		}
	}
}

// Finish validates a bootstrap built in memory and derives Nlink, making it
// ready to serve exactly as a decoded one would.
func (b *Bootstrap) Finish() error {
	if err := b.Validate(); err != nil {
		return err
	}
	b.link()
	return nil
}
