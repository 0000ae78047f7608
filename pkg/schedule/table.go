// Package schedule is the scheduler's core: a table of the peers of a
// cluster and the pieces each holds, kept from their announcements, and
// the choice of parents for a piece. Peers that stop announcing expire;
// peers reported for sending bad bytes are set aside for a while. When no
// one holds a piece, the seeder picked for its blob by rendezvous
// (highest random weight) hashing is offered to fetch it from the store,
// so each piece leaves the store about once per cluster however many
// nodes want it, and a seeder joining or leaving moves only its own share
// of blobs.
//
// The NATS edge (announcements in, parent requests answered, reports) is
// in Server; the Table itself knows nothing of the wire.
package schedule

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/piece"
)

// Role is what kind of node a peer is.
type Role int

const (
	// RolePeer is a node agent, holding what its containers read.
	RolePeer Role = iota + 1
	// RoleSeeder preheats images and fetches missing pieces from the
	// store on request.
	RoleSeeder
)

func (r Role) String() string {
	switch r {
	case RolePeer:
		return "peer"
	case RoleSeeder:
		return "seeder"
	}
	return "unknown"
}

// Peer is one node's announced state.
type Peer struct {
	ID       string
	Addr     string // host:port of its piece server
	Role     Role
	Holdings map[bootstrap.Digest]piece.Ranges
	Load     int   // piece requests in progress
	Free     int64 // bytes it can take before evicting; -1 unlimited
}

// Parent is a peer to read a piece from.
type Parent struct {
	ID    string
	Addr  string
	Role  Role
	Seeds bool // does not hold the piece yet; will fetch it from the store
}

// Options tune a Table.
type Options struct {
	// TTL is how long a peer stays after its last announcement; default
	// 30s (three missed announcements at the default interval).
	TTL time.Duration
	// Quarantine is how long a peer reported for bad bytes is not
	// offered; default 5m.
	Quarantine time.Duration
	// MaxParents bounds the holders offered for one piece; default 4.
	// The seeder for the blob comes on top.
	MaxParents int
}

// Table is the scheduler's view of the cluster. Safe for concurrent use.
type Table struct {
	opts Options

	mu      sync.Mutex
	peers   map[string]*entry
	suspect map[string]time.Time // peer id → end of quarantine
}

type entry struct {
	Peer
	seen time.Time
}

// NewTable returns an empty table.
func NewTable(opts Options) *Table {
	if opts.TTL <= 0 {
		opts.TTL = 30 * time.Second
	}
	if opts.Quarantine <= 0 {
		opts.Quarantine = 5 * time.Minute
	}
	if opts.MaxParents <= 0 {
		opts.MaxParents = 4
	}
	return &Table{opts: opts, peers: map[string]*entry{}, suspect: map[string]time.Time{}}
}

// Announce records p's state as of now, replacing what it said before.
func (t *Table) Announce(p Peer, now time.Time) {
	if p.ID == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.peers[p.ID] = &entry{Peer: p, seen: now}
}

// Leave forgets a peer at once (it is shutting down).
func (t *Table) Leave(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.peers, id)
}

// Report sets peer id aside until now + Quarantine.
func (t *Table) Report(id string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.suspect[id] = now.Add(t.opts.Quarantine)
}

// Expire forgets peers not heard from within TTL and ends quarantines
// that are over; it returns the peers forgotten.
func (t *Table) Expire(now time.Time) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var gone []string
	for id, e := range t.peers {
		if now.Sub(e.seen) > t.opts.TTL {
			delete(t.peers, id)
			gone = append(gone, id)
		}
	}
	for id, until := range t.suspect {
		if !now.Before(until) {
			delete(t.suspect, id)
		}
	}
	sort.Strings(gone)
	return gone
}

// usable reports whether e may be offered at now; t.mu must be held.
func (t *Table) usable(e *entry, now time.Time) bool {
	if now.Sub(e.seen) > t.opts.TTL {
		return false
	}
	until, bad := t.suspect[e.ID]
	return !bad || !now.Before(until)
}

