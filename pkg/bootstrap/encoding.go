package bootstrap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/klauspost/compress/zstd"
)

// magic opens every raw bootstrap; the last byte is the format version.
const magic = "SKIFFBT\x01"

// MaxRawSize bounds a decoded bootstrap. 1 GiB is far beyond any real image
// (a 1M-file image encodes to ~100 MiB) and keeps hostile input from making
// a node allocate without limit.
const MaxRawSize = 1 << 30

// maxDecodeGuess caps the output buffer Decode allocates before decoding.
const maxDecodeGuess = 64 << 20

// Marshal encodes b in the raw (uncompressed) form described in
// docs/format.md. Slices are written in inode order, so any in-memory layout
// of the flat slices encodes to the same canonical bytes.
func Marshal(b *Bootstrap) ([]byte, error) {
	if err := b.Validate(); err != nil {
		return nil, fmt.Errorf("marshal bootstrap: %w", err)
	}
	w := make([]byte, 0, 64+len(b.Chunks)*40+len(b.Inodes)*32+len(b.Dirents)*16)
	w = append(w, magic...)
	w = binary.AppendUvarint(w, uint64(b.ChunkSize))
	// Totals of the per-inode lists, so a decoder allocates each once.
	var refs, ents, xattrs int
	for i := range b.Inodes {
		refs += int(b.Inodes[i].ChunkCount)
		ents += int(b.Inodes[i].DirentCount)
		xattrs += int(b.Inodes[i].XattrCount)
	}
	w = binary.AppendUvarint(w, uint64(refs))
	w = binary.AppendUvarint(w, uint64(ents))
	w = binary.AppendUvarint(w, uint64(xattrs))
	w = binary.AppendUvarint(w, uint64(len(b.Blobs)))
	for _, d := range b.Blobs {
		w = append(w, d[:]...)
	}
	w = binary.AppendUvarint(w, uint64(len(b.Frames)))
	for _, f := range b.Frames {
		w = binary.AppendUvarint(w, uint64(f.Blob))
		w = binary.AppendUvarint(w, uint64(f.Offset))
		w = binary.AppendUvarint(w, uint64(f.CompressedSize))
		w = binary.AppendUvarint(w, uint64(f.Size))
		w = append(w, byte(f.Compression))
	}
	w = binary.AppendUvarint(w, uint64(len(b.Chunks)))
	for _, c := range b.Chunks {
		w = append(w, c.Digest[:]...)
		w = binary.AppendUvarint(w, uint64(c.Frame+1)) // NoFrame wraps to 0
		w = binary.AppendUvarint(w, uint64(c.Offset))
		w = binary.AppendUvarint(w, uint64(c.Size))
	}
	w = binary.AppendUvarint(w, uint64(len(b.Inodes)))
	for i := range b.Inodes {
		in := &b.Inodes[i]
		w = binary.AppendUvarint(w, uint64(in.Mode))
		w = binary.AppendUvarint(w, uint64(in.UID))
		w = binary.AppendUvarint(w, uint64(in.GID))
		w = binary.AppendVarint(w, in.MtimeSec)
		w = binary.AppendUvarint(w, uint64(in.MtimeNsec))
		switch in.Type() {
		case ModeRegular:
			w = binary.AppendUvarint(w, uint64(in.Size))
			w = binary.AppendUvarint(w, uint64(in.ChunkCount))
			for _, c := range b.FileChunks(uint32(i)) {
				w = binary.AppendUvarint(w, uint64(c))
			}
		case ModeSymlink:
			w = appendString(w, in.Target)
		case ModeChar, ModeBlock:
			w = binary.AppendUvarint(w, uint64(in.DevMajor))
			w = binary.AppendUvarint(w, uint64(in.DevMinor))
		case ModeDir:
			w = binary.AppendUvarint(w, uint64(in.DirentCount))
			for _, e := range b.Children(uint32(i)) {
				w = appendString(w, e.Name)
				w = binary.AppendUvarint(w, uint64(e.Inode))
			}
		}
		w = binary.AppendUvarint(w, uint64(in.XattrCount))
		for _, x := range b.InodeXattrs(uint32(i)) {
			w = appendString(w, x.Name)
			w = appendString(w, x.Value)
		}
	}
	return w, nil
}

func appendString(w []byte, s string) []byte {
	w = binary.AppendUvarint(w, uint64(len(s)))
	return append(w, s...)
}

