package schedule

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/piece"
)

var (
	t0    = time.Unix(1700000000, 0)
	blobX = bootstrap.Sum([]byte("x"))
)

func holds(rs ...piece.Range) map[bootstrap.Digest]piece.Ranges {
	return map[bootstrap.Digest]piece.Ranges{blobX: piece.Normalize(rs)}
}

func ids(ps []Parent) string {
	var s []string
	for _, p := range ps {
		id := p.ID
		if p.Seeds {
			id += "(seeds)"
		}
		if p.Fetching {
			id += "(fetching)"
		}
		s = append(s, id)
	}
	return strings.Join(s, ",")
}

func TestParentsRanking(t *testing.T) {
	full := holds(piece.Range{Off: 0, End: 100})
	part := holds(piece.Range{Off: 0, End: 50})
	tests := []struct {
		name      string
		peers     []Peer
		asker     string
		off, size int64
		want      string
	}{
		{"nobody", nil, "a", 0, 10, ""},
		{"never the asker", []Peer{{ID: "a", Role: RolePeer, Holdings: full}}, "a", 0, 10, ""},
		{"whole range only", []Peer{
			{ID: "p1", Role: RolePeer, Holdings: part},
			{ID: "p2", Role: RolePeer, Holdings: full},
		}, "a", 40, 20, "p2"},
		{"by load", []Peer{
			{ID: "busy", Role: RolePeer, Holdings: full, Load: 5},
			{ID: "idle", Role: RolePeer, Holdings: full, Load: 0},
		}, "a", 0, 100, "idle,busy"},
		{"peers before seeders", []Peer{
			{ID: "s1", Role: RoleSeeder, Holdings: full},
			{ID: "p1", Role: RolePeer, Holdings: full, Load: 9},
		}, "a", 0, 100, "p1,s1"},
		{"seeder seeds a miss", []Peer{
			{ID: "s1", Role: RoleSeeder},
			{ID: "p1", Role: RolePeer, Holdings: part},
		}, "a", 0, 100, "s1(seeds)"},
		{"seeder after holders", []Peer{
			{ID: "s1", Role: RoleSeeder},
			{ID: "p1", Role: RolePeer, Holdings: full},
		}, "a", 0, 100, "p1,s1(seeds)"},
		{"at most MaxParents holders plus the seeder", []Peer{
			{ID: "p1", Role: RolePeer, Holdings: full, Load: 1},
			{ID: "p2", Role: RolePeer, Holdings: full, Load: 2},
			{ID: "p3", Role: RolePeer, Holdings: full, Load: 3},
			{ID: "s1", Role: RoleSeeder},
		}, "a", 0, 100, "p1,p2,s1(seeds)"},
		{"the seeder holding the range, past MaxParents", []Peer{
			{ID: "p1", Role: RolePeer, Holdings: full},
			{ID: "p2", Role: RolePeer, Holdings: full},
			{ID: "p3", Role: RolePeer, Holdings: full},
			{ID: "s1", Role: RoleSeeder, Holdings: full},
		}, "a", 0, 100, "p2,p1,s1"},
		{"the asker's zone first", []Peer{
			{ID: "a", Role: RolePeer, Zone: "z1"},
			{ID: "p1", Role: RolePeer, Holdings: full, Zone: "z2"},
			{ID: "p2", Role: RolePeer, Holdings: full, Zone: "z1", Load: 5},
		}, "a", 0, 100, "p2,p1"},
		{"a seeder in the zone before a peer away", []Peer{
			{ID: "a", Role: RolePeer, Zone: "z1"},
			{ID: "p1", Role: RolePeer, Holdings: full, Zone: "z2"},
			{ID: "s1", Role: RoleSeeder, Holdings: full, Zone: "z1"},
		}, "a", 0, 100, "s1,p1"},
		{"an asker of no zone ranks by load", []Peer{
			{ID: "a", Role: RolePeer},
			{ID: "p1", Role: RolePeer, Holdings: full, Zone: "z2"},
			{ID: "p2", Role: RolePeer, Holdings: full, Zone: "z1", Load: 5},
		}, "a", 0, 100, "p1,p2"},
		{"other blob", []Peer{{ID: "p1", Role: RolePeer, Holdings: map[bootstrap.Digest]piece.Ranges{bootstrap.Sum([]byte("y")): {{Off: 0, End: 100}}}}}, "a", 0, 10, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := NewTable(Options{MaxParents: 2})
			for _, p := range tt.peers {
				tab.Announce(p, t0)
			}
			if got := ids(tab.Parents(tt.asker, blobX, tt.off, tt.size, t0.Add(time.Second))); got != tt.want {
				t.Errorf("parents %q, want %q", got, tt.want)
			}
		})
	}
}

