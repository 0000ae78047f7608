package fetch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/fetch/fetchtest"
)

// TestReadahead: a reader going through files in storage order gets the
// following frames in the same request; one going backwards (no
// sequential pattern) fetches exactly the frames it reads.
func TestReadahead(t *testing.T) {
	img, files := testImage(t, bootstrap.Zstd)
	st := upload(t, img)
	b := img.Bootstrap
	ctx := context.Background()
	var paths []string
	for i := range 20 {
		paths = append(paths, fmt.Sprintf("/plain/f%02d", i))
	}
	for _, tt := range []struct {
		name       string
		reverse    bool
		wantFewer  bool // fewer requests than frames read
		wantFrames int  // frames received; 0: any
	}{
		{name: "forward", wantFewer: true},
		{name: "backward", reverse: true, wantFrames: 20},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := New(nil, []Source{NewStoreSource("store", st)})
			for i := range paths {
				p := paths[i]
				if tt.reverse {
					p = paths[len(paths)-1-i]
				}
				got, err := readFile(ctx, f, b, p)
				if err != nil || !bytes.Equal(got, files[p]) {
					t.Fatalf("%s: %d bytes, %v", p, len(got), err)
				}
			}
			s := f.Stats().Sources[0]
			if tt.wantFewer && s.Requests >= 20 {
				t.Errorf("sequential reader: %d requests for 20 files", s.Requests)
			}
			if tt.wantFrames != 0 && (s.Frames != int64(tt.wantFrames) || s.Requests != int64(tt.wantFrames)) {
				t.Errorf("backward reader: %d requests, %d frames; want %d of each", s.Requests, s.Frames, tt.wantFrames)
			}
			if s.Errors != 0 {
				t.Errorf("%d errors", s.Errors)
			}
		})
	}
}

// trickle streams ranges from a StoreSource but stops after the first
// frame of each merged request (one longer than a single frame) until
// release is closed, or, with fail set, ends the stream there with an
// error.
type trickle struct {
	*StoreSource
	b       *bootstrap.Bootstrap
	fail    bool
	release chan struct{}
	stalled chan struct{} // receives once per stalled stream
}

func (s *trickle) OpenRange(ctx context.Context, blob bootstrap.Digest, off, size int64) (io.ReadCloser, error) {
	rc, err := s.StoreSource.OpenRange(ctx, blob, off, size)
	if err != nil {
		return nil, err
	}
	first := size
	for _, fr := range s.b.Frames {
		if s.b.Blobs[fr.Blob] == blob && fr.Offset == off {
			first = int64(fr.CompressedSize)
		}
	}
	if first == size {
		return rc, nil
	}
	return &stallReader{ReadCloser: rc, s: s, left: first}, nil
}

type stallReader struct {
	io.ReadCloser
	s    *trickle
	left int64 // bytes before the stall
	done bool
}

func (r *stallReader) Read(p []byte) (int, error) {
	if r.left == 0 && !r.done {
		r.done = true
		r.s.stalled <- struct{}{}
		if r.s.fail {
			return 0, errors.New("connection reset")
		}
		<-r.s.release
	}
	if r.left > 0 && int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.ReadCloser.Read(p)
	if r.left > 0 {
		r.left -= int64(n)
	}
	return n, err
}

// TestReadaheadStreams: with a source that streams, the reader whose miss
// started a merged request gets its frame while the rest of the request
// is still on its way; readers of the frames read ahead wait for them and
// get them intact, or, when the stream breaks, fetch them again.
func TestReadaheadStreams(t *testing.T) {
	img, files := testImage(t, bootstrap.Zstd)
	b := img.Bootstrap
	st := upload(t, img)
	for _, fail := range []bool{false, true} {
		t.Run(fmt.Sprintf("fail=%v", fail), func(t *testing.T) {
			ctx := context.Background()
			src := &trickle{StoreSource: NewStoreSource("store", st), b: b, fail: fail, release: make(chan struct{}), stalled: make(chan struct{}, 1)}
			f := New(nil, []Source{src})
			read := func(p string) <-chan error {
				errc := make(chan error, 1)
				go func() {
					got, err := readFile(ctx, f, b, p)
					if err == nil && !bytes.Equal(got, files[p]) {
						err = fmt.Errorf("%s: wrong content", p)
					}
					errc <- err
				}()
				return errc
			}
			// The first miss reads one frame; the second, sequential, one
			// starts a merged request that stalls after its first frame.
			if err := <-read("/plain/f00"); err != nil {
				t.Fatal(err)
			}
			errc := read("/plain/f01")
			select {
			case <-src.stalled:
			case <-time.After(10 * time.Second):
				t.Fatal("no merged request for a sequential reader")
			}
			select {
			case err := <-errc:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("reader waited for the whole merged request, not for its frame")
			}
			ahead := read("/plain/f02")
			if !fail {
				select {
				case err := <-ahead:
					t.Fatalf("frame read ahead delivered before its bytes arrived: %v", err)
				case <-time.After(100 * time.Millisecond):
				}
				close(src.release)
			}
			if err := <-ahead; err != nil {
				t.Fatal(err)
			}
			s := f.Stats().Sources[0]
			switch {
			case !fail && (s.Requests != 2 || s.Errors != 0):
				t.Errorf("stats %+v: want 2 requests for 3 files, no errors", s)
			case fail && s.Errors == 0:
				t.Errorf("stats %+v: the broken stream is not counted", s)
			}
		})
	}
}

