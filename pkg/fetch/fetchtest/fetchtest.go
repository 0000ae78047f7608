// Package fetchtest builds small Skiff images by hand for tests of the read
// path: it lays out a bootstrap from a list of entries with exact control
// over chunking, packing of small files into shared frames, all-zero chunks
// and every attribute, and writes the chunk-data blobs to a real store.
package fetchtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/codec"
	"github.com/skiff-dev/skiff/pkg/store"
)

// Entry is one path of the image. Parent directories that are not listed
// are created with mode 0755.
type Entry struct {
	Path         string // absolute, "/" for the root
	Mode         uint32 // type bits | permission bits (bootstrap.Mode*)
	UID, GID     uint32
	Mtime        time.Time
	Data         []byte // regular files
	Target       string // symlinks
	Major, Minor uint32 // devices
	Xattrs       map[string]string
	Link         string // hard link: the path of an earlier regular file
	Pack         bool   // store the file's chunks in frames shared with other packed files
}

// Options shape the layout.
type Options struct {
	ChunkSize   int                   // default 64 KiB
	Compression bootstrap.Compression // the zero value is bootstrap.Zstd
	PackSize    int                   // target size of packed frames, default 64 KiB
	BlobSize    int64                 // start a new blob after this many bytes; 0: one blob
}

// Image is a built image.
type Image struct {
	Bootstrap *bootstrap.Bootstrap
	Blobs     map[bootstrap.Digest][]byte
}

// Build lays out entries as a bootstrap and its blobs.
func Build(entries []Entry, opts Options) (*Image, error) {
	if opts.ChunkSize <= 0 {
		opts.ChunkSize = 64 << 10
	}
	if opts.PackSize <= 0 {
		opts.PackSize = 64 << 10
	}
	bl := &builder{opts: opts, b: &bootstrap.Bootstrap{ChunkSize: uint32(opts.ChunkSize)}, byPath: map[string]uint32{}, kids: map[uint32][]bootstrap.Dirent{}, chunkIdx: map[bootstrap.Digest]uint32{}}
	bl.b.Inodes = append(bl.b.Inodes, bootstrap.Inode{Mode: bootstrap.ModeDir | 0o755})
	bl.byPath["/"] = bootstrap.RootInode
	type fileData struct {
		ino  uint32
		data []byte
		pack bool
	}
	var files []fileData
	for _, e := range entries {
		p := path.Clean("/" + e.Path)
		if e.Link != "" {
			target, ok := bl.byPath[path.Clean("/"+e.Link)]
			if !ok {
				return nil, fmt.Errorf("%s: link target %s not built yet", p, e.Link)
			}
			if err := bl.addName(p, target); err != nil {
				return nil, err
			}
			continue
		}
		in := bootstrap.Inode{Mode: e.Mode, UID: e.UID, GID: e.GID, MtimeSec: e.Mtime.Unix(), MtimeNsec: uint32(e.Mtime.Nanosecond()), Target: e.Target, DevMajor: e.Major, DevMinor: e.Minor}
		switch in.Type() {
		case bootstrap.ModeRegular:
			in.Size = int64(len(e.Data))
		case bootstrap.ModeSymlink:
			in.Size = int64(len(e.Target))
		}
		var ino uint32
		if p == "/" {
			bl.b.Inodes[bootstrap.RootInode] = in
		} else {
			if existing, ok := bl.byPath[p]; ok && bl.b.Inodes[existing].IsDir() && in.IsDir() {
				ino = existing // an implicit parent listed later: take its attributes
				bl.b.Inodes[ino] = in
			} else {
				ino = uint32(len(bl.b.Inodes))
				bl.b.Inodes = append(bl.b.Inodes, in)
				if err := bl.addName(p, ino); err != nil {
					return nil, err
				}
			}
		}
		bl.xattrs = append(bl.xattrs, pendingXattrs{ino, e.Xattrs})
		if in.Type() == bootstrap.ModeRegular {
			files = append(files, fileData{ino, e.Data, e.Pack})
		}
	}
	for _, f := range files {
		refs, err := bl.content(f.data, f.pack)
		if err != nil {
			return nil, err
		}
		in := &bl.b.Inodes[f.ino]
		in.ChunkStart, in.ChunkCount = uint32(len(bl.b.ChunkRefs)), uint32(len(refs))
		bl.b.ChunkRefs = append(bl.b.ChunkRefs, refs...)
	}
	if err := bl.flushPack(); err != nil {
		return nil, err
	}
	bl.finishBlob()
	bl.layout()
	if err := bl.b.Finish(); err != nil {
		return nil, fmt.Errorf("built bootstrap is invalid: %w", err)
	}
	return &Image{Bootstrap: bl.b, Blobs: bl.blobs}, nil
}

