package bootstrap

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// sample builds a small tree by hand: /a (file, 2 chunks, one zero),
// /a-link (hard link to /a), /d (dir) with /d/s (symlink) and /d/c (char).
func sample() *Bootstrap {
	d1 := Sum([]byte("hello"))
	b := &Bootstrap{
		ChunkSize: 1 << 20,
		Blobs:     []Digest{Sum([]byte("blob"))},
		Frames:    []Frame{{Blob: 0, Offset: 0, CompressedSize: 5, Size: 5, Compression: None}},
		Chunks: []Chunk{
			{Digest: d1, Frame: 0, Offset: 0, Size: 5},
			{Digest: Sum(make([]byte, 7)), Frame: NoFrame, Size: 7},
		},
		Inodes: []Inode{
			{Mode: ModeDir | 0o755, DirentStart: 0, DirentCount: 3},
			{Mode: ModeRegular | 0o4755, UID: 1, GID: 2, MtimeSec: -5, MtimeNsec: 7, Size: 12, ChunkStart: 0, ChunkCount: 2, XattrStart: 0, XattrCount: 2},
			{Mode: ModeDir | 0o1777, DirentStart: 3, DirentCount: 2},
			{Mode: ModeSymlink | 0o777, Target: "../a"},
			{Mode: ModeChar | 0o600, DevMajor: 1, DevMinor: 5},
		},
		Dirents: []Dirent{
			{Name: "a", Inode: 1}, {Name: "a-link", Inode: 1}, {Name: "d", Inode: 2},
			{Name: "c", Inode: 4}, {Name: "s", Inode: 3},
		},
		ChunkRefs: []uint32{0, 1},
		Xattrs:    []Xattr{{Name: "user.a", Value: "1"}, {Name: "user.b", Value: "\x00\xff"}},
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	b := sample()
	blob, err := Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(blob)
	if err != nil {
		t.Fatal(err)
	}
	raw1, _ := Marshal(b)
	raw2, _ := Marshal(got)
	if !bytes.Equal(raw1, raw2) {
		t.Fatal("re-encoding a decoded bootstrap changed its bytes")
	}
	ino, ok := got.LookupPath("/d/s")
	if !ok || got.Inodes[ino].Target != "../a" || got.Inodes[ino].Size != 4 {
		t.Fatalf("lookup /d/s = %d %v %+v", ino, ok, got.Inodes[ino])
	}
	a, _ := got.LookupPath("a")
	if got.Inodes[a].Nlink != 2 {
		t.Fatalf("hard-linked file nlink = %d, want 2", got.Inodes[a].Nlink)
	}
	if got.Inodes[RootInode].Nlink != 3 {
		t.Fatalf("root nlink = %d, want 3", got.Inodes[RootInode].Nlink)
	}
	if x := got.InodeXattrs(a); len(x) != 2 || x[1].Value != "\x00\xff" {
		t.Fatalf("xattrs = %q", x)
	}
	if offs := got.ChunkOffsets(a); fmt.Sprint(offs) != "[0 5 12]" {
		t.Fatalf("chunk offsets = %v", offs)
	}
	if got.Inodes[a].MtimeSec != -5 || got.Inodes[a].Mode != ModeRegular|0o4755 {
		t.Fatalf("attrs = %+v", got.Inodes[a])
	}
	var paths []string
	got.Walk(func(p string, _ uint32) error { paths = append(paths, p); return nil })
	if strings.Join(paths, ",") != "/,/a,/a-link,/d,/d/c,/d/s" {
		t.Fatalf("walk = %v", paths)
	}
}

func TestValidateRejects(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(b *Bootstrap)
		want   string
	}{
		{"root not dir", func(b *Bootstrap) { b.Inodes[0].Mode = ModeRegular }, "root"},
		{"unsorted entries", func(b *Bootstrap) { b.Dirents[0].Name = "z" }, "not sorted"},
		{"duplicate entries", func(b *Bootstrap) { b.Dirents[1].Name = "a" }, "not sorted or duplicated"},
		{"slash in name", func(b *Bootstrap) { b.Dirents[0].Name = "a/b" }, "invalid entry name"},
		{"dotdot name", func(b *Bootstrap) { b.Dirents[0].Name = ".." }, "invalid entry name"},
		{"size mismatch", func(b *Bootstrap) { b.Inodes[1].Size = 13 }, "chunks hold 12 bytes"},
		{"chunk out of frame", func(b *Bootstrap) { b.Chunks[0].Offset = 1 }, "past the end of frame"},
		{"frame blob range", func(b *Bootstrap) { b.Frames[0].Blob = 3 }, "blob 3 out of range"},
		{"dir named twice", func(b *Bootstrap) { b.Dirents[1].Inode = 2 }, "named more than once"},
		{"unreachable", func(b *Bootstrap) { b.Dirents[4].Inode = 4 }, "not reachable"},
		{"root as child", func(b *Bootstrap) { b.Dirents[3].Inode = 0 }, "out of range"},
		{"bad compression", func(b *Bootstrap) { b.Frames[0].Compression = 9 }, "unknown compression"},
		{"negative offset", func(b *Bootstrap) { b.Frames[0].Offset = -1 }, "negative offset"},
		{"frame end overflows", func(b *Bootstrap) { b.Frames[0].Offset = math.MaxInt64 - 4 }, "overflows"},
		{"frame end overflows at max offset", func(b *Bootstrap) { b.Frames[0].Offset = math.MaxInt64 }, "overflows"},
		{"empty symlink", func(b *Bootstrap) { b.Inodes[3].Target = "" }, "empty symlink"},
		{"xattr range", func(b *Bootstrap) { b.Inodes[1].XattrCount = 9 }, "xattrs out of range"},
		{"nsec", func(b *Bootstrap) { b.Inodes[1].MtimeNsec = 1e9 }, "nanoseconds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := sample()
			tt.mutate(b)
			err := b.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want error containing %q", err, tt.want)
			}
			if _, err := Marshal(b); err == nil {
				t.Fatal("Marshal accepted an invalid bootstrap")
			}
		})
	}
	// The last offset whose frame still ends within int64 is fine.
	b := sample()
	b.Frames[0].Offset = math.MaxInt64 - int64(b.Frames[0].CompressedSize)
	if err := b.Validate(); err != nil {
		t.Fatalf("frame ending at MaxInt64: %v", err)
	}
}

