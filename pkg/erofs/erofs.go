// Package erofs lays a Skiff image out as an EROFS filesystem image, so
// that the kernel's EROFS answers names, attributes, directories and
// cached pages itself and a lazy mount only ever sees reads of data it
// has not got yet (Nydus' RAFS v6 does the same). The metadata part is
// built on the node from the bootstrap, which stays the one description
// an image ships with; every regular file's content then follows,
// uncompressed and block-aligned, and is read from the image's chunks
// when the kernel first asks for it.
//
// Only the uncompressed layouts are written: extended inodes, plain
// blocks for file content, and directories and symlinks inline after
// their inode where they fit. The format is described in the kernel's
// fs/erofs/erofs_fs.h and Documentation/filesystems/erofs.rst.
package erofs

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// BlockSize is the image's block size; page-sized, as the kernel needs
// for a file-backed mount.
const BlockSize = 4096

const (
	blockBits    = 12
	superOffset  = 1024
	superSize    = 128
	superMagic   = 0xE0F5E1E2
	inodeSlot    = 32 // inodes are addressed in 32-byte slots (nid)
	inodeSize    = 64 // struct erofs_inode_extended
	direntSize   = 12 // struct erofs_dirent
	xattrHdrSize = 12 // struct erofs_xattr_ibody_header
	xattrEntHdr  = 4  // struct erofs_xattr_entry
	maxBlocks    = 1<<32 - 1
)

// Data layouts (erofs_inode_datalayout).
const (
	layoutPlain  = 0
	layoutInline = 2
)

// File types of directory entries (EROFS_FT_*).
var fileTypes = map[uint32]uint8{
	bootstrap.ModeRegular: 1,
	bootstrap.ModeDir:     2,
	bootstrap.ModeChar:    3,
	bootstrap.ModeBlock:   4,
	bootstrap.ModeFIFO:    5,
	bootstrap.ModeSocket:  6,
	bootstrap.ModeSymlink: 7,
}

// xattrPrefixes are the name prefixes EROFS stores as an index; every
// name an image can carry starts with one of them.
var xattrPrefixes = []struct {
	prefix string
	index  uint8
}{
	{"system.posix_acl_access", 2},
	{"system.posix_acl_default", 3},
	{"user.", 1},
	{"trusted.", 4},
	{"security.", 6},
}

// SmallFile is the size from which a file's content is laid out after
// every smaller file's: the kernel's first readahead of a file is 128 KiB,
// so a smaller file is read in one request anyway.
const SmallFile = 128 << 10

// ReadaheadGap is the run of zeros laid before the small files and before
// each large file: the most the kernel reads ahead of a mount, as lazyfs
// sets it.
const ReadaheadGap = 4 << 20

// ErrUnsupported marks an image EROFS cannot express as it is, such as
// an extended attribute outside the namespaces EROFS stores. Such an
// image is served some other way.
var ErrUnsupported = errors.New("not expressible as EROFS")

// Extent is where one regular file's content lies in the image.
type Extent struct {
	Inode  uint32 // bootstrap inode index
	Offset int64  // byte offset in the image, block-aligned
	Size   int64  // the file's size; the rest of its last block is zeros
}

// Image is the EROFS layout of one bootstrap: the metadata bytes that
// start the image and where each regular file's content follows.
type Image struct {
	meta  []byte
	files []Extent // by Offset
	size  int64
}

// Size is the image's length in bytes, a multiple of BlockSize.
func (im *Image) Size() int64 { return im.size }

// Meta is the image's first len(Meta()) bytes: superblock, inodes,
// directories and symlink targets. It must not be modified.
func (im *Image) Meta() []byte { return im.meta }

// Files lists where regular files' content lies, by offset.
func (im *Image) Files() []Extent { return im.files }

// Piece is part of a range of the image: Meta bytes, Len bytes of file
// Inode's content from FileOffset, or (Meta nil and Zero set) Len zeros.
type Piece struct {
	Meta       []byte
	Inode      uint32
	FileOffset int64
	Len        int64
	Zero       bool
}

// Pieces splits [off, end) of the image into what supplies each part, in
// order. end is clipped to the image's size.
func (im *Image) Pieces(off, end int64) []Piece {
	end = min(end, im.size)
	var ps []Piece
	if off < int64(len(im.meta)) {
		stop := min(end, int64(len(im.meta)))
		ps = append(ps, Piece{Meta: im.meta[off:stop], Len: stop - off})
		off = stop
	}
	// The first file ending after off.
	i, _ := slices.BinarySearchFunc(im.files, off, func(e Extent, off int64) int {
		return cmp.Compare(e.Offset+e.Size, off+1)
	})
	for off < end {
		if i == len(im.files) {
			ps = appendZero(ps, end-off)
			break
		}
		e := im.files[i]
		if off < e.Offset {
			stop := min(end, e.Offset)
			ps = appendZero(ps, stop-off)
			off = stop
			continue
		}
		stop := min(end, e.Offset+e.Size)
		ps = append(ps, Piece{Inode: e.Inode, FileOffset: off - e.Offset, Len: stop - off})
		off = stop
		i++
	}
	return ps
}

