package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/store"
)

// Source is one place the compressed bytes of frames can be read from: the
// blob store, peers and seeders. A Fetcher tries its sources in order and
// verifies whatever they return, so a source need not be trusted.
type Source interface {
	// Name identifies the source in logs and stats.
	Name() string
	// FetchFrame returns exactly size bytes of blob starting at off: one
	// compressed frame, or several adjacent frames when the Fetcher merges
	// neighbouring requests into one.
	FetchFrame(ctx context.Context, blob bootstrap.Digest, off, size int64) ([]byte, error)
}

// ErrNotHeld is wrapped by a source's error when the source works but does
// not hold the range asked for, as when no peer has it yet. Any other
// error means the source could not be read at all: a prefetch stops
// asking it, where after ErrNotHeld it still asks it for other ranges.
var ErrNotHeld = errors.New("source does not hold the range")

// RangeOpener is implemented by sources that can stream a range of a blob.
// A merged request of many frames then hands each frame to its readers as
// soon as its own bytes have arrived, instead of after the whole range:
// the reader that missed waits for one frame, not for the readahead.
type RangeOpener interface {
	// OpenRange returns a stream of exactly size bytes of blob from off.
	// The stream ends early, with an error, when ctx is done.
	OpenRange(ctx context.Context, blob bootstrap.Digest, off, size int64) (io.ReadCloser, error)
}

// StoreSource reads frames from chunk-data blobs in a store.Store with
// ranged reads.
type StoreSource struct {
	name  string
	store store.Store
}

var (
	_ Source      = (*StoreSource)(nil)
	_ RangeOpener = (*StoreSource)(nil)
)

// NewStoreSource returns a source named name reading from st.
func NewStoreSource(name string, st store.Store) *StoreSource {
	return &StoreSource{name: name, store: st}
}

// Name implements Source.
func (s *StoreSource) Name() string { return s.name }

// OpenRange implements RangeOpener.
func (s *StoreSource) OpenRange(ctx context.Context, blob bootstrap.Digest, off, size int64) (io.ReadCloser, error) {
	if off < 0 || size <= 0 || size > maxRequest {
		return nil, fmt.Errorf("fetch %s [%d,+%d): bad range", blob, off, size)
	}
	rc, err := s.store.Get(ctx, store.BlobKey(blob.Hex()), off, size)
	if err != nil {
		return nil, fmt.Errorf("fetch %s [%d,+%d): %w", blob, off, size, err)
	}
	return rc, nil
}

// FetchFrame implements Source.
func (s *StoreSource) FetchFrame(ctx context.Context, blob bootstrap.Digest, off, size int64) ([]byte, error) {
	rc, err := s.OpenRange(ctx, blob, off, size)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	buf := make([]byte, size)
	if _, err := io.ReadFull(rc, buf); err != nil {
		return nil, fmt.Errorf("fetch %s [%d,+%d): %w", blob, off, size, err)
	}
	return buf, nil
}
