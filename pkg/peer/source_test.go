package peer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/piece"
	"github.com/skiff-dev/skiff/pkg/schedule"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
)

// startNATS runs an embedded nats-server; the services' integration
// tests use a real nats-server process, this is for the source's logic.
func startNATS(t *testing.T) *nats.Conn {
	t.Helper()
	nc, err := bus.Connect(testenv.StartEmbeddedNATS(t, false), "peer-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func TestSourceTriesParentsInOrder(t *testing.T) {
	nc := startNATS(t)
	blob := bootstrap.Sum([]byte("blob"))
	data := []byte("0123456789abcdefghij")
	good, err := piece.Open(t.TempDir(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := good.Put(blob, 0, data[:10]); err != nil {
		t.Fatal(err)
	}
	if err := good.Put(blob, 10, data[10:]); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(piece.NewServer(good, nil, nil))
	defer srv.Close()
	// A dead address: a port that was just closed.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := l.Addr().String()
	l.Close()

	var parents []schedule.Parent
	sub, err := nc.Subscribe(bus.SubjectParents, func(m *nats.Msg) {
		bus.Respond(context.Background(), m, schedule.ParentsMessage(parents))
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	reports := make(chan *skiffv1.PeerReport, 4)
	rsub, err := nc.Subscribe(bus.SubjectPeerReport, func(m *nats.Msg) {
		var r skiffv1.PeerReport
		if _, err := bus.DecodeMsg(context.Background(), m, &r); err == nil {
			reports <- &r
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer rsub.Unsubscribe()

	live := strings.TrimPrefix(srv.URL, "http://")
	tests := []struct {
		name    string
		parents []schedule.Parent
		wantErr string
	}{
		{"no parents", nil, "no peer holds it"},
		{"dead then live", []schedule.Parent{{ID: "dead", Addr: dead, Role: schedule.RolePeer}, {ID: "live", Addr: live, Role: schedule.RolePeer}}, ""},
		{"only dead", []schedule.Parent{{ID: "dead", Addr: dead, Role: schedule.RolePeer}}, "dead"},
	}
	src := NewSource(nc, "me", nil, SourceOptions{PieceTimeout: time.Second})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parents = tt.parents
			got, err := src.FetchFrame(context.Background(), blob, 0, 20)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("got %q, %v", got, err)
			}
		})
	}
	if s := src.Stats(); s.FromPeers != 1 || s.ParentErrors != 2 || s.NoParents != 1 {
		t.Errorf("stats %+v", s)
	}

	// The Fetcher rejects what "live" sent: it is banned and reported.
	parents = []schedule.Parent{{ID: "live", Addr: live, Role: schedule.RolePeer}}
	if _, err := src.FetchFrame(context.Background(), blob, 0, 10); err != nil {
		t.Fatal(err)
	}
	src.Reject(blob, 0, 10, errors.New("digest mismatch"))
	select {
	case r := <-reports:
		if r.GetPeerId() != "live" || r.GetReporterId() != "me" {
			t.Errorf("report %+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no report")
	}
	if _, err := src.FetchFrame(context.Background(), blob, 0, 10); err == nil || !strings.Contains(err.Error(), "banned") {
		t.Errorf("banned parent still used: %v", err)
	}
	if s := src.Stats(); s.Rejected != 1 || len(s.Banned) != 1 {
		t.Errorf("stats %+v", s)
	}
}

func TestSourceWithoutScheduler(t *testing.T) {
	nc := startNATS(t)
	src := NewSource(nc, "me", nil, SourceOptions{})
	blob := bootstrap.Sum([]byte("blob"))
	// Connected, but no scheduler answers: fails without waiting out
	// the timeout (no responders).
	start := time.Now()
	if _, err := src.FetchFrame(context.Background(), blob, 0, 10); err == nil || time.Since(start) > 400*time.Millisecond {
		t.Fatalf("no scheduler: %v after %s", err, time.Since(start))
	}
	// Disconnected: fails at once.
	nc.Close()
	start = time.Now()
	if _, err := src.FetchFrame(context.Background(), blob, 0, 10); err == nil || time.Since(start) > 50*time.Millisecond {
		t.Fatalf("closed connection: %v after %s", err, time.Since(start))
	}
	if s := src.Stats(); s.NoScheduler != 2 || src.Connected() {
		t.Errorf("stats %+v", s)
	}
}

// TestSourceReadsFromSeveralParents: a range that several parents hold is
// read in parts from all of them at once, a part whose parent is dead
// comes from another, and a bad frame bans only the parents of the parts
// it lies in.
func TestSourceReadsFromSeveralParents(t *testing.T) {
	nc := startNATS(t)
	blob := bootstrap.Sum([]byte("blob"))
	data := make([]byte, 4<<20)
	for i := range data {
		data[i] = byte(i * 7 / 5)
	}
	// Frames the parts do not line up with.
	frames := []int64{0, 1536 << 10, 4 << 20}
	var parents []schedule.Parent
	requests := map[string]*atomic.Int64{}
	for _, id := range []string{"a", "b", "c"} {
		st, err := piece.Open(t.TempDir(), 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := range frames[:len(frames)-1] {
			if err := st.Put(blob, frames[i], data[frames[i]:frames[i+1]]); err != nil {
				t.Fatal(err)
			}
		}
		n := &atomic.Int64{}
		requests[id] = n
		h := piece.NewServer(st, nil, nil)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n.Add(1)
			h.ServeHTTP(w, r)
		}))
		t.Cleanup(srv.Close)
		parents = append(parents, schedule.Parent{ID: id, Addr: strings.TrimPrefix(srv.URL, "http://"), Role: schedule.RolePeer})
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := schedule.Parent{ID: "dead", Addr: l.Addr().String(), Role: schedule.RolePeer}
	l.Close()
	// A seeder that does not hold the range is never asked for a part.
	seeder := schedule.Parent{ID: "seeder", Addr: dead.Addr, Role: schedule.RoleSeeder, Seeds: true}

	var offer []schedule.Parent
	sub, err := nc.Subscribe(bus.SubjectParents, func(m *nats.Msg) {
		bus.Respond(context.Background(), m, schedule.ParentsMessage(offer))
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	fetch := func(src *Source, off, size int64) {
		t.Helper()
		got, err := src.FetchFrame(context.Background(), blob, off, size)
		if err != nil || !bytes.Equal(got, data[off:off+size]) {
			t.Fatalf("[%d,+%d): %d bytes, %v", off, size, len(got), err)
		}
	}
	counts := func() string {
		return fmt.Sprintf("a=%d b=%d c=%d", requests["a"].Swap(0), requests["b"].Swap(0), requests["c"].Swap(0))
	}

	src := NewSource(nc, "me", nil, SourceOptions{PieceTimeout: time.Second})
	offer = append([]schedule.Parent{seeder}, parents...)
	fetch(src, 0, 4<<20)
	if got := counts(); got != "a=1 b=1 c=1" {
		t.Errorf("requests per parent %s, want one part from each", got)
	}
	if s := src.Stats(); s.Assembled != 1 || s.FromPeers != 3 || s.FromSeeders != 0 {
		t.Errorf("stats %+v", s)
	}

	// The dead parent's part comes from the next holder.
	offer = []schedule.Parent{parents[0], dead, parents[1]}
	fetch(src, 1<<20, 3<<20)
	if got := counts(); got != "a=2 b=1 c=0" && got != "a=1 b=2 c=0" {
		t.Errorf("requests per parent %s, want the dead parent's part from a or b", got)
	}
	if s := src.Stats(); s.Assembled != 2 || s.ParentErrors != 1 {
		t.Errorf("stats %+v", s)
	}

	// Too small to cut, or cutting turned off: one parent.
	offer = parents
	fetch(src, 0, 2*MinPart-1)
	whole := NewSource(nc, "me", nil, SourceOptions{PieceTimeout: time.Second, Parallel: 1})
	fetch(whole, 0, 4<<20)
	if got := counts(); got != "a=2 b=0 c=0" {
		t.Errorf("requests per parent %s, want every range from the first", got)
	}

	// Parts of 4 MiB / 3: [0, 1398102) from a, then b, then c. The frame
	// [0, 1.5 MiB) lies across a's and b's parts, the frame after it
	// across b's and c's.
	src = NewSource(nc, "me", nil, SourceOptions{PieceTimeout: time.Second})
	fetch(src, 0, 4<<20)
	counts()
	src.Reject(blob, 0, 1536<<10, errors.New("digest mismatch"))
	if s := src.Stats(); !slices.Equal(sorted(s.Banned), []string{"a", "b"}) || s.Rejected != 2 {
		t.Errorf("after a bad frame across two parts: stats %+v, want a and b banned", s)
	}
	// Left with one holder, the range is read whole from it.
	fetch(src, 0, 4<<20)
	if got := counts(); got != "a=0 b=0 c=1" {
		t.Errorf("requests per parent %s, want the last range whole from c", got)
	}

	// As the agent's metrics say it.
	col := NewCollector("skiff_test_", src)
	want := `
# HELP skiff_test_peer_banned Parents banned now (for SourceOptions.BanFor after bad bytes).
# TYPE skiff_test_peer_banned gauge
skiff_test_peer_banned 2
# HELP skiff_test_peer_ranges_assembled_total Ranges read in parts from several parents at once (SKIFF_AGENT_PEER_PARALLEL).
# TYPE skiff_test_peer_ranges_assembled_total counter
skiff_test_peer_ranges_assembled_total 1
# HELP skiff_test_peer_ranges_total Ranges, or parts of ranges read from several parents, received from other nodes (peer) and from seeders (seeder).
# TYPE skiff_test_peer_ranges_total counter
skiff_test_peer_ranges_total{parent="peer"} 4
skiff_test_peer_ranges_total{parent="seeder"} 0
# HELP skiff_test_peer_rejected_total Parents banned for sending bytes that failed verification.
# TYPE skiff_test_peer_rejected_total counter
skiff_test_peer_rejected_total 2
`
	if err := testutil.CollectAndCompare(col, strings.NewReader(want), "skiff_test_peer_banned", "skiff_test_peer_ranges_assembled_total", "skiff_test_peer_ranges_total", "skiff_test_peer_rejected_total"); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.CollectAndLint(col); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

func sorted(s []string) []string {
	slices.Sort(s)
	return s
}
