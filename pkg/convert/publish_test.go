package convert_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/convert"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/store"
)

// racingGC wraps a store and plays garbage collection's deletion of the
// condemned blob hex (pkg/gc deleteBlob) against a converter using it: gc
// Stats the index just before the converter's first request about the
// blob, and, if it found none, deletes the blob and then its tombstone
// right after the converter's after-th request about it.
type racingGC struct {
	store.Store
	hex   string
	after int

	mu      sync.Mutex
	ops     []string // the converter's requests about hex
	indexed bool     // gc found the index when it looked
	deleted bool     // gc deleted the blob
	err     error
}

func (s *racingGC) about(key string) bool {
	return key == store.BlobKey(s.hex) || key == store.IndexKey(s.hex) || key == store.CondemnedKey(s.hex)
}

// around runs the converter's request op on key between gc's steps.
func (s *racingGC) around(ctx context.Context, what, key string, op func() error) error {
	if !s.about(key) {
		return op()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.ops) == 0 {
		_, err := s.Store.Stat(ctx, store.IndexKey(s.hex))
		switch {
		case err == nil:
			s.indexed = true
		case !errors.Is(err, store.ErrNotFound):
			s.err = err
		}
	}
	err := op()
	s.ops = append(s.ops, what+" "+key[:strings.LastIndex(key, "/")])
	if len(s.ops) == s.after && !s.indexed {
		for _, k := range []string{store.BlobKey(s.hex), store.CondemnedKey(s.hex)} {
			if err := s.Store.Delete(ctx, k); err != nil && s.err == nil {
				s.err = err
			}
		}
		s.deleted = true
	}
	return err
}

func (s *racingGC) Stat(ctx context.Context, key string) (info store.Info, err error) {
	err = s.around(ctx, "stat", key, func() error {
		info, err = s.Store.Stat(ctx, key)
		return err
	})
	return info, err
}

func (s *racingGC) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	return s.around(ctx, "put", key, func() error { return s.Store.Put(ctx, key, r, size) })
}

func (s *racingGC) Get(ctx context.Context, key string, off, length int64) (rc io.ReadCloser, err error) {
	err = s.around(ctx, "get", key, func() error {
		rc, err = s.Store.Get(ctx, key, off, length)
		return err
	})
	return rc, err
}

// TestConvertRepublishesCondemnedBlob: converting again an image whose
// blob garbage collection condemned reproduces that blob, digest and all.
// However gc's deletion of it interleaves with the conversion's first
// requests about it, the image must find all its data in the store
// afterwards. (gc Stats the index before the converter writes it in every
// case here, so gc always goes on to delete.)
func TestConvertRepublishesCondemnedBlob(t *testing.T) {
	var entries []fixture.Entry
	for i := 0; i < 6; i++ {
		entries = append(entries, fixture.Entry{Header: fixtureHeader(fmt.Sprintf("f%d", i)), Data: fixture.Random(uint64(i), 100<<10)})
	}
	img, err := fixture.OneLayer(entries)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for after := 1; after <= 2; after++ {
		t.Run(fmt.Sprintf("gc deletes after request %d", after), func(t *testing.T) {
			st := newStore(t)
			_, b1 := convertImage(t, convert.New(st, convert.Options{}), img)
			if len(b1.Blobs) != 1 {
				t.Fatalf("image has %d blobs, want 1", len(b1.Blobs))
			}
			hex := b1.Blobs[0].Hex()
			// gc condemns the blob: its index moves to the tombstone.
			idx, err := store.ReadAll(ctx, st, store.IndexKey(hex), bootstrap.MaxRawSize)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Put(ctx, store.CondemnedKey(hex), bytes.NewReader(idx), int64(len(idx))); err != nil {
				t.Fatal(err)
			}
			if err := st.Delete(ctx, store.IndexKey(hex)); err != nil {
				t.Fatal(err)
			}

			race := &racingGC{Store: st, hex: hex, after: after}
			_, b2 := convertImage(t, convert.New(race, convert.Options{}), img)
			if race.err != nil {
				t.Fatal(race.err)
			}
			t.Logf("converter's requests about the blob: %v", race.ops)
			if len(b2.Blobs) != 1 || b2.Blobs[0] != b1.Blobs[0] {
				t.Fatalf("the conversion made blobs %v, want the condemned %s again", b2.Blobs, hex)
			}
			if race.indexed || !race.deleted {
				t.Fatalf("gc did not delete the blob (index seen %v, requests %v)", race.indexed, race.ops)
			}

			rep, err := fetch.Verify(ctx, b2, fetch.NewStoreSource("store", st), fetch.VerifyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Bad) > 0 {
				t.Fatalf("%d of %d chunks missing or bad after the conversion, first: %v", len(rep.Bad), rep.Chunks, rep.Bad[0].Err)
			}
			f := fetch.New(nil, []fetch.Source{fetch.NewStoreSource("store", st)})
			for i := range entries {
				ino, ok := b2.LookupPath(fmt.Sprintf("/f%d", i))
				if !ok {
					t.Fatalf("/f%d missing", i)
				}
				var got []byte
				for _, ci := range b2.FileChunks(ino) {
					data, err := f.ReadChunk(ctx, b2, ci)
					if err != nil {
						t.Fatalf("/f%d: %v", i, err)
					}
					got = append(got, data...)
				}
				if !bytes.Equal(got, entries[i].Data) {
					t.Fatalf("/f%d reads back wrong", i)
				}
			}
			if _, err := st.Stat(ctx, store.IndexKey(hex)); err != nil {
				t.Errorf("index of the republished blob: %v", err)
			}
		})
	}
}

// TestReuse: Reuse finds an image's data complete right after its
// conversion, and writes its bootstrap again; and finds it incomplete once
// its bootstrap or a blob is gone.
func TestReuse(t *testing.T) {
	img, err := fixture.RichImage()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, gone := range []string{"", "bootstrap", "blob", "truncated blob"} {
		t.Run("gone "+gone, func(t *testing.T) {
			st := newStore(t)
			c := convert.New(st, convert.Options{})
			res, b := convertImage(t, c, img)
			last := b.Blobs[len(b.Blobs)-1].Hex()
			switch gone {
			case "bootstrap":
				err = st.Delete(ctx, store.BootstrapKey(res.Bootstrap.Hex()))
			case "blob":
				err = st.Delete(ctx, store.BlobKey(last))
			case "truncated blob":
				var data []byte
				if data, err = store.ReadAll(ctx, st, store.BlobKey(last), 1<<30); err == nil {
					err = st.Put(ctx, store.BlobKey(last), bytes.NewReader(data[:len(data)-1]), int64(len(data)-1))
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			before, _ := st.Stat(ctx, store.BootstrapKey(res.Bootstrap.Hex()))
			time.Sleep(10 * time.Millisecond)
			err := c.Reuse(ctx, res.Bootstrap)
			if gone == "" && err != nil {
				t.Fatalf("Reuse = %v, want nil", err)
			}
			// Written again: a collector that marked it dead spares it.
			if after, _ := st.Stat(ctx, store.BootstrapKey(res.Bootstrap.Hex())); gone == "" && !after.ModTime.After(before.ModTime) {
				t.Fatalf("bootstrap not written again: modified %s, then %s", before.ModTime, after.ModTime)
			}
			if gone != "" && !errors.Is(err, convert.ErrIncomplete) {
				t.Fatalf("Reuse = %v, want ErrIncomplete", err)
			}
		})
	}
}
