// Package bootstrap defines Skiff's image metadata: one compact, digest-
// addressed description of an image's merged filesystem tree, with every
// regular file's list of chunks and where each chunk lives in the chunk-data
// blobs. It is the only thing a node must fetch before it can serve a
// container's first read, so the in-memory form is a handful of flat slices
// that decode with a few allocations, and lookups are binary searches.
//
// docs/format.md is the normative description of the encoding.
package bootstrap

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"sort"
	"strings"
)

// Digest is a sha256 digest.
type Digest [32]byte

// Sum returns the sha256 digest of b.
func Sum(b []byte) Digest { return sha256.Sum256(b) }

// String returns the OCI form "sha256:<hex>".
func (d Digest) String() string { return "sha256:" + hex.EncodeToString(d[:]) }

// Hex returns the bare hex encoding.
func (d Digest) Hex() string { return hex.EncodeToString(d[:]) }

// ParseDigest parses "sha256:<hex>" or a bare 64-character hex string.
func ParseDigest(s string) (Digest, error) {
	var d Digest
	h := strings.TrimPrefix(s, "sha256:")
	if len(h) != 64 {
		return d, fmt.Errorf("parse digest %q: want 64 hex characters", s)
	}
	if _, err := hex.Decode(d[:], []byte(h)); err != nil {
		return d, fmt.Errorf("parse digest %q: %w", s, err)
	}
	return d, nil
}

// Compression names the codec of a frame.
type Compression uint8

// Frame codecs. The numeric values are part of the encoding; zstd, the
// default, is the zero value.
const (
	Zstd Compression = 0
	LZ4  Compression = 1
	None Compression = 2
)

func (c Compression) String() string {
	switch c {
	case None:
		return "none"
	case Zstd:
		return "zstd"
	case LZ4:
		return "lz4"
	}
	return fmt.Sprintf("compression(%d)", uint8(c))
}

// ParseCompression parses "zstd", "lz4" or "none".
func ParseCompression(s string) (Compression, error) {
	switch s {
	case "zstd":
		return Zstd, nil
	case "lz4":
		return LZ4, nil
	case "none":
		return None, nil
	}
	return 0, fmt.Errorf("unknown compression %q (want zstd, lz4 or none)", s)
}

// NoFrame marks a chunk that has no stored data: it reads as zeros.
const NoFrame = ^uint32(0)

// Frame is the unit of compression and of transfer: a contiguous range of a
// blob that decompresses to Size bytes holding one chunk, or several small
// chunks packed together so that neighbouring small files travel in one
// request.
type Frame struct {
	Blob           uint32 // index into Bootstrap.Blobs
	Offset         int64  // byte offset of the compressed frame in the blob
	CompressedSize uint32
	Size           uint32 // decompressed size
	Compression    Compression
}

// Chunk is a piece of file content identified by the sha256 of its bytes.
type Chunk struct {
	Digest Digest
	Frame  uint32 // index into Bootstrap.Frames, or NoFrame for all-zero chunks
	Offset uint32 // offset of the chunk in the decompressed frame
	Size   uint32
}

// Zero reports whether the chunk is all zeros and has no stored data.
func (c Chunk) Zero() bool { return c.Frame == NoFrame }

// File type bits of Inode.Mode, as in Linux st_mode.
const (
	ModeType    = 0o170000
	ModeSocket  = 0o140000
	ModeSymlink = 0o120000
	ModeRegular = 0o100000
	ModeBlock   = 0o060000
	ModeDir     = 0o040000
	ModeChar    = 0o020000
	ModeFIFO    = 0o010000
	ModePerm    = 0o7777 // permission bits including setuid, setgid, sticky
)

// Inode is one file, shared by every directory entry that hard-links it.
// The Start/Count pairs index the flat slices of Bootstrap.
type Inode struct {
	Mode      uint32 // st_mode: type bits | permission bits
	UID, GID  uint32
	MtimeSec  int64
	MtimeNsec uint32
	Size      int64 // regular files: content length; symlinks: len(Target)
	DevMajor  uint32
	DevMinor  uint32
	Target    string // symlink target
	Nlink     uint32 // derived: entries naming the inode; 2+subdirectories for directories

	XattrStart, XattrCount   uint32
	ChunkStart, ChunkCount   uint32
	DirentStart, DirentCount uint32
}

// Type returns the file type bits of the mode.
func (in *Inode) Type() uint32 { return in.Mode & ModeType }

// IsDir reports whether the inode is a directory.
func (in *Inode) IsDir() bool { return in.Type() == ModeDir }

// Dirent is a name in a directory.
type Dirent struct {
	Name  string
	Inode uint32
}

// Xattr is an extended attribute.
type Xattr struct {
	Name  string
	Value string
}

// RootInode is the index of the root directory.
const RootInode = 0

