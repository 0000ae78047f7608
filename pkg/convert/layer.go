package convert

import (
	"archive/tar"
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// decompress sniffs a layer's compression from its magic bytes, so a
// mislabelled media type cannot make conversion fail or mis-read.
func decompress(r io.Reader) (io.Reader, func(), error) {
	br := bufio.NewReaderSize(r, 1<<20)
	head, err := br.Peek(4)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, fmt.Errorf("read layer: %w", err)
	}
	switch {
	case len(head) >= 2 && head[0] == 0x1f && head[1] == 0x8b:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("gzip: %w", err)
		}
		return zr, func() { zr.Close() }, nil
	case len(head) >= 4 && bytes.Equal(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(1<<30))
		if err != nil {
			return nil, nil, fmt.Errorf("zstd: %w", err)
		}
		return zr, zr.Close, nil
	}
	return br, func() {}, nil
}

// chunkSink receives a regular file's content chunk by chunk.
type chunkSink interface {
	// add stores (or deduplicates) one chunk and returns its reference.
	add(data []byte) (chunkRef, error)
}

// readLayer reads an uncompressed tar stream into normalised entries,
// passing every regular file's content through the chunker to sink.
func readLayer(r io.Reader, ch chunker, sink chunkSink) ([]entry, error) {
	tail := &tailReader{r: r}
	tr := tar.NewReader(tail)
	var entries []entry
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			// archive/tar accepts a stream that simply stops between
			// entries; a layer cut short there would silently lose files,
			// so the end-of-archive block is required.
			if !tail.endsWithZeroBlock() {
				return nil, fmt.Errorf("read tar after %d entries: stream ends without the end-of-archive marker: %w", len(entries), io.ErrUnexpectedEOF)
			}
			return entries, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read tar header after %d entries: %w", len(entries), err)
		}
		e, err := headerEntry(hdr)
		if err != nil {
			return nil, fmt.Errorf("tar entry %q: %w", hdr.Name, err)
		}
		if e == nil {
			continue
		}
		if e.kind == kindFile && e.ino.mode&bootstrap.ModeType == bootstrap.ModeRegular {
			n, err := ch.split(tr, func(data []byte) error {
				c, err := sink.add(data)
				if err != nil {
					return err
				}
				e.ino.chunks = append(e.ino.chunks, c)
				return nil
			})
			if err != nil {
				return nil, fmt.Errorf("tar entry %q: %w", hdr.Name, err)
			}
			if n != hdr.Size {
				return nil, fmt.Errorf("tar entry %q: read %d of %d bytes: %w", hdr.Name, n, hdr.Size, io.ErrUnexpectedEOF)
			}
		}
		entries = append(entries, *e)
	}
}

// tailReader remembers the last block read, so readLayer can tell a
// complete archive (which ends in zero blocks) from a truncated one.
type tailReader struct {
	r    io.Reader
	tail [512]byte
	n    int64
}

func (t *tailReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if n >= len(t.tail) {
		copy(t.tail[:], p[n-len(t.tail):n])
	} else if n > 0 {
		copy(t.tail[:], t.tail[n:])
		copy(t.tail[len(t.tail)-n:], p[:n])
	}
	t.n += int64(n)
	return n, err
}

func (t *tailReader) endsWithZeroBlock() bool {
	return t.n >= int64(len(t.tail)) && isZero(t.tail[:])
}

