package convert

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
)

// Chunking selects how file content is cut into chunks.
type Chunking string

const (
	// FixedChunking cuts every file at multiples of the chunk size, so a
	// read at offset off needs chunk off/size: the cheapest to serve.
	FixedChunking Chunking = "fixed"
	// CDCChunking cuts at content-defined boundaries (FastCDC), so an
	// insertion only changes the chunks around it.
	CDCChunking Chunking = "cdc"
)

// ParseChunking parses "fixed" or "cdc".
func ParseChunking(s string) (Chunking, error) {
	switch Chunking(s) {
	case FixedChunking, CDCChunking:
		return Chunking(s), nil
	}
	return "", fmt.Errorf("unknown chunking %q (want fixed or cdc)", s)
}

// chunker splits a stream into chunks, calling fn for each. The slice is
// only valid during the call. It returns the number of bytes read.
type chunker interface {
	split(r io.Reader, fn func([]byte) error) (int64, error)
}

func newChunker(c Chunking, size int) chunker {
	if c == CDCChunking {
		return newCDC(size)
	}
	return &fixed{buf: make([]byte, size)}
}

type fixed struct{ buf []byte }

func (f *fixed) split(r io.Reader, fn func([]byte) error) (int64, error) {
	var total int64
	for {
		n, err := io.ReadFull(r, f.buf)
		if n > 0 {
			total += int64(n)
			if err := fn(f.buf[:n]); err != nil {
				return total, err
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// gear is FastCDC's table of random 64-bit values, fixed by a seeded
// generator so every converter cuts the same content at the same places.
var gear = func() (t [256]uint64) {
	r := rand.New(rand.NewPCG(0x736b696666, 0x63646367656172))
	for i := range t {
		t[i] = r.Uint64()
	}
	return t
}()

// cdc is FastCDC with normalised chunking: sizes between avg/4 and avg*2,
// a stricter mask before the average size and a looser one after it.
type cdc struct {
	min, avg, max     int
	maskSmall, maskLg uint64
	buf               []byte
}

func newCDC(avg int) *cdc {
	bits := 0
	for 1<<(bits+1) <= avg {
		bits++
	}
	return &cdc{
		min: avg / 4, avg: avg, max: avg * 2,
		maskSmall: spreadMask(bits + 1),
		maskLg:    spreadMask(bits - 1),
		buf:       make([]byte, 0, avg*4),
	}
}

// spreadMask returns a mask with n one-bits spread over the high bits, as
// FastCDC recommends, so that cuts depend on a 48-byte window.
func spreadMask(n int) uint64 {
	var m uint64
	for i := 0; i < n && i < 32; i++ {
		m |= 1 << (63 - 2*i)
	}
	return m
}

func (c *cdc) cut(b []byte) int {
	if len(b) <= c.min {
		return len(b)
	}
	n := min(len(b), c.max)
	norm := min(c.avg, n)
	var h uint64
	i := c.min
	for ; i < norm; i++ {
		h = h<<1 + gear[b[i]]
		if h&c.maskSmall == 0 {
			return i + 1
		}
	}
	for ; i < n; i++ {
		h = h<<1 + gear[b[i]]
		if h&c.maskLg == 0 {
			return i + 1
		}
	}
	return n
}

func (c *cdc) split(r io.Reader, fn func([]byte) error) (int64, error) {
	var total int64
	buf := c.buf[:0]
	eof := false
	for {
		for !eof && len(buf) < c.max {
			n, err := r.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+n]
			total += int64(n)
			if errors.Is(err, io.EOF) {
				eof = true
			} else if err != nil {
				return total, err
			}
		}
		if len(buf) == 0 {
			return total, nil
		}
		if eof && len(buf) <= c.min {
			return total, fn(buf)
		}
		k := c.cut(buf)
		if err := fn(buf[:k]); err != nil {
			return total, err
		}
		buf = buf[:copy(buf, buf[k:])]
	}
}