// Bootstrap is a decoded image tree.
type Bootstrap struct {
	ChunkSize uint32
	Blobs     []Digest
	Frames    []Frame
	Chunks    []Chunk
	Inodes    []Inode  // Inodes[RootInode] is the root directory
	Dirents   []Dirent // each directory's entries are contiguous and sorted by name
	ChunkRefs []uint32 // each regular file's chunks, in file order
	Xattrs    []Xattr  // each inode's xattrs, sorted by name
}

// Children returns the entries of directory ino, sorted by name.
func (b *Bootstrap) Children(ino uint32) []Dirent {
	in := &b.Inodes[ino]
	return b.Dirents[in.DirentStart : in.DirentStart+in.DirentCount]
}

// Lookup finds name in directory dir.
func (b *Bootstrap) Lookup(dir uint32, name string) (uint32, bool) {
	ents := b.Children(dir)
	i := sort.Search(len(ents), func(i int) bool { return ents[i].Name >= name })
	if i < len(ents) && ents[i].Name == name {
		return ents[i].Inode, true
	}
	return 0, false
}

// LookupPath resolves a slash-separated path from the root without
// following symlinks.
func (b *Bootstrap) LookupPath(p string) (uint32, bool) {
	ino := uint32(RootInode)
	for _, part := range strings.Split(p, "/") {
		if part == "" || part == "." {
			continue
		}
		if !b.Inodes[ino].IsDir() {
			return 0, false
		}
		next, ok := b.Lookup(ino, part)
		if !ok {
			return 0, false
		}
		ino = next
	}
	return ino, true
}

// FileChunks returns the chunk indexes of a regular file, in order.
func (b *Bootstrap) FileChunks(ino uint32) []uint32 {
	in := &b.Inodes[ino]
	return b.ChunkRefs[in.ChunkStart : in.ChunkStart+in.ChunkCount]
}

// ChunkOffsets returns the file offset at which each chunk of ino starts,
// with one extra element holding the file size, so that the chunk holding
// offset off is the last i with offsets[i] <= off.
func (b *Bootstrap) ChunkOffsets(ino uint32) []int64 {
	refs := b.FileChunks(ino)
	offs := make([]int64, len(refs)+1)
	var off int64
	for i, c := range refs {
		offs[i] = off
		off += int64(b.Chunks[c].Size)
	}
	offs[len(refs)] = off
	return offs
}

// InodeXattrs returns the extended attributes of ino, sorted by name.
func (b *Bootstrap) InodeXattrs(ino uint32) []Xattr {
	in := &b.Inodes[ino]
	return b.Xattrs[in.XattrStart : in.XattrStart+in.XattrCount]
}

// Walk calls fn for every directory entry in depth-first, name order,
// starting with the root as "/". A hard-linked inode is visited once per
// name. Returning fs.SkipDir from fn for a directory skips its children.
func (b *Bootstrap) Walk(fn func(path string, ino uint32) error) error {
	if err := fn("/", RootInode); err != nil {
		if err == fs.SkipDir {
			return nil
		}
		return err
	}
	return b.walk("", RootInode, fn)
}

func (b *Bootstrap) walk(dir string, ino uint32, fn func(string, uint32) error) error {
	for _, e := range b.Children(ino) {
		p := dir + "/" + e.Name
		if err := fn(p, e.Inode); err != nil {
			if err == fs.SkipDir {
				continue
			}
			return err
		}
		if b.Inodes[e.Inode].IsDir() {
			if err := b.walk(p, e.Inode, fn); err != nil {
				return err
			}
		}
	}
	return nil
}

// Stats summarises a bootstrap.
type Stats struct {
	Files        int   // directory entries, excluding the root
	Inodes       int   // distinct inodes
	Chunks       int   // distinct chunks
	ZeroChunks   int   // distinct all-zero chunks (no stored data)
	ChunkRefs    int   // chunk references from files
	LogicalBytes int64 // sum of regular file sizes (hard links counted once)
	UniqueBytes  int64 // sum of distinct non-zero chunk sizes
	StoredBytes  int64 // sum of compressed frame sizes
	Blobs        int
	Frames       int
}

// DedupRatio is logical bytes per stored byte.
func (s Stats) DedupRatio() float64 {
	if s.StoredBytes == 0 {
		return 0
	}
	return float64(s.LogicalBytes) / float64(s.StoredBytes)
}

// Stats computes summary numbers.
func (b *Bootstrap) Stats() Stats {
	s := Stats{Inodes: len(b.Inodes), Chunks: len(b.Chunks), ChunkRefs: len(b.ChunkRefs), Blobs: len(b.Blobs), Frames: len(b.Frames), Files: len(b.Dirents)}
	for i := range b.Inodes {
		if b.Inodes[i].Type() == ModeRegular {
			s.LogicalBytes += b.Inodes[i].Size
		}
	}
	for _, c := range b.Chunks {
		if c.Zero() {
			s.ZeroChunks++
			continue
		}
		s.UniqueBytes += int64(c.Size)
	}
	for _, f := range b.Frames {
		s.StoredBytes += int64(f.CompressedSize)
	}
	return s
}
