package worker

import (
	"maps"
	"testing"
	"time"
)

// TestHistogram checks the conversion durations' buckets: a duration
// counts in the first bucket whose bound is not below it, the counts are
// cumulative, and one above every bound counts only in the total.
func TestHistogram(t *testing.T) {
	tests := []struct {
		name      string
		durations []time.Duration
		want      map[float64]uint64 // buckets not listed are 0
		count     uint64
	}{
		{"none", nil, map[float64]uint64{}, 0},
		{"on a bound", []time.Duration{time.Second}, map[float64]uint64{1: 1, 2.5: 1, 5: 1, 10: 1, 30: 1, 60: 1, 120: 1, 300: 1, 600: 1, 1800: 1, 3600: 1}, 1},
		{"between bounds", []time.Duration{3 * time.Second, 90 * time.Second}, map[float64]uint64{5: 1, 10: 1, 30: 1, 60: 1, 120: 2, 300: 2, 600: 2, 1800: 2, 3600: 2}, 2},
		{"above every bound", []time.Duration{2 * time.Hour}, map[float64]uint64{}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h histogram
			var sum time.Duration
			for _, d := range tt.durations {
				h.observe(d)
				sum += d
			}
			got := h.snapshot()
			want := map[float64]uint64{}
			for _, bound := range DurationBuckets {
				want[bound] = tt.want[bound]
			}
			if got.Count != tt.count || got.Sum != sum || !maps.Equal(got.Buckets, want) {
				t.Errorf("got %d in %s, buckets %v; want %d in %s, buckets %v", got.Count, got.Sum, got.Buckets, tt.count, sum, want)
			}
		})
	}
}
