package lazymount

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/erofs"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/fetch/fetchtest"
	"github.com/skiff-dev/skiff/pkg/lazyfs"
	"github.com/skiff-dev/skiff/pkg/startup"
	"github.com/skiff-dev/skiff/pkg/store"
)

// pageInImage is an image of small files /a, /b, /c, /d, /e0 to /e9 and
// /f, in that order in the image, and a large file /big after them.
func pageInImage(t *testing.T) (*fetchtest.Image, []fetchtest.Entry) {
	t.Helper()
	r := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	}
	entries := []fetchtest.Entry{
		{Path: "/", Mode: bootstrap.ModeDir | 0o755},
		{Path: "/a", Mode: bootstrap.ModeRegular | 0o644, Data: random(20000)},
		{Path: "/b", Mode: bootstrap.ModeRegular | 0o644, Data: random(40960)},
		{Path: "/c", Mode: bootstrap.ModeRegular | 0o644, Data: random(100)},
		{Path: "/d", Mode: bootstrap.ModeRegular | 0o644, Data: random(70000)},
	}
	for i := range 10 {
		entries = append(entries, fetchtest.Entry{Path: fmt.Sprintf("/e%d", i), Mode: bootstrap.ModeRegular | 0o644, Data: random(60000)})
	}
	entries = append(entries, []fetchtest.Entry{
		{Path: "/f", Mode: bootstrap.ModeRegular | 0o644, Data: random(30000)},
		{Path: "/big", Mode: bootstrap.ModeRegular | 0o644, Data: random(erofs.SmallFile + 5000)},
	}...)
	img, err := fetchtest.Build(entries, fetchtest.Options{ChunkSize: 16 << 10, Compression: bootstrap.Zstd})
	if err != nil {
		t.Fatal(err)
	}
	return img, entries
}

func TestPageInRanges(t *testing.T) {
	img, _ := pageInImage(t)
	b := img.Bootstrap
	layout, err := erofs.Build(b)
	if err != nil {
		t.Fatal(err)
	}
	ext := map[string]erofs.Extent{}
	for _, e := range layout.Files() {
		for _, name := range []string{"/a", "/b", "/c", "/d", "/big"} {
			if ino, _ := b.LookupPath(name); ino == e.Inode {
				ext[name] = e
			}
		}
	}
	if len(ext) != 5 || !(ext["/a"].Offset < ext["/b"].Offset && ext["/b"].Offset < ext["/c"].Offset && ext["/c"].Offset < ext["/d"].Offset && ext["/d"].Offset < ext["/big"].Offset) {
		t.Fatalf("layout is not the one this test expects: %+v", ext)
	}
	blockEnd := func(name string) int64 {
		e := ext[name]
		return e.Offset + (e.Size+erofs.BlockSize-1)/erofs.BlockSize*erofs.BlockSize
	}
	meta := [2]int64{0, int64(len(layout.Meta()))}
	r := func(from, to string) [2]int64 { return [2]int64{ext[from].Offset, blockEnd(to)} }
	tests := []struct {
		name  string
		files []string
		want  [][2]int64
	}{
		{"none: the metadata", nil, [][2]int64{meta}},
		{"one", []string{"/b"}, [][2]int64{meta, r("/b", "/b")}},
		{"neighbours merge", []string{"/b", "/a", "/c"}, [][2]int64{meta, r("/a", "/c")}},
		{"a file between stays out", []string{"/a", "/c"}, [][2]int64{meta, r("/a", "/a"), r("/c", "/c")}},
		{"large file after its gap", []string{"/d", "/big"}, [][2]int64{meta, r("/d", "/d"), r("/big", "/big")}},
		{"directories and unknown inodes are passed over", []string{"/", "/c"}, [][2]int64{meta, r("/c", "/c")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var inodes []uint32
			for _, name := range tt.files {
				ino, ok := b.LookupPath(name)
				if !ok {
					t.Fatalf("no %s", name)
				}
				inodes = append(inodes, ino)
			}
			inodes = append(inodes, uint32(len(b.Inodes)+7))
			if got := pageInRanges(layout, inodes); !slices.Equal(got, tt.want) {
				t.Errorf("pageInRanges = %v, want %v", got, tt.want)
			}
		})
	}
}

// erofsEnv is pageInImage in a directory store and a Manager mounting it
// through EROFS.
type erofsEnv struct {
	img     *fetchtest.Image
	entries []fetchtest.Entry
	st      store.Store
	d       bootstrap.Digest
	m       *Manager
}

