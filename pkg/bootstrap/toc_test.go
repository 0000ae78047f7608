package bootstrap

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/internal/benchratio"
)

// tocEntry is an entry of an eStargz table of contents, the JSON index a
// stargz snapshotter fetches and parses before a container's first read:
// the baseline a bootstrap is measured against. The fields are those of
// estargz.TOCEntry that a tree of regular files and directories fills in.
type tocEntry struct {
	Name        string `json:"name"`
	Type        string `json:"type"`
	Size        int64  `json:"size,omitempty"`
	ModTime3339 string `json:"modtime,omitempty"`
	Mode        int64  `json:"mode,omitempty"`
	UID         int    `json:"uid,omitempty"`
	GID         int    `json:"gid,omitempty"`
	Offset      int64  `json:"offset,omitempty"`
	Digest      string `json:"digest,omitempty"`
	ChunkOffset int64  `json:"chunkOffset,omitempty"`
	ChunkSize   int64  `json:"chunkSize,omitempty"`
	ChunkDigest string `json:"chunkDigest,omitempty"`
}

type toc struct {
	Version int        `json:"version"`
	Entries []tocEntry `json:"entries"`
}

// stargzTOC writes b's tree as a gzip-compressed eStargz table of
// contents: an entry per directory and file, and one per further chunk.
func stargzTOC(tb testing.TB, b *Bootstrap) []byte {
	tb.Helper()
	t := toc{Version: 1}
	err := b.Walk(func(p string, ino uint32) error {
		if p == "/" {
			return nil
		}
		in := &b.Inodes[ino]
		e := tocEntry{
			Name:        p[1:],
			ModTime3339: time.Unix(in.MtimeSec, int64(in.MtimeNsec)).UTC().Format(time.RFC3339),
			Mode:        int64(in.Mode &^ ModeType),
			UID:         int(in.UID),
			GID:         int(in.GID),
		}
		if in.IsDir() {
			e.Type = "dir"
			t.Entries = append(t.Entries, e)
			return nil
		}
		e.Type, e.Size = "reg", int64(in.Size)
		offsets := b.ChunkOffsets(ino)
		for i, ci := range b.FileChunks(ino) {
			c := &b.Chunks[ci]
			if i > 0 {
				e = tocEntry{Name: e.Name, Type: "chunk"}
			}
			if fi := c.Frame; fi != NoFrame {
				e.Offset = b.Frames[fi].Offset
			}
			e.ChunkOffset, e.ChunkSize, e.ChunkDigest = offsets[i], int64(c.Size), c.Digest.String()
			if i == 0 {
				// The whole file's digest; a file of one chunk has
				// the chunk's.
				e.Digest = e.ChunkDigest
			}
			t.Entries = append(t.Entries, e)
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if err := json.NewEncoder(zw).Encode(&t); err != nil {
		tb.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// parseTOC does the least a stargz snapshotter does with a table of
// contents before it can serve a read: decompress and parse it.
func parseTOC(blob []byte) (*toc, error) {
	zr, err := gzip.NewReader(bytes.NewReader(blob))
	if err != nil {
		return nil, err
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		return nil, err
	}
	var t toc
	if err := json.Unmarshal(raw, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

func TestStargzTOCDescribesTheSameTree(t *testing.T) {
	b := synthetic(1000)
	got, err := parseTOC(stargzTOC(t, b))
	if err != nil {
		t.Fatal(err)
	}
	// 10 directories of 100 one-chunk files each.
	if len(got.Entries) != 1010 {
		t.Fatalf("%d entries, want 1010", len(got.Entries))
	}
	e := got.Entries[1]
	ino, ok := b.LookupPath("/" + e.Name)
	if !ok || e.Type != "reg" || e.Size != int64(b.Inodes[ino].Size) || e.ChunkDigest != b.Chunks[b.FileChunks(ino)[0]].Digest.String() {
		t.Fatalf("entry %+v does not match the bootstrap's file", e)
	}
}

// BenchmarkDecode100k loads the bootstrap of a 100k-file image, which a
// node does before a container's first read, against parsing an eStargz
// table of contents of the same tree, which a stargz snapshotter does
// instead; it reports both the time and the bytes to fetch as ratios.
func BenchmarkDecode100k(b *testing.B) {
	bs := synthetic(100_000)
	blob, err := Encode(bs)
	if err != nil {
		b.Fatal(err)
	}
	tocBlob := stargzTOC(b, bs)
	benchratio.Report(b, "decode/toc-decode", func() {
		if _, err := Decode(blob); err != nil {
			b.Fatal(err)
		}
	}, func() {
		if _, err := parseTOC(tocBlob); err != nil {
			b.Fatal(err)
		}
	})
	// After the loop, whose start clears the metrics reported so far.
	b.ReportMetric(float64(len(blob))/float64(len(tocBlob)), "bytes/toc-bytes")
}