// Unmarshal decodes and validates a raw bootstrap. Strings in the result
// share one copy of raw, so decoding a 100k-file image costs a few large
// allocations rather than one per file.
func Unmarshal(raw []byte) (*Bootstrap, error) {
	if len(raw) > MaxRawSize {
		return nil, fmt.Errorf("unmarshal bootstrap: %d bytes exceeds the %d-byte limit", len(raw), MaxRawSize)
	}
	if len(raw) < len(magic) || string(raw[:len(magic)-1]) != magic[:len(magic)-1] {
		return nil, errors.New("unmarshal bootstrap: not a Skiff bootstrap (bad magic)")
	}
	if raw[len(magic)-1] != magic[len(magic)-1] {
		return nil, fmt.Errorf("unmarshal bootstrap: unsupported format version %d", raw[len(magic)-1])
	}
	r := &reader{s: string(raw), off: len(magic)}
	b := &Bootstrap{}
	b.ChunkSize = r.u32()
	b.ChunkRefs = make([]uint32, 0, r.count(1))
	b.Dirents = make([]Dirent, 0, r.count(2))
	b.Xattrs = make([]Xattr, 0, r.count(2))
	b.Blobs = make([]Digest, r.count(32))
	for i := range b.Blobs {
		copy(b.Blobs[i][:], r.bytes(32))
	}
	b.Frames = make([]Frame, r.count(5))
	for i := range b.Frames {
		f := &b.Frames[i]
		f.Blob = r.u32()
		f.Offset = r.i64()
		f.CompressedSize = r.u32()
		f.Size = r.u32()
		f.Compression = Compression(r.byte())
	}
	b.Chunks = make([]Chunk, r.count(35))
	for i := range b.Chunks {
		c := &b.Chunks[i]
		copy(c.Digest[:], r.bytes(32))
		c.Frame = r.u32() - 1
		c.Offset = r.u32()
		c.Size = r.u32()
	}
	b.Inodes = make([]Inode, r.count(7))
	for i := range b.Inodes {
		if r.err != nil {
			break
		}
		in := &b.Inodes[i]
		in.Mode = r.u32()
		in.UID = r.u32()
		in.GID = r.u32()
		in.MtimeSec = r.varint()
		in.MtimeNsec = r.u32()
		switch in.Type() {
		case ModeRegular:
			in.Size = r.i64()
			in.ChunkStart = uint32(len(b.ChunkRefs))
			in.ChunkCount = uint32(r.count(1))
			if int(in.ChunkCount) > cap(b.ChunkRefs)-len(b.ChunkRefs) {
				r.fail(errors.New("more chunk references than the header declares"))
			}
			for j := uint32(0); j < in.ChunkCount && r.err == nil; j++ {
				b.ChunkRefs = append(b.ChunkRefs, r.u32())
			}
		case ModeSymlink:
			in.Target = r.string()
			in.Size = int64(len(in.Target))
		case ModeChar, ModeBlock:
			in.DevMajor = r.u32()
			in.DevMinor = r.u32()
		case ModeDir:
			in.DirentStart = uint32(len(b.Dirents))
			in.DirentCount = uint32(r.count(2))
			if int(in.DirentCount) > cap(b.Dirents)-len(b.Dirents) {
				r.fail(errors.New("more directory entries than the header declares"))
			}
			for j := uint32(0); j < in.DirentCount && r.err == nil; j++ {
				b.Dirents = append(b.Dirents, Dirent{Name: r.string(), Inode: r.u32()})
			}
		case ModeFIFO, ModeSocket:
		default:
			r.fail(fmt.Errorf("inode %d: unknown file type %#o", i, in.Type()))
		}
		in.XattrStart = uint32(len(b.Xattrs))
		in.XattrCount = uint32(r.count(2))
		if int(in.XattrCount) > cap(b.Xattrs)-len(b.Xattrs) {
			r.fail(errors.New("more xattrs than the header declares"))
		}
		for j := uint32(0); j < in.XattrCount && r.err == nil; j++ {
			b.Xattrs = append(b.Xattrs, Xattr{Name: r.string(), Value: r.string()})
		}
	}
	if r.err != nil {
		return nil, fmt.Errorf("unmarshal bootstrap: at byte %d: %w", r.off, r.err)
	}
	if len(b.ChunkRefs) != cap(b.ChunkRefs) || len(b.Dirents) != cap(b.Dirents) || len(b.Xattrs) != cap(b.Xattrs) {
		return nil, errors.New("unmarshal bootstrap: list totals do not match the header")
	}
	if r.off != len(r.s) {
		return nil, fmt.Errorf("unmarshal bootstrap: %d trailing bytes", len(r.s)-r.off)
	}
	if err := b.Validate(); err != nil {
		return nil, fmt.Errorf("unmarshal bootstrap: %w", err)
	}
	b.link()
	return b, nil
}