func newEROFSEnv(t *testing.T) *erofsEnv {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil || os.Geteuid() != 0 {
		t.Skip("EROFS image mode needs root and /dev/fuse")
	}
	img, entries := pageInImage(t)
	st, d := uploaded(t, img)
	return &erofsEnv{img: img, entries: entries, st: st, d: d}
}

func (e *erofsEnv) inode(t *testing.T, name string) uint32 {
	t.Helper()
	ino, ok := e.img.Bootstrap.LookupPath(name)
	if !ok {
		t.Fatalf("no %s", name)
	}
	return ino
}

// mount starts the Manager, recording startup sets for window, and
// mounts the image, skipping the test where the kernel cannot mount it
// through EROFS.
func (e *erofsEnv) mount(t *testing.T, window time.Duration) string {
	t.Helper()
	return e.mountWith(t, Options{RecordWindow: window})
}

// mountWith is mount with the Manager's options opts.
func (e *erofsEnv) mountWith(t *testing.T, opts Options) string {
	t.Helper()
	opts.EROFS = true
	opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	m, err := New(t.TempDir(), e.st, fetch.New(nil, []fetch.Source{fetch.NewStoreSource("store", e.st)}), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	e.m = m
	mp, err := m.Mount(context.Background(), e.d)
	if err != nil {
		t.Fatal(err)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(mp, &sfs); err != nil || sfs.Type != erofsMagic {
		t.Skipf("this kernel cannot mount a file as EROFS (statfs type %#x, %v)", sfs.Type, err)
	}
	// The metadata is served from the saved layout, mapped, not from a
	// copy on the heap.
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(maps), m.layoutPath(e.d)) {
		t.Fatalf("the layout %s is not mapped", m.layoutPath(e.d))
	}
	return mp
}

// pageCache maps the image file of the mounted image, laid out as layout,
// and returns cached, which reports whether every page of file name is in
// the page cache (all), or whether any is (!all).
func (e *erofsEnv) pageCache(t *testing.T, layout *erofs.Image) (cached func(name string, all bool) bool) {
	t.Helper()
	image, err := os.Open(filepath.Join(e.m.imageDir(e.d), lazyfs.ImageName))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { image.Close() })
	mem, err := unix.Mmap(int(image.Fd()), 0, int(layout.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	resident := make([]byte, (layout.Size()+erofs.BlockSize-1)/erofs.BlockSize)
	return func(name string, all bool) bool {
		if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&mem[0])), uintptr(len(mem)), uintptr(unsafe.Pointer(&resident[0]))); errno != 0 {
			t.Fatalf("mincore: %v", errno)
		}
		ino := e.inode(t, name)
		for _, x := range layout.Files() {
			if x.Inode != ino {
				continue
			}
			for p := x.Offset / erofs.BlockSize; p*erofs.BlockSize < x.Offset+x.Size; p++ {
				if in := resident[p]&1 != 0; in != all {
					return !all
				}
			}
			return all
		}
		t.Fatalf("%s is not in the layout", name)
		return false
	}
}

// TestStartupSetPagedIn: mounting an image through EROFS whose startup
// set is in the store leaves the set's files in the kernel's page cache
// of the image file, and nothing else of the image's content. A file of
// the set that cannot be read (a corrupt chunk) stays out, and fails
// when read; the rest of the set goes in.
func TestStartupSetPagedIn(t *testing.T) {
	for _, corrupt := range []bool{false, true} {
		t.Run(fmt.Sprintf("corrupt=%v", corrupt), func(t *testing.T) { testStartupSetPagedIn(t, corrupt) })
	}
}