func appendZero(ps []Piece, n int64) []Piece {
	if n <= 0 {
		return ps
	}
	if len(ps) > 0 && ps[len(ps)-1].Zero {
		ps[len(ps)-1].Len += n
		return ps
	}
	return append(ps, Piece{Zero: true, Len: n})
}

// node is the layout of one inode.
type node struct {
	nid    uint64
	xattrs []byte // inline xattr area, header included; empty: none
	data   []byte // directory blocks or symlink target
	inline bool   // data's last partial block follows the inode
	blk    uint32 // first block of data (or of file content)
}

// Build lays b out as an EROFS image. An image EROFS cannot express
// fails with an error wrapping ErrUnsupported.
func Build(b *bootstrap.Bootstrap) (*Image, error) {
	if len(b.Inodes) == 0 || !b.Inodes[bootstrap.RootInode].IsDir() {
		return nil, errors.New("erofs: bootstrap has no root directory")
	}
	nodes := make([]node, len(b.Inodes))
	parents := make([]uint32, len(b.Inodes))
	for i := range b.Inodes {
		in := &b.Inodes[i]
		x, err := xattrArea(b.InodeXattrs(uint32(i)))
		if err != nil {
			return nil, fmt.Errorf("erofs: inode %d: %w", i, err)
		}
		nodes[i].xattrs = x
		switch in.Type() {
		case bootstrap.ModeSymlink:
			nodes[i].data = []byte(in.Target)
		case bootstrap.ModeDir:
			for _, e := range b.Children(uint32(i)) {
				if b.Inodes[e.Inode].IsDir() {
					parents[e.Inode] = uint32(i)
				}
			}
		}
	}
	// Directory sizes depend only on names, so every inode's size, and
	// so its nid, is known before any directory is written.
	dirs := make([][]dirent, len(b.Inodes))
	for i := range b.Inodes {
		if b.Inodes[i].IsDir() {
			dirs[i] = dirents(b, uint32(i), parents[i])
			nodes[i].data = make([]byte, dirSize(dirs[i]))
		}
	}
	pos := int64(superOffset + superSize)
	for i := range nodes {
		n := &nodes[i]
		pos = alignUp(pos, inodeSlot)
		head := int64(inodeSize + len(n.xattrs))
		tail := int64(len(n.data) % BlockSize)
		n.inline = len(n.data) > 0 && tail > 0 && head+tail <= BlockSize
		rec := head
		if n.inline {
			rec += tail
		}
		// Keep the inode header, and any inline tail, within one block.
		if pos%BlockSize+min(rec, BlockSize) > BlockSize {
			pos = alignUp(pos, BlockSize)
		}
		n.nid = uint64(pos / inodeSlot)
		pos += rec
	}
	if nodes[bootstrap.RootInode].nid > 0xffff {
		return nil, errors.New("erofs: root inode out of reach")
	}
	blk := alignUp(pos, BlockSize) / BlockSize
	for i := range nodes {
		n := &nodes[i]
		if full := int64(len(n.data) / BlockSize); n.inline && full > 0 {
			n.blk = uint32(blk)
			blk += full
		} else if !n.inline && len(n.data) > 0 {
			n.blk = uint32(blk)
			blk += alignUp(int64(len(n.data)), BlockSize) / BlockSize
		}
	}
	metaBlocks := blk
	im := &Image{}
	for i := range b.Inodes {
		if in := &b.Inodes[i]; in.Type() == bootstrap.ModeRegular && in.Size > 0 {
			im.files = append(im.files, Extent{Inode: uint32(i), Size: in.Size})
		}
	}
	// Small files first, then the rest, each in the order of the chunks
	// they come from. The kernel reads the image ahead across files: a
	// program walking a tree reads the small files in storage order and
	// passes over the large ones, which must not be fetched on its way.
	// A large file is read on its own, from its first block.
	slices.SortStableFunc(im.files, func(x, y Extent) int {
		if xs, ys := x.Size < SmallFile, y.Size < SmallFile; xs != ys {
			if xs {
				return -1
			}
			return 1
		}
		return storedAt(b, x.Inode).compare(storedAt(b, y.Inode))
	})
	// A gap of zeros before the small files and before each large file
	// stops the kernel's readahead of the metadata, of the small files
	// and of a large file's end at the gap, where it costs no fetch.
	// The gaps are not counted as used blocks.
	const gapBlocks = ReadaheadGap / BlockSize
	used := blk
	for k := range im.files {
		e := &im.files[k]
		if k == 0 || e.Size >= SmallFile {
			blk += gapBlocks
		}
		used += alignUp(e.Size, BlockSize) / BlockSize
		if blk > maxBlocks {
			return nil, fmt.Errorf("erofs: image beyond %d blocks: %w", int64(maxBlocks), ErrUnsupported)
		}
		nodes[e.Inode].blk = uint32(blk)
		e.Offset = blk * BlockSize
		blk += alignUp(e.Size, BlockSize) / BlockSize
	}
	if blk > maxBlocks {
		return nil, fmt.Errorf("erofs: image beyond %d blocks: %w", int64(maxBlocks), ErrUnsupported)
	}
	im.size = blk * BlockSize
	im.meta = make([]byte, metaBlocks*BlockSize)
	for i := range b.Inodes {
		if b.Inodes[i].IsDir() {
			writeDir(nodes[i].data, dirs[i], nodes)
		}
	}
	for i := range nodes {
		writeInode(im.meta, &b.Inodes[i], uint32(i), &nodes[i])
	}
	writeSuper(im.meta, nodes[bootstrap.RootInode].nid, len(b.Inodes), used)
	return im, nil
}