// TestReadaheadWindow: the window grows with each miss in storage order,
// keeps its size for a miss a little behind the last one (the kernel's
// readahead requests arrive in any order), and resets on a jump.
func TestReadaheadWindow(t *testing.T) {
	const size = 100 << 10
	type miss struct {
		rank, blob uint32
		want       int64
	}
	for _, tt := range []struct {
		name   string
		misses []miss
	}{
		{"forward", []miss{{0, 0, 0}, {1, 0, minReadahead}, {2, 0, 2 * minReadahead}, {3, 0, 4 * minReadahead}}},
		{"late request of the same reader", []miss{{10, 0, 0}, {11, 0, minReadahead}, {12, 0, 2 * minReadahead}, {11, 0, 2 * minReadahead}, {13, 0, 4 * minReadahead}}},
		{"backward", []miss{{20, 0, 0}, {19, 0, 0}, {18, 0, 0}}},
		{"jump back", []miss{{500, 0, 0}, {501, 0, minReadahead}, {2, 0, 0}}},
		{"other blob", []miss{{10, 0, 0}, {11, 0, minReadahead}, {5, 1, 0}}},
		{"jump forward", []miss{{10, 0, 0}, {11, 0, minReadahead}, {400, 0, 0}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var ra readahead
			for i, m := range tt.misses {
				fr := bootstrap.Frame{Blob: m.blob, Offset: int64(m.rank) * size, CompressedSize: size}
				if got := ra.next(m.rank, fr, true); got != m.want {
					t.Fatalf("miss %d at rank %d: window %d, want %d", i, m.rank, got, m.want)
				}
			}
		})
	}
}

// TestReadaheadTrigger: a reader reaching the mark in the window read
// ahead has the next window read, twice the size, once.
func TestReadaheadTrigger(t *testing.T) {
	const size = 100 << 10
	var ra readahead
	ra.next(0, bootstrap.Frame{CompressedSize: size}, true)
	w := ra.next(1, bootstrap.Frame{Offset: size, CompressedSize: size}, true)
	ra.advance(8, 8*size, 4) // frames 2 to 7 read ahead
	for _, rank := range []uint32{1, 3, 8, 20} {
		if _, _, _, ok := ra.trigger(rank); ok {
			t.Fatalf("reader at rank %d (mark 4, window ends at 8) triggered readahead", rank)
		}
	}
	after, window, packed, ok := ra.trigger(5)
	if !ok || after != 7 || window != 2*w || !packed {
		t.Fatalf("reader past the mark: after %d, window %d, packed %v, %v; want 7, %d, true, true", after, window, packed, ok, 2*w)
	}
	if _, _, _, ok := ra.trigger(6); ok {
		t.Fatal("the same mark triggered twice")
	}
}

