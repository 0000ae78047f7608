package convert

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/pkg/store/dir"
)

// heldLayer holds its first read until release is closed (or a while has
// passed), so the test controls whether a layer is still being read when
// Convert returns, and counts the readers not yet closed.
type heldLayer struct {
	v1.Layer
	opened  func()
	release <-chan struct{}
	running *atomic.Int32
}

func (l *heldLayer) Compressed() (io.ReadCloser, error) {
	rc, err := l.Layer.Compressed()
	if err != nil {
		return nil, err
	}
	l.running.Add(1)
	l.opened()
	return &heldReader{ReadCloser: rc, l: l}, nil
}

type heldReader struct {
	io.ReadCloser
	l    *heldLayer
	held bool
}

func (r *heldReader) Read(p []byte) (int, error) {
	if !r.held {
		r.held = true
		// A Convert that waits for its layers (as it must) waits out the
		// timer; one that does not has returned before it fires.
		select {
		case <-r.l.release:
		case <-time.After(100 * time.Millisecond):
		}
	}
	return r.ReadCloser.Read(p)
}

func (r *heldReader) Close() error {
	r.l.running.Add(-1)
	return r.ReadCloser.Close()
}

// TestConvertBlobFileFailure: when a layer's blob file cannot be created
// while other layers are being read, Convert fails, and only after every
// layer has stopped, since its cleanup closes the files and the compressor
// they write to (a layer still running then panics with "send on closed
// channel").
func TestConvertBlobFileFailure(t *testing.T) {
	errNoSpace := &os.PathError{Op: "open", Path: "skiff-blob-x", Err: syscall.ENOSPC}
	tests := []struct {
		name   string
		layers int
		failOn int32 // which blob file creation fails, from 1
	}{
		{"first of two", 2, 1},
		{"second of two", 2, 2},
		{"second of three", 3, 2},
		{"third of three", 3, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			release := make(chan struct{})
			defer close(release)
			opened := make(chan struct{})
			var once sync.Once
			var running atomic.Int32
			var layers []v1.Layer
			for i := range tt.layers {
				l, err := fixture.Layer(fixture.Gzip, []fixture.Entry{
					// Bigger than a batch, so reading it submits a frame.
					fixture.File("f", 0o644, string(fixture.Random(uint64(i), DefaultBatchSize+1))),
				})
				if err != nil {
					t.Fatal(err)
				}
				layers = append(layers, &heldLayer{Layer: l, opened: func() { once.Do(func() { close(opened) }) }, release: release, running: &running})
			}
			img, err := fixture.Image(layers...)
			if err != nil {
				t.Fatal(err)
			}

			var calls atomic.Int32
			orig := createTemp
			t.Cleanup(func() { createTemp = orig })
			createTemp = func(dir, pattern string) (*os.File, error) {
				if calls.Add(1) != tt.failOn {
					return orig(dir, pattern)
				}
				// Fail while another layer is being read, if one is.
				select {
				case <-opened:
				case <-time.After(time.Second):
				}
				return nil, errNoSpace
			}

			st, err := dir.New(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			work := t.TempDir()
			_, err = New(st, Options{Concurrency: 2, WorkDir: work}).Convert(context.Background(), img)
			if !errors.Is(err, syscall.ENOSPC) {
				t.Errorf("Convert = %v, want the blob file's error", err)
			}
			if n := running.Load(); n != 0 {
				t.Errorf("Convert returned while %d layers were still being read", n)
			}
			if left, _ := os.ReadDir(work); len(left) != 0 {
				t.Errorf("blob files left behind: %v", left)
			}
		})
	}
}
