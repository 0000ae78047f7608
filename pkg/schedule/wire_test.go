package schedule

import (
	"fmt"
	"testing"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/piece"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
)

func TestAnnounceRoundTrip(t *testing.T) {
	p := Peer{ID: "n1", Addr: "10.0.0.1:8093", Role: RoleSeeder, Load: 3, Free: 1 << 30, Zone: "eu-west-1a"}
	holdings := []piece.Holding{{Blob: blobX, Ranges: piece.Ranges{{Off: 0, End: 100}, {Off: 200, End: 300}}}}
	got, err := PeerFromMessage(AnnounceMessage(p, holdings, false))
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != p.ID || got.Addr != p.Addr || got.Role != p.Role || got.Load != 3 || got.Free != 1<<30 || got.Zone != p.Zone ||
		fmt.Sprint(got.Holdings[blobX]) != fmt.Sprint(holdings[0].Ranges) {
		t.Errorf("round trip: %+v", got)
	}
}

func TestPeerFromMessageRejects(t *testing.T) {
	tests := []struct {
		name string
		m    *skiffv1.PeerAnnounce
	}{
		{"no id", &skiffv1.PeerAnnounce{Role: skiffv1.PeerRole_PEER_ROLE_PEER}},
		{"no role", &skiffv1.PeerAnnounce{PeerId: "a"}},
		{"short digest", &skiffv1.PeerAnnounce{PeerId: "a", Role: skiffv1.PeerRole_PEER_ROLE_PEER, Blobs: []*skiffv1.BlobHoldings{{Blob: []byte{1}}}}},
		{"odd ranges", &skiffv1.PeerAnnounce{PeerId: "a", Role: skiffv1.PeerRole_PEER_ROLE_PEER, Blobs: []*skiffv1.BlobHoldings{{Blob: blobX[:], Ranges: []uint64{1}}}}},
		{"overflow", &skiffv1.PeerAnnounce{PeerId: "a", Role: skiffv1.PeerRole_PEER_ROLE_PEER, Blobs: []*skiffv1.BlobHoldings{{Blob: blobX[:], Ranges: []uint64{1 << 63, 1}}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := PeerFromMessage(tt.m); err == nil {
				t.Error("accepted")
			}
		})
	}
}

func TestParentsRoundTrip(t *testing.T) {
	ps := []Parent{{ID: "p1", Addr: "a:1", Role: RolePeer}, {ID: "s1", Addr: "b:2", Role: RoleSeeder, Seeds: true}, {ID: "p2", Addr: "c:3", Role: RolePeer, Fetching: true}}
	m := ParentsMessage(ps)
	m.Parents = append(m.Parents, &skiffv1.Parent{PeerId: "noaddr", Role: skiffv1.PeerRole_PEER_ROLE_PEER})
	if got := ParentsFromMessage(m); fmt.Sprint(got) != fmt.Sprint(ps) {
		t.Errorf("round trip %+v, want %+v", got, ps)
	}
	if _, err := Digest(make([]byte, 31)); err == nil {
		t.Error("short digest accepted")
	}
	if d, err := Digest(blobX[:]); err != nil || d != bootstrap.Digest(blobX) {
		t.Error("digest round trip")
	}
}

func TestParentsRequestWire(t *testing.T) {
	blob := bootstrap.Digest{7}
	want := ParentsRequest{PeerID: "n1", Blob: blob, Off: 4096, Size: 1 << 20}
	got, err := ParentsRequestFromMessage(ParentsRequestMessage(want))
	if err != nil || got != want {
		t.Fatalf("round trip: %+v, %v; want %+v", got, err, want)
	}
	for _, tc := range []struct {
		name string
		m    *skiffv1.ParentsRequest
	}{
		{"short digest", &skiffv1.ParentsRequest{Blob: blob[:5], Size: 1}},
		{"empty range", &skiffv1.ParentsRequest{Blob: blob[:], Size: 0}},
		{"offset past 2^63", &skiffv1.ParentsRequest{Blob: blob[:], Offset: 1 << 63, Size: 1}},
		{"end past 2^63", &skiffv1.ParentsRequest{Blob: blob[:], Offset: 1<<63 - 10, Size: 20}},
	} {
		if _, err := ParentsRequestFromMessage(tc.m); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
}

func TestReportWire(t *testing.T) {
	want := Report{Reporter: "n1", Peer: "n2", Blob: bootstrap.Digest{9}, Off: 10, Size: 20, Reason: "digest mismatch"}
	got, err := ReportFromMessage(ReportMessage(want))
	if err != nil || got != want {
		t.Fatalf("round trip: %+v, %v; want %+v", got, err, want)
	}
	if _, err := ReportFromMessage(&skiffv1.PeerReport{ReporterId: "n1"}); err == nil {
		t.Error("a report naming no peer was accepted")
	}
}

func TestFlightRoundTrip(t *testing.T) {
	f := Flight{Asker: "n2", Parent: "n0", Depth: 2, Blob: blobX, Off: 4096, Size: 1 << 20}
	from, got, err := FlightFromMessage(FlightMessage("sched-a", f))
	if err != nil || from != "sched-a" || got != f {
		t.Errorf("round trip: %q %+v %v", from, got, err)
	}
	for _, tt := range []struct {
		name string
		m    *skiffv1.ParentChosen
	}{
		{"no asker", &skiffv1.ParentChosen{ParentId: "p", Blob: blobX[:], Size: 1}},
		{"no parent", &skiffv1.ParentChosen{AskerId: "a", Blob: blobX[:], Size: 1}},
		{"short digest", &skiffv1.ParentChosen{AskerId: "a", ParentId: "p", Blob: []byte{1}, Size: 1}},
		{"empty range", &skiffv1.ParentChosen{AskerId: "a", ParentId: "p", Blob: blobX[:]}},
		{"overflow", &skiffv1.ParentChosen{AskerId: "a", ParentId: "p", Blob: blobX[:], Offset: 1 << 63, Size: 1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := FlightFromMessage(tt.m); err == nil {
				t.Error("accepted")
			}
		})
	}
}
