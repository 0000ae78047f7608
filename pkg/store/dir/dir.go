// Package dir implements store.Store on a local directory: each key is a
// file under the root, written atomically through a temporary file in the
// same directory. It is Skiff's embedded default store and needs nothing
// else running.
package dir

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/skiff-dev/skiff/pkg/store"
)

// tempPrefix starts the name of every file still being written. List skips
// such files and keys with an element starting with it are rejected, so an
// unfinished Put can never be observed or collide with a real key.
const tempPrefix = ".skiff-tmp-"

// Dir is a store rooted at a local directory. It is safe for concurrent use,
// also by several processes sharing the directory.
type Dir struct {
	root string
}

var _ store.Store = (*Dir)(nil)

// New returns a store rooted at root, creating the directory if needed.
func New(root string) (*Dir, error) {
	abs, err := absRoot(root)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("dir store: create root: %w", err)
	}
	return &Dir{root: abs}, nil
}

// Open returns the store rooted at root, which must exist: a command
// that only reads or deletes must not leave an empty directory behind a
// mistyped path. A missing root is store.ErrNotFound.
func Open(root string) (*Dir, error) {
	abs, err := absRoot(root)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("dir store: root %s: %w", abs, store.ErrNotFound)
	case err != nil:
		return nil, fmt.Errorf("dir store: %w", err)
	case !fi.IsDir():
		return nil, fmt.Errorf("dir store: root %s is not a directory", abs)
	}
	return &Dir{root: abs}, nil
}

func absRoot(root string) (string, error) {
	if root == "" {
		return "", errors.New("dir store: empty root directory")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return "", fmt.Errorf("dir store: resolve root %q: %w", root, err)
	}
	return abs, nil
}

// Root returns the absolute directory the store keeps its files in.
func (d *Dir) Root() string { return d.root }

// path maps a key to its file after checking that it cannot leave the root.
func (d *Dir) path(key string) (string, error) {
	if err := store.CheckKey(key); err != nil {
		return "", err
	}
	for _, part := range strings.Split(key, "/") {
		if strings.HasPrefix(part, tempPrefix) {
			return "", fmt.Errorf("%w %q: elements starting with %q are reserved for files being written", store.ErrInvalidKey, key, tempPrefix)
		}
	}
	return filepath.Join(d.root, filepath.FromSlash(key)), nil
}

