package peer

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/piece"
	"github.com/skiff-dev/skiff/pkg/schedule"
)

// fragmented returns holdings of n disjoint ranges over two blobs, range i
// being i%1000+1 bytes long.
func fragmented(n int) []piece.Holding {
	hs := []piece.Holding{{Blob: bootstrap.Digest{1}}, {Blob: bootstrap.Digest{2}}}
	var off int64
	for i := range n {
		size := int64(i%1000 + 1)
		hs[i%2].Ranges = append(hs[i%2].Ranges, piece.Range{Off: off, End: off + size})
		off += size + 1 // a gap: ranges never merge
	}
	return hs
}

func TestFitHoldings(t *testing.T) {
	peer := schedule.Peer{ID: "node-1", Addr: "10.0.0.1:8094", Role: schedule.RolePeer}
	for _, tc := range []struct {
		name   string
		ranges int
		budget int
		whole  bool
	}{
		{"fits", 100, 1 << 20, true},
		{"too fragmented for NATS' default limit", 200_000, 1<<20 - 4<<10, false},
		{"nothing fits", 10, 10, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := fragmented(tc.ranges)
			if whole := proto.Size(schedule.AnnounceMessage(peer, hs, false)); tc.whole != (whole <= tc.budget) {
				t.Fatalf("the whole announcement is %d bytes against a budget of %d", whole, tc.budget)
			}
			kept := fitHoldings(hs, tc.budget)
			if size := proto.Size(schedule.AnnounceMessage(peer, kept, false)) - proto.Size(schedule.AnnounceMessage(peer, nil, false)); size > tc.budget {
				t.Fatalf("holdings take %d bytes, budget %d", size, tc.budget)
			}
			var n int
			smallestKept := int64(1 << 62)
			keptSet := map[piece.Range]bool{}
			for _, h := range kept {
				n += len(h.Ranges)
				for _, r := range h.Ranges {
					smallestKept = min(smallestKept, r.End-r.Off)
					keptSet[r] = true
				}
			}
			if tc.whole != (n == tc.ranges) {
				t.Fatalf("kept %d of %d ranges", n, tc.ranges)
			}
			// What is dropped is never larger than what is kept.
			for _, h := range hs {
				for _, r := range h.Ranges {
					if !keptSet[r] && r.End-r.Off > smallestKept {
						t.Fatalf("dropped a range of %d bytes and kept one of %d", r.End-r.Off, smallestKept)
					}
				}
			}
		})
	}
}
