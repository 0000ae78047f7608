package peer

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

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
