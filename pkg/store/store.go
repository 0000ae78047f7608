// Package store defines the one interface through which Skiff reads and
// writes content-addressed blobs: chunk data, chunk indexes and bootstraps.
// Implementations live in subpackages (store/dir, store/s3) and all pass the
// conformance suite in store/storetest.
package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// ErrNotFound is returned (wrapped) when a key does not exist.
var ErrNotFound = errors.New("not found")

// ErrInvalidKey is returned (wrapped) for a key that ValidKey rejects.
var ErrInvalidKey = errors.New("invalid key")

// ErrOutOfRange is returned (wrapped) by Get for a range that does not lie
// within the object.
var ErrOutOfRange = errors.New("range out of bounds")

// Info describes a stored object.
type Info struct {
	Key     string
	Size    int64
	ModTime time.Time
}

// Store is a flat key/value blob store. Keys are slash-separated paths such
// as "blobs/sha256/<hex>". Objects are immutable once written: Put of an
// existing key replaces it atomically, and a reader never observes a
// partially written object.
type Store interface {
	// Put writes size bytes from r under key. size may be -1 when unknown.
	Put(ctx context.Context, key string, r io.Reader, size int64) error
	// Get returns length bytes of key starting at off; length -1 reads to
	// the end. A range not within the object is an error wrapping
	// ErrOutOfRange (see CheckRange); a missing key, ErrNotFound.
	Get(ctx context.Context, key string, off, length int64) (io.ReadCloser, error)
	// Stat returns the object's metadata or an error wrapping ErrNotFound.
	Stat(ctx context.Context, key string) (Info, error)
	// List calls fn for every object whose key starts with prefix, in
	// lexical key order.
	List(ctx context.Context, prefix string, fn func(Info) error) error
	// Delete removes key; deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
}

// Key prefixes, shared by every writer and reader of a store.
const (
	BlobPrefix      = "blobs/sha256/"
	IndexPrefix     = "index/sha256/"
	BootstrapPrefix = "bootstraps/sha256/"
	// CondemnedPrefix holds the chunk indexes that garbage collection
	// (pkg/gc) moved out of IndexPrefix because no image used their blob:
	// converters no longer dedup against the blob, and it is deleted once
	// it has stayed unused for a grace period.
	CondemnedPrefix = "gc/condemned/"
	// DeadPrefix holds the tombstones with which garbage collection
	// marks bootstraps that no image used: each bootstrap is deleted
	// once its tombstone is a grace period old, if still unused and not
	// written again since.
	DeadPrefix = "gc/dead/"
	// ClockKey is the object garbage collection writes at the start of a
	// run to read the store's clock: its modification time is "now" for
	// ages that the store's modification times measure.
	ClockKey = "gc/clock"
	// LeasePrefix holds the leases node agents keep on the bootstraps
	// they have mounted (see LeaseKey): a container reads its image's
	// chunks from the store for as long as it runs, whatever the
	// registries say, so garbage collection counts a bootstrap with a
	// fresh lease as live.
	LeasePrefix = "gc/lease/"
)

// LeaseKey is the lease node keeps on bootstrap hex while it has it
// mounted: written again periodically, deleted at unmount.
func LeaseKey(node, hex string) string { return LeasePrefix + node + "/" + hex }

// BlobKey is where the chunk-data blob with the given hex sha256 lives.
func BlobKey(hex string) string { return BlobPrefix + hex }

// IndexKey is where the chunk index of blob hex lives; converters read all
// indexes to deduplicate chunks across images.
func IndexKey(hex string) string { return IndexPrefix + hex }

// BootstrapKey is where a bootstrap blob with the given hex sha256 lives.
func BootstrapKey(hex string) string { return BootstrapPrefix + hex }

// StartupSuffix ends the key of the startup set node agents record beside
// a bootstrap: the files its containers read first, which other nodes
// prefetch.
const StartupSuffix = ".startup"

// StartupKey is where the startup set of bootstrap hex lives.
func StartupKey(hex string) string { return BootstrapKey(hex) + StartupSuffix }

// CondemnedKey is where the chunk index of condemned blob hex waits for
// the blob's deletion or its return to IndexKey(hex).
func CondemnedKey(hex string) string { return CondemnedPrefix + hex }

// DeadKey is where the tombstone of bootstrap hex, marked dead, records
// the bootstrap's size and modification time at marking.
func DeadKey(hex string) string { return DeadPrefix + hex }

// ValidKey reports whether key is a relative, clean, slash-separated path;
// implementations reject anything else so that a key can never escape a
// directory or bucket prefix.
func ValidKey(key string) bool {
	if key == "" || strings.HasPrefix(key, "/") || strings.HasSuffix(key, "/") || strings.Contains(key, "\\") {
		return false
	}
	for _, part := range strings.Split(key, "/") {
		if part == "" || part == "." || part == ".." {
			return false
		}
	}
	return true
}

// CheckKey returns an error wrapping ErrInvalidKey that says what a key must
// look like, or nil for a valid key. Implementations call it first in every
// method taking a key so that all of them reject the same keys the same way.
func CheckKey(key string) error {
	if !ValidKey(key) {
		return fmt.Errorf("%w %q: want a relative slash-separated path without empty, \".\" or \"..\" elements or backslashes", ErrInvalidKey, key)
	}
	return nil
}

// CheckRange returns an error wrapping ErrOutOfRange unless [off, off+length)
// lies within an object of size bytes; length -1 means "to the end". An empty
// range at the very end is valid.
func CheckRange(off, length, size int64) error {
	switch {
	case off < 0 || length < -1:
		return fmt.Errorf("%w: offset %d, length %d", ErrOutOfRange, off, length)
	case off > size:
		return fmt.Errorf("%w: offset %d is past the end of the %d-byte object", ErrOutOfRange, off, size)
	case length > size-off:
		return fmt.Errorf("%w: %d bytes at offset %d run past the end of the %d-byte object", ErrOutOfRange, length, off, size)
	}
	return nil
}

// ErrTooLarge is returned (wrapped) by ReadAll for an object over its
// limit.
var ErrTooLarge = errors.New("object too large")

// ReadAll reads the whole object at key into memory, as metadata
// (bootstraps, indexes, startup sets) is read. An object of more than
// limit bytes is refused, wrapping ErrTooLarge, before more than limit+1
// bytes are read: what a store holds must not make its readers allocate
// without bound.
func ReadAll(ctx context.Context, s Store, key string, limit int64) ([]byte, error) {
	rc, err := s.Get(ctx, key, 0, -1)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("read %s: more than %d bytes: %w", key, limit, ErrTooLarge)
	}
	return data, nil
}
