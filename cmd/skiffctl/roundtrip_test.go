package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/pkg/image"
)

// runCLI runs skiffctl in-process and fails the test on a non-zero exit.
func runCLI(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if code := run(ctx, args, &stdout, &stderr); code != 0 {
		t.Fatalf("skiffctl %s: exit %d\n%s", strings.Join(args, " "), code, stderr.String())
	}
	return stdout.String()
}

// mountCLI starts `skiffctl mount` and returns once the image is visible;
// stop unmounts and returns the JSON stats line.
func mountCLI(t *testing.T, args ...string) (stop func() string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	mnt := args[len(args)-1]
	var stdout, stderr bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, append([]string{"mount"}, args...), &stdout, &stderr) }()
	deadline := time.Now().Add(30 * time.Second)
	for !isMountpoint(mnt) {
		select {
		case code := <-done:
			cancel()
			t.Fatalf("skiffctl mount exited %d before mounting:\n%s", code, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("skiffctl mount did not mount %s:\n%s", mnt, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	stopped := false
	stop = func() string {
		if stopped {
			return ""
		}
		stopped = true
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("skiffctl mount exited %d:\n%s", code, stderr.String())
		}
		if isMountpoint(mnt) {
			t.Errorf("%s still mounted after skiffctl mount exited", mnt)
		}
		return stdout.String()
	}
	t.Cleanup(func() {
		if !stopped {
			stop()
		}
	})
	return stop
}

func isMountpoint(p string) bool {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == p {
			return true
		}
	}
	return false
}

// TestRoundTripMatchesUmoci converts a multi-layer image with every
// feature of the format, mounts it lazily, and compares every file's
// content and attributes with what `umoci unpack` extracts from the
// original image.
func TestRoundTripMatchesUmoci(t *testing.T) {
	umoci, err := exec.LookPath("umoci")
	if err != nil {
		t.Skip("umoci is not installed (make deps installs it): cannot build the reference rootfs")
	}
	dir := t.TempDir()
	layout := filepath.Join(dir, "layout")
	img, err := fixture.RichImage()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := image.Write(ctx, "oci:"+layout+":rich", img); err != nil {
		t.Fatal(err)
	}
	unpacked := time.Now()
	bundle := filepath.Join(dir, "bundle")
	if out, err := exec.Command(umoci, "unpack", "--image", layout+":rich", bundle).CombinedOutput(); err != nil {
		t.Fatalf("umoci unpack: %v\n%s", err, out)
	}
	storeURL := "file://" + filepath.Join(dir, "store")
	runCLI(t, ctx, "convert", "--store", storeURL, "oci:"+layout+":rich", "oci:"+layout+":rich-skiff")

	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	stop := mountCLI(t, "--store", storeURL, "--cache", filepath.Join(dir, "cache"), "oci:"+layout+":rich-skiff", mnt)
	want := snapshot(t, filepath.Join(bundle, "rootfs"))
	got := snapshot(t, mnt)
	compareTrees(t, want, got, unpacked.UnixNano())

	var stats map[string]any
	line := stop()
	if err := json.Unmarshal([]byte(strings.TrimSpace(line)), &stats); err != nil {
		t.Fatalf("mount did not print one JSON line on exit: %q: %v", line, err)
	}
}

// fileInfo is everything compared about one path.
type fileInfo struct {
	mode      uint32
	uid, gid  uint32
	size      int64
	mtime     int64 // ns, not compared for directories (see compareTrees)
	rdev      uint64
	nlink     uint64
	target    string
	xattrs    map[string]string
	sum       [32]byte
	linkGroup string // first path (in walk order) sharing this inode
}

func snapshot(t *testing.T, root string) map[string]fileInfo {
	t.Helper()
	out := map[string]fileInfo{}
	firstPath := map[uint64]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := "/" + strings.TrimPrefix(strings.TrimPrefix(p, root), "/")
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		fi := fileInfo{
			mode: st.Mode, uid: st.Uid, gid: st.Gid, size: st.Size, rdev: st.Rdev, nlink: uint64(st.Nlink),
			mtime: st.Mtim.Nano(), xattrs: xattrs(t, p),
		}
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFLNK:
			fi.target, _ = os.Readlink(p)
		case syscall.S_IFREG:
			data, err := os.ReadFile(p)
			if err != nil {
				return fmt.Errorf("read %s: %w", rel, err)
			}
			fi.sum = sha256.Sum256(data)
		}
		if st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
			if first, ok := firstPath[st.Ino]; ok {
				fi.linkGroup = first
			} else {
				firstPath[st.Ino] = rel
				fi.linkGroup = rel
			}
		}
		out[rel] = fi
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func xattrs(t *testing.T, p string) map[string]string {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		return nil
	}
	m := map[string]string{}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		v := make([]byte, 64<<10)
		vn, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			t.Fatalf("getxattr %s %s: %v", p, name, err)
		}
		m[name] = string(v[:vn])
	}
	return m
}

// Directories that no tar entry describes (the root, implicit parents) get
// the unpack time from umoci and the epoch from Skiff, which keeps
// conversion deterministic; their mtimes are not compared.
func compareTrees(t *testing.T, want, got map[string]fileInfo, implicitAfter int64) {
	t.Helper()
	var paths []string
	for p := range want {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		w := want[p]
		g, ok := got[p]
		if !ok {
			t.Errorf("%s: missing from the mount", p)
			continue
		}
		isDir := w.mode&syscall.S_IFMT == syscall.S_IFDIR
		checks := []struct {
			what      string
			want, got any
		}{
			{"mode", fmt.Sprintf("%o", w.mode), fmt.Sprintf("%o", g.mode)},
			{"uid", w.uid, g.uid},
			{"gid", w.gid, g.gid},
			{"rdev", w.rdev, g.rdev},
			{"nlink", w.nlink, g.nlink},
			{"symlink target", w.target, g.target},
			{"xattrs", fmt.Sprint(w.xattrs), fmt.Sprint(g.xattrs)},
			{"content", w.sum, g.sum},
			{"hard link group", w.linkGroup, g.linkGroup},
		}
		if !isDir || w.mtime < implicitAfter {
			checks = append(checks, struct {
				what      string
				want, got any
			}{"mtime", w.mtime, g.mtime})
		}
		if !isDir {
			checks = append(checks, struct {
				what      string
				want, got any
			}{"size", w.size, g.size})
		}
		for _, c := range checks {
			if p == "/" && c.what == "mode" {
				continue // the bundle's rootfs directory mode is umoci's choice
			}
			if fmt.Sprint(c.want) != fmt.Sprint(c.got) {
				t.Errorf("%s: %s = %v, umoci has %v", p, c.what, c.got, c.want)
			}
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: in the mount but not in umoci's rootfs", p)
		}
	}
}