func alignUp(n, a int64) int64 { return (n + a - 1) / a * a }

// xattrArea encodes an inode's inline xattr area: the ibody header, then
// each entry 4-byte aligned.
func xattrArea(xs []bootstrap.Xattr) ([]byte, error) {
	if len(xs) == 0 {
		return nil, nil
	}
	area := make([]byte, xattrHdrSize)
	for _, x := range xs {
		idx, suffix, ok := splitXattr(x.Name)
		if !ok {
			return nil, fmt.Errorf("xattr %q: %w", x.Name, ErrUnsupported)
		}
		if len(suffix) > 0xff || len(x.Value) > 0xffff {
			return nil, fmt.Errorf("xattr %q: name or value too long: %w", x.Name, ErrUnsupported)
		}
		ent := []byte{byte(len(suffix)), idx, 0, 0}
		binary.LittleEndian.PutUint16(ent[2:], uint16(len(x.Value)))
		ent = append(ent, suffix...)
		ent = append(ent, x.Value...)
		for len(ent)%4 != 0 {
			ent = append(ent, 0)
		}
		area = append(area, ent...)
	}
	if len(area) > 0xffff*4 {
		return nil, fmt.Errorf("xattrs of %d bytes: %w", len(area), ErrUnsupported)
	}
	return area, nil
}

func splitXattr(name string) (uint8, string, bool) {
	for _, p := range xattrPrefixes {
		if strings.HasPrefix(name, p.prefix) {
			suffix := name[len(p.prefix):]
			if p.index == 2 || p.index == 3 {
				// ACL names are whole names.
				if suffix != "" {
					return 0, "", false
				}
			}
			return p.index, suffix, true
		}
	}
	return 0, "", false
}

type dirent struct {
	name  string
	ino   uint32
	ftype uint8
}

// dirents lists directory dir with "." and "..", sorted bytewise as EROFS
// looks names up.
func dirents(b *bootstrap.Bootstrap, dir, parent uint32) []dirent {
	children := b.Children(dir)
	ds := make([]dirent, 0, len(children)+2)
	ds = append(ds, dirent{".", dir, fileTypes[bootstrap.ModeDir]}, dirent{"..", parent, fileTypes[bootstrap.ModeDir]})
	for _, e := range children {
		ds = append(ds, dirent{e.Name, e.Inode, fileTypes[b.Inodes[e.Inode].Type()]})
	}
	slices.SortFunc(ds, func(x, y dirent) int { return strings.Compare(x.name, y.name) })
	return ds
}

// dirBlocks splits entries into directory blocks: as many as fit each.
func dirBlocks(ds []dirent) [][]dirent {
	var blocks [][]dirent
	for len(ds) > 0 {
		used, n := 0, 0
		for n < len(ds) && used+direntSize+len(ds[n].name) <= BlockSize {
			used += direntSize + len(ds[n].name)
			n++
		}
		blocks = append(blocks, ds[:n])
		ds = ds[n:]
	}
	return blocks
}

// dirSize is a directory's i_size: its full blocks and the used part of
// the last one.
func dirSize(ds []dirent) int {
	blocks := dirBlocks(ds)
	last := 0
	for _, d := range blocks[len(blocks)-1] {
		last += direntSize + len(d.name)
	}
	return (len(blocks)-1)*BlockSize + last
}

// writeDir encodes entries into buf, sized by dirSize.
func writeDir(buf []byte, ds []dirent, nodes []node) {
	for bi, block := range dirBlocks(ds) {
		base := bi * BlockSize
		nameoff := len(block) * direntSize
		for k, d := range block {
			e := buf[base+k*direntSize:]
			binary.LittleEndian.PutUint64(e[0:], nodes[d.ino].nid)
			binary.LittleEndian.PutUint16(e[8:], uint16(nameoff))
			e[10] = d.ftype
			copy(buf[base+nameoff:], d.name)
			nameoff += len(d.name)
		}
	}
}