func TestTiesSpreadOverAskers(t *testing.T) {
	tab := NewTable(Options{})
	for i := range 4 {
		tab.Announce(Peer{ID: fmt.Sprintf("p%d", i), Role: RolePeer, Holdings: holds(piece.Range{Off: 0, End: 10})}, t0)
	}
	first := map[string]int{}
	for i := range 200 {
		ps := tab.Parents(fmt.Sprintf("asker%d", i), blobX, 0, 10, t0)
		first[ps[0].ID]++
		if again := tab.Parents(fmt.Sprintf("asker%d", i), blobX, 0, 10, t0); ids(again) != ids(ps) {
			t.Fatal("ranking of one asker is not stable")
		}
	}
	for id, n := range first {
		if n < 20 {
			t.Errorf("peer %s ranked first for %d of 200 askers: ties are not spread (%v)", id, n, first)
		}
	}
}

func TestExpiryAndQuarantine(t *testing.T) {
	full := holds(piece.Range{Off: 0, End: 10})
	tests := []struct {
		name  string
		setup func(tab *Table)
		at    time.Duration
		want  string
		gone  string
	}{
		{"fresh", func(tab *Table) {}, 10 * time.Second, "p1,p2", ""},
		{"silent peer expires", func(tab *Table) {}, 31 * time.Second, "p2", "p1"},
		{"leaving peer goes at once", func(tab *Table) { tab.Leave("p2") }, time.Second, "p1", ""},
		{"reported peer is set aside", func(tab *Table) { tab.Report("p1", t0) }, 10 * time.Second, "p2", ""},
		{"quarantine ends", func(tab *Table) { tab.Report("p1", t0.Add(-6*time.Minute)) }, 10 * time.Second, "p1,p2", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := NewTable(Options{TTL: 30 * time.Second})
			tab.Announce(Peer{ID: "p1", Role: RolePeer, Holdings: full}, t0)
			// p2 keeps announcing.
			tab.Announce(Peer{ID: "p2", Role: RolePeer, Holdings: full, Load: 1}, t0.Add(tt.at))
			tt.setup(tab)
			now := t0.Add(tt.at)
			if got := ids(tab.Parents("a", blobX, 0, 10, now)); got != tt.want {
				t.Errorf("parents %q, want %q", got, tt.want)
			}
			if gone := strings.Join(tab.Expire(now), ","); gone != tt.gone {
				t.Errorf("expired %q, want %q", gone, tt.gone)
			}
		})
	}
}

func TestSeederChoice(t *testing.T) {
	tab := NewTable(Options{})
	if _, ok := tab.Seeder(blobX, t0); ok {
		t.Fatal("seeder chosen from an empty table")
	}
	seeders := []string{"s1", "s2", "s3"}
	for _, id := range seeders {
		tab.Announce(Peer{ID: id, Addr: id + ":1", Role: RoleSeeder}, t0)
	}
	tab.Announce(Peer{ID: "p1", Role: RolePeer}, t0)
	blobs := make([]bootstrap.Digest, 300)
	owner := map[bootstrap.Digest]string{}
	count := map[string]int{}
	for i := range blobs {
		blobs[i] = bootstrap.Sum(fmt.Appendf(nil, "blob%d", i))
		s, ok := tab.Seeder(blobs[i], t0)
		if !ok || s.Role != RoleSeeder {
			t.Fatalf("no seeder for blob %d", i)
		}
		owner[blobs[i]] = s.ID
		count[s.ID]++
		// Any scheduler with the same table picks the same seeder.
		other := NewTable(Options{})
		for _, id := range []string{"s3", "s1", "s2"} {
			other.Announce(Peer{ID: id, Role: RoleSeeder}, t0)
		}
		if o, _ := other.Seeder(blobs[i], t0); o.ID != s.ID {
			t.Fatalf("blob %d: seeder %s in one table, %s in another", i, s.ID, o.ID)
		}
	}
	for _, id := range seeders {
		if count[id] < 60 {
			t.Errorf("seeder %s owns %d of 300 blobs: %v", id, count[id], count)
		}
	}
	// A new seeder takes blobs only from the others; no blob moves
	// between the old ones.
	tab.Announce(Peer{ID: "s4", Role: RoleSeeder}, t0)
	moved := 0
	for _, b := range blobs {
		s, _ := tab.Seeder(b, t0)
		if s.ID != owner[b] {
			if s.ID != "s4" {
				t.Fatalf("blob moved from %s to %s", owner[b], s.ID)
			}
			moved++
		}
	}
	if moved < 40 || moved > 110 {
		t.Errorf("%d of 300 blobs moved to the new seeder, want about a quarter", moved)
	}
	// A dead seeder's blobs go to the others.
	tab.Report("s4", t0)
	for _, b := range blobs {
		if s, _ := tab.Seeder(b, t0); s.ID != owner[b] {
			t.Fatalf("with s4 quarantined, blob owned by %s, want %s", s.ID, owner[b])
		}
	}
}