func TestUnmarshalRejectsGarbage(t *testing.T) {
	raw, err := Marshal(sample())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "bad magic"},
		{"bad magic", []byte("NOTSKIFF"), "bad magic"},
		{"future version", append([]byte("SKIFFBT\x09"), raw[8:]...), "unsupported format version 9"},
		{"truncated", raw[:len(raw)-3], "truncated"},
		{"trailing", append(append([]byte{}, raw...), 0), "trailing"},
		{"huge count", append([]byte(magic), 0x80, 0x80, 0x08, 0xff, 0xff, 0xff, 0xff, 0x0f), "exceeds remaining input"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Unmarshal(tt.data)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Unmarshal = %v, want error containing %q", err, tt.want)
			}
		})
	}
	// Every truncation of a valid bootstrap is an error, never a panic.
	for i := 0; i < len(raw); i++ {
		if _, err := Unmarshal(raw[:i]); err == nil {
			t.Fatalf("truncation to %d bytes decoded without error", i)
		}
	}
}

// TestDecodeAllocation: Decode must still round-trip, and a large blob
// (they are accepted up to MaxRawSize) must not make it allocate a multiple
// of its size before anything has decoded.
func TestDecodeAllocation(t *testing.T) {
	random := make([]byte, 32<<20)
	rand.NewChaCha8([32]byte{}).Read(random)
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	incompressible := enc.EncodeAll(random, nil)
	enc.Close()
	tests := []struct {
		name     string
		b        *Bootstrap // nil: blob is not a bootstrap
		blob     []byte
		maxAlloc uint64 // 0: not checked
	}{
		{name: "sample", b: sample(), maxAlloc: 1 << 20},
		{name: "20k files", b: synthetic(20_000)},
		// Both fail; neither may cost 4x its 32 MiB first.
		{name: "32 MiB not zstd", blob: random, maxAlloc: maxDecodeGuess + 1<<20},
		{name: "32 MiB zstd, not a bootstrap", blob: incompressible, maxAlloc: maxDecodeGuess + 16<<20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			blob := tt.blob
			if tt.b != nil {
				var err error
				if blob, err = Encode(tt.b); err != nil {
					t.Fatal(err)
				}
			}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			got, err := Decode(blob)
			runtime.ReadMemStats(&after)
			if alloc := after.TotalAlloc - before.TotalAlloc; tt.maxAlloc > 0 && alloc > tt.maxAlloc {
				t.Errorf("Decode of %d bytes allocated %d bytes, want at most %d", len(blob), alloc, tt.maxAlloc)
			}
			if tt.b == nil {
				if err == nil {
					t.Fatal("Decode accepted a blob that is not a bootstrap")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want, _ := Marshal(tt.b)
			if raw, _ := Marshal(got); !bytes.Equal(raw, want) {
				t.Fatal("decoded bootstrap differs from the encoded one")
			}
		})
	}
}

func TestParseDigest(t *testing.T) {
	d := Sum([]byte("x"))
	for _, s := range []string{d.String(), d.Hex()} {
		got, err := ParseDigest(s)
		if err != nil || got != d {
			t.Fatalf("ParseDigest(%q) = %v, %v", s, got, err)
		}
	}
	for _, s := range []string{"", "sha256:zz", "sha256:" + strings.Repeat("g", 64)} {
		if _, err := ParseDigest(s); err == nil {
			t.Fatalf("ParseDigest(%q) succeeded", s)
		}
	}
}

func FuzzUnmarshal(f *testing.F) {
	raw, err := Marshal(sample())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Add([]byte(magic))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := Unmarshal(data)
		if err != nil {
			return
		}
		// Anything accepted must be safe to serve: walk it, read every
		// file's chunk layout, and re-encode it identically.
		b.Walk(func(p string, ino uint32) error {
			if b.Inodes[ino].Type() == ModeRegular {
				b.ChunkOffsets(ino)
			}
			b.InodeXattrs(ino)
			return nil
		})
		again, err := Marshal(b)
		if err != nil {
			t.Fatalf("accepted bootstrap does not re-encode: %v", err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("re-encoding differs from accepted input")
		}
	})
}

