package lazyfs

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
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/cache"
	"github.com/skiff-dev/skiff/pkg/erofs"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/fetch/fetchtest"
	"github.com/skiff-dev/skiff/pkg/store/dir"
)

const chunkSize = 16 << 10

var mtime = time.Unix(1700000123, 456789012)

// richEntries covers every file type and attribute the filesystem serves.
func richEntries() []fetchtest.Entry {
	const (
		reg = bootstrap.ModeRegular
		dir = bootstrap.ModeDir
	)
	sparse := append(append(fixture.Random(1, chunkSize+7), make([]byte, 3*chunkSize)...), fixture.Text(2, 2*chunkSize+99)...)
	entries := []fetchtest.Entry{
		{Path: "/", Mode: dir | 0o755, UID: 0, GID: 0, Mtime: mtime, Xattrs: map[string]string{"user.root": "yes"}},
		{Path: "/bin", Mode: dir | 0o755, Mtime: mtime},
		{Path: "/bin/su", Mode: reg | 0o4755, Mtime: mtime, Data: fixture.Text(3, 5000)},
		{Path: "/bin/wall", Mode: reg | 0o2755, GID: 5, Mtime: mtime, Data: fixture.Text(4, 300)},
		{Path: "/tmp", Mode: dir | 0o1777, Mtime: mtime.Add(time.Second)},
		{Path: "/srv", Mode: dir | 0o2750, UID: 1000, GID: 2000, Mtime: mtime},
		{Path: "/srv/owned", Mode: reg | 0o640, UID: 1000, GID: 2000, Mtime: mtime.Add(-time.Hour), Data: []byte("owned\n")},
		{Path: "/secret", Mode: reg, Mtime: mtime, Data: []byte("nobody reads me")},
		{Path: "/empty", Mode: reg | 0o644, Mtime: mtime},
		{Path: "/big", Mode: reg | 0o644, Mtime: mtime, Data: fixture.Text(5, 20*chunkSize+123)},
		{Path: "/random", Mode: reg | 0o644, Mtime: mtime, Data: fixture.Random(6, 5*chunkSize)},
		{Path: "/sparse", Mode: reg | 0o644, Mtime: mtime, Data: sparse},
		{Path: "/exact", Mode: reg | 0o644, Mtime: mtime, Data: fixture.Random(7, 2*chunkSize)},
		{Path: "/xattr", Mode: reg | 0o644, Mtime: mtime, Data: []byte("x"), Xattrs: map[string]string{
			"user.a": "1", "user.big": strings.Repeat("v", 300), "user.empty": "", "security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
		}},
		{Path: "/link", Mode: bootstrap.ModeSymlink | 0o777, Mtime: mtime, Target: "bin/su"},
		{Path: "/dangling", Mode: bootstrap.ModeSymlink | 0o777, Mtime: mtime, Target: "/nonexistent/" + strings.Repeat("x", 200)},
		{Path: "/bin/su-hard", Link: "/bin/su"},
		{Path: "/srv/su-hard2", Link: "/bin/su"},
		{Path: "/dev/null", Mode: bootstrap.ModeChar | 0o666, Mtime: mtime, Major: 1, Minor: 3},
		{Path: "/dev/sda1", Mode: bootstrap.ModeBlock | 0o660, GID: 6, Mtime: mtime, Major: 8, Minor: 1},
		{Path: "/dev/nvme", Mode: bootstrap.ModeBlock | 0o660, Mtime: mtime, Major: 259, Minor: 300000},
		{Path: "/dev/fifo", Mode: bootstrap.ModeFIFO | 0o644, Mtime: mtime},
		{Path: "/dev/sock", Mode: bootstrap.ModeSocket | 0o755, Mtime: mtime},
	}
	for i := range 300 {
		entries = append(entries, fetchtest.Entry{Path: fmt.Sprintf("/many/file-%03d", i), Mode: reg | 0o644, Mtime: mtime, Data: fixture.Text(uint64(1000+i), 50+i*13), Pack: true})
	}
	return entries
}

