package convert

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// memSink keeps chunks in memory: the one faked seam of these tests.
type memSink struct{ chunks map[bootstrap.Digest][]byte }

func (s *memSink) add(data []byte) (chunkRef, error) {
	d := bootstrap.Digest(sha256.Sum256(data))
	if s.chunks == nil {
		s.chunks = map[bootstrap.Digest][]byte{}
	}
	s.chunks[d] = append([]byte(nil), data...)
	return chunkRef{digest: d, size: uint32(len(data)), zero: isZero(data)}, nil
}

func mustTar(t *testing.T, ents ...fixture.Entry) []byte {
	t.Helper()
	b, err := fixture.Tar(ents)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCleanPath(t *testing.T) {
	tests := []struct {
		in, want string
		err      string
	}{
		{"a/b", "a/b", ""},
		{"./a/b/", "a/b", ""},
		{"/etc/passwd", "etc/passwd", ""},
		{"a//b/./c", "a/b/c", ""},
		{".", "", ""},
		{"./", "", ""},
		{"../etc/passwd", "", "escapes the root"},
		{"a/../../b", "", "escapes the root"},
		{"a/../b", "", "escapes the root"},
		{"a\x00b", "", "NUL"},
		{strings.Repeat("x", 256), "", "longer than 255"},
	}
	for _, tt := range tests {
		got, err := cleanPath(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("cleanPath(%q) = %q, %v; want error %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("cleanPath(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

// TestHostileTar feeds malformed and malicious streams to the layer reader:
// each must fail with a clear error naming the problem, never panic, and
// never produce an entry outside the root.
func TestHostileTar(t *testing.T) {
	valid := mustTar(t, fixture.File("ok", 0o644, "hello world"))
	hugeHeader := func() []byte {
		// A GNU long-name record ('L') claiming 4 MiB: the name of the next
		// entry would be 4 MiB long. Built by hand since tar.Writer refuses.
		b := mustTar(t, fixture.File("f", 0o644, ""))
		h := append([]byte(nil), b[:512]...)
		h[156] = 'L'
		copy(h[124:136], []byte("00020000000\x00"))
		fixChecksum(h)
		out := append(h, bytes.Repeat([]byte("A"), 4<<20)...)
		return append(out, b...)
	}
	bogusSize := func() []byte {
		b := mustTar(t, fixture.File("f", 0o644, "abc"))
		// Claim 1 GiB in the octal size field (offset 124, 12 bytes) and
		// fix the header checksum so only the size is wrong.
		copy(b[124:136], []byte("10000000000\x00"))
		fixChecksum(b[:512])
		return b
	}
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"dotdot path", mustTar(t, fixture.File("../../etc/evil", 0o644, "x")), "escapes the root"},
		{"dotdot inside", mustTar(t, fixture.File("a/../../evil", 0o644, "x")), "escapes the root"},
		{"hardlink escape", mustTar(t, fixture.File("a", 0o644, "x"), fixture.Hardlink("b", "../../etc/shadow")), "escapes the root"},
		{"hardlink to self", mustTar(t, fixture.Hardlink("b", "b")), "invalid"},
		{"empty symlink", mustTar(t, fixture.Symlink("l", "")), "empty target"},
		{"truncated stream", valid[:600], "unexpected EOF"},
		{"truncated header", valid[:300], "unexpected EOF"},
		{"huge header", hugeHeader(), "too long"},
		{"bogus size", bogusSize(), "unexpected EOF"},
		{"whiteout of dotdot", mustTar(t, fixture.File("a/.wh...", 0o644, "")), "whiteout of invalid name"},
		{"unsupported type", mustTar(t, fixture.Entry{Header: tar.Header{Name: "c", Typeflag: 'Z'}}), "unsupported tar entry type"},
		{"root as file", mustTar(t, fixture.File(".", 0o644, "")), "root directory is not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ents, err := readLayer(bytes.NewReader(tt.data), newChunker(FixedChunking, 4096), &memSink{})
			if err == nil {
				// Some problems only show when the layer is merged.
				err = newTree().apply(ents)
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want error containing %q", err, tt.want)
			}
		})
	}
}

func fixChecksum(h []byte) {
	for i := 148; i < 156; i++ {
		h[i] = ' '
	}
	var sum int
	for _, c := range h {
		sum += int(c)
	}
	copy(h[148:156], []byte(strings.Repeat("0", 6-len(itoa8(sum)))+itoa8(sum)+"\x00 "))
}

func itoa8(n int) string {
	if n == 0 {
		return "0"
	}
	var s []byte
	for ; n > 0; n /= 8 {
		s = append([]byte{byte('0' + n%8)}, s...)
	}
	return string(s)
}

// TestDuplicateEntries documents the normalisation of duplicates: the
// later entry wins, as it would when extracting the stream.
func TestDuplicateEntries(t *testing.T) {
	data := mustTar(t, fixture.File("f", 0o644, "first"), fixture.File("f", 0o600, "second"), fixture.Dir("d", 0o755), fixture.File("d/x", 0o644, "x"), fixture.Dir("d", 0o700))
	sink := &memSink{}
	ents, err := readLayer(bytes.NewReader(data), newChunker(FixedChunking, 4096), sink)
	if err != nil {
		t.Fatal(err)
	}
	tr := newTree()
	if err := tr.apply(ents); err != nil {
		t.Fatal(err)
	}
	f := tr.lookup("f")
	if f.ino.mode != bootstrap.ModeRegular|0o600 || string(sink.chunks[f.ino.chunks[0].digest]) != "second" {
		t.Fatalf("duplicate file: got mode %o", f.ino.mode)
	}
	d := tr.lookup("d")
	if d.ino.mode != bootstrap.ModeDir|0o700 || d.children["x"] == nil {
		t.Fatalf("duplicate dir must take the new attributes and keep its contents")
	}
}

func TestLayerCompressionSniffing(t *testing.T) {
	tb := mustTar(t, fixture.File("hello", 0o644, "hello"))
	for _, c := range []fixture.Compression{fixture.Gzip, fixture.Zstd, fixture.Uncompressed} {
		blob, _, err := fixture.Compress(c, tb)
		if err != nil {
			t.Fatal(err)
		}
		r, done, err := decompress(bytes.NewReader(blob))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		done()
		if err != nil || !bytes.Equal(got, tb) {
			t.Fatalf("compression %d: round trip failed: %v", c, err)
		}
	}
	if _, _, err := decompress(bytes.NewReader([]byte{0x1f, 0x8b, 0, 0})); err == nil {
		t.Fatal("corrupt gzip header accepted")
	}
}

func TestChunkers(t *testing.T) {
	data := fixture.Random(3, 5<<20+17)
	for _, c := range []Chunking{FixedChunking, CDCChunking} {
		var got []byte
		var sizes []int
		n, err := newChunker(c, 1<<20).split(bytes.NewReader(data), func(b []byte) error {
			got = append(got, b...)
			sizes = append(sizes, len(b))
			return nil
		})
		if err != nil || n != int64(len(data)) || !bytes.Equal(got, data) {
			t.Fatalf("%s: reassembly failed (n=%d err=%v)", c, n, err)
		}
		for _, s := range sizes {
			if s > 2<<20 {
				t.Fatalf("%s: chunk of %d bytes exceeds the maximum", c, s)
			}
		}
		if c == FixedChunking && sizes[0] != 1<<20 {
			t.Fatalf("fixed chunk size %d", sizes[0])
		}
	}
	// An insertion near the start changes few CDC chunks: the point of CDC.
	digests := func(b []byte) map[[32]byte]bool {
		m := map[[32]byte]bool{}
		newChunker(CDCChunking, 64<<10).split(bytes.NewReader(b), func(c []byte) error { m[sha256.Sum256(c)] = true; return nil })
		return m
	}
	a := digests(data)
	shifted := append(append(append([]byte{}, data[:1000]...), []byte("inserted!")...), data[1000:]...)
	b := digests(shifted)
	shared := 0
	for d := range b {
		if a[d] {
			shared++
		}
	}
	if shared < len(a)*9/10 {
		t.Fatalf("cdc: only %d of %d chunks survive a 9-byte insertion", shared, len(a))
	}
}

func TestChunkerPropagatesReadErrors(t *testing.T) {
	boom := errors.New("boom")
	for _, c := range []Chunking{FixedChunking, CDCChunking} {
		_, err := newChunker(c, 4096).split(io.MultiReader(bytes.NewReader(make([]byte, 10000)), errReader{boom}), func([]byte) error { return nil })
		if !errors.Is(err, boom) {
			t.Fatalf("%s: err = %v, want boom", c, err)
		}
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// FuzzReadLayer throws arbitrary bytes at the tar reader and merger.
func FuzzReadLayer(f *testing.F) {
	for _, ents := range fixture.RichLayers()[1:] {
		tb, err := fixture.Tar(ents)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(tb)
	}
	f.Add(mustTarF(f, fixture.File("../x", 0o644, "x")))
	f.Fuzz(func(t *testing.T, data []byte) {
		ents, err := readLayer(bytes.NewReader(data), newChunker(FixedChunking, 4096), &memSink{})
		if err != nil {
			return
		}
		tr := newTree()
		if err := tr.apply(ents); err != nil {
			return
		}
		for _, e := range ents {
			if strings.HasPrefix(e.path, "/") || strings.Contains("/"+e.path+"/", "/../") {
				t.Fatalf("entry path %q escapes the root", e.path)
			}
		}
	})
}

func mustTarF(f *testing.F, ents ...fixture.Entry) []byte {
	b, err := fixture.Tar(ents)
	if err != nil {
		f.Fatal(err)
	}
	return b
}
