package seed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/store"
	dirstore "github.com/skiff-dev/skiff/pkg/store/dir"
)

func TestSpan(t *testing.T) {
	// Frames listed out of storage order, as an index may list them.
	idx := &bootstrap.Bootstrap{Frames: []bootstrap.Frame{
		{Offset: 30, CompressedSize: 30},
		{Offset: 0, CompressedSize: 10},
		{Offset: 10, CompressedSize: 20},
	}}
	tests := []struct {
		name     string
		off, end int64
		want     string
	}{
		{"one frame", 10, 30, "[2]"},
		{"all", 0, 60, "[1 2 0]"},
		{"last two", 10, 60, "[2 0]"},
		// Parts of a range read from several parents.
		{"inside a frame", 5, 10, "[1]"},
		{"ends inside a frame", 0, 20, "[1 2]"},
		{"starts inside a frame", 15, 60, "[2 0]"},
		{"past the end", 30, 70, "error"},
		{"starts at the end", 60, 61, "error"},
		{"empty", 10, 10, "error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := span(idx, tt.off, tt.end)
			s := fmt.Sprint(got)
			if err != nil {
				s = "error"
			}
			if s != tt.want {
				t.Errorf("span(%d, %d) = %s (%v), want %s", tt.off, tt.end, s, err, tt.want)
			}
		})
	}
}

// gatedStore is a store whose Gets wait for open to be closed, or for
// their context to end, counting them.
type gatedStore struct {
	store.Store
	open chan struct{}
	gets atomic.Int32
}

func (s *gatedStore) Get(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	s.gets.Add(1)
	select {
	case <-s.open:
		return s.Store.Get(ctx, key, off, length)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TestIndexLoadOutlivesItsFirstCaller checks that a caller giving up on a
// shared index load fails alone: the others waiting for the same blob get
// the index, loaded once.
func TestIndexLoadOutlivesItsFirstCaller(t *testing.T) {
	ctx := context.Background()
	dir, err := dirstore.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	blob := bootstrap.Sum([]byte("blob"))
	enc, err := bootstrap.Encode(&bootstrap.Bootstrap{
		ChunkSize: 4096,
		Blobs:     []bootstrap.Digest{blob},
		Frames:    []bootstrap.Frame{{Offset: 0, Size: 100, CompressedSize: 100, Compression: bootstrap.None}},
		Inodes:    []bootstrap.Inode{{Mode: bootstrap.ModeDir | 0o755}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := dir.Put(ctx, store.IndexKey(blob.Hex()), bytes.NewReader(enc), int64(len(enc))); err != nil {
		t.Fatal(err)
	}
	st := &gatedStore{Store: dir, open: make(chan struct{})}
	s := New(st, nil, nil)

	// The first caller starts the load, a second one waits for it too.
	firstCtx, leave := context.WithCancel(ctx)
	first := make(chan error, 1)
	go func() {
		_, err := s.index(firstCtx, blob)
		first <- err
	}()
	for st.gets.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	second := make(chan error, 1)
	go func() {
		idx, err := s.index(ctx, blob)
		if err == nil && idx.Blobs[0] != blob {
			err = fmt.Errorf("index of %s, want %s", idx.Blobs[0], blob)
		}
		second <- err
	}()
	// Time for the second caller to join the load: joining late makes
	// it load again, which the count of Gets below catches.
	time.Sleep(50 * time.Millisecond)

	leave()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("caller that left: %v, want context.Canceled", err)
	}
	close(st.open)
	if err := <-second; err != nil {
		t.Fatalf("caller that stayed: %v", err)
	}
	if n := st.gets.Load(); n != 1 {
		t.Errorf("index read %d times, want once", n)
	}
}