func testStartupSetPagedIn(t *testing.T, corrupt bool) {
	e := newEROFSEnv(t)
	ctx := context.Background()
	b := e.img.Bootstrap
	inode := func(name string) uint32 { return e.inode(t, name) }
	// The files /e0 to /e9 are read as one range of several reads, after
	// which the kernel would read ahead into /f.
	inodes := []uint32{inode("/a"), inode("/c"), inode("/big")}
	for i := range 10 {
		inodes = append(inodes, inode(fmt.Sprintf("/e%d", i)))
	}
	set := startup.Format(b, inodes)
	if err := e.st.Put(ctx, store.StartupKey(e.d.Hex()), bytes.NewReader(set), int64(len(set))); err != nil {
		t.Fatal(err)
	}
	if corrupt {
		if _, err := e.img.Corrupt(ctx, e.st, "/c"); err != nil {
			t.Fatal(err)
		}
	}
	mp := e.mount(t, time.Minute)
	m, d := e.m, e.d
	layout, err := m.loadLayout(d)
	if err != nil {
		t.Fatal(err)
	}
	cached := e.pageCache(t, layout)
	deadline := time.Now().Add(20 * time.Second)
	for !cached("/big", true) {
		if time.Now().After(deadline) {
			t.Fatal("the startup set's last file never reached the page cache")
		}
		time.Sleep(20 * time.Millisecond)
	}
	in, out := []string{"/a", "/c", "/e0", "/e9"}, []string{"/b", "/d", "/f"}
	if corrupt {
		in, out = []string{"/a", "/e0", "/e9"}, []string{"/b", "/c", "/d", "/f"}
	}
	for _, name := range in {
		if !cached(name, true) {
			t.Errorf("%s of the startup set is not in the page cache", name)
		}
	}
	for _, name := range out {
		if cached(name, false) {
			t.Errorf("%s is in the page cache", name)
		}
	}
	for _, ent := range e.entries {
		if ent.Mode&bootstrap.ModeType != bootstrap.ModeRegular {
			continue
		}
		got, err := os.ReadFile(filepath.Join(mp, ent.Path))
		if corrupt && ent.Path == "/c" {
			if !errors.Is(err, syscall.EIO) {
				t.Errorf("read corrupt %s: %d bytes, %v; want EIO", ent.Path, len(got), err)
			}
			continue
		}
		if err != nil || !bytes.Equal(got, ent.Data) {
			t.Errorf("read %s through the mount: %d bytes, %v", ent.Path, len(got), err)
		}
	}
}

