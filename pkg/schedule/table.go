// Package schedule is the scheduler's core: a table of the peers of a
// cluster and the pieces each holds, kept from their announcements, and
// the choice of parents for a piece. Peers that stop announcing expire;
// peers reported for sending bad bytes are set aside for a while. When no
// one holds a piece, the seeder picked for its blob by rendezvous
// (highest random weight) hashing is offered to fetch it from the store,
// so each piece leaves the store about once per cluster however many
// nodes want it, and a seeder joining or leaving moves only its own share
// of blobs. Nodes asking for a piece at the same moment are spread into a
// tree, each parent taking a few (see Parents); schedulers sharing the
// work tell each other where they sent whom (Record), so there is one
// tree however many answer.
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
	// Zone is where the peer runs (a zone, a rack); empty: unknown.
	Zone string
}

// Parent is a peer to read a piece from.
type Parent struct {
	ID    string
	Addr  string
	Role  Role
	Seeds bool // does not hold the piece yet; will fetch it from the store
	// Fetching: does not hold the piece yet, but was sent to fetch the
	// same range moments ago; ask it with a wait.
	Fetching bool
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
	// MaxChildren is how many askers of one range are sent first to one
	// parent while the range is in flight, before others are preferred;
	// default 4.
	MaxChildren int
	// InFlight is how long after asking for a range a peer is offered to
	// others asking for the same range, as fetching it; default 10s.
	InFlight time.Duration
}

// Table is the scheduler's view of the cluster. Safe for concurrent use.
type Table struct {
	opts Options

	mu      sync.Mutex
	peers   map[string]*entry
	suspect map[string]time.Time // peer id → end of quarantine
	flights map[rangeKey]*flight
}

// Nodes starting one image at once all ask for its ranges at about the
// same moment, before anyone holds them: sent to the holders and the
// seeder alone, every node would read every range from them. The table
// remembers, for each range recently asked for, whom each asker was sent
// to, and offers askers that are fetching the range as parents to later
// ones once the first choices each have MaxChildren. The nodes then form
// a tree, as Dragonfly's do, and the seeder serves a few of them.
// Ranges are matched exactly: nodes reading one image the same way ask
// for the same ranges.

// rangeKey is one range of a blob.
type rangeKey struct {
	blob     bootstrap.Digest
	off, end int64
}

// flight is who has recently asked for one range.
type flight struct {
	askers map[string]flightAsker // asker id → where it was sent
	until  time.Time              // the last ask + InFlight
}

type flightAsker struct {
	parent string // first parent it was given
	depth  int    // hops from a holder or the seeder: 1 when sent to one
	at     time.Time
}

