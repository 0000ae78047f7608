package fetch

import (
	"reflect"
	"testing"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// TestPlanRunsGap: frames closer than the gap share a request, the gap
// bytes read and passed over; farther ones, another blob, or a run past
// its limit start a request of their own.
func TestPlanRunsGap(t *testing.T) {
	b := &bootstrap.Bootstrap{Frames: []bootstrap.Frame{
		{Blob: 0, Offset: 0, CompressedSize: 100},
		{Blob: 0, Offset: 100 + 1<<20, CompressedSize: 100}, // 1 MiB on
		{Blob: 0, Offset: 200 + 4<<20, CompressedSize: 100}, // 3 MiB on
		{Blob: 1, Offset: 300 + 4<<20, CompressedSize: 100},
	}}
	all := []uint32{3, 2, 1, 0}
	tests := []struct {
		name       string
		limit, gap int64
		want       [][]uint32
	}{
		{"mergeGap", maxRun, mergeGap, [][]uint32{{0}, {1}, {2}, {3}}},
		{"aheadGap", maxRun, aheadGap, [][]uint32{{0, 1}, {2}, {3}}},
		{"wide gap", maxRun, 8 << 20, [][]uint32{{0, 1, 2}, {3}}},
		{"limit", 2 << 20, 8 << 20, [][]uint32{{0, 1}, {2}, {3}}},
	}
	for _, tt := range tests {
		var got [][]uint32
		for _, r := range planRunsGap(b, all, tt.limit, tt.gap) {
			got = append(got, r.frames)
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: runs %v, want %v", tt.name, got, tt.want)
		}
	}
}
