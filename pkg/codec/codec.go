// Package codec compresses and decompresses Skiff frames. It is the only
// place that knows how each bootstrap.Compression maps to a library, so the
// converter and every reader agree byte for byte.
package codec

import (
	"fmt"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

var (
	encOnce sync.Once
	enc     *zstd.Encoder
	decOnce sync.Once
	dec     *zstd.Decoder
)

func zstdEncoder() *zstd.Encoder {
	encOnce.Do(func() {
		// EncodeAll on a shared encoder is safe for concurrent use, but
		// each call holds one of the encoder's states: as many states as
		// Go may run threads, so that the converter's workers compress in
		// parallel rather than queue for one. The options are constants;
		// an error here is a programming error.
		var err error
		enc, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithZeroFrames(true))
		if err != nil {
			panic(fmt.Sprintf("codec: zstd encoder: %v", err))
		}
	})
	return enc
}

func zstdDecoder() *zstd.Decoder {
	decOnce.Do(func() {
		// Frames come from peers before their digests are checked. With
		// the cap limit, DecodeAll never grows dst: a frame whose header
		// claims more than the size the bootstrap gives fails before
		// anything is allocated for it. The frame's own checksum is not
		// checked: every chunk of it is, against its SHA-256 digest, by
		// the one caller (fetch), and hashing each frame twice cost an
		// eighth of its decoding time.
		var err error
		dec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(bootstrap.MaxFrameSize), zstd.WithDecodeAllCapLimit(true), zstd.IgnoreChecksum(true))
		if err != nil {
			panic(fmt.Sprintf("codec: zstd decoder: %v", err))
		}
	})
	return dec
}

// Compress appends the compressed form of src to dst.
func Compress(c bootstrap.Compression, dst, src []byte) ([]byte, error) {
	switch c {
	case bootstrap.None:
		return append(dst, src...), nil
	case bootstrap.Zstd:
		return zstdEncoder().EncodeAll(src, dst), nil
	case bootstrap.LZ4:
		start := len(dst)
		bound := lz4.CompressBlockBound(len(src))
		dst = grow(dst, bound)
		// The hash table argument is ignored: lz4 pools its compressors.
		n, err := lz4.CompressBlock(src, dst[start:start+bound], nil)
		if err != nil {
			return nil, fmt.Errorf("lz4 compress: %w", err)
		}
		if n == 0 {
			// Incompressible: lz4 block format cannot express this, so the
			// frame would not round trip. Callers store such frames as None.
			return nil, errIncompressible
		}
		return dst[:start+n], nil
	}
	return nil, fmt.Errorf("compress: unknown compression %d", c)
}

var errIncompressible = fmt.Errorf("incompressible")

// CompressFrame compresses src with c, falling back to None when the
// compressed form would not be smaller. It returns the codec actually used.
func CompressFrame(c bootstrap.Compression, dst, src []byte) ([]byte, bootstrap.Compression, error) {
	if c == bootstrap.None {
		return append(dst, src...), bootstrap.None, nil
	}
	start := len(dst)
	out, err := Compress(c, dst, src)
	if err == errIncompressible || (err == nil && len(out)-start >= len(src)) {
		return append(dst[:start], src...), bootstrap.None, nil
	}
	if err != nil {
		return nil, 0, err
	}
	return out, c, nil
}

// decodeSlack is the spare capacity the zstd decoder gets past a frame's
// size: with 16 bytes beyond the output it copies literals and matches in
// whole 16-byte blocks, and without them it takes its bounds-exact copies
// for a frame's last 128 KiB, which made decoding 256 KiB frames of source
// code a fifth slower.
const decodeSlack = 16

// Decompress decompresses src, which must expand to exactly size bytes,
// into dst (reusing its capacity). Hostile input never allocates more than
// size bytes (and decodeSlack).
func Decompress(c bootstrap.Compression, dst, src []byte, size int) ([]byte, error) {
	switch c {
	case bootstrap.None:
		if len(src) != size {
			return nil, fmt.Errorf("decompress: stored frame is %d bytes, want %d", len(src), size)
		}
		return append(dst[:0], src...), nil
	case bootstrap.Zstd:
		out, err := zstdDecoder().DecodeAll(src, grow(dst[:0], size+decodeSlack)[:0:size+decodeSlack])
		if err != nil {
			return nil, fmt.Errorf("zstd decompress: %w", err)
		}
		if len(out) != size {
			return nil, fmt.Errorf("zstd decompress: got %d bytes, want %d", len(out), size)
		}
		return out, nil
	case bootstrap.LZ4:
		out := grow(dst[:0], size)[:size]
		n, err := lz4.UncompressBlock(src, out)
		if err != nil {
			return nil, fmt.Errorf("lz4 decompress: %w", err)
		}
		if n != size {
			return nil, fmt.Errorf("lz4 decompress: got %d bytes, want %d", n, size)
		}
		return out, nil
	}
	return nil, fmt.Errorf("decompress: unknown compression %d", c)
}

func grow(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b
	}
	nb := make([]byte, len(b), len(b)+n)
	copy(nb, b)
	return nb
}
