package fetch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/skiff-dev/skiff/internal/benchratio"
	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/cache"
	"github.com/skiff-dev/skiff/pkg/fetch/fetchtest"
	"github.com/skiff-dev/skiff/pkg/store/dir"
)

// testImage has multi-chunk files with zero chunks, packed small files and
// plain small files, over two blobs.
func testImage(t testing.TB, comp bootstrap.Compression) (*fetchtest.Image, map[string][]byte) {
	t.Helper()
	const cs = 16 << 10
	sparse := append(append(fixture.Random(1, cs), make([]byte, 3*cs)...), fixture.Text(2, cs+100)...)
	files := map[string][]byte{
		"/big":    fixture.Text(3, 10*cs+5),
		"/sparse": sparse,
		"/zeros":  make([]byte, 2*cs),
		"/random": fixture.Random(4, 3*cs),
	}
	entries := []fetchtest.Entry{}
	for _, p := range []string{"/big", "/sparse", "/zeros", "/random"} {
		entries = append(entries, fetchtest.Entry{Path: p, Mode: bootstrap.ModeRegular | 0o644, Data: files[p]})
	}
	for i := range 30 {
		p := fmt.Sprintf("/small/f%02d", i)
		files[p] = fixture.Text(uint64(100+i), 200+i*37)
		entries = append(entries, fetchtest.Entry{Path: p, Mode: bootstrap.ModeRegular | 0o644, Data: files[p], Pack: true})
	}
	for i := range 20 {
		p := fmt.Sprintf("/plain/f%02d", i)
		files[p] = fixture.Random(uint64(200+i), 300+i)
		entries = append(entries, fetchtest.Entry{Path: p, Mode: bootstrap.ModeRegular | 0o600, Data: files[p]})
	}
	img, err := fetchtest.Build(entries, fetchtest.Options{ChunkSize: cs, Compression: comp, PackSize: 2 << 10, BlobSize: 100 << 10})
	if err != nil {
		t.Fatal(err)
	}
	return img, files
}