// TestReadsAhead: a reader going through many small files in storage
// order, with Fetch as the kernel reads an EROFS image or chunk by chunk
// as it reads a tree, has the files that follow read in the same
// requests, so it makes a few requests rather than one per read; and,
// once past the middle of a window, has the next one on its way before it
// gets there, so that after the first few reads it finds every frame it
// wants read already.
func TestReadsAhead(t *testing.T) {
	var entries []fetchtest.Entry
	files := map[string][]byte{}
	var paths []string
	for i := range 400 {
		p := fmt.Sprintf("/tree/f%03d", i)
		files[p] = fixture.Random(uint64(i), 12<<10+i)
		paths = append(paths, p)
		entries = append(entries, fetchtest.Entry{Path: p, Mode: bootstrap.ModeRegular | 0o644, Data: files[p], Pack: true})
	}
	img, err := fetchtest.Build(entries, fetchtest.Options{Compression: bootstrap.Zstd, PackSize: 32 << 10})
	if err != nil {
		t.Fatal(err)
	}
	b := img.Bootstrap
	st := upload(t, img)
	ctx := context.Background()
	const group = 6 // files per read, about two frames
	for _, tt := range []struct {
		name string
		read func(f *Fetcher, chunks []uint32) error
	}{
		{name: "Fetch", read: func(f *Fetcher, chunks []uint32) error {
			f.Fetch(ctx, b, chunks)
			return nil
		}},
		{name: "ReadChunk", read: func(f *Fetcher, chunks []uint32) error {
			for _, ci := range chunks {
				if _, err := f.ReadChunk(ctx, b, ci); err != nil {
					return err
				}
			}
			return nil
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := New(nil, []Source{NewStoreSource("store", st)})
			reads, missed := 0, 0
			for i := 0; i < len(paths); i += group {
				var chunks []uint32
				for _, p := range paths[i:min(i+group, len(paths))] {
					ino, _ := b.LookupPath(p)
					chunks = append(chunks, b.FileChunks(ino)...)
				}
				f.Flush() // what is on its way has arrived
				if reads >= 3 {
					for _, ci := range chunks {
						if !f.cached(b.Chunks[ci].Digest) {
							missed++
							break
						}
					}
				}
				if err := tt.read(f, chunks); err != nil {
					t.Fatal(err)
				}
				reads++
			}
			f.Flush()
			s := f.Stats().Sources[0]
			if s.Requests*5 > int64(reads) {
				t.Errorf("%d reads in storage order made %d requests", reads, s.Requests)
			}
			if missed > 0 {
				t.Errorf("%d of %d reads after the third found frames not read yet", missed, reads-3)
			}
			if s.Frames != int64(len(b.Frames)) {
				t.Errorf("fetched %d frames of %d", s.Frames, len(b.Frames))
			}
			checkFiles(t, f, b, files)
			if after := f.Stats(); after.Sources[0].Requests != s.Requests {
				t.Fatalf("reads after the fetches went to the source: %+v", after)
			}
		})
	}
}

// partitioned sends the first frame of a stream, then nothing more, and
// answers no new request: a network partition in mid-transfer.
type partitioned struct {
	*StoreSource
	b        *bootstrap.Bootstrap
	requests atomic.Int64
}

func (s *partitioned) OpenRange(ctx context.Context, blob bootstrap.Digest, off, size int64) (io.ReadCloser, error) {
	if s.requests.Add(1) > 1 {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	rc, err := s.StoreSource.OpenRange(ctx, blob, off, size)
	if err != nil {
		return nil, err
	}
	first := size
	for _, fr := range s.b.Frames {
		if s.b.Blobs[fr.Blob] == blob && fr.Offset == off {
			first = int64(fr.CompressedSize)
		}
	}
	return &hangingReader{ReadCloser: rc, ctx: ctx, left: first}, nil
}

func (s *partitioned) FetchFrame(ctx context.Context, blob bootstrap.Digest, off, size int64) ([]byte, error) {
	s.requests.Add(1)
	<-ctx.Done()
	return nil, ctx.Err()
}

type hangingReader struct {
	io.ReadCloser
	ctx  context.Context
	left int64
}

func (r *hangingReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		<-r.ctx.Done()
		return 0, r.ctx.Err()
	}
	n, err := r.ReadCloser.Read(p[:min(int64(len(p)), r.left)])
	r.left -= int64(n)
	return n, err
}

// TestStalledStreamLeavesTheRestToOthers: when a source's stream stalls
// mid-transfer and the source answers nothing more, the frames left over
// go to the next source at once, not one by one after a timeout each.
func TestStalledStreamLeavesTheRestToOthers(t *testing.T) {
	img, files := testImage(t, bootstrap.Zstd)
	st := upload(t, img)
	b := img.Bootstrap
	bad := &partitioned{StoreSource: NewStoreSource("partitioned", st), b: b}
	f := New(nil, []Source{bad, NewStoreSource("good", st)})
	f.timeout = 100 * time.Millisecond
	ino, _ := b.LookupPath("/big")
	chunks := b.FileChunks(ino)
	frames := map[uint32]bool{}
	for _, ci := range chunks {
		frames[b.Chunks[ci].Frame] = true
	}
	if len(frames) < 4 {
		t.Fatalf("/big spans %d frames; the test needs several", len(frames))
	}
	f.Fetch(context.Background(), b, chunks)
	if n := bad.requests.Load(); n > 2 {
		t.Fatalf("the stalled source was asked %d times for %d frames", n, len(frames))
	}
	checkFiles(t, f, b, map[string][]byte{"/big": files["/big"]})
}

