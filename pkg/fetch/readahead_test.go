package fetch

import (
	"bytes"
	"context"
	"fmt"
	"testing"

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