func TestStats(t *testing.T) {
	tab := NewTable(Options{})
	tab.Announce(Peer{ID: "p1", Role: RolePeer, Holdings: holds(piece.Range{Off: 0, End: 10})}, t0)
	tab.Announce(Peer{ID: "s1", Role: RoleSeeder, Holdings: holds(piece.Range{Off: 0, End: 30})}, t0)
	tab.Report("p1", t0)
	if s := tab.Stats(t0); s != (Stats{Peers: 1, Seeders: 1, Quarantined: 1, Blobs: 1, HeldBytes: 40}) {
		t.Errorf("stats %+v", s)
	}
}

// TestParentsRankingPinned pins the full ranking for a mixed set of holders,
// so a change to how ties are broken (which would move every asker's load
// to other parents on upgrade) shows up here, and checks the ranking does
// not depend on the table's map order.
func TestParentsRankingPinned(t *testing.T) {
	full := holds(piece.Range{Off: 0, End: 100})
	peers := []Peer{
		{ID: "p0", Role: RolePeer, Holdings: full},
		{ID: "p1", Role: RolePeer, Holdings: full},
		{ID: "p2", Role: RolePeer, Holdings: full},
		{ID: "p3", Role: RolePeer, Holdings: full, Load: 1},
		{ID: "p4", Role: RolePeer, Holdings: full, Load: 1},
		{ID: "p5", Role: RolePeer, Holdings: full, Load: 2},
		{ID: "s0", Role: RoleSeeder, Holdings: full},
		{ID: "s1", Role: RoleSeeder, Holdings: full},
		{ID: "s2", Role: RoleSeeder, Holdings: full, Load: 3},
	}
	tests := []struct {
		asker string
		want  string
	}{
		{"a", "p0,p2,p1,p4,p3,p5,s0,s1,s2"},
		{"b", "p2,p1,p0,p3,p4,p5,s1,s0,s2"},
		{"node-17", "p0,p1,p2,p3,p4,p5,s0,s1,s2"},
		{"p0", "p2,p1,p3,p4,p5,s0,s1,s2"}, // never offered itself
	}
	for _, tt := range tests {
		t.Run(tt.asker, func(t *testing.T) {
			for i := range 20 {
				tab := NewTable(Options{MaxParents: len(peers)})
				for j := range peers {
					tab.Announce(peers[(i+j)%len(peers)], t0)
				}
				got := ids(tab.Parents(tt.asker, blobX, 0, 100, t0))
				if got != tt.want {
					t.Fatalf("announce order %d: parents %q, want %q", i, got, tt.want)
				}
			}
		})
	}
}