// TestStartupSetOfEROFSMountListsFilesRead: recorded from a mount through
// EROFS, the startup set lists the files containers read and not their
// neighbours, which the kernel read ahead in the image file.
func TestStartupSetOfEROFSMountListsFilesRead(t *testing.T) {
	e := newEROFSEnv(t)
	ctx := context.Background()
	b, st, d, entries := e.img.Bootstrap, e.st, e.d, e.entries
	mp := e.mount(t, 2*time.Second)
	// Read in storage order, as a program walking the tree does: the
	// kernel then reads the image file ahead, past /e9 into /f.
	want := []string{"/a"}
	for i := range 10 {
		want = append(want, fmt.Sprintf("/e%d", i))
	}
	for _, name := range want {
		if _, err := os.ReadFile(filepath.Join(mp, name)); err != nil {
			t.Fatal(err)
		}
	}
	var data []byte
	deadline := time.Now().Add(20 * time.Second)
	for {
		rc, err := st.Get(ctx, store.StartupKey(d.Hex()), 0, -1)
		if err == nil {
			data, err = io.ReadAll(rc)
			rc.Close()
			if err != nil {
				t.Fatal(err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no startup set recorded: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	set, err := startup.Parse(data, b)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ino := range set {
		for _, e := range entries {
			if i, _ := b.LookupPath(e.Path); i == ino {
				got = append(got, e.Path)
			}
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("startup set lists %v, want %v", got, want)
	}
}

// TestSmallFilesWarmed: an image with no startup set has its small files
// read into the page cache of its image file, up to the limit, once a
// container has read through the mount and paused; never before anything
// reads, and never its large files.
func TestSmallFilesWarmed(t *testing.T) {
	small := []string{"/a", "/b", "/c", "/d", "/e0", "/e5", "/e9", "/f"}
	tests := []struct {
		name    string
		through string // the limit ends with this file; "": no limit
		in, out []string
	}{
		{"every small file", "", small, nil},
		{"up to the limit", "/d", small[:4], small[4:]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEROFSEnv(t)
			layout, err := erofs.Build(e.img.Bootstrap)
			if err != nil {
				t.Fatal(err)
			}
			limit := layout.Size()
			if tt.through != "" {
				r, _ := smallFiles(layout)
				for _, x := range layout.Files() {
					if x.Inode == e.inode(t, tt.through) {
						limit = blockEnd(layout, x) - r[0]
					}
				}
			}
			const pause = 200 * time.Millisecond
			mp := e.mountWith(t, Options{RecordWindow: time.Minute, WarmSmallFiles: limit, WarmPause: pause})
			cached := e.pageCache(t, layout)
			time.Sleep(3 * pause)
			if cached("/a", false) {
				t.Fatal("small files warmed before anything read through the mount")
			}
			// The large file comes after the small ones, behind a gap
			// that stops the kernel's readahead: reading it reads none.
			if _, err := os.ReadFile(filepath.Join(mp, "/big")); err != nil {
				t.Fatal(err)
			}
			// Warming reads several parts of the image at once, in any
			// order.
			deadline := time.Now().Add(20 * time.Second)
			for _, name := range tt.in {
				for !cached(name, true) {
					if time.Now().After(deadline) {
						t.Fatalf("%s never reached the page cache", name)
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
			for _, name := range tt.out {
				if cached(name, false) {
					t.Errorf("%s, past the limit, is in the page cache", name)
				}
			}
			for _, ent := range e.entries {
				if ent.Mode&bootstrap.ModeType != bootstrap.ModeRegular {
					continue
				}
				if got, err := os.ReadFile(filepath.Join(mp, ent.Path)); err != nil || !bytes.Equal(got, ent.Data) {
					t.Errorf("read %s through the mount: %d bytes, %v", ent.Path, len(got), err)
				}
			}
		})
	}
}

func TestSmallFilesRange(t *testing.T) {
	img, _ := pageInImage(t)
	layout, err := erofs.Build(img.Bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	ext := map[string]erofs.Extent{}
	for _, x := range layout.Files() {
		for _, name := range []string{"/a", "/f", "/big"} {
			if ino, _ := img.Bootstrap.LookupPath(name); ino == x.Inode {
				ext[name] = x
			}
		}
	}
	r, ok := smallFiles(layout)
	if want := [2]int64{ext["/a"].Offset, blockEnd(layout, ext["/f"])}; !ok || r != want {
		t.Errorf("smallFiles = %v, %v; want %v (from /a through /f)", r, ok, want)
	}
	if r[1] > ext["/big"].Offset {
		t.Errorf("smallFiles %v reaches into the large file at %d", r, ext["/big"].Offset)
	}

	onlyLarge, err := fetchtest.Build([]fetchtest.Entry{
		{Path: "/", Mode: bootstrap.ModeDir | 0o755},
		{Path: "/big", Mode: bootstrap.ModeRegular | 0o644, Data: make([]byte, erofs.SmallFile)},
		{Path: "/empty", Mode: bootstrap.ModeRegular | 0o644},
	}, fetchtest.Options{ChunkSize: 16 << 10})
	if err != nil {
		t.Fatal(err)
	}
	layout, err = erofs.Build(onlyLarge.Bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := smallFiles(layout); ok {
		t.Errorf("smallFiles of an image without small files = %v", r)
	}
}

// TestReadImageLimited: reads of the image wait for the limiter, which
// bounds the warming of small files (PrefetchRate), for every byte read.
func TestReadImageLimited(t *testing.T) {
	e := newEROFSEnv(t)
	e.mount(t, 0)
	layout, err := e.m.loadLayout(e.d)
	if err != nil {
		t.Fatal(err)
	}
	r, ok := smallFiles(layout)
	if !ok || r[1]-r[0] <= pageInRead {
		t.Fatalf("the small files %v should take more than one read", r)
	}
	// The first read takes the burst; the rest waits its bytes' time.
	const perSecond = 1 << 20
	lim := rate.NewLimiter(perSecond, pageInRead)
	start := time.Now()
	n, err := e.m.readImage(context.Background(), e.d, [][2]int64{r}, imageReads{
		workers: warmWorkers,
		wait:    func(ctx context.Context, n int) error { return limitWait(ctx, lim, n) },
	})
	took := time.Since(start)
	if err != nil || n != r[1]-r[0] {
		t.Fatalf("readImage = %d, %v; want %d bytes", n, err, r[1]-r[0])
	}
	if least := time.Duration(float64(n-pageInRead) / perSecond * float64(time.Second)); took < least*9/10 {
		t.Errorf("read %d bytes in %s at %d bytes/s after a burst of %d: want at least %s", n, took, perSecond, pageInRead, least)
	}
}

// TestOwnReadsAreNotAContainers: the reads this process makes through an
// image-mode mount from threads it announced (warming small files) do
// not count as a container reading, which the warming waits out; a read
// from any other thread does. The kernel names the reading thread in
// each request, which this tells apart.
func TestOwnReadsAreNotAContainers(t *testing.T) {
	e := newEROFSEnv(t)
	// Warming would start only after an hour's pause: never, here.
	mp := e.mountWith(t, Options{RecordWindow: time.Minute, WarmSmallFiles: 1 << 30, WarmPause: time.Hour})
	layout, err := e.m.loadLayout(e.d)
	if err != nil {
		t.Fatal(err)
	}
	e.m.mu.Lock()
	rec := e.m.mounts[e.d].rec
	e.m.mu.Unlock()
	// The large file lies past a gap the kernel's readahead stops at.
	if _, err := os.ReadFile(filepath.Join(mp, "/big")); err != nil {
		t.Fatal(err)
	}
	last := rec.last.Load()
	if last == 0 {
		t.Fatal("a container's read did not count")
	}
	r, ok := smallFiles(layout)
	if !ok {
		t.Fatal("no small files")
	}
	half := r[0] + (r[1]-r[0])/2/erofs.BlockSize*erofs.BlockSize
	cached := e.pageCache(t, layout)
	ctx := context.Background()
	if n, err := e.m.readImage(ctx, e.d, [][2]int64{{r[0], half}}, imageReads{workers: warmWorkers, thread: rec.reading}); err != nil || n != half-r[0] {
		t.Fatalf("readImage = %d, %v", n, err)
	}
	if !cached("/a", true) {
		t.Fatal("the read did not go through the mount")
	}
	if got := rec.last.Load(); got != last {
		t.Errorf("this process' own read counted as a container's")
	}
	rec.own.Range(func(k, _ any) bool {
		t.Errorf("thread %v still marked as this process' own", k)
		return true
	})
	if n, err := e.m.readImage(ctx, e.d, [][2]int64{{half, r[1]}}, imageReads{workers: 1}); err != nil || n != r[1]-half {
		t.Fatalf("readImage = %d, %v", n, err)
	}
	if got := rec.last.Load(); got == last {
		t.Errorf("a read from a thread not announced did not count")
	}
}

// TestStartupSetRestWaitsForARead: mounting an image through EROFS
// prefetches the head of its startup set and reads it into the page cache
// at once, and the rest only once a container reads through the mount:
// until then the node is busy starting the container. The agent's own
// reads of the head do not count as a container's.
func TestStartupSetRestWaitsForARead(t *testing.T) {
	defer func(n int64) { headBytes = n }(headBytes)
	headBytes = 30000 // /a, /c and /e0 of the set; /e1 to /e9 are the rest
	e := newEROFSEnv(t)
	ctx := context.Background()
	inodes := []uint32{e.inode(t, "/a"), e.inode(t, "/c")}
	for i := range 10 {
		inodes = append(inodes, e.inode(t, fmt.Sprintf("/e%d", i)))
	}
	set := startup.Format(e.img.Bootstrap, inodes)
	if err := e.st.Put(ctx, store.StartupKey(e.d.Hex()), bytes.NewReader(set), int64(len(set))); err != nil {
		t.Fatal(err)
	}
	mp := e.mount(t, time.Minute)
	layout, err := e.m.loadLayout(e.d)
	if err != nil {
		t.Fatal(err)
	}
	cached := e.pageCache(t, layout)
	fetched := func() int64 { return e.m.fetch.Stats().Sources[0].Bytes }
	deadline := time.Now().Add(20 * time.Second)
	for !cached("/e0", true) {
		if time.Now().After(deadline) {
			t.Fatal("the head of the startup set never reached the page cache")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	head := fetched()
	const rest = 9 * 60000 // /e1 to /e9, random: stored about as large
	if head >= rest {
		t.Errorf("fetched %d bytes before any container read: the rest of the set (%d bytes) too", head, rest)
	}
	if !cached("/a", true) {
		t.Error("/a, of the head, is not in the page cache")
	}
	if cached("/e9", false) {
		t.Error("/e9, of the rest, is in the page cache before any container read")
	}
	// A container's read, of a file outside the set, behind a gap the
	// kernel's readahead stops at.
	if _, err := os.ReadFile(filepath.Join(mp, "/big")); err != nil {
		t.Fatal(err)
	}
	for !cached("/e9", true) {
		if time.Now().After(deadline) {
			t.Fatal("the rest of the startup set never reached the page cache")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if all := fetched(); all-head < rest {
		t.Errorf("fetched %d bytes before the read and %d after it: want the rest of the set (%d bytes) after", head, all, rest)
	}
}