func newStore(t testing.TB) *dir.Dir {
	t.Helper()
	st, err := dir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func upload(t testing.TB, img *fetchtest.Image) *dir.Dir {
	t.Helper()
	st := newStore(t)
	if err := img.Upload(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	return st
}

// readFile reads a whole file chunk by chunk.
func readFile(ctx context.Context, f *Fetcher, b *bootstrap.Bootstrap, p string) ([]byte, error) {
	ino, ok := b.LookupPath(p)
	if !ok {
		return nil, fmt.Errorf("%s not found", p)
	}
	var out []byte
	for _, ci := range b.FileChunks(ino) {
		data, err := f.ReadChunk(ctx, b, ci)
		if err != nil {
			return nil, err
		}
		out = append(out, data...)
	}
	return out, nil
}

func checkFiles(t *testing.T, f *Fetcher, b *bootstrap.Bootstrap, files map[string][]byte) {
	t.Helper()
	for p, want := range files {
		got, err := readFile(context.Background(), f, b, p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: content differs (%d bytes, want %d)", p, len(got), len(want))
		}
	}
}

func TestReadChunk(t *testing.T) {
	for _, comp := range []bootstrap.Compression{bootstrap.None, bootstrap.Zstd, bootstrap.LZ4} {
		t.Run(comp.String(), func(t *testing.T) {
			img, files := testImage(t, comp)
			c, err := cache.Open(t.TempDir(), 0)
			if err != nil {
				t.Fatal(err)
			}
			f := New(c, []Source{NewStoreSource("store", upload(t, img))})
			t.Cleanup(f.Flush)
			checkFiles(t, f, img.Bootstrap, files)
			s := f.Stats()
			if s.ZeroChunks == 0 {
				t.Error("no zero chunks served")
			}
			stored := 0
			for _, ch := range img.Bootstrap.Chunks {
				if !ch.Zero() {
					stored++
				}
			}
			if got := s.Sources[0]; got.Chunks != int64(stored) || got.Frames != int64(len(img.Bootstrap.Frames)) || got.Errors != 0 {
				t.Errorf("source stats %+v, want every one of %d chunks and %d frames fetched once", got, stored, len(img.Bootstrap.Frames))
			}
			// A second pass is served from memory without touching the source.
			checkFiles(t, f, img.Bootstrap, files)
			if again := f.Stats(); again.Sources[0].Requests != s.Sources[0].Requests || again.MemoryHits == 0 {
				t.Errorf("second pass: %+v", again)
			}
		})
	}
}

func TestZeroChunksNeedNoSource(t *testing.T) {
	img, files := testImage(t, bootstrap.Zstd)
	f := New(nil, nil) // no sources at all
	got, err := readFile(context.Background(), f, img.Bootstrap, "/zeros")
	if err != nil || !bytes.Equal(got, files["/zeros"]) {
		t.Fatalf("zeros: %v", err)
	}
}

func TestBadChunkIndex(t *testing.T) {
	img, _ := testImage(t, bootstrap.None)
	if _, err := New(nil, nil).ReadChunk(context.Background(), img.Bootstrap, uint32(len(img.Bootstrap.Chunks))); err == nil {
		t.Fatal("out of range chunk accepted")
	}
}

func TestSourceFallthrough(t *testing.T) {
	img, files := testImage(t, bootstrap.Zstd)
	ctx := context.Background()
	good := upload(t, img)
	bad := upload(t, img)
	damaged := []string{"/big", "/small/f03", "/plain/f07"} // one frame each
	for _, p := range damaged {
		if _, err := img.Corrupt(ctx, bad, p); err != nil {
			t.Fatal(err)
		}
	}
	f := New(nil, []Source{
		NewStoreSource("empty", newStore(t)), // blobs missing: every request fails
		NewStoreSource("corrupt", bad),
		NewStoreSource("good", good),
	})
	checkFiles(t, f, img.Bootstrap, files)
	s := f.Stats()
	byName := map[string]SourceStats{}
	for _, ss := range s.Sources {
		byName[ss.Name] = ss
	}
	if e := byName["empty"]; e.Errors == 0 || e.Errors != e.Requests || e.Chunks != 0 {
		t.Errorf("empty source: %+v", e)
	}
	if c := byName["corrupt"]; c.Errors == 0 || c.Chunks == 0 {
		t.Errorf("corrupt source should serve the intact frames and fail the damaged ones: %+v", c)
	}
	// A damaged frame read ahead in a merged request fails there and
	// again when its reader asks for it alone, so the corrupt source may
	// count more errors than there are damaged frames.
	if g, c := byName["good"], byName["corrupt"]; g.Frames != int64(len(damaged)) || c.Errors < g.Frames || g.Errors != 0 {
		t.Errorf("good source should serve exactly the %d frames the corrupt one damaged: good %+v corrupt %+v", len(damaged), g, c)
	}
}

func TestAllSourcesFail(t *testing.T) {
	img, files := testImage(t, bootstrap.LZ4)
	ctx := context.Background()
	bad := upload(t, img)
	want, err := img.Corrupt(ctx, bad, "/random")
	if err != nil {
		t.Fatal(err)
	}
	c, err := cache.Open(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	f := New(c, []Source{NewStoreSource("corrupt", bad), NewStoreSource("empty", newStore(t))})
	t.Cleanup(f.Flush)
	got, err := readFile(ctx, f, img.Bootstrap, "/random")
	if err == nil || got != nil {
		t.Fatalf("read of a corrupt file: %d bytes, err %v", len(got), err)
	}
	if !strings.Contains(err.Error(), want.String()) {
		t.Fatalf("error does not name chunk %s: %v", want, err)
	}
	if c.Has(want) {
		t.Fatal("unverified chunk cached")
	}
	// Other files are unaffected.
	for _, p := range []string{"/big", "/small/f01"} {
		if got, err := readFile(ctx, f, img.Bootstrap, p); err != nil || !bytes.Equal(got, files[p]) {
			t.Fatalf("%s: %v", p, err)
		}
	}
}

func TestCachePersistsAcrossReopen(t *testing.T) {
	img, files := testImage(t, bootstrap.Zstd)
	dirPath := t.TempDir()
	c1, err := cache.Open(dirPath, 0)
	if err != nil {
		t.Fatal(err)
	}
	f1 := New(c1, []Source{NewStoreSource("store", upload(t, img))})
	checkFiles(t, f1, img.Bootstrap, files)
	f1.Flush()

	c2, err := cache.Open(dirPath, 0)
	if err != nil {
		t.Fatal(err)
	}
	f2 := New(c2, nil) // no sources: everything must come from the cache
	checkFiles(t, f2, img.Bootstrap, files)
	if s := f2.Stats(); s.CacheHits == 0 || s.CacheMisses != 0 {
		t.Fatalf("stats after reopen %+v", s)
	}
}

func TestCacheEvictionRefetches(t *testing.T) {
	img, files := testImage(t, bootstrap.Zstd)
	c, err := cache.Open(t.TempDir(), 40<<10)
	if err != nil {
		t.Fatal(err)
	}
	f := New(c, []Source{NewStoreSource("store", upload(t, img))})
	checkFiles(t, f, img.Bootstrap, files)
	f.Flush()
	if s := c.Stats(); s.Bytes > 40<<10 || s.Evictions == 0 {
		t.Fatalf("cache %+v: want evictions and at most 40 KiB", s)
	}
}

// gate holds every request until released, so a test can line up
// concurrent readers behind one request.
type gate struct {
	Source
	calls   atomic.Int32
	release chan struct{}
}

func (g *gate) FetchFrame(ctx context.Context, blob bootstrap.Digest, off, size int64) ([]byte, error) {
	g.calls.Add(1)
	<-g.release
	return g.Source.FetchFrame(ctx, blob, off, size)
}

func TestSingleflight(t *testing.T) {
	img, files := testImage(t, bootstrap.Zstd)
	b := img.Bootstrap
	g := &gate{Source: NewStoreSource("store", upload(t, img)), release: make(chan struct{})}
	f := New(nil, []Source{g})
	// Every chunk of the packed frame holding /small/f00.
	ino, _ := b.LookupPath("/small/f00")
	frame := b.Chunks[b.FileChunks(ino)[0]].Frame
	var chunks []uint32
	for i, c := range b.Chunks {
		if c.Frame == frame {
			chunks = append(chunks, uint32(i))
		}
	}
	if len(chunks) < 2 {
		t.Fatalf("packed frame holds %d chunks", len(chunks))
	}
	const readers = 16
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	for i := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ci := chunks[i%len(chunks)]
			data, err := f.ReadChunk(context.Background(), b, ci)
			if err == nil && bootstrap.Sum(data) != b.Chunks[ci].Digest {
				err = errors.New("wrong bytes")
			}
			errs <- err
		}()
	}
	// Wait until one reader is in the source and the rest wait on it.
	deadline := time.Now().Add(30 * time.Second)
	for {
		f.mu.Lock()
		var waiting int32
		for _, cl := range f.flight {
			waiting = cl.waiters.Load()
		}
		f.mu.Unlock()
		if g.calls.Load() == 1 && waiting == readers-1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("readers did not line up: %d source calls, %d waiting", g.calls.Load(), waiting)
		}
		time.Sleep(time.Millisecond)
	}
	close(g.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := g.calls.Load(); n != 1 {
		t.Fatalf("%d source requests for one frame, want 1", n)
	}
	checkFiles(t, f, b, map[string][]byte{"/small/f00": files["/small/f00"]})
}

func TestWaiterSurvivesLeaderCancel(t *testing.T) {
	img, _ := testImage(t, bootstrap.Zstd)
	b := img.Bootstrap
	g := &gate{Source: NewStoreSource("store", upload(t, img)), release: make(chan struct{})}
	f := New(nil, []Source{g})
	ino, _ := b.LookupPath("/random")
	ci := b.FileChunks(ino)[0]
	leaderCtx, cancel := context.WithCancel(context.Background())
	leaderErr := make(chan error, 1)
	go func() {
		_, err := f.ReadChunk(leaderCtx, b, ci)
		leaderErr <- err
	}()
	for g.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	waiterErr := make(chan error, 1)
	go func() {
		data, err := f.ReadChunk(context.Background(), b, ci)
		if err == nil && bootstrap.Sum(data) != b.Chunks[ci].Digest {
			err = errors.New("wrong bytes")
		}
		waiterErr <- err
	}()
	for {
		f.mu.Lock()
		cl := f.flight[frameKey{b, b.Chunks[ci].Frame}]
		f.mu.Unlock()
		if cl != nil && cl.waiters.Load() == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	close(g.release)
	if err := <-leaderErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("leader: %v, want canceled", err)
	}
	if err := <-waiterErr; err != nil {
		t.Fatalf("waiter failed because the leader gave up: %v", err)
	}
}

func TestPrefetchMergesRequests(t *testing.T) {
	img, files := testImage(t, bootstrap.Zstd)
	b := img.Bootstrap
	c, err := cache.Open(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	f := New(c, []Source{NewStoreSource("store", upload(t, img))})
	t.Cleanup(f.Flush)
	var inodes []uint32
	blobs := map[uint32]bool{}
	for i := range 20 {
		ino, _ := b.LookupPath(fmt.Sprintf("/plain/f%02d", i))
		inodes = append(inodes, ino)
		blobs[b.Frames[b.Chunks[b.FileChunks(ino)[0]].Frame].Blob] = true
	}
	inodes = append(inodes, bootstrap.RootInode) // not a file: ignored
	if err := f.Prefetch(context.Background(), b, inodes); err != nil {
		t.Fatal(err)
	}
	s := f.Stats().Sources[0]
	if s.Frames != 20 || s.Requests != int64(len(blobs)) {
		t.Fatalf("prefetch of 20 adjacent frames in %d blobs: %+v", len(blobs), s)
	}
	for i := range 20 {
		p := fmt.Sprintf("/plain/f%02d", i)
		checkFiles(t, f, b, map[string][]byte{p: files[p]})
	}
	if after := f.Stats(); after.Sources[0].Requests != s.Requests || after.CacheMisses != 0 {
		t.Fatalf("reads after prefetch went to the source: %+v", after)
	}
	// Prefetching again finds everything cached.
	if err := f.Prefetch(context.Background(), b, inodes); err != nil {
		t.Fatal(err)
	}
	if again := f.Stats().Sources[0].Requests; again != s.Requests {
		t.Fatalf("second prefetch made %d requests", again-s.Requests)
	}
}

func TestPrefetchFallsBackPerFrame(t *testing.T) {
	img, files := testImage(t, bootstrap.Zstd)
	b := img.Bootstrap
	ctx := context.Background()
	bad := upload(t, img)
	want, err := img.Corrupt(ctx, bad, "/plain/f05")
	if err != nil {
		t.Fatal(err)
	}
	c, err := cache.Open(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	f := New(c, []Source{NewStoreSource("corrupt", bad), NewStoreSource("good", upload(t, img))})
	t.Cleanup(f.Flush)
	var inodes []uint32
	for i := range 20 {
		ino, _ := b.LookupPath(fmt.Sprintf("/plain/f%02d", i))
		inodes = append(inodes, ino)
	}
	if err := f.Prefetch(ctx, b, inodes); err != nil {
		t.Fatal(err)
	}
	if s := f.Stats().Sources[1]; s.Frames != 1 {
		t.Fatalf("good source served %d frames, want just the corrupt one", s.Frames)
	}
	checkFiles(t, New(c, nil), b, map[string][]byte{"/plain/f05": files["/plain/f05"]})

	// With no good source, prefetch names the chunk it could not get.
	c2, _ := cache.Open(t.TempDir(), 0)
	err = New(c2, []Source{NewStoreSource("corrupt", bad)}).Prefetch(ctx, b, inodes)
	if err == nil || !strings.Contains(err.Error(), want.String()) {
		t.Fatalf("prefetch error %v does not name %s", err, want)
	}
	if c2.Has(want) || c2.Stats().Entries != 19 {
		t.Fatalf("cache after failed prefetch: %+v", c2.Stats())
	}
}

func TestVerify(t *testing.T) {
	img, _ := testImage(t, bootstrap.Zstd)
	b := img.Bootstrap
	ctx := context.Background()
	st := upload(t, img)
	rep, err := Verify(ctx, b, NewStoreSource("store", st), VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Bad) != 0 || rep.Frames != len(b.Frames) {
		t.Fatalf("clean image: %+v", rep)
	}
	want, err := img.Corrupt(ctx, st, "/small/f10")
	if err != nil {
		t.Fatal(err)
	}
	var progress atomic.Int64
	rep, err = Verify(ctx, b, NewStoreSource("store", st), VerifyOptions{Concurrency: 2, Progress: func(done, total int64) { progress.Store(done) }})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, bc := range rep.Bad {
		found = found || bc.Digest == want
	}
	if !found || progress.Load() != rep.Bytes {
		t.Fatalf("corrupt chunk %s not reported: %+v", want, rep)
	}
	// A missing store reports every stored chunk.
	rep, err = Verify(ctx, b, NewStoreSource("empty", newStore(t)), VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Bad) != rep.Chunks || rep.Chunks == 0 {
		t.Fatalf("empty store: %d bad of %d", len(rep.Bad), rep.Chunks)
	}
}

// benchmarkHit reads one chunk once to warm the caches, then times reads
// through the fetcher that next returns against reading the chunk's bytes
// from a plain file, and reports the ratio as unit.
func benchmarkHit(b *testing.B, unit string, c *cache.Cache, next func(*Fetcher) *Fetcher) {
	img, _ := testImage(b, bootstrap.Zstd)
	f := New(c, []Source{NewStoreSource("store", upload(b, img))})
	ino, _ := img.Bootstrap.LookupPath("/big")
	ci := img.Bootstrap.FileChunks(ino)[0]
	data, err := f.ReadChunk(context.Background(), img.Bootstrap, ci)
	if err != nil {
		b.Fatal(err)
	}
	f.Flush() // the chunk waits for a quiet moment to reach the disk cache
	plain := filepath.Join(b.TempDir(), "plain")
	if err := os.WriteFile(plain, data, 0o644); err != nil {
		b.Fatal(err)
	}
	benchratio.Report(b, unit, func() {
		if _, err := next(f).ReadChunk(context.Background(), img.Bootstrap, ci); err != nil {
			b.Fatal(err)
		}
	}, func() {
		if _, err := os.ReadFile(plain); err != nil {
			b.Fatal(err)
		}
	})
}

func BenchmarkReadChunkMemoryHit(b *testing.B) {
	benchmarkHit(b, "memory-hit/read-file", nil, func(f *Fetcher) *Fetcher { return f })
}

func BenchmarkReadChunkDiskHit(b *testing.B) {
	c, err := cache.Open(b.TempDir(), 0)
	if err != nil {
		b.Fatal(err)
	}
	// A fresh fetcher each time skips the memory tier.
	benchmarkHit(b, "disk-hit/read-file", c, func(*Fetcher) *Fetcher { return New(c, nil) })
}

// BenchmarkColdSmallFiles reads 2,000 small files of source text, packed
// into shared frames, through a fetcher that has none of them yet: the
// cold walk of a toolchain's sources, less the kernel. It reports its time
// against the least any loader does for the same files: reading each
// frame from the same source, decompressing it and hashing its chunks,
// one after another, keeping nothing.
func BenchmarkColdSmallFiles(b *testing.B) {
	var entries []fetchtest.Entry
	for i := range 2000 {
		data := fixture.Text(uint64(i), 2<<10+i%16<<10)
		entries = append(entries, fetchtest.Entry{Path: fmt.Sprintf("/src/f%04d", i), Mode: bootstrap.ModeRegular | 0o644, Data: data, Pack: true})
	}
	img, err := fetchtest.Build(entries, fetchtest.Options{ChunkSize: 1 << 20, PackSize: 256 << 10, Compression: bootstrap.Zstd})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	src := NewStoreSource("store", upload(b, img))
	bs := img.Bootstrap
	ix := newFrameIndex(bs)
	frameByFrame := func() {
		for fi, fr := range bs.Frames {
			raw, err := src.FetchFrame(ctx, bs.Blobs[fr.Blob], fr.Offset, int64(fr.CompressedSize))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := ix.verified(bs, uint32(fi), raw); err != nil {
				b.Fatal(err)
			}
		}
	}
	benchratio.Report(b, "cold/frame-by-frame", func() {
		f := New(nil, []Source{src})
		for i := range entries {
			ino, _ := bs.LookupPath(entries[i].Path)
			for _, ci := range bs.FileChunks(ino) {
				if _, err := f.ReadChunk(ctx, bs, ci); err != nil {
					b.Fatal(err)
				}
			}
		}
	}, frameByFrame)
}

func TestFrameIndexReleasedWithBootstrap(t *testing.T) {
	img, _ := testImage(t, bootstrap.None)
	f := New(nil, []Source{NewStoreSource("store", upload(t, img))})
	func() {
		b := img.Bootstrap
		img.Bootstrap = nil
		ino, _ := b.LookupPath("/big")
		if _, err := f.ReadChunk(context.Background(), b, b.FileChunks(ino)[0]); err != nil {
			t.Fatal(err)
		}
	}()
	count := func() int {
		n := 0
		f.index.Range(func(any, any) bool { n++; return true })
		return n
	}
	if count() != 1 {
		t.Fatalf("%d frame indexes, want 1", count())
	}
	deadline := time.Now().Add(30 * time.Second)
	for count() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("frame index kept after its bootstrap became unreachable")
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPrefetchWithConcurrentReads runs a prefetch while readers read the
// same files: every reader gets the right bytes, and no frame is fetched
// twice.
func TestPrefetchWithConcurrentReads(t *testing.T) {
	img, files := testImage(t, bootstrap.Zstd)
	b := img.Bootstrap
	f := New(nil, []Source{NewStoreSource("store", upload(t, img))})
	var inodes []uint32
	var paths []string
	for p := range files {
		ino, _ := b.LookupPath(p)
		inodes = append(inodes, ino)
		paths = append(paths, p)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 5)
	wg.Add(1)
	go func() {
		defer wg.Done()
		errs <- f.Prefetch(context.Background(), b, inodes)
	}()
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range paths {
				p := paths[(i+g*7)%len(paths)]
				got, err := readFile(context.Background(), f, b, p)
				if err == nil && !bytes.Equal(got, files[p]) {
					err = fmt.Errorf("%s: wrong bytes", p)
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if s := f.Stats().Sources[0]; s.Frames > int64(len(b.Frames)) || s.Errors != 0 {
		t.Fatalf("%d frames fetched for %d in the image: %+v", s.Frames, len(b.Frames), s)
	}
}

// TestWarm: chunks on disk are brought into memory for a reader about to
// want them; chunks not on disk are left alone (no source is asked).
func TestWarm(t *testing.T) {
	img, files := testImage(t, bootstrap.Zstd)
	b := img.Bootstrap
	dir := t.TempDir()
	c, err := cache.Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	f1 := New(c, []Source{NewStoreSource("store", upload(t, img))})
	t.Cleanup(f1.Flush)
	if _, err := readFile(context.Background(), f1, b, "/big"); err != nil {
		t.Fatal(err)
	}
	f1.Flush()

	c2, err := cache.Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := New(c2, []Source{NewStoreSource("store", upload(t, img))})
	big, _ := b.LookupPath("/big")
	var absent []uint32 // chunks the first reader did not bring to disk
	for ci, c := range b.Chunks {
		if !c.Zero() && !c2.Has(c.Digest) {
			absent = append(absent, uint32(ci))
		}
	}
	if len(absent) == 0 {
		t.Fatal("test image: every chunk is on disk")
	}
	ahead := b.FileChunks(big)[:4]
	f.Warm(b, ahead)
	f.Warm(b, absent[:1]) // not on disk: nothing happens
	deadline := time.Now().Add(10 * time.Second)
	for _, ci := range ahead {
		for d := b.Chunks[ci].Digest; !b.Chunks[ci].Zero() && !f.mem.Has(d); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("chunk %s not warmed", d)
			}
		}
	}
	got, err := readFile(context.Background(), f, b, "/big")
	if err != nil || !bytes.Equal(got, files["/big"]) {
		t.Fatalf("/big after warm: %d bytes, %v", len(got), err)
	}
	s := f.Stats()
	if s.MemoryHits != int64(len(ahead)) || s.Sources[0].Requests != 0 {
		t.Errorf("stats after warm %+v: want %d memory hits and no requests", s, len(ahead))
	}
	if f.mem.Has(b.Chunks[absent[0]].Digest) {
		t.Error("a chunk not on disk was warmed")
	}
}

// TestWarmAdvisesCheckedChunks: chunks this process has checked are left
// to the kernel's page cache (posix_fadvise, in the background), not
// loaded into memory, and read from disk afterwards.
func TestWarmAdvisesCheckedChunks(t *testing.T) {
	img, files := testImage(t, bootstrap.Zstd)
	b := img.Bootstrap
	c, err := cache.Open(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	st := upload(t, img)
	f1 := New(c, []Source{NewStoreSource("store", st)})
	if _, err := readFile(context.Background(), f1, b, "/big"); err != nil {
		t.Fatal(err)
	}
	f1.Flush()

	// A fresh fetcher on the same cache: nothing in memory, every chunk
	// of /big checked by this process.
	f := New(c, []Source{NewStoreSource("store", st)})
	big, _ := b.LookupPath("/big")
	ahead := b.FileChunks(big)[:4]
	f.Warm(b, ahead)
	deadline := time.Now().Add(10 * time.Second)
	for busy := true; busy; {
		busy = false
		f.warming.Range(func(any, any) bool { busy = true; return false })
		if time.Now().After(deadline) {
			t.Fatal("warming did not finish")
		}
		time.Sleep(time.Millisecond)
	}
	for _, ci := range ahead {
		if d := b.Chunks[ci].Digest; f.mem.Has(d) {
			t.Errorf("checked chunk %s was loaded into memory, want it left to the page cache", d)
		}
	}
	got, err := readFile(context.Background(), f, b, "/big")
	if err != nil || !bytes.Equal(got, files["/big"]) {
		t.Fatalf("/big after warm: %d bytes, %v", len(got), err)
	}
	if s := f.Stats(); s.Sources[0].Requests != 0 || s.CacheHits == 0 {
		t.Errorf("stats after warm %+v: want reads from the disk cache and no requests", s)
	}
}

// TestFetchBringsManyChunksInOneRound: the chunks of many adjacent frames
// come with one request per blob, and reading them then goes to no source.
func TestFetchBringsManyChunksInOneRound(t *testing.T) {
	img, files := testImage(t, bootstrap.Zstd)
	b := img.Bootstrap
	f := New(nil, []Source{NewStoreSource("store", upload(t, img))})
	var chunks []uint32
	blobs := map[uint32]bool{}
	want := map[string][]byte{}
	for i := range 20 {
		p := fmt.Sprintf("/plain/f%02d", i)
		ino, _ := b.LookupPath(p)
		chunks = append(chunks, b.FileChunks(ino)...)
		blobs[b.Frames[b.Chunks[b.FileChunks(ino)[0]].Frame].Blob] = true
		want[p] = files[p]
	}
	f.Fetch(context.Background(), b, chunks)
	s := f.Stats().Sources[0]
	if s.Frames != 20 || s.Requests != int64(len(blobs)) {
		t.Fatalf("fetch of 20 adjacent frames in %d blobs: %+v", len(blobs), s)
	}
	checkFiles(t, f, b, want)
	if after := f.Stats(); after.Sources[0].Requests != s.Requests || after.CacheMisses != 0 {
		t.Fatalf("reads after the fetch went to the source: %+v", after)
	}
	// One missing frame is left to the read, with its own readahead.
	f2 := New(nil, []Source{NewStoreSource("store", upload(t, img))})
	f2.Fetch(context.Background(), b, chunks[:1])
	if n := f2.Stats().Sources[0].Requests; n != 0 {
		t.Fatalf("fetch of one frame made %d requests", n)
	}
}

// downSource fails every request while down, counting them all.
type downSource struct {
	Source
	down     atomic.Bool
	requests atomic.Int64
}

func (s *downSource) FetchFrame(ctx context.Context, blob bootstrap.Digest, off, size int64) ([]byte, error) {
	s.requests.Add(1)
	if s.down.Load() {
		return nil, errors.New("connection refused")
	}
	return s.Source.FetchFrame(ctx, blob, off, size)
}

// TestFailedFrameFailsAtOnce: a frame every source just failed fails
// again at once, without asking them, for failMemo; other frames are
// fetched as usual, and once it has passed the frame is fetched again.
func TestFailedFrameFailsAtOnce(t *testing.T) {
	img, files := testImage(t, bootstrap.Zstd)
	ctx := context.Background()
	src := &downSource{Source: NewStoreSource("store", upload(t, img))}
	f := New(nil, []Source{src})
	src.down.Store(true)
	start := time.Now()
	if _, err := readFile(ctx, f, img.Bootstrap, "/random"); err == nil {
		t.Fatal("read succeeded from a source that is down")
	}
	asked := src.requests.Load()
	_, err := readFile(ctx, f, img.Bootstrap, "/random")
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("second read: %v, want the first failure again", err)
	}
	if n := src.requests.Load(); n != asked && time.Since(start) < failMemo {
		t.Fatalf("second read within %s asked the source %d more times", failMemo, n-asked)
	}
	src.down.Store(false)
	if got, err := readFile(ctx, f, img.Bootstrap, "/big"); err != nil || !bytes.Equal(got, files["/big"]) {
		t.Fatalf("another file while /random's failure is remembered: %v", err)
	}
	time.Sleep(time.Until(start.Add(failMemo + 50*time.Millisecond)))
	if got, err := readFile(ctx, f, img.Bootstrap, "/random"); err != nil || !bytes.Equal(got, files["/random"]) {
		t.Fatalf("read after %s with the source back: %v", failMemo, err)
	}
}

// TestFetchAsksADeadSourceOnce: a merged request to a source that cannot
// be read at all is not followed by one request per frame, and its
// frames' readers then fail at once.
func TestFetchAsksADeadSourceOnce(t *testing.T) {
	img, _ := testImage(t, bootstrap.Zstd)
	ctx := context.Background()
	src := &downSource{Source: NewStoreSource("store", upload(t, img))}
	src.down.Store(true)
	f := New(nil, []Source{src})
	b := img.Bootstrap
	ino, _ := b.LookupPath("/big")
	chunks := b.FileChunks(ino)
	frames := map[uint32]bool{}
	for _, ci := range chunks {
		frames[b.Chunks[ci].Frame] = true
	}
	if len(frames) < 3 {
		t.Fatalf("/big spans %d frames; the test needs several", len(frames))
	}
	f.Fetch(ctx, b, chunks)
	if n := src.requests.Load(); n != 1 {
		t.Fatalf("a merged fetch of %d frames from a dead source made %d requests, want 1", len(frames), n)
	}
	if _, err := readFile(ctx, f, b, "/big"); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("read after the failed fetch: %v", err)
	}
	if n := src.requests.Load(); n != 1 {
		t.Fatalf("reading the frames that just failed made %d more requests", n-1)
	}
}

// TestPrefetchLimit: a limited Prefetch reads no more than its limiter
// admits, and says it stopped short; unlimited, it reads everything.
func TestPrefetchLimit(t *testing.T) {
	img, _ := testImage(t, bootstrap.Zstd)
	st := upload(t, img)
	b := img.Bootstrap
	all := make([]uint32, len(b.Inodes))
	for i := range all {
		all[i] = uint32(i)
	}
	stored := func(f *Fetcher) int64 { return f.Stats().Sources[0].Bytes }

	f := New(nil, []Source{NewStoreSource("store", st)})
	if err := f.Prefetch(context.Background(), b, all); err != nil {
		t.Fatal(err)
	}
	whole := stored(f)

	// 32 KiB at once, then a byte a second: the rest would take hours.
	const burst = 32 << 10
	limited := New(nil, []Source{NewStoreSource("store", st)})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := limited.Prefetch(ctx, b, all, Limit(rate.NewLimiter(1, burst)))
	if err == nil || !strings.Contains(err.Error(), "rate limit") {
		t.Fatalf("a prefetch past its limit: %v, want a rate limit error", err)
	}
	if got := stored(limited); got == 0 || got > burst || whole <= burst {
		t.Fatalf("limited prefetch read %d bytes, want some and at most %d (of %d)", got, burst, whole)
	}
}

// TestPersistAsyncWritesEverything: every disk write handed over is done
// by the time Flush returns, however the writers come and go, whether
// queued or (the queue full) done by the caller.
func TestPersistAsyncWritesEverything(t *testing.T) {
	f := New(nil, nil)
	var done atomic.Int64
	const callers, each = 8, 2000
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for i := range each {
				f.persistAsync(func() {
					if i%100 == 0 {
						time.Sleep(time.Millisecond) // let the queue fill
					}
					done.Add(1)
				})
			}
		})
	}
	wg.Wait()
	f.Flush()
	if got := done.Load(); got != callers*each {
		t.Fatalf("%d of %d writes done after Flush", got, callers*each)
	}
}

