package convert_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/codec"
	"github.com/skiff-dev/skiff/pkg/convert"
	"github.com/skiff-dev/skiff/pkg/image"
	"github.com/skiff-dev/skiff/pkg/startup"
	"github.com/skiff-dev/skiff/pkg/store"
	"github.com/skiff-dev/skiff/pkg/store/dir"
)

func newStore(t *testing.T) store.Store {
	t.Helper()
	st, err := dir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// readFile reassembles a file straight from the store's frames.
func readFile(t *testing.T, st store.Store, b *bootstrap.Bootstrap, ino uint32) []byte {
	t.Helper()
	var out []byte
	for _, ci := range b.FileChunks(ino) {
		c := b.Chunks[ci]
		if c.Zero() {
			out = append(out, make([]byte, c.Size)...)
			continue
		}
		f := b.Frames[c.Frame]
		rc, err := st.Get(context.Background(), store.BlobKey(b.Blobs[f.Blob].Hex()), f.Offset, int64(f.CompressedSize))
		if err != nil {
			t.Fatal(err)
		}
		comp, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		data, err := codec.Decompress(f.Compression, nil, comp, int(f.Size))
		if err != nil {
			t.Fatal(err)
		}
		chunk := data[c.Offset : c.Offset+c.Size]
		if bootstrap.Sum(chunk) != c.Digest {
			t.Fatalf("chunk %s: digest mismatch", c.Digest)
		}
		out = append(out, chunk...)
	}
	return out
}

func convertImage(t *testing.T, c *convert.Converter, img v1.Image) (*convert.Result, *bootstrap.Bootstrap) {
	t.Helper()
	res, err := c.Convert(context.Background(), img)
	if err != nil {
		t.Fatal(err)
	}
	b, d, err := image.ImageBootstrap(res.Image)
	if err != nil {
		t.Fatal(err)
	}
	if d != res.Bootstrap {
		t.Fatalf("image names bootstrap %s, result says %s", d, res.Bootstrap)
	}
	return res, b
}

func TestConvertRichImage(t *testing.T) {
	img, err := fixture.RichImage()
	if err != nil {
		t.Fatal(err)
	}
	for _, opts := range []convert.Options{
		{},
		{Compression: bootstrap.LZ4, Chunking: convert.CDCChunking, ChunkSize: 256 << 10},
		{Compression: bootstrap.None, BatchSize: 4096, Concurrency: 1},
	} {
		name := opts.Compression.String() + "/" + string(opts.Chunking)
		t.Run(name, func(t *testing.T) {
			st := newStore(t)
			res, b := convertImage(t, convert.New(st, opts), img)
			files := map[string]string{
				"/etc/passwd":                  "root:x:0:0:root:/root:/bin/sh\n",
				"/etc/hostname":                "layer-two\n",
				"/etc/motd":                    "welcome\n",
				"/wh/y":                        "y",
				"/opaque/c":                    "c",
				"/linkdir/inside":              "inside\n",
				"/données/日本語ファイル.txt":         "こんにちは\n",
				"/données/" + fixture.LongName: "long name\n",
				"/data/empty":                  "",
				"/data/passwd-link":            "root:x:0:0:root:/root:/bin/sh\n",
				"/usr/bin/tool2":               strings.Repeat("binary", 1000),
				"/deep/" + strings.Repeat("d", 120) + "/path/file": "deep\n",
			}
			for p, want := range files {
				ino, ok := b.LookupPath(p)
				if !ok {
					t.Fatalf("%s missing", p)
				}
				if got := readFile(t, st, b, ino); string(got) != want {
					t.Fatalf("%s = %q, want %q", p, got, want)
				}
			}
			for _, p := range []string{"/wh/x", "/opaque/a", "/opaque/b", "/gone", "/gone/file", "/wh/.wh.x", "/opaque/.wh..wh..opq"} {
				if _, ok := b.LookupPath(p); ok {
					t.Errorf("%s should have been removed by a whiteout", p)
				}
			}
			big, _ := b.LookupPath("/data/big")
			if got := readFile(t, st, b, big); !bytes.Equal(got, fixture.BigContent()) {
				t.Fatal("big file content differs")
			}
			pw, _ := b.LookupPath("/etc/passwd")
			link, _ := b.LookupPath("/data/passwd-link")
			if pw != link || b.Inodes[pw].Nlink != 2 {
				t.Fatalf("hard link across layers: inodes %d and %d, nlink %d", pw, link, b.Inodes[pw].Nlink)
			}
			if x := b.InodeXattrs(pw); len(x) != 2 || x[0].Name != "user.binary" || x[0].Value != "\x00\x01\xff" {
				t.Fatalf("xattrs = %q", x)
			}
			if in := b.Inodes[pw]; in.MtimeSec != 1600000001 || in.MtimeNsec != 999999999 {
				t.Fatalf("mtime = %d.%d", in.MtimeSec, in.MtimeNsec)
			}
			tool, _ := b.LookupPath("/usr/bin/tool")
			if b.Inodes[tool].Mode != bootstrap.ModeRegular|0o4755 {
				t.Fatalf("setuid mode = %o", b.Inodes[tool].Mode)
			}
			ld, _ := b.LookupPath("/linkdir")
			if !b.Inodes[ld].IsDir() || b.Inodes[ld].Mode&0o777 != 0o700 {
				t.Fatalf("linkdir mode = %o, want a 0700 directory", b.Inodes[ld].Mode)
			}
			zero, _ := b.LookupPath("/dev/zero")
			if in := b.Inodes[zero]; in.Type() != bootstrap.ModeChar || in.DevMajor != 1 || in.DevMinor != 5 {
				t.Fatalf("/dev/zero = %+v", in)
			}
			m1, _ := b.LookupPath("/data/medium")
			m2, _ := b.LookupPath("/data/medium-copy")
			if !equalRefs(b.FileChunks(m1), b.FileChunks(m2)) {
				t.Fatal("identical files do not share chunks")
			}
			// 64 MiB of zeros and a duplicated 3 MiB file must cost (almost)
			// nothing: far less than the logical size.
			if res.Stats.UniqueBytes > 8<<20 || res.Stats.LogicalBytes < 70<<20 {
				t.Fatalf("unique bytes %d: zero chunks or duplicates were stored", res.Stats.UniqueBytes)
			}
			if res.NewBytes == 0 || res.NewBytes != res.Stats.StoredBytes {
				t.Fatalf("new bytes %d, stored bytes %d", res.NewBytes, res.Stats.StoredBytes)
			}
		})
	}
}

func equalRefs(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestConvertDedupAcrossImages converts a second version of an image with
// one file changed: only that file's chunk may reach the store, both with
// the same Converter and with a fresh one that learns from the store.
func TestConvertDedupAcrossImages(t *testing.T) {
	base := []fixture.Entry{fixture.Dir("lib", 0o755)}
	for i := 0; i < 40; i++ {
		base = append(base, fixture.Entry{Header: fixtureHeader("lib/f" + string(rune('a'+i%26)) + string(rune('a'+i/26))), Data: fixture.Random(uint64(i), 200<<10)})
	}
	v1Layer, _ := fixture.Layer(fixture.Gzip, base)
	imgV1, _ := fixture.Image(v1Layer)
	changed := append([]fixture.Entry(nil), base...)
	changed[6] = fixture.Entry{Header: changed[6].Header, Data: fixture.Random(999, 200<<10)}
	v2Layer, _ := fixture.Layer(fixture.Gzip, changed)
	imgV2, _ := fixture.Image(v2Layer)

	st := newStore(t)
	r1, _ := convertImage(t, convert.New(st, convert.Options{}), imgV1)
	for _, c := range []*convert.Converter{convert.New(st, convert.Options{})} {
		r2, b2 := convertImage(t, c, imgV2)
		if r2.NewBytes > r1.NewBytes*6/100 {
			t.Fatalf("second version added %d bytes to a store of %d (want <= 6%%)", r2.NewBytes, r1.NewBytes)
		}
		ino, _ := b2.LookupPath("/lib/ffa")
		if got := readFile(t, st, b2, ino); !bytes.Equal(got, fixture.Random(999, 200<<10)) {
			t.Fatal("changed file reads back wrong")
		}
		ino, _ = b2.LookupPath("/lib/fba")
		if got := readFile(t, st, b2, ino); !bytes.Equal(got, fixture.Random(1, 200<<10)) {
			t.Fatal("unchanged file reads back wrong")
		}
	}
	// Converting the same image again stores nothing new.
	r3, _ := convertImage(t, convert.New(st, convert.Options{}), imgV1)
	if r3.NewBytes != 0 {
		t.Fatalf("re-conversion wrote %d bytes", r3.NewBytes)
	}
	if r3.Bootstrap != r1.Bootstrap {
		t.Fatal("converting the same image twice gave different bootstraps")
	}
}

// TestConvertForgetsRemovedIndexes: a converter kept for the life of a
// process (the converter service) must not keep placing chunks in a blob
// whose index garbage collection took away, since the blob goes next.
func TestConvertForgetsRemovedIndexes(t *testing.T) {
	var entries []fixture.Entry
	for i := 0; i < 8; i++ {
		entries = append(entries, fixture.Entry{Header: fixtureHeader(fmt.Sprintf("f%d", i)), Data: fixture.Random(uint64(i), 100<<10)})
	}
	l1, _ := fixture.Layer(fixture.Gzip, entries)
	img1, _ := fixture.Image(l1)
	l2, _ := fixture.Layer(fixture.Gzip, append(entries, fixture.Entry{Header: fixtureHeader("new"), Data: []byte("new")}))
	img2, _ := fixture.Image(l2)

	st := newStore(t)
	c := convert.New(st, convert.Options{})
	_, b1 := convertImage(t, c, img1)
	removed := map[bootstrap.Digest]bool{}
	for _, blob := range b1.Blobs {
		removed[blob] = true
		if err := st.Delete(context.Background(), store.IndexKey(blob.Hex())); err != nil {
			t.Fatal(err)
		}
	}
	r2, b2 := convertImage(t, c, img2)
	for _, blob := range b2.Blobs {
		if removed[blob] {
			t.Fatalf("the second image uses blob %s, whose index was removed", blob)
		}
	}
	if r2.NewBytes == 0 {
		t.Fatal("the second image stored nothing new")
	}
	ino, _ := b2.LookupPath("/f3")
	if got := readFile(t, st, b2, ino); !bytes.Equal(got, fixture.Random(3, 100<<10)) {
		t.Fatal("f3 reads back wrong")
	}
}

func fixtureHeader(name string) (h tar.Header) {
	h.Name, h.Mode, h.Typeflag = name, 0o644, '0'
	return h
}

func TestConvertRejects(t *testing.T) {
	st := newStore(t)
	img, _ := fixture.RichImage()
	res, err := convert.New(st, convert.Options{}).Convert(context.Background(), img)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := convert.New(st, convert.Options{}).Convert(context.Background(), res.Image); err == nil || !strings.Contains(err.Error(), "already a Skiff image") {
		t.Fatalf("converting a Skiff image: %v", err)
	}
	if _, err := convert.New(st, convert.Options{ChunkSize: 100}).Convert(context.Background(), img); err == nil {
		t.Fatal("tiny chunk size accepted")
	}
	bad, _ := fixture.Layer(fixture.Gzip, []fixture.Entry{fixture.File("../../escape", 0o644, "x")})
	badImg, _ := fixture.Image(bad)
	_, err = convert.New(st, convert.Options{}).Convert(context.Background(), badImg)
	if err == nil || !strings.Contains(err.Error(), "escapes the root") {
		t.Fatalf("hostile layer: %v", err)
	}
}

func TestConvertCancelled(t *testing.T) {
	img, _ := fixture.RichImage()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := convert.New(newStore(t), convert.Options{}).Convert(ctx, img); err == nil {
		t.Fatal("cancelled conversion succeeded")
	}
}

// TestConvertDropsDeletedContent: bytes of files that a later layer deletes
// or replaces never reach the store, even when they share a blob with live
// files.
func TestConvertDropsDeletedContent(t *testing.T) {
	l1, _ := fixture.Layer(fixture.Gzip, []fixture.Entry{
		{Header: fixtureHeader("cache.bin"), Data: fixture.Random(1, 4<<20)},
		{Header: fixtureHeader("keep.bin"), Data: fixture.Random(2, 1<<20)},
		{Header: fixtureHeader("replaced.bin"), Data: fixture.Random(3, 2<<20)},
	})
	l2, _ := fixture.Layer(fixture.Gzip, []fixture.Entry{
		fixture.Whiteout("", "cache.bin"),
		{Header: fixtureHeader("replaced.bin"), Data: []byte("small now")},
	})
	img, _ := fixture.Image(l1, l2)
	st := newStore(t)
	res, b := convertImage(t, convert.New(st, convert.Options{}), img)
	if res.NewBytes > 1<<20+64<<10 {
		t.Fatalf("stored %d bytes; only keep.bin's 1 MiB (and a tiny file) is live", res.NewBytes)
	}
	ino, _ := b.LookupPath("/keep.bin")
	if got := readFile(t, st, b, ino); !bytes.Equal(got, fixture.Random(2, 1<<20)) {
		t.Fatal("keep.bin reads back wrong after compaction")
	}
	ino, _ = b.LookupPath("/replaced.bin")
	if got := readFile(t, st, b, ino); string(got) != "small now" {
		t.Fatalf("replaced.bin = %q", got)
	}
}

// TestConvertPrefetch: paths named at conversion become the image's
// startup set, which nodes fetch first; a path the image lacks fails the
// conversion before anything is stored.
func TestConvertPrefetch(t *testing.T) {
	img, err := fixture.OneLayer([]fixture.Entry{
		fixture.Dir("app", 0o755),
		fixture.File("app/main", 0o755, "main"),
		fixture.Dir("app/lib", 0o755),
		fixture.File("app/lib/a.so", 0o644, "a"),
		fixture.File("app/lib/b.so", 0o644, "b"),
		fixture.File("etc/conf", 0o644, "conf"),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	st := newStore(t)
	res, b := convertImage(t, convert.New(st, convert.Options{Prefetch: []string{"/etc/conf", "app/lib"}}), img)
	data, err := store.ReadAll(ctx, st, store.StartupKey(res.Bootstrap.Hex()), startup.MaxSize)
	if err != nil {
		t.Fatal(err)
	}
	if want := startup.Header + "\n/etc/conf\n/app/lib/a.so\n/app/lib/b.so\n"; string(data) != want {
		t.Errorf("startup set:\n%s\nwant:\n%s", data, want)
	}
	if inodes, err := startup.Parse(data, b); err != nil || len(inodes) != 3 || res.PrefetchFiles != 3 {
		t.Errorf("startup set parses to %v, %v; result counts %d files", inodes, err, res.PrefetchFiles)
	}

	// Without Prefetch, no set: the first node records one.
	plain := newStore(t)
	res, _ = convertImage(t, convert.New(plain, convert.Options{}), img)
	if _, err := plain.Stat(ctx, store.StartupKey(res.Bootstrap.Hex())); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a startup set without Prefetch: %v", err)
	}

	// The image's author names them in a label; the options still win.
	labelled := func(paths string) v1.Image {
		li, err := fixture.WithLabels(img, map[string]string{convert.PrefetchLabel: paths})
		if err != nil {
			t.Fatal(err)
		}
		return li
	}
	for _, tc := range []struct {
		name, label string
		prefetch    []string
		want        string
	}{
		{"label", " /app/main, /etc/conf ,,", nil, "/app/main\n/etc/conf\n"},
		{"label lines", "# startup\n/app/lib\n\n/etc/conf\n", nil, "/app/lib/a.so\n/app/lib/b.so\n/etc/conf\n"},
		{"options over label", "/app/main", []string{"/etc/conf"}, "/etc/conf\n"},
	} {
		st := newStore(t)
		res, _ := convertImage(t, convert.New(st, convert.Options{Prefetch: tc.prefetch}), labelled(tc.label))
		data, err := store.ReadAll(ctx, st, store.StartupKey(res.Bootstrap.Hex()), startup.MaxSize)
		if want := startup.Header + "\n" + tc.want; err != nil || string(data) != want {
			t.Errorf("%s: startup set %q (%v), want %q", tc.name, data, err, want)
		}
	}

	for _, tc := range []struct {
		name     string
		img      v1.Image
		prefetch []string
		want     string
	}{
		{"option", img, []string{"/app/main", "/app/mian"}, "prefetch: startup set: /app/mian: no such file"},
		{"label", labelled("/app/main,/ect/conf"), nil, "label dev.skiff.prefetch: startup set: /ect/conf: no such file"},
	} {
		empty := newStore(t)
		_, err = convert.New(empty, convert.Options{Prefetch: tc.prefetch}).Convert(ctx, tc.img)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("a misspelt path in the %s: %v, want %q", tc.name, err, tc.want)
		}
		var left []string
		if err := empty.List(ctx, "", func(i store.Info) error { left = append(left, i.Key); return nil }); err != nil || len(left) != 0 {
			t.Errorf("a failed conversion left %v (%v) in the store", left, err)
		}
	}
}

// TestConvertIndex: the images of a multi-platform index are converted
// into one Skiff index, and what they share is stored once.
func TestConvertIndex(t *testing.T) {
	src, err := fixture.PlatformIndex([]fixture.Entry{
		fixture.Dir("data", 0o755),
		{Header: fixture.File("data/shared", 0o644, "").Header, Data: fixture.Random(3, 4<<20)},
	}, "linux/amd64", "linux/arm64/v8")
	if err != nil {
		t.Fatal(err)
	}
	desc, err := partial.Descriptor(src)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := src.IndexManifest()
	var images []image.Platform
	for _, d := range im.Manifests[:2] {
		img, _ := src.Image(d.Digest)
		images = append(images, image.Platform{Platform: *d.Platform, Image: img})
	}
	res, err := convert.New(newStore(t), convert.Options{}).ConvertIndex(context.Background(), *desc, images)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Platforms) != 2 || res.SourceDigest != desc.Digest {
		t.Fatalf("result %+v", res)
	}
	first, second := res.Platforms[0], res.Platforms[1]
	if first.NewBytes < 4<<20 || second.NewBytes > 64<<10 {
		t.Errorf("new bytes: %s %d, %s %d; want the shared 4 MiB stored once", first.Platform, first.NewBytes, second.Platform, second.NewBytes)
	}
	out, _ := res.Index.IndexManifest()
	if out.Subject == nil || out.Subject.Digest != desc.Digest || len(out.Manifests) != 2 || out.Manifests[1].Platform.Variant != "v8" {
		t.Fatalf("skiff index %+v", out)
	}
	for i, d := range out.Manifests {
		img, _ := res.Index.Image(d.Digest)
		if _, bd, err := image.ImageBootstrap(img); err != nil || bd != res.Platforms[i].Bootstrap {
			t.Errorf("%s: bootstrap %s (%v), want %s", d.Platform, bd, err, res.Platforms[i].Bootstrap)
		}
	}
	// A platform whose image cannot be converted fails the whole index.
	bad := append(images, image.Platform{Platform: v1.Platform{OS: "linux", Architecture: "riscv64"}, Image: res.Platforms[0].Image})
	if _, err := convert.New(newStore(t), convert.Options{}).ConvertIndex(context.Background(), *desc, bad); err == nil || !strings.Contains(err.Error(), "linux/riscv64") {
		t.Errorf("an index with a Skiff image in it: %v", err)
	}
}
