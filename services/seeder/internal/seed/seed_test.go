package seed

import (
	"fmt"
	"testing"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
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
		{"inside a frame", 5, 10, "error"},
		{"ends inside a frame", 0, 20, "error"},
		{"past the end", 30, 70, "error"},
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
