package schedule

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/bus"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
)

// TestSchedulersShareFlights: two schedulers of the queue group each
// answer some of the askers of one range, and tell each other whom they
// sent where, so that no parent gets more than MaxChildren of them
// however the requests are spread; without that, each would give the
// seeder MaxChildren of its own.
func TestSchedulersShareFlights(t *testing.T) {
	const maxChildren, askers = 2, 40
	url := testenv.StartEmbeddedNATS(t, false)
	connect := func(name string) *nats.Conn {
		nc, err := bus.Connect(url, name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var servers []*Server
	for _, name := range []string{"scheduler-a", "scheduler-b"} {
		s := NewServer(connect(name), NewTable(Options{MaxChildren: maxChildren}), slog.Default())
		servers = append(servers, s)
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx, time.Second) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Error(err)
			}
		})
	}
	nc := connect("nodes")
	announce := func(p Peer) {
		if err := bus.Send(ctx, nc, bus.SubjectPeerAnnounce, AnnounceMessage(p, nil, false)); err != nil {
			t.Fatal(err)
		}
	}
	// Announced again until both schedulers know every peer: the first
	// announcements may come before the schedulers subscribed, and core
	// NATS keeps nothing for later subscribers.
	var last time.Time
	waitFor(t, "every peer known to both schedulers", func() bool {
		known := true
		for _, s := range servers {
			st := s.Stats().Table
			known = known && st.Peers == askers && st.Seeders == 1
		}
		if !known && time.Since(last) > 200*time.Millisecond {
			announce(Peer{ID: "seeder", Addr: "seeder:1", Role: RoleSeeder})
			for i := range askers {
				announce(Peer{ID: fmt.Sprintf("n%02d", i), Addr: fmt.Sprintf("n%02d:1", i), Role: RolePeer})
			}
			last = time.Now()
		}
		return known
	})

	first := map[string]string{}
	for i := range askers {
		asker := fmt.Sprintf("n%02d", i)
		var reply skiffv1.ParentsReply
		req := ParentsRequestMessage(ParentsRequest{PeerID: asker, Blob: blobX, Off: 0, Size: 1 << 20})
		if err := bus.Request(ctx, nc, bus.SubjectParents, req, &reply); err != nil {
			t.Fatal(err)
		}
		ps := ParentsFromMessage(&reply)
		if len(ps) == 0 {
			t.Fatalf("%s: no parents", asker)
		}
		first[asker] = ps[0].ID
		// The other scheduler has heard of it before the next asker.
		waitFor(t, asker+"'s parent heard", func() bool {
			return servers[0].Stats().Heard+servers[1].Stats().Heard == int64(i+1)
		})
	}
	for _, s := range servers {
		if st := s.Stats(); st.Requests == 0 {
			t.Fatalf("one scheduler answered every request (%+v): the test shows nothing", st)
		}
	}
	children := map[string]int{}
	for _, p := range first {
		children[p]++
	}
	for id, n := range children {
		if n > maxChildren {
			t.Errorf("%s was the first parent of %d askers, want at most %d: %v", id, n, maxChildren, children)
		}
	}
	if children["seeder"] != maxChildren {
		t.Errorf("the seeder has %d children, want %d", children["seeder"], maxChildren)
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