// maxFlights bounds the ranges remembered; past it the table forgets
// them all, and offers holders and the seeder only until they come back.
const maxFlights = 1 << 16

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
	if opts.MaxChildren <= 0 {
		opts.MaxChildren = 4
	}
	if opts.InFlight <= 0 {
		opts.InFlight = 10 * time.Second
	}
	return &Table{opts: opts, peers: map[string]*entry{}, suspect: map[string]time.Time{}, flights: map[rangeKey]*flight{}}
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
	for k, f := range t.flights {
		if !now.Before(f.until) {
			delete(t.flights, k)
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
// peer asker (never offered itself), and remembers where the asker was
// sent. Holders of the whole range come first: those in the asker's zone
// before others, peers before seeders, each by load, ties spread over
// askers by hashing. Then, unless already listed, the seeder chosen for
// the blob, marked Seeds when it does not hold the range. Then the peer
// fetching the range itself that is in the asker's zone and nearest the
// holders, marked Fetching. While the range is in flight, a parent
// already given MaxChildren askers first goes after those that were not.
// An empty list means there is no one to ask but the store.
func (t *Table) Parents(asker string, blob bootstrap.Digest, off, size int64, now time.Time) []Parent {
	ps, _, _ := t.Choose(asker, blob, off, size, now)
	return ps
}

// Flight is an asker of a range sent first to a parent, as Parents
// remembers it: what the schedulers of a queue group tell each other
// (Record), so that each counts the children the others gave.
type Flight struct {
	Asker, Parent string
	Depth         int // hops from a holder or the seeder: 1 when sent to one
	Blob          bootstrap.Digest
	Off, Size     int64
}

// Choose is Parents, also returning the flight it remembered; ok is false
// when it offered no one.
func (t *Table) Choose(asker string, blob bootstrap.Digest, off, size int64, now time.Time) ([]Parent, Flight, bool) {
	key := rangeKey{blob, off, off + size}
	// The ranking, from first to last.
	const (
		kindHolder = iota
		kindSeeder
		kindFetcher
	)
	type candidate struct {
		Parent
		kind   int
		full   bool // has MaxChildren askers of this range already
		away   bool // in another zone than the asker's
		load   int  // holders: announced load; fetchers: depth
		weight uint64
	}
	t.mu.Lock()
	var zone string
	if e, ok := t.peers[asker]; ok {
		zone = e.Zone
	}
	fl := t.flightLocked(key, now)
	delete(fl.askers, asker) // asking again: its last answer does not count
	children := map[string]int{}
	for _, a := range fl.askers {
		children[a.parent]++
	}
	var cands []candidate
	listed := map[string]bool{}
	for _, e := range t.peers {
		if e.ID == asker || !t.usable(e, now) || !e.Holdings[blob].Covers(off, key.end) {
			continue
		}
		cands = append(cands, candidate{Parent: Parent{ID: e.ID, Addr: e.Addr, Role: e.Role}, kind: kindHolder, load: e.Load})
		listed[e.ID] = true
	}
	seeder := t.seederLocked(blob, asker, now)
	if seeder != nil && !listed[seeder.ID] {
		cands = append(cands, candidate{Parent: Parent{ID: seeder.ID, Addr: seeder.Addr, Role: RoleSeeder, Seeds: true}, kind: kindSeeder})
		listed[seeder.ID] = true
	}
	for id, a := range fl.askers {
		e, ok := t.peers[id]
		if !ok || listed[id] || a.parent == asker || e.Role != RolePeer || e.Addr == "" || !t.usable(e, now) {
			continue
		}
		cands = append(cands, candidate{Parent: Parent{ID: id, Addr: e.Addr, Role: RolePeer, Fetching: true}, kind: kindFetcher, load: a.depth})
	}
	for i := range cands {
		cands[i].full = children[cands[i].ID] >= t.opts.MaxChildren
		if e, ok := t.peers[cands[i].ID]; ok && zone != "" {
			cands[i].away = e.Zone != zone
		}
	}
	t.mu.Unlock()

	// Every parent request of the cluster goes through here: the weights
	// are hashed once per candidate rather than twice per comparison,
	// and outside the lock that announcements also need.
	for i := range cands {
		cands[i].weight = weight(asker, cands[i].ID)
	}
	slices.SortFunc(cands, func(a, b candidate) int {
		if a.full != b.full {
			if b.full {
				return -1
			}
			return 1
		}
		if c := cmp.Compare(a.kind, b.kind); c != 0 {
			return c
		}
		if a.away != b.away {
			if b.away {
				return -1
			}
			return 1
		}
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
	// At most MaxParents holders and one fetcher, whose wait may come to
	// nothing; the seeder for the blob on top, holding the range or not.
	out := make([]Parent, 0, min(len(cands), t.opts.MaxParents+2))
	holders, fetchers := 0, 0
	for _, c := range cands {
		switch {
		case seeder != nil && c.ID == seeder.ID:
		case c.kind == kindFetcher:
			if fetchers == 1 {
				continue
			}
			fetchers++
		default:
			if holders == t.opts.MaxParents {
				continue
			}
			holders++
		}
		out = append(out, c.Parent)
	}
	if len(out) == 0 {
		return out, Flight{}, false
	}
	t.mu.Lock()
	depth := 1
	if out[0].Fetching {
		depth = fl.askers[out[0].ID].depth + 1
	}
	fl.askers[asker] = flightAsker{parent: out[0].ID, depth: depth, at: now}
	t.mu.Unlock()
	return out, Flight{Asker: asker, Parent: out[0].ID, Depth: depth, Blob: blob, Off: off, Size: size}, true
}

// Record remembers a flight another scheduler chose, as if Parents here
// had: later askers of the range are ranked knowing its parent's
// children.
func (t *Table) Record(f Flight, now time.Time) {
	if f.Asker == "" || f.Parent == "" || f.Size <= 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	fl := t.flightLocked(rangeKey{f.Blob, f.Off, f.Off + f.Size}, now)
	fl.askers[f.Asker] = flightAsker{parent: f.Parent, depth: max(f.Depth, 1), at: now}
}

// flightLocked returns the flight of range k, begun or extended at now;
// t.mu must be held.
func (t *Table) flightLocked(k rangeKey, now time.Time) *flight {
	f := t.flights[k]
	if f == nil || !now.Before(f.until) {
		if len(t.flights) >= maxFlights {
			clear(t.flights)
		}
		f = &flight{askers: map[string]flightAsker{}}
		t.flights[k] = f
	}
	f.until = now.Add(t.opts.InFlight)
	for id, a := range f.askers {
		if now.Sub(a.at) >= t.opts.InFlight {
			delete(f.askers, id)
		}
	}
	return f
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
