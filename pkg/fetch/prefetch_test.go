package fetch

import (
	"context"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/fetch/fetchtest"
)

// TestInOrder: a prefetch's runs go out in the order of their first
// frame in the caller's list, each still holding its nearby frames.
func TestInOrder(t *testing.T) {
	b := &bootstrap.Bootstrap{Frames: []bootstrap.Frame{
		{Blob: 0, Offset: 0, CompressedSize: 100},
		{Blob: 0, Offset: 100, CompressedSize: 100},
		{Blob: 0, Offset: 10 << 20, CompressedSize: 100},
		{Blob: 1, Offset: 0, CompressedSize: 100},
	}}
	tests := []struct {
		frames []uint32
		want   [][]uint32
	}{
		{[]uint32{3, 0, 2, 1}, [][]uint32{{3}, {0, 1}, {2}}},
		{[]uint32{1, 2, 3, 0}, [][]uint32{{0, 1}, {2}, {3}}},
		{nil, nil},
	}
	for _, tt := range tests {
		var got [][]uint32
		for _, r := range inOrder(planRuns(b, tt.frames), tt.frames) {
			got = append(got, r.frames)
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("inOrder(%v) = %v, want %v", tt.frames, got, tt.want)
		}
	}
}

// gateSource counts the requests in flight, each held a moment.
type gateSource struct {
	Source
	now, most atomic.Int64
}

func (s *gateSource) FetchFrame(ctx context.Context, blob bootstrap.Digest, off, size int64) ([]byte, error) {
	n := s.now.Add(1)
	defer s.now.Add(-1)
	for m := s.most.Load(); n > m && !s.most.CompareAndSwap(m, n); m = s.most.Load() {
	}
	time.Sleep(20 * time.Millisecond)
	return s.Source.FetchFrame(ctx, blob, off, size)
}

// TestPrefetchStreams: Streams bounds the requests a Prefetch keeps in
// flight; by default it keeps more.
func TestPrefetchStreams(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	entries := []fetchtest.Entry{{Path: "/", Mode: bootstrap.ModeDir | 0o755}}
	for i := range 20 {
		data := make([]byte, 300<<10)
		for j := range data {
			data[j] = byte(r.Uint32())
		}
		entries = append(entries, fetchtest.Entry{Path: fmt.Sprintf("/f%02d", i), Mode: bootstrap.ModeRegular | 0o644, Data: data})
	}
	img, err := fetchtest.Build(entries, fetchtest.Options{ChunkSize: 64 << 10, Compression: bootstrap.Zstd})
	if err != nil {
		t.Fatal(err)
	}
	st := upload(t, img)
	// Every other file: a gap wider than mergeGap between them, so each
	// is a request of its own.
	var inodes []uint32
	for i := 0; i < 20; i += 2 {
		ino, ok := img.Bootstrap.LookupPath(fmt.Sprintf("/f%02d", i))
		if !ok {
			t.Fatalf("no /f%02d", i)
		}
		inodes = append(inodes, ino)
	}
	for _, tt := range []struct {
		name      string
		opts      []PrefetchOption
		most      int64
		moreThan2 bool
	}{
		{"Streams(2)", []PrefetchOption{Streams(2)}, 2, false},
		{"Streams(1)", []PrefetchOption{Streams(1)}, 1, false},
		{"default", nil, prefetchConcurrency, true},
	} {
		src := &gateSource{Source: NewStoreSource("store", st)}
		if err := New(nil, []Source{src}).Prefetch(context.Background(), img.Bootstrap, inodes, tt.opts...); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		most := src.most.Load()
		if most > tt.most || (tt.moreThan2 && most <= 2) {
			t.Errorf("%s: %d requests in flight at most", tt.name, most)
		}
	}
}

// missingOnce lacks the first range it is asked for, as a peer source
// lacks what no peer holds yet, and serves the rest.
type missingOnce struct {
	Source
	requests, served atomic.Int64
}

func (s *missingOnce) FetchFrame(ctx context.Context, blob bootstrap.Digest, off, size int64) ([]byte, error) {
	if s.requests.Add(1) == 1 {
		return nil, fmt.Errorf("no peer holds it: %w", ErrNotHeld)
	}
	s.served.Add(1)
	return s.Source.FetchFrame(ctx, blob, off, size)
}

// TestFetchAsksASourceAgainAfterAMiss: a source that lacks one run of a
// merged fetch is still asked for the next ones; only a source that
// cannot be read at all is left out for the rest of it.
func TestFetchAsksASourceAgainAfterAMiss(t *testing.T) {
	img, files := testImage(t, bootstrap.Zstd)
	st := upload(t, img)
	first := &missingOnce{Source: NewStoreSource("peers", st)}
	f := New(nil, []Source{first, NewStoreSource("store", st)})
	b := img.Bootstrap
	var chunks []uint32
	for _, ino := range everyInode(b) {
		if b.Inodes[ino].Type() == bootstrap.ModeRegular {
			chunks = append(chunks, b.FileChunks(ino)...)
		}
	}
	f.Fetch(context.Background(), b, chunks)
	f.Flush()
	if first.requests.Load() < 2 {
		t.Fatalf("the fetch asked the first source %d times; the image must make several runs", first.requests.Load())
	}
	if first.served.Load() == 0 {
		t.Fatal("after one miss the prefetch never asked the first source again")
	}
	checkFiles(t, f, img.Bootstrap, files)
}

func everyInode(b *bootstrap.Bootstrap) []uint32 {
	inodes := make([]uint32, len(b.Inodes))
	for i := range inodes {
		inodes[i] = uint32(i)
	}
	return inodes
}
