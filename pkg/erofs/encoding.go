package erofs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// A mounted image must keep its layout for as long as the kernel has it
// mounted, including across a change of the process (and the binary)
// serving it, so the layout is saved beside the mount rather than built
// again: a different build of Build could lay the same bootstrap out
// differently. The encoding is a header, the metadata, then the extents.
const (
	encMagic   = "skiff-erofs\x00\x01"
	encHeader  = len(encMagic) + 8 + 8 + 8 // magic, size, meta length, extent count
	extentSize = 4 + 8 + 8
)

// MarshalBinary implements encoding.BinaryMarshaler.
func (im *Image) MarshalBinary() ([]byte, error) {
	buf := make([]byte, 0, encHeader+len(im.meta)+len(im.files)*extentSize)
	buf = append(buf, encMagic...)
	buf = binary.LittleEndian.AppendUint64(buf, uint64(im.size))
	buf = binary.LittleEndian.AppendUint64(buf, uint64(len(im.meta)))
	buf = binary.LittleEndian.AppendUint64(buf, uint64(len(im.files)))
	buf = append(buf, im.meta...)
	for _, e := range im.files {
		buf = binary.LittleEndian.AppendUint32(buf, e.Inode)
		buf = binary.LittleEndian.AppendUint64(buf, uint64(e.Offset))
		buf = binary.LittleEndian.AppendUint64(buf, uint64(e.Size))
	}
	return buf, nil
}

// UnmarshalBinary implements encoding.BinaryUnmarshaler. It checks what
// serving reads relies on: an EROFS superblock, and extents in order,
// block-aligned, after the metadata and within the image. Whether they
// match a bootstrap is the caller's to check (see Check).
func (im *Image) UnmarshalBinary(data []byte) error {
	if len(data) < encHeader || string(data[:len(encMagic)]) != encMagic {
		return errors.New("erofs layout: not a saved layout")
	}
	p := data[len(encMagic):]
	size := binary.LittleEndian.Uint64(p)
	metaLen := binary.LittleEndian.Uint64(p[8:])
	count := binary.LittleEndian.Uint64(p[16:])
	p = p[24:]
	if size%BlockSize != 0 || size/BlockSize > maxBlocks || metaLen%BlockSize != 0 || metaLen < BlockSize || metaLen > size {
		return fmt.Errorf("erofs layout: size %d with %d bytes of metadata", size, metaLen)
	}
	if uint64(len(p)) < metaLen || (uint64(len(p))-metaLen)/extentSize != count || (uint64(len(p))-metaLen)%extentSize != 0 {
		return fmt.Errorf("erofs layout: %d bytes do not hold %d bytes of metadata and %d extents", len(p), metaLen, count)
	}
	meta := p[:metaLen:metaLen]
	if binary.LittleEndian.Uint32(meta[superOffset:]) != superMagic {
		return errors.New("erofs layout: no EROFS superblock")
	}
	files := make([]Extent, count)
	end := int64(metaLen)
	for i := range files {
		q := p[metaLen+uint64(i)*extentSize:]
		e := Extent{
			Inode:  binary.LittleEndian.Uint32(q),
			Offset: int64(binary.LittleEndian.Uint64(q[4:])),
			Size:   int64(binary.LittleEndian.Uint64(q[12:])),
		}
		if e.Offset < end || e.Offset%BlockSize != 0 || e.Size <= 0 || e.Size > int64(size) || e.Offset > int64(size)-e.Size {
			return fmt.Errorf("erofs layout: extent %d (%d bytes at %d) out of place", i, e.Size, e.Offset)
		}
		end = e.Offset + e.Size
		files[i] = e
	}
	*im = Image{meta: meta, files: files, size: int64(size)}
	return nil
}

// Load returns the layout saved at path (see MarshalBinary), its
// metadata mapped from the file rather than read into memory. A mount
// process serves every mounted image's metadata for as long as it is
// mounted, about 100 bytes a file (2.4 MB for 20k files) that the
// kernel's EROFS reads once and caches itself; mapped, it costs page
// cache the kernel may drop, not heap. The mapping lives until the Image
// is unreachable, so a caller keeps the Image while it holds slices of
// Meta or Pieces. The file may be removed or replaced meanwhile, but
// must not be truncated or written in place.
func Load(path string) (*Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load erofs layout: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("load erofs layout: %w", err)
	}
	if st.Size() < int64(encHeader) || st.Size() > maxEncoded {
		return nil, fmt.Errorf("load erofs layout %s: %d bytes is no saved layout", path, st.Size())
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("load erofs layout %s: mmap: %w", path, err)
	}
	im := &Image{}
	if err := im.UnmarshalBinary(data); err != nil {
		unix.Munmap(data)
		return nil, fmt.Errorf("load erofs layout %s: %w", path, err)
	}
	runtime.AddCleanup(im, func(data []byte) { unix.Munmap(data) }, data)
	return im, nil
}

// maxEncoded bounds a saved layout Load maps: the metadata of the most
// inodes an image holds, with room to spare.
const maxEncoded = 1 << 36
