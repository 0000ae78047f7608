package codec

import (
	"bytes"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"

	"github.com/skiff-dev/skiff/internal/benchratio"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// sample returns n bytes that compress somewhat, as file contents do.
func sample(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = "abcdefgh"[r.IntN(8)]
	}
	return b
}

func random(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    bootstrap.Compression
		src  []byte
		used bootstrap.Compression
	}{
		{"zstd", bootstrap.Zstd, sample(200<<10, 1), bootstrap.Zstd},
		{"lz4", bootstrap.LZ4, sample(200<<10, 2), bootstrap.LZ4},
		{"none", bootstrap.None, sample(1000, 3), bootstrap.None},
		// Incompressible input is stored as it is, whatever was asked.
		{"zstd incompressible", bootstrap.Zstd, random(64 << 10), bootstrap.None},
		{"lz4 incompressible", bootstrap.LZ4, random(64 << 10), bootstrap.None},
		{"zstd one byte", bootstrap.Zstd, []byte{'x'}, bootstrap.None},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := []byte("kept")
			out, used, err := CompressFrame(tc.c, append([]byte(nil), prefix...), tc.src)
			if err != nil {
				t.Fatal(err)
			}
			if used != tc.used {
				t.Fatalf("codec used = %v, want %v", used, tc.used)
			}
			if !bytes.HasPrefix(out, prefix) {
				t.Fatal("CompressFrame overwrote dst")
			}
			got, err := Decompress(used, make([]byte, 10), out[len(prefix):], len(tc.src))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.src) {
				t.Fatal("round trip changed the bytes")
			}
		})
	}
}

func TestDecompressRejectsWrongSize(t *testing.T) {
	src := sample(100<<10, 4)
	for _, c := range []bootstrap.Compression{bootstrap.Zstd, bootstrap.LZ4, bootstrap.None} {
		frame, err := Compress(c, nil, src)
		if err != nil {
			t.Fatal(err)
		}
		for _, size := range []int{len(src) - 1, len(src) + 1} {
			if _, err := Decompress(c, nil, frame, size); err == nil {
				t.Errorf("%v: a %d-byte frame decompressed as %d bytes", c, len(src), size)
			}
		}
	}
	if _, err := Decompress(bootstrap.Compression(99), nil, []byte("x"), 1); err == nil {
		t.Error("unknown compression decompressed")
	}
}

// Every chunk of a frame is checked against its digest once it is
// decompressed, so the zstd frame's own checksum is not checked again: a
// frame whose checksum is wrong decodes to its bytes, which the digests
// then judge.
func TestDecompressLeavesChecksumToDigests(t *testing.T) {
	src := sample(100<<10, 4)
	frame, err := Compress(bootstrap.Zstd, nil, src)
	if err != nil {
		t.Fatal(err)
	}
	frame[len(frame)-1] ^= 0xff // the last byte of the checksum
	got, err := Decompress(bootstrap.Zstd, nil, frame, len(src))
	if err != nil {
		t.Fatalf("frame with a wrong checksum: %v", err)
	}
	if !bytes.Equal(got, src) {
		t.Fatal("frame with a wrong checksum decoded to other bytes")
	}
}

// A peer's frame is decompressed before its digest is checked: a small
// frame that claims to expand far beyond the size the bootstrap gives
// must fail without the decoder allocating what it claims.
func TestDecompressBombAllocatesLittle(t *testing.T) {
	bomb := zstdEncoder().EncodeAll(make([]byte, 256<<20), nil)
	if len(bomb) > 64<<10 {
		t.Fatalf("bomb is %d bytes", len(bomb))
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := Decompress(bootstrap.Zstd, nil, bomb, 4096)
	runtime.ReadMemStats(&after)
	if err == nil {
		t.Fatal("a frame of 256 MiB decompressed as 4096 bytes")
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 16<<20 {
		t.Fatalf("decompressing a bomb allocated %d bytes", got)
	}
}

func FuzzDecompress(f *testing.F) {
	src := sample(4096, 5)
	for _, c := range []bootstrap.Compression{bootstrap.Zstd, bootstrap.LZ4, bootstrap.None} {
		frame, err := Compress(c, nil, src)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(c), frame, uint32(len(src)))
	}
	f.Fuzz(func(t *testing.T, c uint8, frame []byte, size uint32) {
		size %= 1 << 20
		out, err := Decompress(bootstrap.Compression(c), nil, frame, int(size))
		if err == nil && len(out) != int(size) {
			t.Fatalf("decompressed %d bytes, want %d", len(out), size)
		}
	})
}

// BenchmarkCompressFrameParallel compresses frames on every CPU at once,
// as the converter's workers do, against the same frames one after another
// on one: the ratio shows whether they really run in parallel (at best
// 1/GOMAXPROCS), rather than queue for a shared encoder.
func BenchmarkCompressFrameParallel(b *testing.B) {
	src := sample(1<<20, 6)
	procs := runtime.GOMAXPROCS(0)
	frames := 4 * procs
	compress := func(n int) {
		var dst []byte
		for range n {
			out, _, err := CompressFrame(bootstrap.Zstd, dst[:0], src)
			if err != nil {
				b.Error(err)
				return
			}
			dst = out
		}
	}
	benchratio.Report(b, "parallel/serial", func() {
		var wg sync.WaitGroup
		for range procs {
			wg.Go(func() { compress(frames / procs) })
		}
		wg.Wait()
	}, func() { compress(frames) })
}