// headerEntry normalises one tar header. It returns nil for entries that
// carry nothing for the filesystem (global PAX headers, aufs metadata).
func headerEntry(hdr *tar.Header) (*entry, error) {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil, nil
	}
	p, err := cleanPath(hdr.Name)
	if err != nil {
		return nil, err
	}
	dir, base := splitPath(p)
	switch {
	case strings.HasPrefix(base, whiteoutMeta) && base != whiteoutOpaque:
		return nil, nil
	case base == whiteoutOpaque:
		return &entry{path: dir, kind: kindOpaque}, nil
	case strings.HasPrefix(base, whiteoutPrefix):
		name := strings.TrimPrefix(base, whiteoutPrefix)
		if !bootstrap.ValidName(name) {
			return nil, fmt.Errorf("whiteout of invalid name %q", name)
		}
		return &entry{path: joinPath(dir, name), kind: kindWhiteout}, nil
	}
	if hdr.Typeflag == tar.TypeLink {
		target, err := cleanPath(hdr.Linkname)
		if err != nil {
			return nil, fmt.Errorf("hard link target: %w", err)
		}
		if target == "" || target == p {
			return nil, fmt.Errorf("hard link to %q is invalid", hdr.Linkname)
		}
		return &entry{path: p, kind: kindHardlink, link: target}, nil
	}
	if hdr.Mode < 0 || hdr.Mode > 0o7777777 {
		return nil, fmt.Errorf("mode %o out of range", hdr.Mode)
	}
	if hdr.Uid < 0 || hdr.Gid < 0 || int64(hdr.Uid) > 1<<32-1 || int64(hdr.Gid) > 1<<32-1 {
		return nil, fmt.Errorf("uid/gid %d/%d out of range", hdr.Uid, hdr.Gid)
	}
	in := &inode{
		mode:      uint32(hdr.Mode) & bootstrap.ModePerm,
		uid:       uint32(hdr.Uid),
		gid:       uint32(hdr.Gid),
		mtimeSec:  hdr.ModTime.Unix(),
		mtimeNsec: uint32(hdr.ModTime.Nanosecond()),
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse: // archive/tar reports the old '\x00' type as TypeReg
		if hdr.Size < 0 {
			return nil, fmt.Errorf("negative size %d", hdr.Size)
		}
		in.mode |= bootstrap.ModeRegular
		in.size = hdr.Size
	case tar.TypeDir:
		in.mode |= bootstrap.ModeDir
	case tar.TypeSymlink:
		if hdr.Linkname == "" {
			return nil, fmt.Errorf("symlink with an empty target")
		}
		if strings.IndexByte(hdr.Linkname, 0) >= 0 {
			return nil, fmt.Errorf("symlink target contains a NUL byte")
		}
		// The target is data, not a path this converter writes to: it is
		// kept verbatim and resolved by the kernel inside the container's
		// root, exactly as with an unpacked layer.
		in.mode |= bootstrap.ModeSymlink
		in.target = hdr.Linkname
	case tar.TypeChar, tar.TypeBlock:
		if hdr.Devmajor < 0 || hdr.Devminor < 0 || hdr.Devmajor > 1<<32-1 || hdr.Devminor > 1<<32-1 {
			return nil, fmt.Errorf("device number %d:%d out of range", hdr.Devmajor, hdr.Devminor)
		}
		if hdr.Typeflag == tar.TypeChar {
			in.mode |= bootstrap.ModeChar
		} else {
			in.mode |= bootstrap.ModeBlock
		}
		in.devMajor, in.devMinor = uint32(hdr.Devmajor), uint32(hdr.Devminor)
	case tar.TypeFifo:
		in.mode |= bootstrap.ModeFIFO
	default:
		return nil, fmt.Errorf("unsupported tar entry type %q", hdr.Typeflag)
	}
	if p == "" && !in.isDir() {
		return nil, fmt.Errorf("entry for the root directory is not a directory")
	}
	in.xattrs = headerXattrs(hdr)
	return &entry{path: p, kind: kindFile, ino: in}, nil
}

func joinPath(dir, base string) string {
	if dir == "" {
		return base
	}
	return dir + "/" + base
}

// headerXattrs collects extended attributes from PAX records
// (SCHILY.xattr.*, the form Go, GNU tar and umoci write).
func headerXattrs(hdr *tar.Header) []bootstrap.Xattr {
	const prefix = "SCHILY.xattr."
	var xs []bootstrap.Xattr
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, prefix); ok && name != "" {
			xs = append(xs, bootstrap.Xattr{Name: name, Value: v})
		}
	}
	sort.Slice(xs, func(i, j int) bool { return xs[i].Name < xs[j].Name })
	return xs
}
