package s3

import "testing"

func TestObjectSize(t *testing.T) {
	tests := []struct {
		header   string
		fallback int64
		want     int64
	}{
		{"bytes 0-9/1234", 7, 1234},
		{"bytes 990-999/1000", 7, 1000},
		{"bytes 0-9/*", 7, 7},
		{"", 7, 7},
		{"bytes 0-9/x", 7, 7},
	}
	for _, tc := range tests {
		if got := objectSize(tc.header, tc.fallback); got != tc.want {
			t.Errorf("objectSize(%q, %d) = %d, want %d", tc.header, tc.fallback, got, tc.want)
		}
	}
}
