package fetch

import (
	"bytes"
	"context"
	"testing"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/fetch/fetchtest"
)

func TestRequestBufferClasses(t *testing.T) {
	for _, tc := range []struct {
		n       int64
		wantCap int
	}{
		{0, 1 << minPooledShift},
		{1, 1 << minPooledShift},
		{1 << minPooledShift, 1 << minPooledShift},
		{1<<minPooledShift + 1, 1 << (minPooledShift + 1)},
		{3 << 20, 4 << 20},
		{1 << maxPooledShift, 1 << maxPooledShift},
		{1<<maxPooledShift + 1, 1<<maxPooledShift + 1}, // its own, exactly
	} {
		buf := requestBuffer(tc.n)
		if int64(len(buf)) != tc.n || cap(buf) != tc.wantCap {
			t.Errorf("requestBuffer(%d): len %d cap %d, want len %d cap %d", tc.n, len(buf), cap(buf), tc.n, tc.wantCap)
		}
		releaseRequestBuffer(buf)
	}
}

// TestDeliveredBytesOutliveRequestBuffers reads one image's stored
// (uncompressed) frames through requests, holds the chunks it got, and has
// other images' requests reuse the buffers they landed in: the chunks held
// must not change, as they would if a frame's data were the request's
// bytes rather than a copy.
func TestDeliveredBytesOutliveRequestBuffers(t *testing.T) {
	ctx := context.Background()
	build := func(seed uint64) (*fetchtest.Image, []byte) {
		data := fixture.Text(seed, 300<<10)
		img, err := fetchtest.Build([]fetchtest.Entry{{Path: "/f", Mode: bootstrap.ModeRegular | 0o644, Data: data}}, fetchtest.Options{ChunkSize: 16 << 10, Compression: bootstrap.None})
		if err != nil {
			t.Fatal(err)
		}
		return img, data
	}
	readAll := func(img *fetchtest.Image) [][]byte {
		b := img.Bootstrap
		f := New(nil, []Source{NewStoreSource("store", upload(t, img))})
		frames := make([]uint32, len(b.Frames))
		for i := range frames {
			frames[i] = uint32(i)
		}
		if err := f.FetchFrames(ctx, b, frames); err != nil {
			t.Fatal(err)
		}
		ino, _ := b.LookupPath("/f")
		var chunks [][]byte
		for _, ci := range b.FileChunks(ino) {
			c, err := f.ReadChunk(ctx, b, ci)
			if err != nil {
				t.Fatal(err)
			}
			chunks = append(chunks, c)
		}
		if st := f.Stats(); st.Sources[0].Requests >= int64(len(frames)) {
			t.Fatalf("%d frames took %d requests: the test needs them read together", len(frames), st.Sources[0].Requests)
		}
		return chunks
	}
	img, want := build(1)
	held := readAll(img)
	for seed := range uint64(4) {
		other, _ := build(100 + seed)
		readAll(other)
	}
	if got := bytes.Join(held, nil); !bytes.Equal(got, want) {
		t.Fatal("chunks held changed when later requests reused their buffers")
	}
}