// Nodes asking for one range at once, before anyone holds it, form a
// tree: the seeder takes MaxChildren of them, then peers fetching the
// range take the rest, the nearest to the seeder first, each at most
// MaxChildren, and never one that is waiting on the asker.
func TestParentsInFlight(t *testing.T) {
	const maxChildren = 2
	tab := NewTable(Options{MaxChildren: maxChildren})
	tab.Announce(Peer{ID: "s1", Addr: "s1:1", Role: RoleSeeder}, t0)
	var nodes []string
	for i := range 9 {
		id := fmt.Sprintf("n%d", i)
		nodes = append(nodes, id)
		tab.Announce(Peer{ID: id, Addr: id + ":1", Role: RolePeer}, t0)
	}
	now := t0.Add(time.Second)
	first := map[string]Parent{}
	for i, n := range nodes[:8] {
		ps := tab.Parents(n, blobX, 0, 10, now)
		switch i {
		case 0:
			if got := ids(ps); got != "s1(seeds)" {
				t.Fatalf("first asker: %q, want the seeder alone", got)
			}
		case 1:
			if got := ids(ps); got != "s1(seeds),n0(fetching)" {
				t.Fatalf("second asker: %q, want the seeder, then the first asker", got)
			}
		}
		if again := tab.Parents(n, blobX, 0, 10, now); ids(again) != ids(ps) {
			t.Fatalf("%s asking again: %q, then %q", n, ids(ps), ids(again))
		}
		first[n] = ps[0]
	}
	children := map[string]int{}
	depth := func(n string) int {
		d := 0
		for ; n != "s1"; n = first[n].ID {
			d++
			if d > len(nodes) {
				t.Fatalf("a cycle through %s: %v", n, first)
			}
		}
		return d
	}
	for n, p := range first {
		children[p.ID]++
		if p.ID != "s1" && !p.Fetching {
			t.Errorf("%s sent to %s, which is neither the seeder nor fetching", n, p.ID)
		}
	}
	for id, c := range children {
		if c > maxChildren {
			t.Errorf("%s is the first parent of %d askers, want at most %d (%v)", id, c, maxChildren, children)
		}
	}
	// 2 askers on the seeder, 4 on those 2, 2 on the next level.
	if d := depth("n7"); d != 3 {
		t.Errorf("the last asker is %d hops from the seeder, want 3", d)
	}
	for _, n := range nodes[2:6] {
		if d := depth(n); d != 2 {
			t.Errorf("%s is %d hops from the seeder, want 2", n, d)
		}
	}

	// A fetcher that announces the range is a holder like any other,
	// first while it has room; one fetcher at most is offered, since its
	// wait may come to nothing.
	tab.Announce(Peer{ID: "n7", Addr: "n7:1", Role: RolePeer, Holdings: holds(piece.Range{Off: 0, End: 10})}, now)
	ps := tab.Parents("n8", blobX, 0, 10, now)
	if ps[0].ID != "n7" || ps[0].Fetching {
		t.Errorf("with a holder that has room: %q, want n7 first", ids(ps))
	}
	fetching := 0
	for _, p := range ps {
		if p.Fetching {
			fetching++
		}
	}
	if fetching > 1 {
		t.Errorf("%d fetching parents offered: %q", fetching, ids(ps))
	}

	// Once the flight is over, only holders and the seeder are offered.
	later := now.Add(11 * time.Second)
	for _, id := range []string{"n1", "n7", "s1"} {
		p, _ := tab.Peer(id, now)
		tab.Announce(p, later)
	}
	tab.Expire(later)
	if got := ids(tab.Parents("n1", blobX, 0, 10, later)); got != "n7,s1(seeds)" {
		t.Errorf("after the flight: %q, want the holder and the seeder", got)
	}
}

// TestRecordCountsOthersChildren: a table that records the flights
// another chose ranks their parents by the children the other gave them.
func TestRecordCountsOthersChildren(t *testing.T) {
	a, b := NewTable(Options{MaxChildren: 2}), NewTable(Options{MaxChildren: 2})
	for _, tab := range []*Table{a, b} {
		tab.Announce(Peer{ID: "s1", Addr: "s1:1", Role: RoleSeeder}, t0)
		for i := range 3 {
			tab.Announce(Peer{ID: fmt.Sprintf("n%d", i), Addr: fmt.Sprintf("n%d:1", i), Role: RolePeer}, t0)
		}
	}
	now := t0.Add(time.Second)
	for _, n := range []string{"n0", "n1"} {
		_, f, ok := a.Choose(n, blobX, 0, 10, now)
		if !ok || f.Parent != "s1" || f.Depth != 1 || f.Asker != n {
			t.Fatalf("%s: flight %+v, %v", n, f, ok)
		}
		b.Record(f, now)
	}
	// The seeder has its two children on b too: n2 is sent to a fetcher.
	if got := ids(b.Parents("n2", blobX, 0, 10, now)); got != "n0(fetching),s1(seeds)" && got != "n1(fetching),s1(seeds)" {
		t.Errorf("after recording a's flights, b offers %q, want a fetcher first", got)
	}
	// Without them, b would have sent n2 to the seeder.
	c := NewTable(Options{MaxChildren: 2})
	c.Announce(Peer{ID: "s1", Addr: "s1:1", Role: RoleSeeder}, t0)
	if got := ids(c.Parents("n2", blobX, 0, 10, now)); got != "s1(seeds)" {
		t.Errorf("a table that heard nothing offers %q", got)
	}
}