type testMount struct {
	dir   string
	img   *fetchtest.Image
	files map[string][]byte
	fetch *fetch.Fetcher
	store *dir.Dir
	logs  *syncBuffer
	image bool
	// Image mode: the layout and where the image file is served.
	layout   *erofs.Image
	imageDir string
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func requireFUSE(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("FUSE unavailable: %v", err)
	}
	f.Close()
}

// mountEntries builds entries into a real directory store and mounts them
// through a Fetcher reading that store.
func mountEntries(t testing.TB, entries []fetchtest.Entry, comp bootstrap.Compression) *testMount {
	t.Helper()
	return mountEntriesIn(t, entries, comp, false)
}

// mountEntriesIn is mountEntries, in image mode if image is set.
func mountEntriesIn(t testing.TB, entries []fetchtest.Entry, comp bootstrap.Compression, image bool) *testMount {
	t.Helper()
	return mountEntriesThrough(t, entries, comp, image, nil)
}

// mountEntriesThrough is mountEntriesIn with the mount reading chunks
// through wrap(the Fetcher), when wrap is set.
func mountEntriesThrough(t testing.TB, entries []fetchtest.Entry, comp bootstrap.Compression, image bool, wrap func(ChunkReader) ChunkReader) *testMount {
	t.Helper()
	requireFUSE(t)
	img, st := uploaded(t, entries, fetchtest.Options{ChunkSize: chunkSize, Compression: comp, PackSize: 4 << 10})
	tm := &testMount{dir: t.TempDir(), img: img, files: map[string][]byte{}, store: st, logs: &syncBuffer{}}
	for _, e := range entries {
		if e.Mode&bootstrap.ModeType == bootstrap.ModeRegular {
			tm.files[e.Path] = e.Data
		}
	}
	tm.fetch = fetch.New(nil, []fetch.Source{fetch.NewStoreSource("store", st)})
	logger := slog.New(slog.NewTextHandler(tm.logs, nil))
	opts := Options{Logger: logger}
	if image {
		if os.Geteuid() != 0 {
			t.Skip("image mode mounts EROFS, which needs root")
		}
		layout, err := erofs.Build(img.Bootstrap)
		if err != nil {
			t.Fatal(err)
		}
		opts.Image, opts.ImageDir = layout, t.TempDir()
		tm.layout, tm.imageDir = layout, opts.ImageDir
	}
	var r ChunkReader = tm.fetch
	if wrap != nil {
		r = wrap(r)
	}
	srv, err := Mount(context.Background(), tm.dir, img.Bootstrap, r, opts)
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	tm.image = image
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
		srv.Wait()
	})
	return tm
}

func (tm *testMount) path(p string) string { return filepath.Join(tm.dir, p) }

func TestAttributes(t *testing.T) {
	checkAttributes(t, mountEntries(t, richEntries(), bootstrap.Zstd))
}

