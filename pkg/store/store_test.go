package store_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/skiff-dev/skiff/pkg/store"
	"github.com/skiff-dev/skiff/pkg/store/dir"
)

func TestReadAll(t *testing.T) {
	ctx := context.Background()
	st, err := dir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("x"), 100)
	if err := st.Put(ctx, "k", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		key   string
		limit int64
		want  error
	}{
		{"under the limit", "k", 1000, nil},
		{"at the limit", "k", 100, nil},
		{"over the limit", "k", 99, store.ErrTooLarge},
		{"missing", "none", 1000, store.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := store.ReadAll(ctx, st, tc.key, tc.limit)
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if tc.want == nil && !bytes.Equal(got, data) {
				t.Fatalf("read %d bytes, want %d", len(got), len(data))
			}
		})
	}
}
