package lazyfs

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"

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
	fsys := &imageFS{fileSystem: newFileSystem(b, fetch.New(nil, fetch.NewStoreSource("store", st)), Options{}.withDefaults()), img: layout}
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