// TestReadaheadPassesLargeFrames: a program walking a tree's small files
// in storage order passes over the large files stored between them. The
// readahead of packed frames goes on past them, in requests of their own,
// without fetching them: the walk does not miss again after each large
// file.
func TestReadaheadPassesLargeFrames(t *testing.T) {
	img, small, want := smallBetweenLarge(t, 3, 8)
	b := img.Bootstrap
	f := New(nil, []Source{NewStoreSource("store", upload(t, img))})
	ctx := context.Background()
	read := func(p string) {
		t.Helper()
		if got, err := readFile(ctx, f, b, p); err != nil || !bytes.Equal(got, want[p]) {
			t.Fatalf("%s: %d bytes, %v", p, len(got), err)
		}
	}
	// Two misses in order open the window.
	for _, p := range small[:4] {
		read(p)
	}
	f.Flush()
	for _, p := range small[8:] {
		ino, _ := b.LookupPath(p)
		for _, ci := range b.FileChunks(ino) {
			if !f.inMemory(b.Chunks[ci].Digest) {
				t.Fatalf("%s was not read ahead: the readahead stopped at a large file", p)
			}
		}
	}
	misses := f.Stats().CacheMisses
	for _, p := range small[4:] {
		read(p)
	}
	s := f.Stats()
	if s.CacheMisses != misses {
		t.Errorf("%d misses reading the files read ahead", s.CacheMisses-misses)
	}
	if got := s.Sources[0].Bytes; got >= 1<<20 {
		t.Errorf("%d bytes fetched for %d small files: the large files came too", got, len(small))
	}
}

// TestReadaheadRunsInParallel: the packed frames read ahead past large
// files are several requests, which go out together, not one after
// another: each would otherwise wait for its first byte while the reader
// caught up.
func TestReadaheadRunsInParallel(t *testing.T) {
	img, small, want := smallBetweenLarge(t, 5, 4)
	b := img.Bootstrap
	src := &gateSource{Source: NewStoreSource("store", upload(t, img))}
	f := New(nil, []Source{src})
	ctx := context.Background()
	// Two misses in order (two files to a frame) open the window.
	for _, p := range small[:3] {
		if got, err := readFile(ctx, f, b, p); err != nil || !bytes.Equal(got, want[p]) {
			t.Fatalf("%s: %d bytes, %v", p, len(got), err)
		}
	}
	f.Flush()
	// The miss's own request may overlap one more; serial runs make two.
	if most := src.most.Load(); most < 3 {
		t.Errorf("%d requests in flight at most: the runs read ahead went one after another", most)
	}
	for _, p := range small[4:] {
		ino, _ := b.LookupPath(p)
		for _, ci := range b.FileChunks(ino) {
			if !f.inMemory(b.Chunks[ci].Digest) {
				t.Fatalf("%s was not read ahead", p)
			}
		}
	}
	checkFiles(t, f, b, want)
}

// smallBetweenLarge builds an image of groups of perGroup small files,
// packed two to a frame, with a large file between each group and the
// next: incompressible, so that the gap it leaves is wider than a request
// reads across (aheadGap). It returns the small files in storage order
// and every file's content.
func smallBetweenLarge(t *testing.T, groups, perGroup int) (*fetchtest.Image, []string, map[string][]byte) {
	t.Helper()
	var entries []fetchtest.Entry
	var small []string
	want := map[string][]byte{}
	for g := range groups {
		for i := range perGroup {
			p := fmt.Sprintf("/g%d/f%d", g, i)
			small = append(small, p)
			want[p] = fixture.Text(uint64(10*g+i), 4<<10)
			entries = append(entries, fetchtest.Entry{Path: p, Mode: bootstrap.ModeRegular | 0o644, Data: want[p], Pack: true})
		}
		if g < groups-1 {
			entries = append(entries, fetchtest.Entry{Path: fmt.Sprintf("/large%d", g), Mode: bootstrap.ModeRegular | 0o644, Data: fixture.Random(uint64(100+g), 3<<20)})
		}
	}
	img, err := fetchtest.Build(entries, fetchtest.Options{ChunkSize: 1 << 20, PackSize: 8 << 10, Compression: bootstrap.Zstd})
	if err != nil {
		t.Fatal(err)
	}
	return img, small, want
}
