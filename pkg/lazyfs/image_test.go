package lazyfs

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/erofs"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/fetch/fetchtest"
)

// slicer is a reply written with writev(2) from its slices.
type slicer interface {
	Slices() ([][]byte, fuse.Status)
}

// TestImageRead reads the image file request by request, as the kernel
// does, and compares every byte with the image assembled by hand: reads
// across metadata, gaps, padding and many files, including replies of
// more slices than one writev takes (small files of many tiny chunks).
func TestImageRead(t *testing.T) {
	var entries []fetchtest.Entry
	for i := range 600 {
		entries = append(entries, fetchtest.Entry{Path: fmt.Sprintf("/d/f%03d", i), Mode: bootstrap.ModeRegular | 0o644, Data: fixture.Text(uint64(i), 1000+i*7)})
	}
	entries = append(entries, fetchtest.Entry{Path: "/large", Mode: bootstrap.ModeRegular | 0o644, Data: fixture.Random(9, erofs.SmallFile+5)})
	img, st := uploaded(t, entries, fetchtest.Options{ChunkSize: 256})
	b := img.Bootstrap
	layout, err := erofs.Build(b)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, layout.Size())
	copy(want, layout.Meta())
	for _, e := range entries {
		ino, _ := b.LookupPath(e.Path)
		for _, x := range layout.Files() {
			if x.Inode == ino {
				copy(want[x.Offset:], e.Data)
			}
		}
	}
	fsys := &imageFS{fileSystem: newFileSystem(b, fetch.New(nil, []fetch.Source{fetch.NewStoreSource("store", st)}), Options{}.withDefaults()), img: layout}
	many := false
	for off := int64(0); off < layout.Size(); off += maxRequest {
		buf := make([]byte, maxRequest)
		res, status := fsys.Read(nil, &fuse.ReadIn{InHeader: fuse.InHeader{NodeId: imageNode}, Offset: uint64(off), Size: maxRequest}, buf)
		if !status.Ok() {
			t.Fatalf("read at %d: %v", off, status)
		}
		got, _ := res.Bytes(nil)
		if end := min(off+maxRequest, layout.Size()); !bytes.Equal(got, want[off:end]) {
			t.Fatalf("read at %d: %d bytes differ from the image's %d", off, len(got), end-off)
		}
		if _, vector := res.(slicer); !vector {
			many = true
		}
		res.Done()
	}
	if !many {
		t.Error("no reply was copied into one buffer")
	}
	if _, status := fsys.Read(nil, &fuse.ReadIn{InHeader: fuse.InHeader{NodeId: imageRoot}, Size: 10}, make([]byte, 10)); status != fuse.EINVAL {
		t.Errorf("read of the root directory: %v", status)
	}
}

// TestImageMetadataInPageCache: once mounted, the image's metadata is in
// the kernel's page cache, so that EROFS looking files up does not ask
// this process for it block by block.
func TestImageMetadataInPageCache(t *testing.T) {
	var entries []fetchtest.Entry
	for i := range 2000 {
		entries = append(entries, fetchtest.Entry{Path: fmt.Sprintf("/d%02d/a-long-file-name-%04d", i%20, i), Mode: bootstrap.ModeRegular | 0o644, Data: fixture.Text(uint64(i), 100)})
	}
	tm := mountEntriesIn(t, entries, bootstrap.Zstd, true)
	meta := uint64(len(tm.layout.Meta()))
	if meta < 16*erofs.BlockSize {
		t.Fatalf("test image has only %d bytes of metadata", meta)
	}
	fd, err := unix.Open(filepath.Join(tm.imageDir, ImageName), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	rng := struct{ off, len uint64 }{0, meta}
	var cs struct{ cache, dirty, writeback, evicted, recentlyEvicted uint64 }
	if _, _, errno := unix.Syscall6(unix.SYS_CACHESTAT, uintptr(fd), uintptr(unsafe.Pointer(&rng)), uintptr(unsafe.Pointer(&cs)), 0, 0, 0); errno != 0 {
		t.Fatalf("cachestat: %v", errno)
	}
	if want := meta / erofs.BlockSize; cs.cache != want {
		t.Fatalf("%d of the %d metadata pages in the page cache", cs.cache, want)
	}
	if got, err := os.ReadFile(tm.path("/d07/a-long-file-name-0007")); err != nil || !bytes.Equal(got, tm.files["/d07/a-long-file-name-0007"]) {
		t.Fatalf("read through the mount: %q, %v", got, err)
	}
}
