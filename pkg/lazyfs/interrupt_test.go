package lazyfs

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/fetch/fetchtest"
)

// heldReader holds every chunk read until release is closed, as a slow
// source does, unless the read's context ends first.
type heldReader struct {
	ChunkReader
	release chan struct{}
	held    atomic.Int32
}

func (h *heldReader) ReadChunk(ctx context.Context, b *bootstrap.Bootstrap, idx uint32) ([]byte, error) {
	h.held.Add(1)
	select {
	case <-h.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return h.ChunkReader.ReadChunk(ctx, b, idx)
}

// TestReadsOutlastSignals: a reader signalled while its read waits for a
// chunk still gets its bytes, never EINTR. Its read is a direct one
// (O_DIRECT), which the kernel sends to the mount as the reader's own
// request and interrupts when a signal arrives, as it does the page reads
// EROFS makes of the image file for a container; there an interrupted read
// is an I/O error in the container.
func TestReadsOutlastSignals(t *testing.T) {
	for _, mode := range []string{"tree", "image"} {
		t.Run(mode, func(t *testing.T) { testReadsOutlastSignals(t, mode == "image") })
	}
}

func testReadsOutlastSignals(t *testing.T, image bool) {
	data := fixture.Random(1, 64<<10)
	entries := []fetchtest.Entry{
		{Path: "/", Mode: bootstrap.ModeDir | 0o755},
		{Path: "/file", Mode: bootstrap.ModeRegular | 0o644, Data: data},
	}
	held := &heldReader{release: make(chan struct{})}
	tm := mountEntriesThrough(t, entries, bootstrap.Zstd, image, func(r ChunkReader) ChunkReader {
		held.ChunkReader = r
		return held
	})
	// The tree's file, or the image file where EROFS finds its content.
	path, off := tm.path("/file"), int64(0)
	if image {
		ino, _ := tm.img.Bootstrap.LookupPath("/file")
		for _, x := range tm.layout.Files() {
			if x.Inode == ino {
				off = x.Offset
			}
		}
		path = filepath.Join(tm.imageDir, ImageName)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf, err := unix.Mmap(-1, 0, len(data), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(buf)

	type result struct {
		n   int
		err error
	}
	tid := make(chan int, 1)
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid <- unix.Gettid()
		n, err := unix.Pread(int(f.Fd()), buf, off)
		done <- result{n, err}
	}()
	reader := <-tid
	// Signal the reading thread until its read returns; the held chunk
	// is let go once the read has waited a while, through many signals.
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	letGo := time.After(300 * time.Millisecond)
	signals := 0
	var res result
wait:
	for {
		select {
		case res = <-done:
			break wait
		case <-letGo:
			close(held.release)
		case <-tick.C:
			if err := unix.Tgkill(os.Getpid(), reader, unix.SIGURG); err != nil {
				t.Fatal(err)
			}
			signals++
		}
	}
	if held.held.Load() == 0 {
		t.Fatal("the read never waited for a chunk")
	}
	if res.err != nil {
		t.Fatalf("read after %d signals: %v", signals, res.err)
	}
	if res.n != len(data) || !bytes.Equal(buf[:res.n], data) {
		t.Fatalf("read %d bytes, not the file's %d", res.n, len(data))
	}
}