// Parents ranks the peers to read [off, off+size) of blob from, for the
// peer asker (never offered itself): peers holding the whole range before
// seeders holding it, each by load, ties spread over askers by hashing;
// then, unless already listed, the seeder chosen for the blob, marked
// Seeds when it does not hold the range. An empty list means there is no
// one to ask but the store.
func (t *Table) Parents(asker string, blob bootstrap.Digest, off, size int64, now time.Time) []Parent {
	end := off + size
	type candidate struct {
		Parent
		load   int
		weight uint64
	}
	t.mu.Lock()
	var holders []candidate
	for _, e := range t.peers {
		if e.ID == asker || !t.usable(e, now) || !e.Holdings[blob].Covers(off, end) {
			continue
		}
		holders = append(holders, candidate{Parent: Parent{ID: e.ID, Addr: e.Addr, Role: e.Role}, load: e.Load})
	}
	var seeder *Parent
	if e := t.seederLocked(blob, asker, now); e != nil {
		seeder = &Parent{ID: e.ID, Addr: e.Addr, Role: RoleSeeder, Seeds: !e.Holdings[blob].Covers(off, end)}
	}
	t.mu.Unlock()

	// Every parent request of the cluster goes through here: the weights
	// are hashed once per holder rather than twice per comparison, and
	// outside the lock that announcements also need.
	for i := range holders {
		holders[i].weight = weight(asker, holders[i].ID)
	}
	slices.SortFunc(holders, func(a, b candidate) int {
		if ap, bp := a.Role == RolePeer, b.Role == RolePeer; ap != bp {
			if ap {
				return -1
			}
			return 1
		}
		if c := cmp.Compare(a.load, b.load); c != 0 {
			return c
		}
		// Equal candidates in a different order for each asker, so
		// many readers of one piece do not all queue at one parent.
		if c := cmp.Compare(b.weight, a.weight); c != 0 {
			return c
		}
		// Only a hash collision gets here; the ID keeps the order
		// independent of the map's.
		return strings.Compare(a.ID, b.ID)
	})
	if len(holders) > t.opts.MaxParents {
		holders = holders[:t.opts.MaxParents]
	}
	out := make([]Parent, 0, len(holders)+1)
	listed := false
	for _, h := range holders {
		out = append(out, h.Parent)
		listed = listed || (seeder != nil && h.ID == seeder.ID)
	}
	if seeder != nil && !listed {
		out = append(out, *seeder)
	}
	return out
}

// Seeder returns the seeder responsible for blob: of the usable seeders,
// the one with the highest rendezvous weight for the blob, so that every
// scheduler picks the same one without talking to the others.
func (t *Table) Seeder(blob bootstrap.Digest, now time.Time) (Peer, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.seederLocked(blob, "", now); e != nil {
		return e.Peer, true
	}
	return Peer{}, false
}

func (t *Table) seederLocked(blob bootstrap.Digest, asker string, now time.Time) *entry {
	var best *entry
	var bestW uint64
	for _, e := range t.peers {
		if e.Role != RoleSeeder || e.ID == asker || !t.usable(e, now) {
			continue
		}
		w := weight(string(blob[:]), e.ID)
		if best == nil || w > bestW || (w == bestW && e.ID < best.ID) {
			best, bestW = e, w
		}
	}
	return best
}

// weight is the rendezvous hash of a key and a peer.
func weight(key, id string) uint64 {
	h := sha256.New()
	h.Write([]byte(key))
	h.Write([]byte{0})
	h.Write([]byte(id))
	var sum [32]byte
	return binary.BigEndian.Uint64(h.Sum(sum[:0]))
}

// Stats summarises the table.
type Stats struct {
	Peers       int   `json:"peers"`
	Seeders     int   `json:"seeders"`
	Quarantined int   `json:"quarantined"`
	Blobs       int   `json:"blobs"`     // distinct blobs held somewhere
	HeldBytes   int64 `json:"heldBytes"` // sum over peers of bytes held
}

// Stats returns counts as of now.
func (t *Table) Stats(now time.Time) Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	var s Stats
	blobs := map[bootstrap.Digest]bool{}
	for _, e := range t.peers {
		if now.Sub(e.seen) > t.opts.TTL {
			continue
		}
		if e.Role == RoleSeeder {
			s.Seeders++
		} else {
			s.Peers++
		}
		for b, rs := range e.Holdings {
			blobs[b] = true
			s.HeldBytes += rs.Bytes()
		}
	}
	for _, until := range t.suspect {
		if now.Before(until) {
			s.Quarantined++
		}
	}
	s.Blobs = len(blobs)
	return s
}

// Peer returns what peer id last announced, if it is alive at now.
func (t *Table) Peer(id string, now time.Time) (Peer, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.peers[id]
	if !ok || now.Sub(e.seen) > t.opts.TTL {
		return Peer{}, false
	}
	return e.Peer, true
}
