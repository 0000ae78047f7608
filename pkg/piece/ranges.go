// Package piece is the unit Skiff nodes exchange: a byte range of a
// chunk-data blob exactly as stored (compressed), a run of whole frames
// or a part of one when a node reads a range from several parents at
// once (a Store keeps whole frames and serves any range within them).
// Stored bytes, not decompressed chunks, are what a receiver can verify
// against the bootstrap, so a node keeps the pieces it received in a Store
// (next to its chunk cache), serves them to peers with a Server and reads
// them from peers with a Client. Nothing here verifies content: the
// receiving fetch.Fetcher does, so no peer has to be trusted.
package piece

import "sort"

// Range is the byte range [Off, End) of a blob.
type Range struct{ Off, End int64 }

// Ranges is a sorted list of disjoint, non-adjacent ranges.
type Ranges []Range

// Covers reports whether [off, end) lies inside one range of rs.
func (rs Ranges) Covers(off, end int64) bool {
	i := sort.Search(len(rs), func(i int) bool { return rs[i].End > off })
	return i < len(rs) && rs[i].Off <= off && end <= rs[i].End
}

// Bytes is the total length of rs.
func (rs Ranges) Bytes() int64 {
	var n int64
	for _, r := range rs {
		n += r.End - r.Off
	}
	return n
}

// Normalize sorts rs and merges overlapping and adjacent ranges, dropping
// empty ones: frames are stored back to back, so a run of held frames
// becomes one range.
func Normalize(rs []Range) Ranges {
	out := make(Ranges, 0, len(rs))
	for _, r := range rs {
		if r.End > r.Off {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Off < out[j].Off })
	merged := out[:0]
	for _, r := range out {
		if n := len(merged); n > 0 && r.Off <= merged[n-1].End {
			merged[n-1].End = max(merged[n-1].End, r.End)
			continue
		}
		merged = append(merged, r)
	}
	return merged
}