// Encode returns the stored form of b: the raw encoding compressed with
// zstd. Its sha256 is the bootstrap's digest.
func Encode(b *Bootstrap) ([]byte, error) {
	raw, err := Marshal(b)
	if err != nil {
		return nil, err
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBetterCompression), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, fmt.Errorf("encode bootstrap: %w", err)
	}
	defer enc.Close()
	return enc.EncodeAll(raw, make([]byte, 0, len(raw)/3)), nil
}

// Decode decodes the stored (zstd-compressed) form of a bootstrap. The
// output grows as data is actually produced rather than trusting the size a
// frame header declares, so a hostile blob cannot make a node allocate a
// gigabyte up front.
func Decode(blob []byte) (*Bootstrap, error) {
	dec, err := zstd.NewReader(bytes.NewReader(blob), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(MaxRawSize), zstd.WithDecoderMaxWindow(1<<27))
	if err != nil {
		return nil, fmt.Errorf("decode bootstrap: %w", err)
	}
	defer dec.Close()
	// Bootstraps compress about 4:1, so that is the first guess; capped,
	// since blobs up to MaxRawSize are accepted and a guess is not worth
	// gigabytes before a single byte has decoded.
	buf := bytes.NewBuffer(make([]byte, 0, min(4*len(blob), maxDecodeGuess)))
	if _, err := buf.ReadFrom(io.LimitReader(dec, MaxRawSize+1)); err != nil {
		return nil, fmt.Errorf("decode bootstrap: %w", err)
	}
	return Unmarshal(buf.Bytes())
}

// reader decodes varints from a string, remembering the first error so the
// decoder can be written straight-line.
type reader struct {
	s   string
	off int
	err error
}

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
	r.off = len(r.s)
}

func (r *reader) uvarint() uint64 {
	var x uint64
	var shift uint
	for i := 0; ; i++ {
		if r.off >= len(r.s) {
			r.fail(errors.New("truncated"))
			return 0
		}
		c := r.s[r.off]
		r.off++
		if i == binary.MaxVarintLen64-1 && c > 1 {
			r.fail(errors.New("varint overflows 64 bits"))
			return 0
		}
		if c < 0x80 {
			return x | uint64(c)<<shift
		}
		x |= uint64(c&0x7f) << shift
		shift += 7
	}
}

func (r *reader) varint() int64 {
	u := r.uvarint()
	x := int64(u >> 1)
	if u&1 != 0 {
		x = ^x
	}
	return x
}

func (r *reader) u32() uint32 {
	v := r.uvarint()
	if v > math.MaxUint32 {
		r.fail(fmt.Errorf("value %d overflows 32 bits", v))
		return 0
	}
	return uint32(v)
}

func (r *reader) i64() int64 {
	v := r.uvarint()
	if v > math.MaxInt64 {
		r.fail(fmt.Errorf("value %d overflows 63 bits", v))
		return 0
	}
	return int64(v)
}

// count reads an element count and rejects any count that the remaining
// input cannot hold at minSize bytes per element, so hostile counts never
// drive allocation.
func (r *reader) count(minSize int) int {
	v := r.uvarint()
	if v > uint64((len(r.s)-r.off)/minSize) {
		r.fail(fmt.Errorf("count %d exceeds remaining input", v))
		return 0
	}
	return int(v)
}

func (r *reader) byte() byte {
	if r.off >= len(r.s) {
		r.fail(errors.New("truncated"))
		return 0
	}
	c := r.s[r.off]
	r.off++
	return c
}

func (r *reader) bytes(n int) string {
	if n > len(r.s)-r.off {
		r.fail(errors.New("truncated"))
		return ""
	}
	s := r.s[r.off : r.off+n]
	r.off += n
	return s
}

func (r *reader) string() string {
	n := r.uvarint()
	if n > uint64(len(r.s)-r.off) {
		r.fail(fmt.Errorf("string of %d bytes exceeds remaining input", n))
		return ""
	}
	return r.bytes(int(n))
}
