package fetch

import (
	"reflect"
	"testing"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// TestInOrder: a prefetch's runs go out in the order of their first
// frame in the caller's list, each still holding its nearby frames.
func TestInOrder(t *testing.T) {
	b := &bootstrap.Bootstrap{Frames: []bootstrap.Frame{
		{Blob: 0, Offset: 0, CompressedSize: 100},
		{Blob: 0, Offset: 100, CompressedSize: 100},
		{Blob: 0, Offset: 10 << 20, CompressedSize: 100},
		{Blob: 1, Offset: 0, CompressedSize: 100},
	}}
	tests := []struct {
		frames []uint32
		want   [][]uint32
	}{
		{[]uint32{3, 0, 2, 1}, [][]uint32{{3}, {0, 1}, {2}}},
		{[]uint32{1, 2, 3, 0}, [][]uint32{{0, 1}, {2}, {3}}},
		{nil, nil},
	}
	for _, tt := range tests {
		var got [][]uint32
		for _, r := range inOrder(planRuns(b, tt.frames), tt.frames) {
			got = append(got, r.frames)
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("inOrder(%v) = %v, want %v", tt.frames, got, tt.want)
		}
	}
}
