package fetch

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// frameRecorder is a FrameSink keeping copies of what it is given.
type frameRecorder struct {
	mu     sync.Mutex
	frames map[bootstrap.Digest]map[int64][]byte
}

func (r *frameRecorder) KeepFrame(blob bootstrap.Digest, off int64, raw []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.frames == nil {
		r.frames = map[bootstrap.Digest]map[int64][]byte{}
	}
	if r.frames[blob] == nil {
		r.frames[blob] = map[int64][]byte{}
	}
	r.frames[blob][off] = bytes.Clone(raw)
}

// reset forgets the frames kept so far.
func (r *frameRecorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.frames = nil
}

func (r *frameRecorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.frames {
		n += len(m)
	}
	return n
}

// rejectingSource records the ranges the Fetcher rejected.
type rejectingSource struct {
	*StoreSource
	mu       sync.Mutex
	rejected [][2]int64 // offset, size
}

func (s *rejectingSource) Reject(blob bootstrap.Digest, off, size int64, err error) {
	s.mu.Lock()
	s.rejected = append(s.rejected, [2]int64{off, size})
	s.mu.Unlock()
}

func TestFrameSinkAndRejecter(t *testing.T) {
	ctx := context.Background()
	img, files := testImage(t, bootstrap.Zstd)
	good := upload(t, img)
	bad := upload(t, img)
	if _, err := img.Corrupt(ctx, bad, "/big"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		read func(t *testing.T, f *Fetcher) error
	}{
		{"read chunks", func(t *testing.T, f *Fetcher) error { checkFiles(t, f, img.Bootstrap, files); return nil }},
		{"prefetch", func(t *testing.T, f *Fetcher) error {
			var all []uint32
			for i := range img.Bootstrap.Inodes {
				all = append(all, uint32(i))
			}
			return f.Prefetch(ctx, img.Bootstrap, all)
		}},
		{"fetch frames", func(t *testing.T, f *Fetcher) error {
			var all []uint32
			for i := range img.Bootstrap.Frames {
				all = append(all, uint32(i))
			}
			err := f.FetchFrames(ctx, img.Bootstrap, all)
			// A seeder serves the pieces right after: they are kept
			// when FetchFrames returns, without a Flush.
			if got := f.sink.(*frameRecorder).count(); got != len(img.Bootstrap.Frames) {
				t.Errorf("sink held %d frames when FetchFrames returned, want all %d", got, len(img.Bootstrap.Frames))
			}
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := &rejectingSource{StoreSource: NewStoreSource("corrupt", bad)}
			rec := &frameRecorder{}
			f := New(nil, []Source{rs, NewStoreSource("good", good)}, WithFrameSink(rec))
			if err := tt.read(t, f); err != nil {
				t.Fatal(err)
			}
			// Frames reach the sink behind the readers' backs, as they
			// reach the disk cache.
			f.Flush()
			if got := rec.count(); got != len(img.Bootstrap.Frames) {
				t.Errorf("sink got %d frames, want all %d", got, len(img.Bootstrap.Frames))
			}
			// Every frame the sink kept is the stored one, corrupt ones
			// never.
			for blob, m := range rec.frames {
				for off, raw := range m {
					if want := img.Blobs[blob][off : off+int64(len(raw))]; !bytes.Equal(raw, want) {
						t.Fatalf("sink kept wrong bytes for %s@%d", blob, off)
					}
				}
			}
			if len(rs.rejected) == 0 {
				t.Error("corrupt source was never told its bytes were rejected")
			}
			// What is rejected is the bad frame, not the whole request
			// it came in: a source that assembled a request from several
			// senders can tell which sent it.
			frames := map[[2]int64]bool{}
			for _, fr := range img.Bootstrap.Frames {
				frames[[2]int64{fr.Offset, int64(fr.CompressedSize)}] = true
			}
			for _, r := range rs.rejected {
				if !frames[r] {
					t.Errorf("rejected [%d,+%d), not a frame", r[0], r[1])
				}
			}
		})
	}
}

func TestFetchFramesRefetchesCachedChunks(t *testing.T) {
	ctx := context.Background()
	img, files := testImage(t, bootstrap.LZ4)
	rec := &frameRecorder{}
	f := New(nil, []Source{NewStoreSource("store", upload(t, img))}, WithFrameSink(rec))
	checkFiles(t, f, img.Bootstrap, files) // everything in memory now
	f.Flush()
	rec.reset()
	if err := f.FetchFrames(ctx, img.Bootstrap, []uint32{0, 1}); err != nil {
		t.Fatal(err)
	}
	if rec.count() != 2 {
		t.Errorf("sink got %d frames, want 2", rec.count())
	}
	if err := f.FetchFrames(ctx, img.Bootstrap, []uint32{uint32(len(img.Bootstrap.Frames))}); err == nil {
		t.Error("frame out of range accepted")
	}
}

// TestConcurrentFetchFramesBothWait: two callers asking for the same
// frames at once (two peers asking a seeder for one piece) both return
// with the frames kept, the second waiting for the first's fetch.
func TestConcurrentFetchFramesBothWait(t *testing.T) {
	ctx := context.Background()
	img, _ := testImage(t, bootstrap.Zstd)
	src := &gate{Source: NewStoreSource("store", upload(t, img)), release: make(chan struct{})}
	rec := &frameRecorder{}
	f := New(nil, []Source{src}, WithFrameSink(rec))
	var all []uint32
	for i := range img.Bootstrap.Frames {
		all = append(all, uint32(i))
	}
	errs := make(chan error, 2)
	go func() { errs <- f.FetchFrames(ctx, img.Bootstrap, all) }()
	go func() { errs <- f.FetchFrames(ctx, img.Bootstrap, all) }()
	time.Sleep(50 * time.Millisecond)
	close(src.release)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		if got := rec.count(); got != len(all) {
			t.Fatalf("a caller returned with %d of %d frames kept", got, len(all))
		}
	}
}

// failingGate holds every request until released, then fails it.
type failingGate struct {
	Source
	release chan struct{}
}

func (g *failingGate) FetchFrame(ctx context.Context, blob bootstrap.Digest, off, size int64) ([]byte, error) {
	<-g.release
	return nil, errors.New("store down")
}

// TestConcurrentFetchFramesBothFail: the caller that waited for another's
// fetch hears of its failure, rather than report frames it never got.
func TestConcurrentFetchFramesBothFail(t *testing.T) {
	ctx := context.Background()
	img, _ := testImage(t, bootstrap.Zstd)
	src := &failingGate{Source: NewStoreSource("store", upload(t, img)), release: make(chan struct{})}
	f := New(nil, []Source{src}, WithFrameSink(&frameRecorder{}))
	frames := []uint32{0}
	errs := make(chan error, 2)
	go func() { errs <- f.FetchFrames(ctx, img.Bootstrap, frames) }()
	go func() { errs <- f.FetchFrames(ctx, img.Bootstrap, frames) }()
	time.Sleep(50 * time.Millisecond)
	close(src.release)
	for range 2 {
		if err := <-errs; err == nil {
			t.Fatal("a caller reported a frame no source could give")
		}
	}
}
