package erofs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/fetch/fetchtest"
)

var mtime = time.Unix(1700000123, 456789012)

// entries covers every file type, xattr namespace and directory shape
// the layout handles: hard links, a directory of several blocks, names
// sorting before ".", inline and block-sized symlinks.
func entries() []fetchtest.Entry {
	const reg, dir = bootstrap.ModeRegular, bootstrap.ModeDir
	es := []fetchtest.Entry{
		{Path: "/", Mode: dir | 0o755, Mtime: mtime, Xattrs: map[string]string{"user.root": "yes"}},
		{Path: "/bin/su", Mode: reg | 0o4755, Mtime: mtime, Data: fixture.Text(3, 5000)},
		{Path: "/bin/su-hard", Link: "/bin/su"},
		{Path: "/empty", Mode: reg | 0o644, Mtime: mtime},
		{Path: "/block", Mode: reg | 0o644, Mtime: mtime, Data: fixture.Random(4, BlockSize)},
		{Path: "/big", Mode: reg | 0o600, UID: 7, GID: 8, Mtime: mtime, Data: fixture.Random(5, 300<<10+17)},
		{Path: "/+plus", Mode: reg | 0o644, Mtime: mtime, Data: []byte("sorts before dot")},
		{Path: "/link", Mode: bootstrap.ModeSymlink | 0o777, Mtime: mtime, Target: "bin/su"},
		{Path: "/longlink", Mode: bootstrap.ModeSymlink | 0o777, Mtime: mtime, Target: "/" + strings.Repeat("y/", 2000)},
		{Path: "/xattr", Mode: reg | 0o644, Mtime: mtime, Data: []byte("x"), Xattrs: map[string]string{
			"user.a": "1", "user.big": strings.Repeat("v", 3000), "trusted.overlay.opaque": "y", "security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
		}},
		{Path: "/dev/null", Mode: bootstrap.ModeChar | 0o666, Mtime: mtime, Major: 1, Minor: 3},
		{Path: "/dev/nvme", Mode: bootstrap.ModeBlock | 0o660, Mtime: mtime, Major: 259, Minor: 300000},
		{Path: "/dev/fifo", Mode: bootstrap.ModeFIFO | 0o644, Mtime: mtime},
		{Path: "/dev/sock", Mode: bootstrap.ModeSocket | 0o755, Mtime: mtime},
	}
	for i := range 400 {
		es = append(es, fetchtest.Entry{Path: fmt.Sprintf("/many/a-rather-long-file-name-%04d", i), Mode: reg | 0o644, Mtime: mtime, Data: fixture.Text(uint64(i), 10+i*7), Pack: true})
	}
	return es
}

// build lays entries out and writes the whole image, content included,
// to a file.
func build(t *testing.T, es []fetchtest.Entry) (*bootstrap.Bootstrap, *Image, string, map[uint32][]byte) {
	t.Helper()
	img, err := fetchtest.Build(es, fetchtest.Options{ChunkSize: 64 << 10, PackSize: 16 << 10})
	if err != nil {
		t.Fatal(err)
	}
	b := img.Bootstrap
	im, err := Build(b)
	if err != nil {
		t.Fatal(err)
	}
	byIno := map[uint32][]byte{}
	for _, e := range es {
		if e.Mode&bootstrap.ModeType == bootstrap.ModeRegular {
			ino, ok := b.LookupPath(e.Path)
			if !ok {
				t.Fatalf("%s not in bootstrap", e.Path)
			}
			byIno[ino] = e.Data
		}
	}
	whole := make([]byte, im.Size())
	copy(whole, im.Meta())
	for _, e := range im.Files() {
		copy(whole[e.Offset:], byIno[e.Inode])
	}
	p := filepath.Join(t.TempDir(), "image.erofs")
	if err := os.WriteFile(p, whole, 0o600); err != nil {
		t.Fatal(err)
	}
	return b, im, p, byIno
}

