package cache

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// verifyContent is an OpenFile check against known content.
func verifyContent(want []byte) func(*os.File) error {
	return func(f *os.File) error {
		got, err := io.ReadAll(f)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, want) {
			return fmt.Errorf("content differs")
		}
		return nil
	}
}

func putFile(t *testing.T, c *Cache, data []byte) bootstrap.Digest {
	t.Helper()
	id := bootstrap.Sum(append([]byte("file:"), data...))
	if err := c.PutFile(id, int64(len(data)), func(w io.Writer) error { _, err := w.Write(data); return err }); err != nil {
		t.Fatal(err)
	}
	return id
}

func TestFilePutOpenReopen(t *testing.T) {
	dir := t.TempDir()
	c := mustOpen(t, dir, 0)
	data, _ := chunk(1, 70000)
	id := putFile(t, c, data)
	if !c.HasFile(id) || c.Has(bootstrap.Sum(data)) {
		t.Fatalf("HasFile=%v", c.HasFile(id))
	}
	calls := 0
	counting := func(f *os.File) error { calls++; return verifyContent(data)(f) }
	for range 2 {
		f, ok := c.OpenFile(id, counting)
		if !ok {
			t.Fatal("file put but not opened")
		}
		got, _ := io.ReadAll(f)
		f.Close()
		if !bytes.Equal(got, data) {
			t.Fatal("content differs")
		}
	}
	if calls != 0 {
		t.Fatalf("a file this process wrote was verified %d times", calls)
	}
	// A new process checks it once before serving it.
	c2 := mustOpen(t, dir, 0)
	for range 2 {
		f, ok := c2.OpenFile(id, counting)
		if !ok {
			t.Fatal("file lost across reopen")
		}
		f.Close()
	}
	if calls != 1 {
		t.Fatalf("verified %d times after reopen, want 1", calls)
	}
	if s := c2.Stats(); s.Entries != 1 || s.Bytes != int64(len(data)) {
		t.Fatalf("stats %+v", s)
	}
}

func TestCorruptWholeFileIsMissAndDeleted(t *testing.T) {
	dir := t.TempDir()
	c := mustOpen(t, dir, 0)
	data, _ := chunk(2, 5000)
	id := putFile(t, c, data)
	p := c.pathOf(id, fileEntry)
	bad := bytes.Clone(data)
	bad[100] ^= 1
	if err := os.WriteFile(p, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	c2 := mustOpen(t, dir, 0)
	if f, ok := c2.OpenFile(id, verifyContent(data)); ok {
		f.Close()
		t.Fatal("corrupt file served")
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatalf("corrupt file kept: %v", err)
	}
	if s := c2.Stats(); s.Corrupt != 1 || s.Entries != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestPutFileBadWriteLeavesNothing(t *testing.T) {
	tests := []struct {
		name  string
		write func(io.Writer) error
	}{
		{"short", func(w io.Writer) error { _, err := w.Write([]byte("abc")); return err }},
		{"long", func(w io.Writer) error { _, err := w.Write(make([]byte, 20)); return err }},
		{"failing", func(w io.Writer) error { return errors.New("source gone") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			c := mustOpen(t, dir, 0)
			id := bootstrap.Sum([]byte(tt.name))
			if err := c.PutFile(id, 10, tt.write); err == nil {
				t.Fatal("bad write accepted")
			}
			if c.HasFile(id) {
				t.Fatal("bad file indexed")
			}
			ents, err := os.ReadDir(filepath.Dir(c.pathOf(id, fileEntry)))
			if err != nil || len(ents) != 0 {
				t.Fatalf("left behind %v (%v)", ents, err)
			}
		})
	}
}

func TestFilesAndChunksShareTheLimit(t *testing.T) {
	c := mustOpen(t, t.TempDir(), 10000)
	data, d := chunk(3, 6000)
	if err := c.Put(d, data); err != nil {
		t.Fatal(err)
	}
	fdata, _ := chunk(4, 6000)
	id := putFile(t, c, fdata)
	if c.Has(d) || !c.HasFile(id) {
		t.Fatalf("chunk kept=%v file kept=%v, want the older chunk evicted", c.Has(d), c.HasFile(id))
	}
	if _, err := os.Stat(c.path(d)); !os.IsNotExist(err) {
		t.Fatalf("evicted chunk file kept: %v", err)
	}
}
