package fetch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
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
			f := New(nil, NewStoreSource("store", st))
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
			f := New(nil, src)
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
