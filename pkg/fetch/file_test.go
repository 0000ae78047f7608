package fetch

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/cache"
)

func TestBackingFile(t *testing.T) {
	img, files := testImage(t, bootstrap.Zstd)
	b := img.Bootstrap
	st := upload(t, img)
	ctx := context.Background()
	for _, p := range []string{"/big", "/sparse", "/zeros", "/random", "/small/f03"} {
		t.Run(p, func(t *testing.T) {
			dir := t.TempDir()
			c, err := cache.Open(dir, 0)
			if err != nil {
				t.Fatal(err)
			}
			f := New(c, []Source{NewStoreSource("store", st)})
			t.Cleanup(f.Flush)
			ino, _ := b.LookupPath(p)
			if p != "/zeros" { // nothing to fetch for an all-zero file
				if file, ok := f.BackingFile(ctx, b, ino); ok {
					file.Close()
					t.Fatal("backing file offered before any chunk was read")
				}
				if err := f.Materialize(ctx, b, ino); !errors.Is(err, ErrNotLocal) {
					t.Fatalf("materialize of an uncached file: %v", err)
				}
			}
			if _, err := readFile(ctx, f, b, p); err != nil {
				t.Fatal(err)
			}
			// The first open after the file is local starts assembling it.
			file := waitBacking(t, f, b, ino)
			got, err := io.ReadAll(file)
			file.Close()
			if err != nil || !bytes.Equal(got, files[p]) {
				t.Fatalf("backing file: %d bytes (%v), want %d", len(got), err, len(files[p]))
			}

			// A later process checks the file before trusting it.
			id := FileID(b, ino)
			backing := filepath.Join(dir, "files", id.Hex()[:2], id.Hex())
			bad := bytes.Clone(got)
			bad[len(bad)/2] ^= 1
			if err := os.WriteFile(backing, bad, 0o644); err != nil {
				t.Fatal(err)
			}
			f.Flush()
			c2, err := cache.Open(dir, 0)
			if err != nil {
				t.Fatal(err)
			}
			f2 := New(c2, []Source{NewStoreSource("store", st)})
			t.Cleanup(f2.Flush)
			// The check runs in the background; the open that starts it
			// goes through the mount.
			if fl, ok := f2.BackingFile(ctx, b, ino); ok {
				fl.Close()
				t.Fatal("backing file served before this process checked it")
			}
			for deadline := time.Now().Add(10 * time.Second); c2.Stats().Corrupt != 1; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("cache stats %+v, want one corrupt file", c2.Stats())
				}
			}
			// and assembles it again from the chunks.
			file = waitBacking(t, f2, b, ino)
			got, err = io.ReadAll(file)
			file.Close()
			if err != nil || !bytes.Equal(got, files[p]) {
				t.Fatalf("reassembled backing file: %d bytes (%v), want %d", len(got), err, len(files[p]))
			}

			// An intact file is served once a later process has checked
			// it, without assembling it again.
			f2.Flush()
			c3, err := cache.Open(dir, 0)
			if err != nil {
				t.Fatal(err)
			}
			f3 := New(c3, []Source{NewStoreSource("store", st)})
			t.Cleanup(f3.Flush)
			if fl, ok := f3.BackingFile(ctx, b, ino); ok {
				fl.Close()
				t.Fatal("backing file served before this process checked it")
			}
			file = waitBacking(t, f3, b, ino)
			file.Close()
			if s := c3.Stats(); s.Corrupt != 0 {
				t.Fatalf("intact file counted corrupt: %+v", s)
			}
		})
	}
}

// waitBacking polls BackingFile until the background assembly it starts
// has finished.
func waitBacking(t *testing.T, f *Fetcher, b *bootstrap.Bootstrap, ino uint32) *os.File {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if fl, ok := f.BackingFile(context.Background(), b, ino); ok {
			return fl
		}
		if time.Now().After(deadline) {
			t.Fatal("backing file never assembled")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestFileIDNamesContent(t *testing.T) {
	img, _ := testImage(t, bootstrap.None)
	b := img.Bootstrap
	ids := map[bootstrap.Digest]string{}
	for _, p := range []string{"/big", "/sparse", "/zeros", "/random", "/small/f03", "/small/f04"} {
		ino, _ := b.LookupPath(p)
		id := FileID(b, ino)
		if other, ok := ids[id]; ok {
			t.Fatalf("%s and %s share an id", p, other)
		}
		ids[id] = p
		if FileID(b, ino) != id {
			t.Fatalf("%s: id not stable", p)
		}
	}
}
