package service

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/piece"
	"github.com/skiff-dev/skiff/pkg/schedule"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
)

type fixedCounters schedule.ServerStats

func (f fixedCounters) Stats() schedule.ServerStats { return schedule.ServerStats(f) }

func TestCollector(t *testing.T) {
	tests := []struct {
		name  string
		c     fixedCounters
		names []string
		want  string
	}{
		{
			name:  "traffic",
			names: []string{"skiff_scheduler_parents_requests_total", "skiff_scheduler_parents_misses_total", "skiff_scheduler_parents_heard_total", "skiff_scheduler_peers", "skiff_scheduler_held_bytes"},
			c: fixedCounters{
				Table:     schedule.Stats{Peers: 3, Seeders: 1, Quarantined: 1, Blobs: 2, HeldBytes: 1 << 20},
				Announces: 40, Requests: 7, Misses: 2, Reports: 1, Heard: 1,
			},
			want: `
# HELP skiff_scheduler_held_bytes Bytes of pieces live peers hold, summed over the peers (a piece two peers hold counts twice).
# TYPE skiff_scheduler_held_bytes gauge
skiff_scheduler_held_bytes 1.048576e+06
# HELP skiff_scheduler_parents_heard_total Parents other schedulers of the queue group chose, recorded here so that all count a parent's children alike.
# TYPE skiff_scheduler_parents_heard_total counter
skiff_scheduler_parents_heard_total 1
# HELP skiff_scheduler_parents_misses_total Parent requests answered with no parent at all: the reader goes to the blob store.
# TYPE skiff_scheduler_parents_misses_total counter
skiff_scheduler_parents_misses_total 2
# HELP skiff_scheduler_parents_requests_total Parent requests this scheduler answered; the schedulers share them through a NATS queue group.
# TYPE skiff_scheduler_parents_requests_total counter
skiff_scheduler_parents_requests_total 7
# HELP skiff_scheduler_peers Live peers in the table, by role: peer (a node agent) or seeder.
# TYPE skiff_scheduler_peers gauge
skiff_scheduler_peers{role="peer"} 3
skiff_scheduler_peers{role="seeder"} 1
`,
		},
		{
			// An empty table still reports both roles, so that a
			// dashboard shows 0 rather than no data.
			name:  "empty",
			names: []string{"skiff_scheduler_peers", "skiff_scheduler_announces_total"},
			want: `
# HELP skiff_scheduler_announces_total Peer announcements received, departures included; every scheduler hears every one.
# TYPE skiff_scheduler_announces_total counter
skiff_scheduler_announces_total 0
# HELP skiff_scheduler_peers Live peers in the table, by role: peer (a node agent) or seeder.
# TYPE skiff_scheduler_peers gauge
skiff_scheduler_peers{role="peer"} 0
skiff_scheduler_peers{role="seeder"} 0
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

// TestMetrics runs a scheduler as skiff-scheduler composes it against a
// real nats-server, sends it announcements, parent requests and a report,
// and scrapes GET /metrics for what it counted.
func TestMetrics(t *testing.T) {
	n := testenv.StartNATS(t, testenv.NATSOptions{})
	// No step of the test outlives the TTL: peers announce once.
	url := start(t, n.URL, time.Minute)
	nc, err := bus.Connect(n.URL, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx := context.Background()
	held, other := bootstrap.Sum([]byte("held")), bootstrap.Sum([]byte("other"))
	// Handlers of different subjects run concurrently, so each step
	// waits until the scheduler counted the one before.
	waitFor := func(what string, cond func(schedule.ServerStats) bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !cond(stats(t, url)); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting until %s: %+v", what, stats(t, url))
			}
		}
	}
	announce := func(p schedule.Peer, h []piece.Holding) {
		t.Helper()
		if err := bus.Send(ctx, nc, bus.SubjectPeerAnnounce, schedule.AnnounceMessage(p, h, false)); err != nil {
			t.Fatal(err)
		}
	}
	parents := func(blob bootstrap.Digest) int {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		var reply skiffv1.ParentsReply
		if err := bus.Request(rctx, nc, bus.SubjectParents, &skiffv1.ParentsRequest{PeerId: "x", Blob: blob[:], Offset: 0, Size: 100}, &reply); err != nil {
			t.Fatal(err)
		}
		return len(schedule.ParentsFromMessage(&reply))
	}

	// A peer holding 1000 bytes of one blob; one request it answers, and
	// one for a blob nobody holds (there is no seeder yet): a miss.
	announce(schedule.Peer{ID: "p1", Addr: "p1:1", Role: schedule.RolePeer}, []piece.Holding{{Blob: held, Ranges: piece.Ranges{{Off: 0, End: 1000}}}})
	waitFor("p1 is known", func(s schedule.ServerStats) bool { return s.Table.Peers == 1 })
	if got := parents(held); got != 1 {
		t.Fatalf("%d parents for a blob p1 holds, want 1", got)
	}
	if got := parents(other); got != 0 {
		t.Fatalf("%d parents for a blob nobody holds, want 0", got)
	}
	// p1 is reported for bad data; then a seeder holding 500 bytes of
	// the other blob comes.
	if err := bus.Send(ctx, nc, bus.SubjectPeerReport, &skiffv1.PeerReport{ReporterId: "x", PeerId: "p1", Reason: "digest mismatch"}); err != nil {
		t.Fatal(err)
	}
	waitFor("the report is counted", func(s schedule.ServerStats) bool { return s.Reports == 1 })
	announce(schedule.Peer{ID: "s1", Addr: "s1:1", Role: schedule.RoleSeeder}, []piece.Holding{{Blob: other, Ranges: piece.Ranges{{Off: 0, End: 500}}}})
	waitFor("s1 is known", func(s schedule.ServerStats) bool { return s.Table.Seeders == 1 })
	// Another scheduler of the queue group tells where it sent an asker.
	chosen := schedule.FlightMessage("another-scheduler", schedule.Flight{Asker: "y", Parent: "s1", Depth: 1, Blob: other, Size: 100})
	if err := bus.Send(ctx, nc, bus.SubjectParentChosen, chosen); err != nil {
		t.Fatal(err)
	}
	waitFor("the other scheduler's choice is heard", func(s schedule.ServerStats) bool { return s.Heard == 1 })

	want := `
# HELP skiff_scheduler_announces_total Peer announcements received, departures included; every scheduler hears every one.
# TYPE skiff_scheduler_announces_total counter
skiff_scheduler_announces_total 2
# HELP skiff_scheduler_blobs Distinct blobs live peers hold pieces of.
# TYPE skiff_scheduler_blobs gauge
skiff_scheduler_blobs 2
# HELP skiff_scheduler_build_info Always 1; version is the build of skiff-scheduler, which changes on upgrades.
# TYPE skiff_scheduler_build_info gauge
skiff_scheduler_build_info{version="dev"} 1
# HELP skiff_scheduler_held_bytes Bytes of pieces live peers hold, summed over the peers (a piece two peers hold counts twice).
# TYPE skiff_scheduler_held_bytes gauge
skiff_scheduler_held_bytes 1500
# HELP skiff_scheduler_parents_heard_total Parents other schedulers of the queue group chose, recorded here so that all count a parent's children alike.
# TYPE skiff_scheduler_parents_heard_total counter
skiff_scheduler_parents_heard_total 1
# HELP skiff_scheduler_parents_misses_total Parent requests answered with no parent at all: the reader goes to the blob store.
# TYPE skiff_scheduler_parents_misses_total counter
skiff_scheduler_parents_misses_total 1
# HELP skiff_scheduler_parents_requests_total Parent requests this scheduler answered; the schedulers share them through a NATS queue group.
# TYPE skiff_scheduler_parents_requests_total counter
skiff_scheduler_parents_requests_total 2
# HELP skiff_scheduler_peers Live peers in the table, by role: peer (a node agent) or seeder.
# TYPE skiff_scheduler_peers gauge
skiff_scheduler_peers{role="peer"} 1
skiff_scheduler_peers{role="seeder"} 1
# HELP skiff_scheduler_quarantined_peers Peers reported for bad data, not offered as parents until their quarantine (SKIFF_SCHEDULER_QUARANTINE) ends.
# TYPE skiff_scheduler_quarantined_peers gauge
skiff_scheduler_quarantined_peers 1
# HELP skiff_scheduler_reports_total Reports of peers that sent data failing verification.
# TYPE skiff_scheduler_reports_total counter
skiff_scheduler_reports_total 1
`
	names := []string{
		"skiff_scheduler_announces_total", "skiff_scheduler_blobs", "skiff_scheduler_build_info", "skiff_scheduler_held_bytes",
		"skiff_scheduler_parents_heard_total", "skiff_scheduler_parents_misses_total", "skiff_scheduler_parents_requests_total", "skiff_scheduler_peers",
		"skiff_scheduler_quarantined_peers", "skiff_scheduler_reports_total",
	}
	if err := testutil.ScrapeAndCompare(url+"/metrics", strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	// The registry is the service's own, with the runtime's metrics.
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"go_goroutines", "process_start_time_seconds"} {
		if !strings.Contains(string(body), "\n"+name+" ") {
			t.Errorf("GET /metrics lacks %s", name)
		}
	}
}