func FuzzDecode(f *testing.F) {
	blob, err := Encode(sample())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(blob)
	f.Fuzz(func(t *testing.T, data []byte) {
		Decode(data) // must not panic or allocate without bound
	})
}

// synthetic builds a bootstrap of n files spread over n/100 directories,
// each file one chunk, as a large image's would be.
func synthetic(n int) *Bootstrap {
	dirs := n / 100
	b := &Bootstrap{ChunkSize: 1 << 20, Blobs: []Digest{Sum([]byte("b"))}}
	b.Inodes = append(b.Inodes, Inode{Mode: ModeDir | 0o755, DirentCount: uint32(dirs)})
	for d := 0; d < dirs; d++ {
		b.Dirents = append(b.Dirents, Dirent{Name: fmt.Sprintf("dir%05d", d), Inode: uint32(1 + d)})
		b.Inodes = append(b.Inodes, Inode{Mode: ModeDir | 0o755})
	}
	for d := 0; d < dirs; d++ {
		b.Inodes[1+d].DirentStart = uint32(len(b.Dirents))
		b.Inodes[1+d].DirentCount = 100
		for f := 0; f < 100; f++ {
			ino := uint32(len(b.Inodes))
			ci := uint32(len(b.Chunks))
			b.Frames = append(b.Frames, Frame{Offset: int64(ci) * 700, CompressedSize: 700, Size: 2000, Compression: Zstd})
			b.Chunks = append(b.Chunks, Chunk{Digest: Sum([]byte(fmt.Sprint(ci))), Frame: ci, Size: 2000})
			b.ChunkRefs = append(b.ChunkRefs, ci)
			b.Dirents = append(b.Dirents, Dirent{Name: fmt.Sprintf("file-%04d.so", f), Inode: ino})
			b.Inodes = append(b.Inodes, Inode{Mode: ModeRegular | 0o644, Size: 2000, MtimeSec: 1700000000, ChunkStart: ci, ChunkCount: 1})
		}
	}
	return b
}
