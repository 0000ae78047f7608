package piece

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestCollector: what a piece server answered, sent and holds, as
// Prometheus metrics, linted.
func TestCollector(t *testing.T) {
	st, err := Open(t.TempDir(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	frames(t, st, blobA, 10, 20)
	srv := NewServer(st, nil, nil)
	hs := httptest.NewServer(srv)
	defer hs.Close()
	c, addr := NewClient(nil), strings.TrimPrefix(hs.URL, "http://")
	if _, err := c.Get(context.Background(), addr, blobA, 5, 20, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(context.Background(), addr, blobB, 0, 10, 0); err == nil {
		t.Fatal("a range not held was served")
	}
	col := NewCollector("skiff_test_", srv)
	want := `
# HELP skiff_test_held_bytes Bytes of pieces held for peers; the piece store's size limit bounds them.
# TYPE skiff_test_held_bytes gauge
skiff_test_held_bytes 30
# HELP skiff_test_piece_requests_total Piece requests from peers, by result: served (answered with data), missed (404: not held) or seed_failed (502: seeding the range from the blob store failed).
# TYPE skiff_test_piece_requests_total counter
skiff_test_piece_requests_total{result="missed"} 1
skiff_test_piece_requests_total{result="seed_failed"} 0
skiff_test_piece_requests_total{result="served"} 1
# HELP skiff_test_piece_sent_bytes_total Bytes of pieces sent to peers.
# TYPE skiff_test_piece_sent_bytes_total counter
skiff_test_piece_sent_bytes_total 20
`
	if err := testutil.CollectAndCompare(col, strings.NewReader(want), "skiff_test_held_bytes", "skiff_test_piece_requests_total", "skiff_test_piece_sent_bytes_total"); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.CollectAndLint(col); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}
