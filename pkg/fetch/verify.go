package fetch

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// VerifyOptions tune Verify.
type VerifyOptions struct {
	// Concurrency bounds requests in flight; default 8.
	Concurrency int
	// Progress, if set, is called after each request with the compressed
	// bytes checked so far and in total.
	Progress func(done, total int64)
}

// BadChunk is a chunk whose stored data is missing or wrong.
type BadChunk struct {
	Chunk  uint32 // index into Bootstrap.Chunks
	Digest bootstrap.Digest
	Err    error
}

// VerifyReport summarises Verify.
type VerifyReport struct {
	Frames int   // frames checked
	Chunks int   // stored chunks checked
	Bytes  int64 // compressed bytes read
	Bad    []BadChunk
}

// Verify reads every frame of b from src, bypassing every cache,
// decompresses it and checks each chunk against its digest. Unreadable or
// corrupt data is reported per chunk in the report; the error is only for
// Verify itself failing (cancellation).
func Verify(ctx context.Context, b *bootstrap.Bootstrap, src Source, opts VerifyOptions) (*VerifyReport, error) {
	if opts.Concurrency <= 0 {
		opts.Concurrency = 8
	}
	ix := newFrameIndex(b)
	all := make([]uint32, len(b.Frames))
	var total int64
	for i, fr := range b.Frames {
		all[i] = uint32(i)
		total += int64(fr.CompressedSize)
	}
	rep := &VerifyReport{}
	var mu sync.Mutex
	var done atomic.Int64
	record := func(fi uint32, bad []uint32, err error) {
		mu.Lock()
		defer mu.Unlock()
		rep.Frames++
		rep.Chunks += len(ix.of(fi))
		if err != nil {
			bad = ix.of(fi)
		}
		for _, ci := range bad {
			e := err
			if e == nil {
				e = fmt.Errorf("content does not match the digest")
			}
			rep.Bad = append(rep.Bad, BadChunk{Chunk: ci, Digest: b.Chunks[ci].Digest, Err: e})
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.Concurrency)
	for _, r := range planRuns(b, all) {
		g.Go(func() error {
			if int(r.blob) >= len(b.Blobs) {
				for _, fi := range r.frames {
					record(fi, nil, fmt.Errorf("blob %d out of range", r.blob))
				}
				return nil
			}
			blob := b.Blobs[r.blob]
			raw, runErr := src.FetchFrame(gctx, blob, r.off, r.end-r.off)
			for _, fi := range r.frames {
				if gctx.Err() != nil {
					return gctx.Err()
				}
				part, err := raw, runErr
				switch {
				case runErr != nil && len(r.frames) > 1:
					// One bad frame (say, a truncated blob end) must not
					// condemn its neighbours: read each on its own.
					fr := b.Frames[fi]
					part, err = src.FetchFrame(gctx, blob, fr.Offset, int64(fr.CompressedSize))
				case runErr == nil:
					part = r.frameBytes(b, raw, fi)
				}
				if err != nil {
					record(fi, nil, err)
					continue
				}
				_, bad, ferr := ix.open(b, fi, part)
				record(fi, bad, ferr)
			}
			if opts.Progress != nil {
				opts.Progress(done.Add(r.end-r.off), total)
			}
			mu.Lock()
			rep.Bytes += r.end - r.off
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	return rep, nil
}