type pendingXattrs struct {
	ino uint32
	x   map[string]string
}

type builder struct {
	opts     Options
	b        *bootstrap.Bootstrap
	byPath   map[string]uint32
	kids     map[uint32][]bootstrap.Dirent
	xattrs   []pendingXattrs
	chunkIdx map[bootstrap.Digest]uint32

	blob  bytes.Buffer
	blobs map[bootstrap.Digest][]byte
	// frames of the blob being written, whose Blob index is set when the
	// blob's digest is known
	open []uint32

	pack       bytes.Buffer
	packChunks []uint32
}

func (bl *builder) addName(p string, ino uint32) error {
	dir, name := path.Split(p)
	parent, err := bl.dir(path.Clean(dir))
	if err != nil {
		return err
	}
	if _, dup := bl.byPath[p]; dup {
		return fmt.Errorf("%s: listed twice", p)
	}
	bl.byPath[p] = ino
	bl.kids[parent] = append(bl.kids[parent], bootstrap.Dirent{Name: name, Inode: ino})
	return nil
}

// dir returns the directory inode at p, creating missing ones.
func (bl *builder) dir(p string) (uint32, error) {
	if ino, ok := bl.byPath[p]; ok {
		if !bl.b.Inodes[ino].IsDir() {
			return 0, fmt.Errorf("%s: not a directory", p)
		}
		return ino, nil
	}
	ino := uint32(len(bl.b.Inodes))
	bl.b.Inodes = append(bl.b.Inodes, bootstrap.Inode{Mode: bootstrap.ModeDir | 0o755})
	return ino, bl.addName(p, ino)
}

// content cuts data into chunks, stores the ones not seen before and
// returns the chunk references.
func (bl *builder) content(data []byte, pack bool) ([]uint32, error) {
	var refs []uint32
	for off := 0; off < len(data); off += bl.opts.ChunkSize {
		piece := data[off:min(off+bl.opts.ChunkSize, len(data))]
		d := bootstrap.Sum(piece)
		if ci, ok := bl.chunkIdx[d]; ok {
			refs = append(refs, ci)
			continue
		}
		ci := uint32(len(bl.b.Chunks))
		bl.chunkIdx[d] = ci
		refs = append(refs, ci)
		c := bootstrap.Chunk{Digest: d, Frame: bootstrap.NoFrame, Size: uint32(len(piece))}
		bl.b.Chunks = append(bl.b.Chunks, c)
		switch {
		case isZero(piece):
		case pack:
			bl.b.Chunks[ci].Offset = uint32(bl.pack.Len())
			bl.b.Chunks[ci].Frame = uint32(len(bl.b.Frames)) // fixed up by flushPack
			bl.pack.Write(piece)
			bl.packChunks = append(bl.packChunks, ci)
			if bl.pack.Len() >= bl.opts.PackSize {
				if err := bl.flushPack(); err != nil {
					return nil, err
				}
			}
		default:
			fi, err := bl.frame(piece)
			if err != nil {
				return nil, err
			}
			bl.b.Chunks[ci].Frame = fi
		}
	}
	return refs, nil
}

func (bl *builder) flushPack() error {
	if bl.pack.Len() == 0 {
		return nil
	}
	fi, err := bl.frame(bl.pack.Bytes())
	if err != nil {
		return err
	}
	for _, ci := range bl.packChunks {
		bl.b.Chunks[ci].Frame = fi
	}
	bl.pack.Reset()
	bl.packChunks = nil
	return nil
}

// frame compresses data into the current blob.
func (bl *builder) frame(data []byte) (uint32, error) {
	if bl.opts.BlobSize > 0 && int64(bl.blob.Len()) >= bl.opts.BlobSize {
		bl.finishBlob()
	}
	z, c, err := codec.CompressFrame(bl.opts.Compression, nil, data)
	if err != nil {
		return 0, err
	}
	fi := uint32(len(bl.b.Frames))
	bl.b.Frames = append(bl.b.Frames, bootstrap.Frame{Offset: int64(bl.blob.Len()), CompressedSize: uint32(len(z)), Size: uint32(len(data)), Compression: c})
	bl.blob.Write(z)
	bl.open = append(bl.open, fi)
	return fi, nil
}

