package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/image"
)

// convertRich converts the rich fixture image into an OCI layout with a
// directory store and returns the store URL, the Skiff image reference
// and its bootstrap.
func convertRich(t *testing.T, dir string) (storeURL, ref string, b *bootstrap.Bootstrap) {
	t.Helper()
	ctx := context.Background()
	img, err := fixture.RichImage()
	if err != nil {
		t.Fatal(err)
	}
	layout := filepath.Join(dir, "layout")
	if err := image.Write(ctx, "oci:"+layout+":rich", img); err != nil {
		t.Fatal(err)
	}
	storeURL = "file://" + filepath.Join(dir, "store")
	ref = "oci:" + layout + ":rich-skiff"
	runCLI(t, ctx, "convert", "--store", storeURL, "--chunk-size", "65536", "oci:"+layout+":rich", ref)
	b, _, err = image.LoadBootstrap(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	return storeURL, ref, b
}

// readAll reads every regular file under mnt and checks each chunk's range
// against the chunk digest in the bootstrap.
func readAll(t *testing.T, b *bootstrap.Bootstrap, mnt string) {
	t.Helper()
	files := 0
	b.Walk(func(p string, ino uint32) error {
		if b.Inodes[ino].Type() != bootstrap.ModeRegular {
			return nil
		}
		files++
		data, err := os.ReadFile(filepath.Join(mnt, p))
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		offs := b.ChunkOffsets(ino)
		if int64(len(data)) != offs[len(offs)-1] {
			t.Fatalf("%s: %d bytes, want %d", p, len(data), offs[len(offs)-1])
		}
		for i, ci := range b.FileChunks(ino) {
			if bootstrap.Sum(data[offs[i]:offs[i+1]]) != b.Chunks[ci].Digest {
				t.Fatalf("%s: chunk %d content does not match its digest", p, i)
			}
		}
		return nil
	})
	if files == 0 {
		t.Fatal("image has no regular files")
	}
}

// richMountArgs converts the rich image and returns its bootstrap, a
// mountpoint and the arguments of `skiffctl mount` for it.
func richMountArgs(t *testing.T) (*bootstrap.Bootstrap, string, []string) {
	t.Helper()
	requireFUSE(t)
	dir := t.TempDir()
	storeURL, ref, b := convertRich(t, dir)
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	return b, mnt, []string{"--store", storeURL, "--cache", filepath.Join(dir, "cache"), ref, mnt}
}

func parseMountReport(t *testing.T, line string) mountReport {
	t.Helper()
	var rep mountReport
	if strings.Count(strings.TrimSpace(line), "\n") != 0 {
		t.Fatalf("mount printed more than one line: %q", line)
	}
	if err := json.Unmarshal([]byte(line), &rep); err != nil {
		t.Fatalf("mount stats %q: %v", line, err)
	}
	if len(rep.Sources) != 1 || rep.Sources[0].Name != "store" {
		t.Fatalf("mount stats sources: %+v", rep.Sources)
	}
	return rep
}

// TestMountCachePersists mounts an image twice with one cache directory:
// the first mount fetches from the store, the second, a new process as
// far as the cache is concerned, reads everything from the cache.
func TestMountCachePersists(t *testing.T) {
	b, mnt, args := richMountArgs(t)

	stop := mountCLI(t, args...)
	readAll(t, b, mnt)
	first := parseMountReport(t, stop())
	if s := first.Sources[0]; s.Chunks == 0 || s.Bytes == 0 || s.Errors != 0 {
		t.Fatalf("first mount fetched nothing from the store: %+v", s)
	}
	if first.Image != args[len(args)-2] || first.Mountpoint != mnt || !strings.HasPrefix(first.Bootstrap, "sha256:") {
		t.Fatalf("report does not name the mount: %+v", first)
	}

	stop = mountCLI(t, args...)
	readAll(t, b, mnt)
	second := parseMountReport(t, stop())
	if s := second.Sources[0]; s.Requests != 0 || s.Bytes != 0 || second.CacheHits == 0 {
		t.Fatalf("second mount went to the store (%+v) or missed the cache (%d hits)", s, second.CacheHits)
	}
}

func TestMountErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		code int
	}{
		{"no mountpoint", []string{"mount", "oci:" + dir + ":x"}, 2},
		{"missing image", []string{"mount", "--store", "file://" + dir + "/store", "--cache", dir + "/cache", "oci:" + dir + "/nothing:x", dir}, 1},
		{"bad store", []string{"mount", "--store", "ftp://nowhere", "oci:" + dir + "/nothing:x", dir}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(context.Background(), tt.args, &stdout, &stderr); code != tt.code {
				t.Fatalf("exit %d, want %d\n%s", code, tt.code, stderr.String())
			}
			if stderr.Len() == 0 {
				t.Fatal("no error message")
			}
		})
	}
}

func requireFUSE(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("FUSE unavailable: %v", err)
	}
	f.Close()
}

// TestMountInterruptWhileBusy interrupts a mount while a file is open: the
// command must still exit cleanly with the image detached.
func TestMountInterruptWhileBusy(t *testing.T) {
	b, mnt, args := richMountArgs(t)
	stop := mountCLI(t, args...)
	var open string
	b.Walk(func(p string, ino uint32) error {
		if open == "" && b.Inodes[ino].Type() == bootstrap.ModeRegular && b.Inodes[ino].Size > 0 {
			open = p
		}
		return nil
	})
	f, err := os.Open(filepath.Join(mnt, open))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	rep := parseMountReport(t, stop()) // stop checks exit 0 and that mnt is no longer mounted
	if rep.Sources[0].Chunks == 0 {
		t.Fatalf("read before interrupt not counted: %+v", rep)
	}
}

// TestMountEROFS: with --erofs the tree is the kernel's EROFS, over an
// image file the mount fills from the store, and reads the same.
func TestMountEROFS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting EROFS needs root")
	}
	b, mnt, args := richMountArgs(t)
	stop := mountCLI(t, append([]string{"--erofs"}, args...)...)
	var sfs unix.Statfs_t
	if err := unix.Statfs(mnt, &sfs); err != nil || sfs.Type != 0xE0F5E1E2 {
		t.Fatalf("statfs %s: type %#x, %v; want EROFS", mnt, sfs.Type, err)
	}
	readAll(t, b, mnt)
	if s := parseMountReport(t, stop()).Sources[0]; s.Chunks == 0 || s.Errors != 0 {
		t.Fatalf("mount fetched nothing from the store: %+v", s)
	}
}