// Put writes r to a temporary file next to the target, syncs it and renames
// it into place, so readers see either the old object or the complete new
// one, and a failed or cancelled Put leaves the old object untouched.
func (d *Dir) Put(ctx context.Context, key string, r io.Reader, size int64) (err error) {
	p, err := d.path(key)
	if err != nil {
		return fmt.Errorf("dir store: put: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("dir store: put %s: %w", key, err)
	}
	parent := filepath.Dir(p)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("dir store: put %s: %w", key, err)
	}
	f, err := os.CreateTemp(parent, tempPrefix+"*")
	if err != nil {
		return fmt.Errorf("dir store: put %s: %w", key, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	src := io.Reader(ctxReader{ctx, r})
	if size >= 0 {
		// Like object stores given a Content-Length, take exactly size
		// bytes; fewer is an error below.
		src = io.LimitReader(src, size)
	}
	n, err := io.Copy(f, src)
	if err != nil {
		return fmt.Errorf("dir store: put %s: write: %w", key, err)
	}
	if size >= 0 && n != size {
		return fmt.Errorf("dir store: put %s: read %d bytes, want %d", key, n, size)
	}
	if err := f.Chmod(0o644); err != nil {
		return fmt.Errorf("dir store: put %s: %w", key, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("dir store: put %s: sync: %w", key, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("dir store: put %s: close: %w", key, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("dir store: put %s: %w", key, err)
	}
	if err := os.Rename(f.Name(), p); err != nil {
		return fmt.Errorf("dir store: put %s: %w", key, err)
	}
	// The rename is durable only once the directory entry is synced.
	if err := syncDir(parent); err != nil {
		return fmt.Errorf("dir store: put %s: sync directory: %w", key, err)
	}
	return nil
}

func syncDir(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// open opens the regular file of key, mapping a missing file (or a
// directory, which only exists because longer keys share the prefix) to
// store.ErrNotFound.
func (d *Dir) open(op, key string) (*os.File, fs.FileInfo, error) {
	p, err := d.path(key)
	if err != nil {
		return nil, nil, fmt.Errorf("dir store: %s: %w", op, err)
	}
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return nil, nil, fmt.Errorf("dir store: %s %s: %w", op, key, store.ErrNotFound)
		}
		return nil, nil, fmt.Errorf("dir store: %s %s: %w", op, key, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("dir store: %s %s: %w", op, key, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("dir store: %s %s: %w", op, key, store.ErrNotFound)
	}
	return f, fi, nil
}

// Get returns a reader over [off, off+length) of the file. It reads only the
// requested section, never the whole file.
func (d *Dir) Get(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("dir store: get %s: %w", key, err)
	}
	f, fi, err := d.open("get", key)
	if err != nil {
		return nil, err
	}
	size := fi.Size()
	if err := store.CheckRange(off, length, size); err != nil {
		f.Close()
		return nil, fmt.Errorf("dir store: get %s: %w", key, err)
	}
	if length < 0 {
		length = size - off
	}
	return &section{ctx: ctx, r: io.NewSectionReader(f, off, length), f: f}, nil
}

// section reads part of an open file and closes the file with it.
type section struct {
	ctx context.Context
	r   *io.SectionReader
	f   *os.File
}

func (s *section) Read(p []byte) (int, error) {
	if err := s.ctx.Err(); err != nil {
		return 0, err
	}
	return s.r.Read(p)
}

func (s *section) Close() error { return s.f.Close() }

// Stat returns the size and modification time of key's file.
func (d *Dir) Stat(ctx context.Context, key string) (store.Info, error) {
	if err := ctx.Err(); err != nil {
		return store.Info{}, fmt.Errorf("dir store: stat %s: %w", key, err)
	}
	f, fi, err := d.open("stat", key)
	if err != nil {
		return store.Info{}, err
	}
	f.Close()
	return store.Info{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// List walks the directory tree in lexical key order. Entries of a
// directory are visited sorted by their name with a "/" appended to
// directories, which is exactly the order of the full keys, so nothing has
// to be collected and sorted up front. Directories that cannot hold a key
// with the prefix are not entered.
func (d *Dir) List(ctx context.Context, prefix string, fn func(store.Info) error) error {
	if err := d.list(ctx, d.root, "", prefix, fn); err != nil {
		return fmt.Errorf("dir store: list %q: %w", prefix, err)
	}
	return nil
}

func (d *Dir) list(ctx context.Context, path, keyPrefix, prefix string, fn func(store.Info) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && path != d.root {
			return nil // removed while we walked
		}
		return err
	}
	type item struct {
		key string
		e   fs.DirEntry
	}
	items := make([]item, 0, len(entries))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tempPrefix) {
			continue
		}
		key := keyPrefix + e.Name()
		if e.IsDir() {
			key += "/"
		}
		if !strings.HasPrefix(key, prefix) && !strings.HasPrefix(prefix, key) {
			continue
		}
		items = append(items, item{key, e})
	}
	slices.SortFunc(items, func(a, b item) int { return strings.Compare(a.key, b.key) })
	for _, it := range items {
		if it.e.IsDir() {
			if err := d.list(ctx, filepath.Join(path, it.e.Name()), it.key, prefix, fn); err != nil {
				return err
			}
			continue
		}
		if !it.e.Type().IsRegular() || !strings.HasPrefix(it.key, prefix) {
			continue
		}
		fi, err := it.e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted while we walked
		}
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(store.Info{Key: it.key, Size: fi.Size(), ModTime: fi.ModTime()}); err != nil {
			return err
		}
	}
	return nil
}

// Delete removes key's file. Empty directories are left in place: removing
// them would race with a concurrent Put creating a file in them.
func (d *Dir) Delete(ctx context.Context, key string) error {
	p, err := d.path(key)
	if err != nil {
		return fmt.Errorf("dir store: delete: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("dir store: delete %s: %w", key, err)
	}
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("dir store: delete %s: %w", key, err)
	}
	if fi.IsDir() {
		return nil // only a prefix of other keys, not an object
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("dir store: delete %s: %w", key, err)
	}
	return nil
}

// ctxReader stops a copy once ctx is done, so a Put from a slow or endless
// reader can be cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
