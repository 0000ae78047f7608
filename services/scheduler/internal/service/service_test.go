package service

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"

	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/piece"
	"github.com/skiff-dev/skiff/pkg/schedule"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
)

// TestSchedulerService runs two schedulers in process against a real
// nats-server: both learn every announcement, parent requests are
// answered (by one of them), silent peers expire and reported peers are
// set aside.
func TestSchedulerService(t *testing.T) {
	n := testenv.StartNATS(t, testenv.NATSOptions{})
	urls := []string{start(t, n.URL, time.Second), start(t, n.URL, time.Second)}
	nc, err := bus.Connect(n.URL, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx := context.Background()
	blob := bootstrap.Sum([]byte("blob"))
	held := []piece.Holding{{Blob: blob, Ranges: piece.Ranges{{Off: 0, End: 1000}}}}
	announce := func(id string, role schedule.Role, h []piece.Holding) {
		t.Helper()
		if err := bus.Send(ctx, nc, bus.SubjectPeerAnnounce, schedule.AnnounceMessage(schedule.Peer{ID: id, Addr: id + ":1", Role: role}, h, false)); err != nil {
			t.Fatal(err)
		}
	}
	parents := func(asker string) string {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		var reply skiffv1.ParentsReply
		if err := bus.Request(rctx, nc, bus.SubjectParents, &skiffv1.ParentsRequest{PeerId: asker, Blob: blob[:], Offset: 100, Size: 200}, &reply); err != nil {
			t.Fatal(err)
		}
		s := ""
		for _, p := range schedule.ParentsFromMessage(&reply) {
			s += p.ID
			if p.Seeds {
				s += "(seeds)"
			}
			s += " "
		}
		return s
	}
	eventually := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting until %s", what)
			}
			// Keep the live ones alive.
			announce("p1", schedule.RolePeer, held)
			announce("s1", schedule.RoleSeeder, nil)
			time.Sleep(100 * time.Millisecond)
		}
	}
	announce("p1", schedule.RolePeer, held)
	announce("p2", schedule.RolePeer, held)
	announce("s1", schedule.RoleSeeder, nil)
	eventually("both schedulers know every peer", func() bool {
		for _, u := range urls {
			if s := stats(t, u); s.Table.Peers != 2 || s.Table.Seeders != 1 {
				return false
			}
		}
		return true
	})
	if got := parents("p1"); got != "p2 s1(seeds) " {
		t.Errorf("parents for p1: %q", got)
	}
	// p2 stops announcing and expires; p1 and s1 keep going.
	eventually("p2 expires", func() bool { return parents("x") == "p1 s1(seeds) " })
	// p1 is reported for bad data: only the seeder is left.
	if err := bus.Send(ctx, nc, bus.SubjectPeerReport, &skiffv1.PeerReport{ReporterId: "x", PeerId: "p1", Reason: "digest mismatch"}); err != nil {
		t.Fatal(err)
	}
	eventually("p1 is set aside", func() bool { return parents("x") == "s1(seeds) " })
	var requests int64
	for _, u := range urls {
		requests += stats(t, u).Requests
	}
	if requests == 0 {
		t.Error("no scheduler counted a request")
	}
}

// start runs a scheduler as skiff-scheduler composes it, forgetting peers
// after ttl, until the test ends, and returns the URL of its handler.
func start(t *testing.T, natsURL string, ttl time.Duration) string {
	t.Helper()
	nc, err := bus.Connect(natsURL, "skiff-scheduler", nats.RetryOnFailedConnect(true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	table := schedule.NewTable(schedule.Options{TTL: ttl, Quarantine: time.Minute, MaxParents: 4})
	s := New(Deps{NATS: nc, Table: table}, WithExpireEvery(250*time.Millisecond))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		g, ctx := errgroup.WithContext(ctx)
		g.Go(func() error { return s.Serve(ctx, ln) })
		g.Go(func() error { return s.Schedule(ctx) })
		done <- g.Wait()
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("scheduler stopped with: %v", err)
		}
	})
	url := "http://" + ln.Addr().String()
	testenv.WaitHTTP(t, url+"/healthz", nil)
	return url
}

func stats(t *testing.T, url string) schedule.ServerStats {
	t.Helper()
	resp, err := http.Get(url + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s schedule.ServerStats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s
}