// writeInode writes inode ino's extended inode, xattrs, inline tail and
// data blocks into meta.
func writeInode(meta []byte, in *bootstrap.Inode, ino uint32, n *node) {
	at := int64(n.nid) * inodeSlot
	p := meta[at:]
	layout := layoutPlain
	if n.inline {
		layout = layoutInline
	}
	binary.LittleEndian.PutUint16(p[0:], uint16(1|layout<<1)) // extended inode
	if len(n.xattrs) > 0 {
		binary.LittleEndian.PutUint16(p[2:], uint16((len(n.xattrs)-xattrHdrSize)/4+1))
	}
	binary.LittleEndian.PutUint16(p[4:], uint16(in.Mode))
	size := uint64(len(n.data))
	var iu uint32
	switch in.Type() {
	case bootstrap.ModeRegular:
		size, iu = uint64(in.Size), n.blk
	case bootstrap.ModeChar, bootstrap.ModeBlock:
		iu = uint32(in.DevMinor&0xff | in.DevMajor<<8 | (in.DevMinor&^0xff)<<12)
	case bootstrap.ModeDir, bootstrap.ModeSymlink:
		iu = n.blk
	}
	binary.LittleEndian.PutUint64(p[8:], size)
	binary.LittleEndian.PutUint32(p[16:], iu)
	binary.LittleEndian.PutUint32(p[20:], ino+1)
	binary.LittleEndian.PutUint32(p[24:], in.UID)
	binary.LittleEndian.PutUint32(p[28:], in.GID)
	binary.LittleEndian.PutUint64(p[32:], uint64(in.MtimeSec))
	binary.LittleEndian.PutUint32(p[40:], in.MtimeNsec)
	binary.LittleEndian.PutUint32(p[44:], max(in.Nlink, 1))
	copy(p[inodeSize:], n.xattrs)
	if len(n.data) == 0 {
		return
	}
	full := len(n.data) / BlockSize * BlockSize
	if !n.inline {
		full = len(n.data)
	}
	copy(meta[int64(n.blk)*BlockSize:], n.data[:full])
	if n.inline {
		copy(p[inodeSize+len(n.xattrs):], n.data[full:])
	}
}

func writeSuper(meta []byte, rootNid uint64, inodes int, blocks int64) {
	s := meta[superOffset:]
	binary.LittleEndian.PutUint32(s[0:], superMagic)
	s[12] = blockBits
	binary.LittleEndian.PutUint16(s[14:], uint16(rootNid))
	binary.LittleEndian.PutUint64(s[16:], uint64(inodes))
	binary.LittleEndian.PutUint32(s[36:], uint32(blocks))
	// meta_blkaddr and xattr_blkaddr stay 0: nids count from the start.
	copy(s[64:80], "skiff")
}

// Check reports whether the image's extents fit b: each names a regular
// file of b and has its size. A saved layout is checked before it is
// served, since reads of it go by inode.
func (im *Image) Check(b *bootstrap.Bootstrap) error {
	for _, e := range im.files {
		if int(e.Inode) >= len(b.Inodes) {
			return fmt.Errorf("erofs layout: inode %d not in the bootstrap", e.Inode)
		}
		if in := &b.Inodes[e.Inode]; in.Type() != bootstrap.ModeRegular || in.Size != e.Size {
			return fmt.Errorf("erofs layout: inode %d is not a regular file of %d bytes", e.Inode, e.Size)
		}
	}
	return nil
}

// place is where a file's content starts in the blobs: the blob, the
// frame's offset in it and the chunk's offset in the frame.
type place struct {
	blob        uint32
	frame       int64
	chunkOffset uint32
}

func (p place) compare(q place) int {
	if c := cmp.Compare(p.blob, q.blob); c != 0 {
		return c
	}
	if c := cmp.Compare(p.frame, q.frame); c != 0 {
		return c
	}
	return cmp.Compare(p.chunkOffset, q.chunkOffset)
}

// storedAt is where the content of inode ino starts in storage: the
// order of its layer's tar stream, which differs from the order of the
// chunk table (the tree's, each directory's files before its
// subdirectories). A file without stored content (all zeros) sorts last.
func storedAt(b *bootstrap.Bootstrap, ino uint32) place {
	for _, ci := range b.FileChunks(ino) {
		c := b.Chunks[ci]
		if c.Zero() || int(c.Frame) >= len(b.Frames) {
			continue
		}
		fr := b.Frames[c.Frame]
		return place{blob: fr.Blob, frame: fr.Offset, chunkOffset: c.Offset}
	}
	return place{blob: ^uint32(0)}
}
