// Package seed is what a seeder does with the blob store: preheat whole
// images into its piece store, and bring single ranges in on demand when a
// peer asks for a piece nobody holds. Everything goes through a
// fetch.Fetcher reading the store, so every frame is verified before it is
// kept and served.
package seed

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/piece"
	"github.com/skiff-dev/skiff/pkg/store"
)

// maxIndexes bounds the decoded blob indexes kept for on-demand seeding.
const maxIndexes = 1024

// loadTimeout bounds loading one index, which no single caller's context
// does (see index).
const loadTimeout = time.Minute

// Seeder brings pieces in from a store. It implements piece.Seeder.
type Seeder struct {
	store   store.Store
	fetcher *fetch.Fetcher
	pieces  *piece.Store

	loads   singleflight.Group
	mu      sync.Mutex
	indexes map[bootstrap.Digest]*bootstrap.Bootstrap
}

var _ piece.Seeder = (*Seeder)(nil)

// New returns a Seeder; f must read from st and hand its frames to pieces
// (fetch.WithFrameSink).
func New(st store.Store, f *fetch.Fetcher, pieces *piece.Store) *Seeder {
	return &Seeder{store: st, fetcher: f, pieces: pieces, indexes: map[bootstrap.Digest]*bootstrap.Bootstrap{}}
}

// Result counts what a preheat or seed fetched.
type Result struct {
	Frames int   // frames fetched from the store
	Bytes  int64 // their stored size
	Held   int   // frames already held, not fetched again
}

// Preheat brings every frame of the image whose bootstrap is in the
// store under digest into the piece store.
func (s *Seeder) Preheat(ctx context.Context, digest bootstrap.Digest) (Result, error) {
	b, err := s.loadVerified(ctx, store.BootstrapKey(digest.Hex()), digest)
	if err != nil {
		return Result{}, fmt.Errorf("preheat %s: %w", digest, err)
	}
	all := make([]uint32, len(b.Frames))
	for i := range all {
		all[i] = uint32(i)
	}
	res, err := s.fetch(ctx, b, all)
	if err != nil {
		return res, fmt.Errorf("preheat %s: %w", digest, err)
	}
	return res, nil
}

// Seed brings the frames [off, off+size) of blob lies in into the piece
// store; the blob's index in the store says where its frames are and what
// they hold.
func (s *Seeder) Seed(ctx context.Context, blob bootstrap.Digest, off, size int64) error {
	_, err := s.SeedRange(ctx, blob, off, size)
	return err
}

// SeedRange is Seed reporting what it fetched.
func (s *Seeder) SeedRange(ctx context.Context, blob bootstrap.Digest, off, size int64) (Result, error) {
	idx, err := s.index(ctx, blob)
	if err != nil {
		return Result{}, fmt.Errorf("seed %s [%d,+%d): %w", blob, off, size, err)
	}
	frames, err := span(idx, off, off+size)
	if err != nil {
		return Result{}, fmt.Errorf("seed %s [%d,+%d): %w", blob, off, size, err)
	}
	res, err := s.fetch(ctx, idx, frames)
	if err != nil {
		return res, fmt.Errorf("seed %s [%d,+%d): %w", blob, off, size, err)
	}
	return res, nil
}

// fetch fetches the frames of b the piece store lacks.
func (s *Seeder) fetch(ctx context.Context, b *bootstrap.Bootstrap, frames []uint32) (Result, error) {
	var res Result
	var missing []uint32
	for _, fi := range frames {
		fr := b.Frames[fi]
		if int(fr.Blob) >= len(b.Blobs) {
			return res, fmt.Errorf("frame %d: blob %d out of range", fi, fr.Blob)
		}
		if s.pieces.Has(b.Blobs[fr.Blob], fr.Offset, int64(fr.CompressedSize)) {
			res.Held++
			continue
		}
		missing = append(missing, fi)
		res.Frames++
		res.Bytes += int64(fr.CompressedSize)
	}
	if len(missing) == 0 {
		return res, nil
	}
	return res, s.fetcher.FetchFrames(ctx, b, missing)
}

// span lists the frames of a one-blob index that [off, end) lies in. It
// may start and end inside frames: a node reading a range from several
// parents at once asks each for a part, cut without knowing the frames.
func span(idx *bootstrap.Bootstrap, off, end int64) ([]uint32, error) {
	if off < 0 || end <= off {
		return nil, fmt.Errorf("empty range")
	}
	order := make([]uint32, len(idx.Frames))
	for i := range order {
		order[i] = uint32(i)
	}
	sort.Slice(order, func(i, j int) bool { return idx.Frames[order[i]].Offset < idx.Frames[order[j]].Offset })
	// The last frame starting at or before off.
	i := sort.Search(len(order), func(i int) bool { return idx.Frames[order[i]].Offset > off }) - 1
	if i < 0 {
		return nil, fmt.Errorf("range starts before the blob's first frame")
	}
	var out []uint32
	pos := idx.Frames[order[i]].Offset
	for ; i < len(order) && pos < end; i++ {
		fr := idx.Frames[order[i]]
		if fr.Offset != pos {
			break
		}
		out = append(out, order[i])
		pos += int64(fr.CompressedSize)
	}
	if pos < end || off >= pos {
		return nil, fmt.Errorf("range is not within the blob's frames")
	}
	return out, nil
}

// index returns the decoded chunk index of blob, loading it once.
func (s *Seeder) index(ctx context.Context, blob bootstrap.Digest) (*bootstrap.Bootstrap, error) {
	s.mu.Lock()
	idx, ok := s.indexes[blob]
	s.mu.Unlock()
	if ok {
		return idx, nil
	}
	loaded := s.loads.DoChan(blob.Hex(), func() (any, error) {
		// Every caller asking for blob meanwhile waits for this load:
		// the first one leaving (a peer hanging up) must not fail the
		// others, so the load outlives it, within a bound of its own.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), loadTimeout)
		defer cancel()
		idx, err := s.load(ctx, store.IndexKey(blob.Hex()))
		if err != nil {
			return nil, err
		}
		if len(idx.Blobs) != 1 || idx.Blobs[0] != blob {
			return nil, fmt.Errorf("index of %s describes other blobs", blob)
		}
		s.mu.Lock()
		if len(s.indexes) >= maxIndexes {
			clear(s.indexes)
		}
		s.indexes[blob] = idx
		s.mu.Unlock()
		return idx, nil
	})
	select {
	case r := <-loaded:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*bootstrap.Bootstrap), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("load index of %s: %w", blob, ctx.Err())
	}
}

// loadVerified loads a bootstrap whose blob must hash to digest.
func (s *Seeder) loadVerified(ctx context.Context, key string, digest bootstrap.Digest) (*bootstrap.Bootstrap, error) {
	data, err := s.read(ctx, key)
	if err != nil {
		return nil, err
	}
	if bootstrap.Sum(data) != digest {
		return nil, fmt.Errorf("%s does not match its digest", key)
	}
	b, err := bootstrap.Decode(data)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", key, err)
	}
	return b, nil
}

// load loads an index. Indexes are not content-addressed by their own
// digest; a wrong one can only make frames fail verification.
func (s *Seeder) load(ctx context.Context, key string) (*bootstrap.Bootstrap, error) {
	data, err := s.read(ctx, key)
	if err != nil {
		return nil, err
	}
	b, err := bootstrap.Decode(data)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", key, err)
	}
	return b, nil
}

func (s *Seeder) read(ctx context.Context, key string) ([]byte, error) {
	return store.ReadAll(ctx, s.store, key, bootstrap.MaxRawSize)
}