func (bl *builder) finishBlob() {
	if bl.blob.Len() == 0 {
		return
	}
	data := bytes.Clone(bl.blob.Bytes())
	d := bootstrap.Sum(data)
	if bl.blobs == nil {
		bl.blobs = map[bootstrap.Digest][]byte{}
	}
	bl.blobs[d] = data
	for _, fi := range bl.open {
		bl.b.Frames[fi].Blob = uint32(len(bl.b.Blobs))
	}
	bl.b.Blobs = append(bl.b.Blobs, d)
	bl.open = nil
	bl.blob.Reset()
}

// layout writes each directory's sorted entries contiguously and each
// inode's sorted xattrs.
func (bl *builder) layout() {
	for ino := range bl.b.Inodes {
		in := &bl.b.Inodes[ino]
		if !in.IsDir() {
			continue
		}
		kids := bl.kids[uint32(ino)]
		sort.Slice(kids, func(i, j int) bool { return kids[i].Name < kids[j].Name })
		in.DirentStart, in.DirentCount = uint32(len(bl.b.Dirents)), uint32(len(kids))
		bl.b.Dirents = append(bl.b.Dirents, kids...)
	}
	for _, px := range bl.xattrs {
		names := make([]string, 0, len(px.x))
		for n := range px.x {
			names = append(names, n)
		}
		sort.Strings(names)
		in := &bl.b.Inodes[px.ino]
		in.XattrStart, in.XattrCount = uint32(len(bl.b.Xattrs)), uint32(len(names))
		for _, n := range names {
			bl.b.Xattrs = append(bl.b.Xattrs, bootstrap.Xattr{Name: n, Value: px.x[n]})
		}
	}
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Upload writes the image's blobs to st.
func (img *Image) Upload(ctx context.Context, st store.Store) error {
	for d, data := range img.Blobs {
		if err := st.Put(ctx, store.BlobKey(d.Hex()), bytes.NewReader(data), int64(len(data))); err != nil {
			return fmt.Errorf("upload blob %s: %w", d, err)
		}
	}
	return nil
}

// Corrupt flips one byte of the stored frame holding the first stored chunk
// of the file at p, in st, and returns that chunk's digest.
func (img *Image) Corrupt(ctx context.Context, st store.Store, p string) (bootstrap.Digest, error) {
	return CorruptFile(ctx, st, img.Bootstrap, p)
}

// CorruptFile flips one byte in the middle of the frame holding the first
// stored chunk of the file at p of any image whose blobs are in st, and
// returns that chunk's digest. Calling it twice for the same file flips
// the byte back.
func CorruptFile(ctx context.Context, st store.Store, b *bootstrap.Bootstrap, p string) (bootstrap.Digest, error) {
	ino, ok := b.LookupPath(p)
	if !ok || b.Inodes[ino].Type() != bootstrap.ModeRegular {
		return bootstrap.Digest{}, fmt.Errorf("corrupt: %s is not a regular file of the image", p)
	}
	for _, ci := range b.FileChunks(ino) {
		c := b.Chunks[ci]
		if c.Zero() {
			continue
		}
		f := b.Frames[c.Frame]
		key := store.BlobKey(b.Blobs[f.Blob].Hex())
		rc, err := st.Get(ctx, key, 0, -1)
		if err != nil {
			return bootstrap.Digest{}, fmt.Errorf("corrupt: %w", err)
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return bootstrap.Digest{}, fmt.Errorf("corrupt: read %s: %w", key, err)
		}
		data[f.Offset+int64(f.CompressedSize)/2] ^= 0xff
		if err := st.Put(ctx, key, bytes.NewReader(data), int64(len(data))); err != nil {
			return bootstrap.Digest{}, fmt.Errorf("corrupt: %w", err)
		}
		return c.Digest, nil
	}
	return bootstrap.Digest{}, fmt.Errorf("corrupt: %s has no stored chunk", strings.TrimPrefix(p, "/"))
}