// TestKernelMount mounts a built image with the kernel's EROFS and checks
// every entry against the bootstrap.
func TestKernelMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting EROFS needs root")
	}
	b, _, p, data := build(t, entries())
	if fsck, err := exec.LookPath("fsck.erofs"); err == nil {
		if out, err := exec.Command(fsck, p).CombinedOutput(); err != nil {
			t.Errorf("fsck.erofs: %v\n%s", err, out)
		}
	}
	mnt := t.TempDir()
	if err := unix.Mount(p, mnt, "erofs", unix.MS_RDONLY, ""); err != nil {
		t.Skipf("kernel cannot mount a file as EROFS (Linux 6.12+): %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	seen := 0
	err := b.Walk(func(path string, ino uint32) error {
		seen++
		in := &b.Inodes[ino]
		full := filepath.Join(mnt, path)
		var st unix.Stat_t
		if err := unix.Lstat(full, &st); err != nil {
			return err
		}
		if st.Mode != in.Mode || st.Uid != in.UID || st.Gid != in.GID || uint64(st.Nlink) != uint64(in.Nlink) ||
			st.Mtim.Sec != in.MtimeSec || st.Mtim.Nsec != int64(in.MtimeNsec) ||
			unix.Major(st.Rdev) != in.DevMajor || unix.Minor(st.Rdev) != in.DevMinor {
			t.Errorf("%s: stat %+v, want %+v", path, st, *in)
		}
		switch in.Type() {
		case bootstrap.ModeRegular:
			got, err := os.ReadFile(full)
			if err != nil || !bytes.Equal(got, data[ino]) {
				t.Errorf("%s: content differs (%d bytes, want %d), %v", path, len(got), len(data[ino]), err)
			}
		case bootstrap.ModeSymlink:
			if got, err := os.Readlink(full); got != in.Target || err != nil {
				t.Errorf("%s: readlink %q, %v", path, got, err)
			}
		case bootstrap.ModeDir:
			ents, err := os.ReadDir(full)
			if err != nil {
				return err
			}
			want := b.Children(ino)
			if len(ents) != len(want) {
				t.Errorf("%s: %d entries, want %d", path, len(ents), len(want))
			}
			for _, c := range want {
				if _, err := os.Lstat(filepath.Join(full, c.Name)); err != nil {
					t.Errorf("lookup %s/%s: %v", path, c.Name, err)
				}
			}
		}
		for _, x := range b.InodeXattrs(ino) {
			buf := make([]byte, 8192)
			n, err := unix.Lgetxattr(full, x.Name, buf)
			if err != nil || string(buf[:n]) != x.Value {
				t.Errorf("%s: xattr %s = %q, %v", path, x.Name, buf[:max(n, 0)], err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen != len(b.Dirents)+1 {
		t.Errorf("walked %d entries, want %d", seen, len(b.Dirents)+1)
	}
	var a, h unix.Stat_t
	unix.Lstat(filepath.Join(mnt, "bin/su"), &a)
	unix.Lstat(filepath.Join(mnt, "bin/su-hard"), &h)
	if a.Ino != h.Ino || a.Nlink != 2 {
		t.Errorf("hard link: ino %d and %d, nlink %d", a.Ino, h.Ino, a.Nlink)
	}
}

func TestBuildRejects(t *testing.T) {
	tests := []struct {
		name  string
		xattr string
	}{
		{"no namespace EROFS stores", "system.nfs4_acl"},
		{"ACL name with a suffix", "system.posix_acl_access.x"},
		{"suffix over 255 bytes", "user." + strings.Repeat("n", 256)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, err := fetchtest.Build([]fetchtest.Entry{
				{Path: "/f", Mode: bootstrap.ModeRegular | 0o644, Data: []byte("x"), Xattrs: map[string]string{tt.xattr: "v"}},
			}, fetchtest.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Build(img.Bootstrap); !errors.Is(err, ErrUnsupported) {
				t.Fatalf("Build: %v, want ErrUnsupported", err)
			}
		})
	}
	if _, err := Build(&bootstrap.Bootstrap{}); err == nil {
		t.Fatal("Build of an empty bootstrap succeeded")
	}
}

// TestPieces checks that the pieces of every range add up to the image.
func TestPieces(t *testing.T) {
	_, im, p, byIno := build(t, entries())
	whole, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	size := im.Size()
	ranges := [][2]int64{{0, size}, {0, 1}, {int64(len(im.Meta())) - 5, int64(len(im.Meta())) + 9000}, {size - 3, size + 100}, {size, size + 10}}
	for _, e := range im.Files() {
		ranges = append(ranges, [2]int64{e.Offset + 1, e.Offset + e.Size + 10})
	}
	for _, r := range ranges {
		var got []byte
		for _, pc := range im.Pieces(r[0], r[1]) {
			switch {
			case pc.Meta != nil:
				got = append(got, pc.Meta...)
			case pc.Zero:
				got = append(got, make([]byte, pc.Len)...)
			default:
				got = append(got, byIno[pc.Inode][pc.FileOffset:pc.FileOffset+pc.Len]...)
			}
		}
		want := whole[min(r[0], size):min(r[1], size)]
		if !bytes.Equal(got, want) {
			t.Fatalf("pieces of [%d, %d): %d bytes differ from the image's %d", r[0], r[1], len(got), len(want))
		}
	}
}

func TestEncodingRoundTrip(t *testing.T) {
	b, im, _, _ := build(t, entries())
	enc, err := im.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got Image
	if err := got.UnmarshalBinary(enc); err != nil {
		t.Fatal(err)
	}
	checkSame(t, &got, im, b, "decoded")
	other, err := fetchtest.Build([]fetchtest.Entry{{Path: "/f", Mode: bootstrap.ModeRegular | 0o644, Data: []byte("x")}}, fetchtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := got.Check(other.Bootstrap); err == nil {
		t.Fatal("a layout checked out against another bootstrap")
	}
	for _, bad := range [][]byte{nil, enc[:10], enc[:len(enc)-1], append(append([]byte{}, enc...), 0)} {
		if err := new(Image).UnmarshalBinary(bad); err == nil {
			t.Errorf("decoding %d bytes succeeded", len(bad))
		}
	}
}

// TestLoad: a saved layout loads mapped from its file, equal to the one
// saved, survives the file's removal, and bad files are refused.
func TestLoad(t *testing.T) {
	b, im, _, _ := build(t, entries())
	enc, err := im.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "layout")
	if err := os.WriteFile(path, enc, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(maps), path) {
		t.Fatalf("%s is not mapped:\n%s", path, maps)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	checkSame(t, got, im, b, "loaded")
	if _, err := Load(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load of a missing file: %v, want ErrNotExist", err)
	}
	for name, data := range map[string][]byte{"empty": nil, "short": enc[:10], "truncated": enc[:len(enc)-1]} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(p); err == nil {
			t.Errorf("Load of a %s file succeeded", name)
		}
	}
}

// FuzzUnmarshal feeds saved layouts to the decoder: it must reject what
// serving could trip on, and never panic.
func FuzzUnmarshal(f *testing.F) {
	img, err := fetchtest.Build([]fetchtest.Entry{
		{Path: "/a", Mode: bootstrap.ModeRegular | 0o644, Data: []byte("hello")},
		{Path: "/d/b", Mode: bootstrap.ModeRegular | 0o644, Data: fixture.Random(1, 5000)},
	}, fetchtest.Options{})
	if err != nil {
		f.Fatal(err)
	}
	im, err := Build(img.Bootstrap)
	if err != nil {
		f.Fatal(err)
	}
	enc, _ := im.MarshalBinary()
	f.Add(enc)
	f.Fuzz(func(t *testing.T, data []byte) {
		var im Image
		if err := im.UnmarshalBinary(data); err != nil {
			return
		}
		end := int64(len(im.Meta()))
		for _, e := range im.Files() {
			if e.Offset < end || e.Offset+e.Size > im.Size() {
				t.Fatalf("accepted extent %+v", e)
			}
			end = e.Offset + e.Size
		}
		im.Pieces(0, im.Size())
	})
}

// TestSmallFilesFirst: a walk reading the small files in storage order
// reads the image from its start without passing over a large file. The
// layout follows storage (a layer's tar order), not the chunk table,
// which the converter numbers in the tree's order.
func TestSmallFilesFirst(t *testing.T) {
	for _, tt := range []struct {
		name    string
		reorder func(b *bootstrap.Bootstrap)
	}{
		{name: "chunk table in storage order", reorder: func(*bootstrap.Bootstrap) {}},
		{name: "chunk table in another order", reorder: reverseChunks},
	} {
		t.Run(tt.name, func(t *testing.T) {
			img, err := fetchtest.Build(entries(), fetchtest.Options{ChunkSize: 64 << 10, PackSize: 16 << 10})
			if err != nil {
				t.Fatal(err)
			}
			b := img.Bootstrap
			tt.reorder(b)
			im, err := Build(b)
			if err != nil {
				t.Fatal(err)
			}
			large := false
			var last place
			end := int64(len(im.Meta()))
			for i, e := range im.Files() {
				small := e.Size < SmallFile
				// Readahead of what comes before stops in a gap of zeros.
				if gap := e.Offset - end; (i == 0 || !small) && gap < ReadaheadGap {
					t.Fatalf("file %d: %d bytes after what comes before", e.Inode, gap)
				}
				end = e.Offset + e.Size
				if small && large {
					t.Fatalf("small file %d laid out after a large one", e.Inode)
				}
				if !small && !large {
					large, last = true, place{}
				}
				c := b.Chunks[b.FileChunks(e.Inode)[0]]
				fr := b.Frames[c.Frame]
				at := place{blob: fr.Blob, frame: fr.Offset, chunkOffset: c.Offset}
				if at.compare(last) < 0 {
					t.Fatalf("file %d (stored at %+v) laid out after one stored at %+v", e.Inode, at, last)
				}
				last = at
			}
			if !large {
				t.Fatal("test image has no large file")
			}
		})
	}
}

// reverseChunks renumbers b's chunks in the reverse of storage order,
// changing no file's content.
func reverseChunks(b *bootstrap.Bootstrap) {
	n := uint32(len(b.Chunks))
	slices.Reverse(b.Chunks)
	for i, ci := range b.ChunkRefs {
		b.ChunkRefs[i] = n - 1 - ci
	}
}

// checkSame fails t unless layout got, which was how, equals want and
// fits b.
func checkSame(t *testing.T, got, want *Image, b *bootstrap.Bootstrap, how string) {
	t.Helper()
	if got.Size() != want.Size() || !bytes.Equal(got.Meta(), want.Meta()) || fmt.Sprint(got.Files()) != fmt.Sprint(want.Files()) {
		t.Fatalf("%s layout differs", how)
	}
	if err := got.Check(b); err != nil {
		t.Fatal(err)
	}
}