// stalledSource answers nothing until its request is given up.
type stalledSource struct {
	Source
	requests atomic.Int64
}

func (s *stalledSource) FetchFrame(ctx context.Context, blob bootstrap.Digest, off, size int64) ([]byte, error) {
	s.requests.Add(1)
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestStalledSourceIsGivenUp: a source that neither answers nor fails
// holds a read only for the Fetcher's timeout, then the next source
// serves it, even for a reader whose context never ends (a FUSE read).
func TestStalledSourceIsGivenUp(t *testing.T) {
	img, files := testImage(t, bootstrap.Zstd)
	stalled := &stalledSource{Source: NewStoreSource("stalled", newStore(t))}
	f := New(nil, []Source{stalled, NewStoreSource("good", upload(t, img))})
	f.timeout = 100 * time.Millisecond
	done := make(chan struct{})
	go func() {
		defer close(done)
		checkFiles(t, f, img.Bootstrap, map[string][]byte{"/big": files["/big"], "/random": files["/random"]})
		if err := f.Prefetch(context.Background(), img.Bootstrap, everyInode(img.Bootstrap)); err != nil {
			t.Errorf("prefetch: %v", err)
		}
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("reads still wait on a stalled source")
	}
	if stalled.requests.Load() == 0 {
		t.Fatal("the stalled source was never asked")
	}
}

// TestStalledSourceFailsItsJoinersOnce: when the only source stalls, the
// readers of a frame all fail with its one request, and a read right
// after fails at once: a request's own timeout is the source failing,
// not a reader giving up.
func TestStalledSourceFailsItsJoinersOnce(t *testing.T) {
	img, _ := testImage(t, bootstrap.Zstd)
	stalled := &stalledSource{Source: NewStoreSource("stalled", newStore(t))}
	f := New(nil, []Source{stalled})
	f.timeout = 200 * time.Millisecond
	b := img.Bootstrap
	ino, _ := b.LookupPath("/random")
	ci := b.FileChunks(ino)[0]
	const readers = 5
	errs := make(chan error, readers)
	for range readers {
		go func() {
			_, err := f.ReadChunk(context.Background(), b, ci)
			errs <- err
		}()
	}
	for range readers {
		if err := <-errs; !errors.Is(err, errStalled) {
			t.Fatalf("read from a stalled source: %v, want errStalled", err)
		}
	}
	if n := stalled.requests.Load(); n != 1 {
		t.Fatalf("%d readers of one frame asked the stalled source %d times, want once", readers, n)
	}
	if _, err := f.ReadChunk(context.Background(), b, ci); err == nil {
		t.Fatal("a read right after succeeded")
	}
	if n := stalled.requests.Load(); n != 1 {
		t.Fatal("a read right after the failure asked the source again")
	}
}

func TestStalled(t *testing.T) {
	live := context.Background()
	expired, cancel := context.WithTimeout(live, -1)
	defer cancel()
	parentGone, cancel2 := context.WithCancel(live)
	cancel2()
	reqOfGone, cancel3 := context.WithTimeout(parentGone, -1)
	defer cancel3()
	parentExpired, cancel4 := context.WithTimeout(live, -1)
	defer cancel4()
	reqOfExpired, cancel5 := context.WithTimeout(parentExpired, time.Hour)
	defer cancel5()
	peerTimeout := fmt.Errorf("peer fetch: %w (every parent failed): p1: %w", ErrNotHeld, context.DeadlineExceeded)
	for _, tc := range []struct {
		name         string
		parent, req  context.Context
		err          error
		stalled, not bool // errStalled; ErrNotHeld kept
	}{
		{"the request's own deadline", live, expired, fmt.Errorf("get: %w", context.DeadlineExceeded), true, false},
		{"a deadline of the source's own", live, live, peerTimeout, false, true},
		{"the caller gave up", parentGone, reqOfGone, context.Canceled, false, false},
		{"the caller's own deadline", parentExpired, reqOfExpired, context.DeadlineExceeded, false, false},
		{"no error", live, expired, nil, false, false},
	} {
		err := stalled(tc.parent, tc.req, tc.err)
		if errors.Is(err, errStalled) != tc.stalled || errors.Is(err, ErrNotHeld) != tc.not {
			t.Errorf("%s: %v", tc.name, err)
		}
		if tc.stalled && errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: %v still reads as a reader giving up", tc.name, err)
		}
	}
}
