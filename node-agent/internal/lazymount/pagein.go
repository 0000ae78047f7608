package lazymount

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/erofs"
	"github.com/skiff-dev/skiff/pkg/lazyfs"
)

// pageIn reads the parts of an image-mode mount's image file that hold
// the given files, and the metadata, through the mount, so that the
// kernel holds their pages before a container asks for them. Prefetching
// a startup set brings its chunks to this node; a container of a mount
// through EROFS would still have the kernel ask this process for every
// page of every file it opens, one request per few files, which costs a
// program walking thousands of small files several times the reading
// itself. Only the files' own bytes are read: the image file is read
// without readahead, which would fetch the neighbours.
func (m *Manager) pageIn(ctx context.Context, d bootstrap.Digest, layout *erofs.Image, inodes []uint32) (int64, error) {
	f, err := os.Open(filepath.Join(m.imageDir(d), lazyfs.ImageName))
	if err != nil {
		return 0, fmt.Errorf("page in: %w", err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM); err != nil {
		return 0, fmt.Errorf("page in: %w", err)
	}
	buf := make([]byte, pageInRead)
	var n int64
	var errs []error
	for _, r := range pageInRanges(layout, inodes) {
		for off := r[0]; off < r[1]; off += int64(len(buf)) {
			if err := ctx.Err(); err != nil {
				return n, err
			}
			got, err := f.ReadAt(buf[:min(int64(len(buf)), r[1]-off)], off)
			n += int64(got)
			if err != nil && err != io.EOF {
				// A file that cannot be read (a corrupt chunk: EIO) is
				// left to the reads that follow, which report it; the
				// rest of the set still goes in.
				errs = append(errs, fmt.Errorf("page in %d bytes at %d: %w", min(int64(len(buf)), r[1]-off), off, err))
			}
		}
	}
	return n, errors.Join(errs...)
}

// pageInRead is the largest read pageIn asks for, about what the kernel
// sends the mount as one request.
const pageInRead = 512 << 10

// pageInRanges returns the byte ranges of the image holding the metadata
// and the content of the given files, by offset, adjacent ones merged.
func pageInRanges(layout *erofs.Image, inodes []uint32) [][2]int64 {
	want := make(map[uint32]bool, len(inodes))
	for _, ino := range inodes {
		want[ino] = true
	}
	ranges := [][2]int64{{0, int64(len(layout.Meta()))}}
	for _, e := range layout.Files() {
		if !want[e.Inode] {
			continue
		}
		// Through to the end of the last block, which the kernel reads
		// whole.
		end := min(e.Offset+(e.Size+erofs.BlockSize-1)/erofs.BlockSize*erofs.BlockSize, layout.Size())
		if last := &ranges[len(ranges)-1]; e.Offset <= last[1] {
			last[1] = max(last[1], end)
			continue
		}
		ranges = append(ranges, [2]int64{e.Offset, end})
	}
	return ranges
}