// checkAttributes checks every entry of the mounted tree against the
// bootstrap.
func checkAttributes(t *testing.T, tm *testMount) {
	b := tm.img.Bootstrap
	seen := 0
	err := b.Walk(func(p string, ino uint32) error {
		seen++
		in := &b.Inodes[ino]
		var st unix.Stat_t
		if err := unix.Lstat(tm.path(p), &st); err != nil {
			return fmt.Errorf("lstat %s: %w", p, err)
		}
		checks := []struct {
			what      string
			got, want uint64
		}{
			{"mode", uint64(st.Mode), uint64(in.Mode)},
			{"uid", uint64(st.Uid), uint64(in.UID)},
			{"gid", uint64(st.Gid), uint64(in.GID)},
			{"nlink", uint64(st.Nlink), uint64(in.Nlink)},
			{"mtime sec", uint64(st.Mtim.Sec), uint64(in.MtimeSec)},
			{"mtime nsec", uint64(st.Mtim.Nsec), uint64(in.MtimeNsec)},
			{"major", uint64(unix.Major(st.Rdev)), uint64(in.DevMajor)},
			{"minor", uint64(unix.Minor(st.Rdev)), uint64(in.DevMinor)},
		}
		if (!tm.image || !in.IsDir()) && uint64(st.Size) != uint64(in.Size) {
			// A directory's size is the filesystem's own: EROFS gives
			// that of its encoding.
			t.Errorf("%s: size %d, want %d", p, st.Size, in.Size)
		}
		if !tm.image && st.Ino != uint64(ino)+1 {
			// An image-mode mount numbers inodes by their place in the image.
			t.Errorf("%s: ino %d, want %d", p, st.Ino, ino+1)
		}
		for _, c := range checks {
			if c.got != c.want {
				t.Errorf("%s: %s = %#o (%d), want %#o (%d)", p, c.what, c.got, c.got, c.want, c.want)
			}
		}
		switch in.Type() {
		case bootstrap.ModeSymlink:
			target, err := os.Readlink(tm.path(p))
			if err != nil || target != in.Target {
				t.Errorf("%s: readlink %q, %v; want %q", p, target, err, in.Target)
			}
		case bootstrap.ModeDir:
			ents, err := os.ReadDir(tm.path(p))
			if err != nil {
				return err
			}
			want := b.Children(ino)
			if len(ents) != len(want) {
				t.Errorf("%s: %d entries, want %d", p, len(ents), len(want))
				break
			}
			for i, e := range ents {
				if e.Name() != want[i].Name {
					t.Errorf("%s: entry %d is %q, want %q", p, i, e.Name(), want[i].Name)
				}
			}
		}
		if in.Type() == bootstrap.ModeRegular || in.Type() == bootstrap.ModeDir {
			checkXattrs(t, tm.path(p), b.InodeXattrs(ino))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen != len(b.Dirents)+1 {
		t.Fatalf("walked %d entries, want %d", seen, len(b.Dirents)+1)
	}
	// Spot checks against literal expectations, independent of the builder.
	var st unix.Stat_t
	unix.Lstat(tm.path("/bin/su"), &st)
	var hard unix.Stat_t
	unix.Lstat(tm.path("/srv/su-hard2"), &hard)
	if st.Mode != unix.S_IFREG|0o4755 || st.Nlink != 3 || st.Ino != hard.Ino {
		t.Errorf("/bin/su: mode %#o nlink %d ino %d (link ino %d)", st.Mode, st.Nlink, st.Ino, hard.Ino)
	}
	unix.Lstat(tm.path("/dev/nvme"), &st)
	if unix.Major(st.Rdev) != 259 || unix.Minor(st.Rdev) != 300000 {
		t.Errorf("/dev/nvme rdev %d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	unix.Lstat(tm.path("/tmp"), &st)
	if st.Mode != unix.S_IFDIR|0o1777 || st.Mtim.Nsec != 456789012 {
		t.Errorf("/tmp: mode %#o mtime nsec %d", st.Mode, st.Mtim.Nsec)
	}
	if got, err := os.Readlink(tm.path("/link")); got != "bin/su" || err != nil {
		t.Errorf("readlink /link = %q, %v", got, err)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(tm.dir, &sfs); err != nil || sfs.Files-sfs.Ffree != uint64(len(b.Inodes)) {
		t.Errorf("statfs: %+v, %v", sfs, err)
	}
}

func checkXattrs(t *testing.T, p string, want []bootstrap.Xattr) {
	t.Helper()
	size, err := unix.Llistxattr(p, nil)
	if err != nil {
		t.Errorf("%s: listxattr size: %v", p, err)
		return
	}
	buf := make([]byte, size)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		t.Errorf("%s: listxattr: %v", p, err)
		return
	}
	var names []string
	for _, s := range strings.Split(string(buf[:n]), "\x00") {
		if s != "" {
			names = append(names, s)
		}
	}
	if len(names) != len(want) {
		t.Errorf("%s: xattrs %q, want %d", p, names, len(want))
		return
	}
	for i, x := range want {
		if names[i] != x.Name {
			t.Errorf("%s: xattr %d is %q, want %q", p, i, names[i], x.Name)
		}
		val := make([]byte, len(x.Value)+10)
		n, err := unix.Lgetxattr(p, x.Name, val)
		if err != nil || string(val[:n]) != x.Value {
			t.Errorf("%s: getxattr %s = %q, %v; want %q", p, x.Name, val[:max(n, 0)], err, x.Value)
		}
		if len(x.Value) > 1 { // a zero-length buffer is a size query, not a short buffer
			if _, err := unix.Lgetxattr(p, x.Name, make([]byte, len(x.Value)-1)); !errors.Is(err, unix.ERANGE) {
				t.Errorf("%s: getxattr %s into a short buffer: %v, want ERANGE", p, x.Name, err)
			}
		}
	}
	if size > 1 {
		if _, err := unix.Llistxattr(p, make([]byte, size-1)); !errors.Is(err, unix.ERANGE) {
			t.Errorf("%s: listxattr into a short buffer: %v, want ERANGE", p, err)
		}
	}
	if _, err := unix.Lgetxattr(p, "user.absent", make([]byte, 10)); !errors.Is(err, unix.ENODATA) {
		t.Errorf("%s: missing xattr: %v, want ENODATA", p, err)
	}
}

func TestMountOptions(t *testing.T) {
	tm := mountEntries(t, richEntries(), bootstrap.None)
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Skipf("no mountinfo: %v", err)
	}
	for _, line := range strings.Split(string(info), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 10 || fields[4] != tm.dir {
			continue
		}
		// mount options, then after "-": fstype, source, super options
		sep := 0
		for i, f := range fields {
			if f == "-" {
				sep = i
			}
		}
		mountOpts, fstype, source, superOpts := fields[5], fields[sep+1], fields[sep+2], fields[sep+3]
		if fstype != "fuse.skiff" || source != "skiff" {
			t.Errorf("fstype %q source %q, want fuse.skiff and skiff", fstype, source)
		}
		for _, o := range []string{"ro", "nodev"} {
			if !strings.Contains(","+mountOpts+",", ","+o+",") {
				t.Errorf("mount options %q lack %s", mountOpts, o)
			}
		}
		if strings.Contains(mountOpts, "nosuid") {
			t.Errorf("mount options %q: setuid binaries would not work", mountOpts)
		}
		for _, o := range []string{"allow_other", "default_permissions"} {
			if !strings.Contains(superOpts, o) {
				t.Errorf("super options %q lack %s", superOpts, o)
			}
		}
		return
	}
	t.Fatalf("%s not in mountinfo", tm.dir)
}

func TestContent(t *testing.T) {
	for _, comp := range []bootstrap.Compression{bootstrap.None, bootstrap.Zstd, bootstrap.LZ4} {
		t.Run(comp.String(), func(t *testing.T) {
			checkContent(t, mountEntries(t, richEntries(), comp))
		})
	}
}

// checkContent reads every file of the mounted tree whole, and one in
// pieces.
func checkContent(t *testing.T, tm *testMount) {
	for p, want := range tm.files {
		if p == "/secret" && os.Geteuid() != 0 {
			continue // mode 0000 is enforced by the kernel (default_permissions)
		}
		got, err := os.ReadFile(tm.path(p))
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: content differs (%d bytes, want %d)", p, len(got), len(want))
		}
	}
	f, err := os.Open(tm.path("/big"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := tm.files["/big"]
	size := int64(len(want))
	cases := []struct {
		name string
		off  int64
		n    int
	}{
		{"across one boundary", chunkSize - 10, 20},
		{"across several chunks", chunkSize/2 + 1, 3*chunkSize + 17},
		{"exactly one chunk", 2 * chunkSize, chunkSize},
		{"ends at EOF", size - 100, 100},
		{"runs past EOF", size - 50, 4096},
		{"at EOF", size, 10},
		{"beyond EOF", size + 1000, 10},
	}
	for _, c := range cases {
		buf := make([]byte, c.n)
		n, err := f.ReadAt(buf, c.off)
		wantN := int(max(0, min(int64(c.n), size-c.off)))
		if n != wantN {
			t.Errorf("%s: read %d bytes, want %d (err %v)", c.name, n, wantN, err)
			continue
		}
		if wantN < c.n && err != io.EOF {
			t.Errorf("%s: err %v, want EOF", c.name, err)
		}
		if n > 0 && !bytes.Equal(buf[:n], want[c.off:c.off+int64(n)]) {
			t.Errorf("%s: wrong bytes", c.name)
		}
	}
}

func TestConcurrentReads(t *testing.T) {
	tm := mountEntries(t, richEntries(), bootstrap.Zstd)
	paths := []string{"/big", "/random", "/sparse", "/exact", "/many/file-007", "/many/file-123"}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for range 100 {
				p := paths[r.IntN(len(paths))]
				want := tm.files[p]
				f, err := os.Open(tm.path(p))
				if err != nil {
					errs <- err
					return
				}
				off := r.Int64N(int64(len(want)))
				buf := make([]byte, 1+r.IntN(3*chunkSize))
				n, err := f.ReadAt(buf, off)
				f.Close()
				if err != nil && err != io.EOF {
					errs <- fmt.Errorf("%s at %d: %w", p, off, err)
					return
				}
				if !bytes.Equal(buf[:n], want[off:off+int64(n)]) {
					errs <- fmt.Errorf("%s at %d: wrong bytes", p, off)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestCorruptBlobIsEIO(t *testing.T) {
	for _, mode := range []string{"tree", "image"} {
		t.Run(mode, func(t *testing.T) { testCorruptBlobIsEIO(t, mode == "image") })
	}
}

// testCorruptBlobIsEIO: a corrupt chunk fails the reads of its file and
// only those. In image mode the kernel reads the image ahead across
// files, so requests for the corrupt file's neighbours span it too.
func testCorruptBlobIsEIO(t *testing.T, image bool) {
	tm := mountEntriesIn(t, richEntries(), bootstrap.Zstd, image)
	digest, err := tm.img.Corrupt(context.Background(), tm.store, "/random")
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(tm.path("/random"))
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of corrupt file: %d bytes, err %v; want EIO", len(got), err)
	}
	if !bytes.HasPrefix(tm.files["/random"], got) {
		t.Fatal("read returned bytes that are not the file's content")
	}
	logs := tm.logs.String()
	if !strings.Contains(logs, "/random") || !strings.Contains(logs, digest.String()) {
		t.Fatalf("log does not name the file and chunk %s:\n%s", digest, logs)
	}
	// Everything else still reads.
	for p, want := range tm.files {
		if p == "/random" {
			continue
		}
		if got, err := os.ReadFile(tm.path(p)); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s after corruption elsewhere: %v", p, err)
		}
	}
}

func TestReadOnly(t *testing.T) {
	tm := mountEntries(t, richEntries(), bootstrap.None)
	ops := []struct {
		name string
		op   func() error
	}{
		{"open for write", func() error {
			f, err := os.OpenFile(tm.path("/big"), os.O_WRONLY, 0)
			if err == nil {
				f.Close()
			}
			return err
		}},
		{"truncate", func() error { return os.Truncate(tm.path("/big"), 0) }},
		{"create", func() error {
			f, err := os.Create(tm.path("/new"))
			if err == nil {
				f.Close()
			}
			return err
		}},
		{"mkdir", func() error { return os.Mkdir(tm.path("/newdir"), 0o755) }},
		{"remove", func() error { return os.Remove(tm.path("/empty")) }},
		{"rename", func() error { return os.Rename(tm.path("/empty"), tm.path("/empty2")) }},
		{"chmod", func() error { return os.Chmod(tm.path("/big"), 0o777) }},
		{"setxattr", func() error { return unix.Setxattr(tm.path("/xattr"), "user.new", []byte("v"), 0) }},
		{"symlink", func() error { return os.Symlink("x", tm.path("/sym")) }},
	}
	for _, o := range ops {
		if err := o.op(); !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s: %v, want EROFS", o.name, err)
		}
	}
	if got, err := os.ReadFile(tm.path("/big")); err != nil || !bytes.Equal(got, tm.files["/big"]) {
		t.Fatalf("content changed after write attempts: %v", err)
	}
}

// countingReader counts chunk reads, to show what a mount does eagerly.
type countingReader struct {
	ChunkReader
	reads atomic.Int64
}

func (c *countingReader) ReadChunk(ctx context.Context, b *bootstrap.Bootstrap, idx uint32) ([]byte, error) {
	c.reads.Add(1)
	return c.ChunkReader.ReadChunk(ctx, b, idx)
}

func TestLazy(t *testing.T) {
	requireFUSE(t)
	var entries []fetchtest.Entry
	for i := range 5000 {
		entries = append(entries, fetchtest.Entry{Path: fmt.Sprintf("/d%02d/f%04d", i%50, i), Mode: bootstrap.ModeRegular | 0o644, Data: fixture.Text(uint64(i), 100), Pack: true})
	}
	img, err := fetchtest.Build(entries, fetchtest.Options{ChunkSize: chunkSize})
	if err != nil {
		t.Fatal(err)
	}
	st, _ := dir.New(t.TempDir())
	img.Upload(context.Background(), st)
	cr := &countingReader{ChunkReader: fetch.New(nil, []fetch.Source{fetch.NewStoreSource("store", st)})}
	mnt := t.TempDir()
	srv, err := Mount(context.Background(), mnt, img.Bootstrap, cr, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		srv.Unmount()
		srv.Wait()
	}()
	fi, err := os.Stat(filepath.Join(mnt, "d07", "f4007"))
	if err != nil || fi.Size() != 100 {
		t.Fatalf("stat: %v", err)
	}
	ents, err := os.ReadDir(filepath.Join(mnt, "d07"))
	if err != nil || len(ents) != 100 {
		t.Fatalf("readdir: %d entries, %v", len(ents), err)
	}
	if n := cr.reads.Load(); n != 0 {
		t.Fatalf("%d chunk reads before any file was read", n)
	}
	got, err := os.ReadFile(filepath.Join(mnt, "d07", "f4007"))
	if err != nil || !bytes.Equal(got, entries[4007].Data) || cr.reads.Load() != 1 {
		t.Fatalf("read: %v, %d chunk reads", err, cr.reads.Load())
	}
}

func TestMountErrors(t *testing.T) {
	requireFUSE(t)
	img, err := fetchtest.Build([]fetchtest.Entry{{Path: "/f", Mode: bootstrap.ModeRegular | 0o644, Data: []byte("x")}}, fetchtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Mount(context.Background(), filepath.Join(t.TempDir(), "missing"), img.Bootstrap, fetch.New(nil, nil), Options{}); err == nil {
		t.Fatal("mount on a missing directory succeeded")
	}
	if _, err := Mount(context.Background(), t.TempDir(), &bootstrap.Bootstrap{}, fetch.New(nil, nil), Options{}); err == nil {
		t.Fatal("mount of an empty bootstrap succeeded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Mount(ctx, t.TempDir(), img.Bootstrap, fetch.New(nil, nil), Options{}); err == nil {
		t.Fatal("mount with a cancelled context succeeded")
	}
}

func TestReaddirSeek(t *testing.T) {
	tm := mountEntries(t, richEntries(), bootstrap.None)
	want := tm.img.Bootstrap.Children(mustLookup(t, tm.img.Bootstrap, "/many"))
	for round := range 2 { // the second listing may come from the kernel's cache
		d, err := os.Open(tm.path("/many"))
		if err != nil {
			t.Fatal(err)
		}
		first, err := d.ReadDir(10)
		if err != nil || len(first) != 10 {
			t.Fatalf("round %d: first 10 entries: %d, %v", round, len(first), err)
		}
		if _, err := d.Seek(0, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		all, err := d.ReadDir(-1)
		d.Close()
		if err != nil || len(all) != len(want) {
			t.Fatalf("round %d: after rewind %d entries, %v; want %d", round, len(all), err, len(want))
		}
		for i, e := range all {
			if e.Name() != want[i].Name || (i < 10 && first[i].Name() != e.Name()) {
				t.Fatalf("round %d: entry %d is %q, want %q", round, i, e.Name(), want[i].Name)
			}
		}
	}
}

func mustLookup(t *testing.T, b *bootstrap.Bootstrap, p string) uint32 {
	t.Helper()
	ino, ok := b.LookupPath(p)
	if !ok {
		t.Fatalf("%s not in the image", p)
	}
	return ino
}

// TestImageWithoutXattrs: an image that has no extended attributes at all
// answers every getxattr with "none", from the first call on (after which
// the kernel stops asking), and still reads normally.
func TestImageWithoutXattrs(t *testing.T) {
	tm := mountEntries(t, []fetchtest.Entry{
		{Path: "/d", Mode: bootstrap.ModeDir | 0o755},
		{Path: "/d/f", Mode: bootstrap.ModeRegular | 0o644, Data: []byte("plain\n")},
	}, bootstrap.Zstd)
	for _, p := range []string{"/", "/d", "/d/f", "/d/f"} {
		for _, name := range []string{"security.capability", "trusted.overlay.metacopy", "user.x"} {
			_, err := unix.Lgetxattr(tm.path(p), name, make([]byte, 64))
			if !errors.Is(err, unix.ENODATA) && !errors.Is(err, unix.EOPNOTSUPP) {
				t.Errorf("getxattr %s %s: %v, want ENODATA or EOPNOTSUPP", p, name, err)
			}
		}
	}
	if got, err := os.ReadFile(tm.path("/d/f")); err != nil || string(got) != "plain\n" {
		t.Fatalf("read: %q, %v", got, err)
	}
}

// warmRecorder records the chunks a mount asks to warm.
type warmRecorder struct {
	ChunkReader
	mu     sync.Mutex
	warmed map[uint32]bool
}

func (w *warmRecorder) Warm(b *bootstrap.Bootstrap, chunks []uint32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ci := range chunks {
		w.warmed[ci] = true
	}
}

// TestSequentialReadWarmsAhead: a sequential reader has the chunks after
// each read warmed, whether or not the kernel's requests start on chunk
// boundaries, and reads spanning chunks return the right bytes.
func TestSequentialReadWarmsAhead(t *testing.T) {
	requireFUSE(t)
	// Chunks a fraction of the kernel's 1 MiB requests, as with default
	// chunks and larger requests.
	const cs = 256 << 10
	data := fixture.Random(9, 20*cs+123)
	img, st := uploaded(t, []fetchtest.Entry{{Path: "/f", Mode: bootstrap.ModeRegular | 0o644, Data: data}},
		fetchtest.Options{ChunkSize: cs, Compression: bootstrap.Zstd})
	wr := &warmRecorder{ChunkReader: fetch.New(nil, []fetch.Source{fetch.NewStoreSource("store", st)}), warmed: map[uint32]bool{}}
	mnt := t.TempDir()
	srv, err := Mount(context.Background(), mnt, img.Bootstrap, wr, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		srv.Unmount()
		srv.Wait()
	}()
	f, err := os.Open(filepath.Join(mnt, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Reads of an odd size, so requests straddle chunks.
	var got []byte
	buf := make([]byte, cs/3+7)
	for {
		n, err := f.Read(buf)
		got = append(got, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, content differs", len(got))
	}
	refs := img.Bootstrap.FileChunks(mustLookup(t, img.Bootstrap, "/f"))
	wr.mu.Lock()
	defer wr.mu.Unlock()
	// Which chunks exactly depends on how the kernel splits and orders its
	// readahead requests; chunks of the second half must be among them.
	later := false
	for _, ci := range refs[len(refs)/2:] {
		later = later || wr.warmed[ci]
	}
	if !later || wr.warmed[refs[0]] {
		t.Fatalf("warmed %v of chunks %v: want later chunks, not the first", wr.warmed, refs)
	}
}

func TestSequential(t *testing.T) {
	n := &fileState{}
	for _, tt := range []struct {
		off, end int64
		want     bool
	}{
		{0, 100, true}, // the start of the file
		{100, 300, true},
		{500, 600, false}, // a jump ahead
		{300, 500, true},  // the request before it, late
		{600, 700, true},
		{10 << 20, 11 << 20, false},
		{5 << 20, 6 << 20, false}, // far behind
		{0, 10, true},             // the start again
	} {
		if got := n.sequential(tt.off, tt.end); got != tt.want {
			t.Errorf("read [%d,%d): sequential %v, want %v", tt.off, tt.end, got, tt.want)
		}
	}
}

// TestSplicedReadsFromCache: large reads of chunks already in the disk
// cache, checked by this process, are spliced from the cache files (the
// bytes never enter the mount process) and return the right bytes; every
// other read still does too.
func TestSplicedReadsFromCache(t *testing.T) {
	requireFUSE(t)
	if os.Geteuid() != 0 {
		t.Skip("splicing 1 MiB replies needs root (pipe size)")
	}
	entries := richEntries()
	img, st := uploaded(t, entries, fetchtest.Options{ChunkSize: chunkSize, Compression: bootstrap.Zstd, PackSize: 4 << 10})
	c, err := cache.Open(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	readAll := func(f *fetch.Fetcher) {
		t.Helper()
		mnt := t.TempDir()
		srv, err := Mount(context.Background(), mnt, img.Bootstrap, f, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			srv.Unmount()
			srv.Wait()
		}()
		for _, e := range entries {
			if e.Mode&bootstrap.ModeType != bootstrap.ModeRegular {
				continue
			}
			got, err := os.ReadFile(filepath.Join(mnt, e.Path))
			if err != nil || !bytes.Equal(got, e.Data) {
				t.Fatalf("%s: %d bytes, %v", e.Path, len(got), err)
			}
		}
	}
	first := fetch.New(c, []fetch.Source{fetch.NewStoreSource("store", st)})
	readAll(first) // fetches, checks and caches every chunk
	first.Flush()
	// A fresh fetcher over the same cache: nothing in memory.
	second := fetch.New(c, []fetch.Source{fetch.NewStoreSource("store", st)})
	t.Cleanup(second.Flush)
	readAll(second)
	s := second.Stats()
	// Small reads, and reads that also span an all-zero chunk (sparse
	// files), go the ordinary way.
	if s.FileHits == 0 || s.CacheMisses != 0 || s.Sources[0].Requests != 0 {
		t.Fatalf("stats %+v: want the large reads spliced from the cache", s)
	}
}

func TestImageMode(t *testing.T) {
	for _, comp := range []bootstrap.Compression{bootstrap.None, bootstrap.Zstd} {
		t.Run(comp.String(), func(t *testing.T) {
			tm := mountEntriesIn(t, richEntries(), comp, true)
			checkAttributes(t, tm)
			checkContent(t, tm)
			info, err := os.ReadFile("/proc/self/mountinfo")
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, line := range strings.Split(string(info), "\n") {
				if fields := strings.Fields(line); len(fields) > 8 && fields[4] == tm.dir {
					found = true
					if !strings.Contains(line, " - erofs ") || !strings.Contains(fields[5], "nodev") || strings.Contains(fields[5], "nosuid") {
						t.Errorf("mount of the tree: %s", line)
					}
				}
			}
			if !found {
				t.Fatalf("%s not in mountinfo", tm.dir)
			}
		})
	}
}
