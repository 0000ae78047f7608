package service

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/convert"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/piece"
	"github.com/skiff-dev/skiff/pkg/store"
	dirstore "github.com/skiff-dev/skiff/pkg/store/dir"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
)

type fixedCounters struct {
	s Stats
}

func (f fixedCounters) stats() Stats { return f.s }

func TestCollector(t *testing.T) {
	tests := []struct {
		name  string
		c     fixedCounters
		names []string
		want  string
	}{
		{
			// The piece server's metrics are piece.NewCollector's.
			name:  "preheats and sources",
			names: []string{"skiff_seeder_preheats_total", "skiff_seeder_source_bytes_total"},
			c: fixedCounters{s: Stats{
				Preheats: 5, PreheatFailures: 2,
				Fetch: fetch.Stats{Sources: []fetch.SourceStats{{Name: "store", Requests: 6, Frames: 30, Bytes: 4096}}},
			}},
			want: `
# HELP skiff_seeder_preheats_total Preheats of the images of conversion.completed events, by result: completed, or failed (every failed attempt counts; the event is delivered again until its last attempt).
# TYPE skiff_seeder_preheats_total counter
skiff_seeder_preheats_total{result="completed"} 5
skiff_seeder_preheats_total{result="failed"} 2
# HELP skiff_seeder_source_bytes_total Compressed bytes received from the blob store.
# TYPE skiff_seeder_source_bytes_total counter
skiff_seeder_source_bytes_total{source="store"} 4096
`,
		},
		{
			// A fetcher with no source would report none; the others
			// are there from the start.
			name:  "no sources",
			names: []string{"skiff_seeder_source_bytes_total", "skiff_seeder_seeds_total"},
			want: `
# HELP skiff_seeder_seeds_total Ranges seeded on demand from the blob store, failed ones included: pieces peers asked for that were not held, and seed requests for a range.
# TYPE skiff_seeder_seeds_total counter
skiff_seeder_seeds_total 0
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := testutil.CollectAndCompare(newCollector(tt.c), strings.NewReader(tt.want), tt.names...); err != nil {
				t.Fatal(err)
			}
			if problems, err := testutil.CollectAndLint(newCollector(tt.c)); err != nil || len(problems) > 0 {
				t.Fatalf("lint: %v %v", problems, err)
			}
		})
	}
}

// TestMetrics runs a seeder on a directory store and a real nats-server:
// one preheat completes and one fails, peers get a preheated piece, a
// piece seeded on demand and a 502, and GET /metrics reports all of it.
func TestMetrics(t *testing.T) {
	n := testenv.StartNATS(t, testenv.NATSOptions{})
	nc, err := bus.Connect(n.URL, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	st, err := dirstore.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	preheated, digest := convertInto(t, st, 1)
	seeded, _ := convertInto(t, st, 2)
	pieces, err := piece.Open(t.TempDir(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := New(Deps{ID: "seeder-1", Advertise: "127.0.0.1:1", Store: st, Pieces: pieces, NATS: nc},
		WithAckWait(time.Hour), WithLogger(slog.New(slog.DiscardHandler)))
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	ctx := context.Background()

	// The second event names an image the store lacks: its preheat fails.
	for _, d := range []bootstrap.Digest{digest, bootstrap.Sum([]byte("no such image"))} {
		s.handleCompleted(ctx, newFakeMsg(t, &skiffv1.ConversionCompleted{Target: "r/app:v1-skiff", BootstrapDigest: d.String()}, 1))
	}
	var total int64
	for _, fr := range preheated.Frames {
		total += int64(fr.CompressedSize)
	}
	fa, fb := preheated.Frames[0], seeded.Frames[0]
	for _, r := range []struct {
		what       string
		blob       bootstrap.Digest
		off, size  int64
		wantStatus int
	}{
		{"a preheated frame", preheated.Blobs[fa.Blob], fa.Offset, int64(fa.CompressedSize), http.StatusOK},
		{"a frame seeded on demand", seeded.Blobs[fb.Blob], fb.Offset, int64(fb.CompressedSize), http.StatusOK},
		{"a blob the store lacks", bootstrap.Sum([]byte("no such blob")), 0, 10, http.StatusBadGateway},
	} {
		resp, err := http.Get(fmt.Sprintf("%s%s%s?offset=%d&size=%d", srv.URL, piece.Path, r.blob.Hex(), r.off, r.size))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != r.wantStatus {
			t.Fatalf("GET %s: %s, want %d", r.what, resp.Status, r.wantStatus)
		}
	}

	want := fmt.Sprintf(`
# HELP skiff_seeder_build_info Always 1; version is the build of skiff-seeder, which changes on upgrades.
# TYPE skiff_seeder_build_info gauge
skiff_seeder_build_info{version="dev"} 1
# HELP skiff_seeder_held_bytes Bytes of pieces held for peers; the piece store's size limit bounds them.
# TYPE skiff_seeder_held_bytes gauge
skiff_seeder_held_bytes %[1]d
# HELP skiff_seeder_piece_requests_in_flight Piece requests being served now: the load announced to the schedulers.
# TYPE skiff_seeder_piece_requests_in_flight gauge
skiff_seeder_piece_requests_in_flight 0
# HELP skiff_seeder_piece_requests_seeded_total Piece requests for ranges not held that seeding from the blob store brought in before the answer.
# TYPE skiff_seeder_piece_requests_seeded_total counter
skiff_seeder_piece_requests_seeded_total 1
# HELP skiff_seeder_piece_requests_total Piece requests from peers, by result: served (answered with data), missed (404: not held) or seed_failed (502: seeding the range from the blob store failed).
# TYPE skiff_seeder_piece_requests_total counter
skiff_seeder_piece_requests_total{result="missed"} 0
skiff_seeder_piece_requests_total{result="seed_failed"} 1
skiff_seeder_piece_requests_total{result="served"} 2
# HELP skiff_seeder_piece_sent_bytes_total Bytes of pieces sent to peers.
# TYPE skiff_seeder_piece_sent_bytes_total counter
skiff_seeder_piece_sent_bytes_total %[2]d
# HELP skiff_seeder_preheats_total Preheats of the images of conversion.completed events, by result: completed, or failed (every failed attempt counts; the event is delivered again until its last attempt).
# TYPE skiff_seeder_preheats_total counter
skiff_seeder_preheats_total{result="completed"} 1
skiff_seeder_preheats_total{result="failed"} 1
# HELP skiff_seeder_seeds_total Ranges seeded on demand from the blob store, failed ones included: pieces peers asked for that were not held, and seed requests for a range.
# TYPE skiff_seeder_seeds_total counter
skiff_seeder_seeds_total 2
# HELP skiff_seeder_source_bytes_total Compressed bytes received from the blob store.
# TYPE skiff_seeder_source_bytes_total counter
skiff_seeder_source_bytes_total{source="store"} %[1]d
# HELP skiff_seeder_source_frames_total Verified frames received from the blob store.
# TYPE skiff_seeder_source_frames_total counter
skiff_seeder_source_frames_total{source="store"} %[3]d
`, total+int64(fb.CompressedSize), fa.CompressedSize+fb.CompressedSize, len(preheated.Frames)+1)
	names := []string{
		"skiff_seeder_build_info", "skiff_seeder_held_bytes", "skiff_seeder_piece_requests_in_flight",
		"skiff_seeder_piece_requests_seeded_total", "skiff_seeder_piece_requests_total", "skiff_seeder_piece_sent_bytes_total",
		"skiff_seeder_preheats_total", "skiff_seeder_seeds_total", "skiff_seeder_source_bytes_total", "skiff_seeder_source_frames_total",
	}
	if err := testutil.ScrapeAndCompare(srv.URL+"/metrics", strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
}

// convertInto converts a generated image, whose content depends on seed,
// into st, and returns its bootstrap and the bootstrap's digest.
func convertInto(t *testing.T, st store.Store, seed uint64) (*bootstrap.Bootstrap, bootstrap.Digest) {
	t.Helper()
	entries := []fixture.Entry{fixture.Dir("data", 0o755)}
	for i := range 3 {
		entries = append(entries, fixture.Entry{Header: fixture.File(fmt.Sprintf("data/r%d", i), 0o644, "").Header, Data: fixture.Random(seed*100+uint64(i), 40<<10)})
	}
	img, err := fixture.OneLayer(entries)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	res, err := convert.New(st, convert.Options{ChunkSize: 16 << 10, BatchSize: 16 << 10, WorkDir: t.TempDir()}).Convert(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := store.ReadAll(ctx, st, store.BootstrapKey(res.Bootstrap.Hex()), bootstrap.MaxRawSize)
	if err != nil {
		t.Fatal(err)
	}
	b, err := bootstrap.Decode(raw)
	if err != nil {
		t.Fatal(err)
	}
	return b, res.Bootstrap
}
