package dir_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/skiff-dev/skiff/pkg/store"
	"github.com/skiff-dev/skiff/pkg/store/dir"
	"github.com/skiff-dev/skiff/pkg/store/storetest"
)

func newDir(t testing.TB) *dir.Dir {
	t.Helper()
	d, err := dir.New(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return newDir(t) })
}

func TestNewCreatesRoot(t *testing.T) {
	root := filepath.Join(t.TempDir(), "a", "b", "c")
	d, err := dir.New(root)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
		t.Fatalf("root %s not created: %v", root, err)
	}
	if d.Root() != root {
		t.Fatalf("Root() = %q, want %q", d.Root(), root)
	}
}

func TestNewErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, root := range []string{"", file, filepath.Join(file, "sub")} {
		if _, err := dir.New(root); err == nil {
			t.Errorf("New(%q) succeeded", root)
		}
	}
}

func TestOpen(t *testing.T) {
	tmp := t.TempDir()
	file := filepath.Join(tmp, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		root     string
		notFound bool // the error is store.ErrNotFound
		wantErr  bool
	}{
		{"existing", tmp, false, false},
		{"missing", filepath.Join(tmp, "missing"), true, true},
		{"missing parent", filepath.Join(tmp, "a", "b"), true, true},
		{"a file", file, false, true},
		{"empty", "", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := dir.Open(tt.root)
			if (err != nil) != tt.wantErr || errors.Is(err, store.ErrNotFound) != tt.notFound {
				t.Fatalf("Open(%q) = %v, %v; want error %v, not found %v", tt.root, d, err, tt.wantErr, tt.notFound)
			}
			if err == nil && d.Root() != tt.root {
				t.Errorf("Root() = %q, want %q", d.Root(), tt.root)
			}
			if tt.notFound {
				if _, err := os.Stat(tt.root); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("Open created %s: %v", tt.root, err)
				}
			}
		})
	}
}

// Invalid keys never create anything outside (or inside) the root.
func TestKeysStayInsideRoot(t *testing.T) {
	base := t.TempDir()
	d, err := dir.New(filepath.Join(base, "root"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, key := range []string{"../escape", "a/../../escape", "/escape", `..\escape`} {
		if err := d.Put(ctx, key, strings.NewReader("x"), 1); !errors.Is(err, store.ErrInvalidKey) {
			t.Errorf("Put(%q) = %v, want store.ErrInvalidKey", key, err)
		}
	}
	var found []string
	filepath.WalkDir(base, func(path string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			found = append(found, path)
		}
		return nil
	})
	if len(found) != 0 {
		t.Fatalf("invalid keys created files %q", found)
	}
}

// Files being written are invisible: a leftover temp file (from a crash)
// is neither listed nor reachable as a key.
func TestTempFilesHidden(t *testing.T) {
	d := newDir(t)
	ctx := context.Background()
	if err := d.Put(ctx, "blobs/sha256/aa", bytes.NewReader([]byte("aa")), 2); err != nil {
		t.Fatal(err)
	}
	leftover := filepath.Join(d.Root(), "blobs", "sha256", ".skiff-tmp-123")
	if err := os.WriteFile(leftover, []byte("partial"), 0o644); err != nil {
		t.Fatal(err)
	}
	if keys := storetest.Keys(t, d, ""); len(keys) != 1 || keys[0] != "blobs/sha256/aa" {
		t.Fatalf("List = %q, want only blobs/sha256/aa", keys)
	}
	if _, err := d.Stat(ctx, "blobs/sha256/.skiff-tmp-123"); !errors.Is(err, store.ErrInvalidKey) {
		t.Fatalf("Stat of a temp file name = %v, want store.ErrInvalidKey", err)
	}
}

// A failed Put removes its temp file.
func TestFailedPutLeavesNoTempFile(t *testing.T) {
	d := newDir(t)
	if err := d.Put(context.Background(), "k", strings.NewReader("short"), 100); err == nil {
		t.Fatal("short Put succeeded")
	}
	entries, err := os.ReadDir(d.Root())
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Fatalf("root holds %d entries after a failed put, first %q", len(entries), entries[0].Name())
	}
}

// A key whose parent is an existing object fails with a clear error instead
// of clobbering the object.
func TestFileDirectoryConflict(t *testing.T) {
	d := newDir(t)
	ctx := context.Background()
	if err := d.Put(ctx, "a", strings.NewReader("a"), 1); err != nil {
		t.Fatal(err)
	}
	if err := d.Put(ctx, "a/b", strings.NewReader("b"), 1); err == nil {
		t.Fatal("Put(a/b) over the object a succeeded")
	}
	if _, err := d.Stat(ctx, "a/b"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Stat(a/b) = %v, want store.ErrNotFound", err)
	}
	if err := d.Delete(ctx, "a/b"); err != nil {
		t.Fatalf("Delete(a/b) = %v, want nil for a missing key", err)
	}
	info, err := d.Stat(ctx, "a")
	if err != nil || info.Size != 1 {
		t.Fatalf("Stat(a) = %+v, %v; want the original object", info, err)
	}
}

// BenchmarkRangedGet measures Get against opening the object's file,
// reading the range and closing it: a file read with no store around it.
func BenchmarkRangedGet(b *testing.B) {
	root := filepath.Join(b.TempDir(), "store")
	d, err := dir.New(root)
	if err != nil {
		b.Fatal(err)
	}
	storetest.BenchmarkRangedGet(b, d, storetest.Baseline{
		Name: "pread",
		Read: func(_ context.Context, key string, off int64, buf []byte) error {
			f, err := os.Open(filepath.Join(root, filepath.FromSlash(key)))
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.ReadAt(buf, off)
			return err
		},
	})
}
