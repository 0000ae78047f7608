// Package peer is a node's side of peer-to-peer distribution: a
// fetch.Source named "peer" that asks a scheduler where a piece is and
// reads it from other nodes or seeders, and an Announcer that tells the
// schedulers what this node holds. A node that also serves pieces runs a
// piece.Server over the piece.Store its Fetcher fills.
//
// A range that several parents hold is read from several of them at
// once, in parts, so that it comes at their uplinks' pace together.
//
// Peers are never trusted and never waited on for long: a dead peer costs
// one short timeout and the next parent is tried, and a parent still
// fetching the piece itself is waited on for FetchingWait at most. When
// none delivers, or no scheduler answers, the Source fails at once so the
// Fetcher moves on to the next source (the store). Bytes that fail the
// Fetcher's verification get the peer that sent them banned here and
// reported to the schedulers.
package peer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/piece"
	"github.com/skiff-dev/skiff/pkg/schedule"
	"github.com/skiff-dev/skiff/pkg/telemetry"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
)

// Name is the Source's name in fetch statistics.
const Name = "peer"

// SourceOptions tune a Source. Zero values select the defaults.
type SourceOptions struct {
	// SchedulerTimeout bounds the wait for a parents reply; default 500ms.
	SchedulerTimeout time.Duration
	// PieceTimeout bounds one read from a parent that holds the piece;
	// default 2s.
	PieceTimeout time.Duration
	// SeedTimeout bounds one read from a seeder that fetches the piece
	// from the store first; default 15s.
	SeedTimeout time.Duration
	// FetchingWait is how long a parent that is fetching the piece
	// itself is asked to wait for it (schedule.Parent.Fetching) before
	// the next parent is tried; default 5s.
	FetchingWait time.Duration
	// BanFor is how long a parent that sent bad bytes is skipped; default
	// 10m.
	BanFor time.Duration
	// Parallel is how many parents holding a range it is read from at
	// once, in parts of at least MinPart bytes each (Dragonfly's pieces
	// from several parents); default 4, 1 to read every range from one
	// parent.
	Parallel int
	Logger   *slog.Logger
}

// Source is a fetch.Source reading pieces from other nodes.
type Source struct {
	nc     *nats.Conn
	id     string
	client *piece.Client
	opts   SourceOptions

	mu     sync.Mutex
	banned map[string]time.Time // parent id → end of ban
	served map[servedKey]string // recent range → parent id that sent it

	stats sourceCounters
}

type servedKey struct {
	blob      bootstrap.Digest
	off, size int64
}

// maxServed bounds the memory of who sent what: a rejection arrives right
// after the read, so only the latest reads matter.
const maxServed = 4096

type sourceCounters struct {
	requests, noScheduler, noParents, fromPeers, fromSeeders, assembled, parentErrors, failures, rejected atomic.Int64
}

// MinPart is the least a range is cut into when read from several
// parents: below it, a request's round trip costs more than the parents'
// uplinks save.
const MinPart = 512 << 10

var (
	_ fetch.Source   = (*Source)(nil)
	_ fetch.Rejecter = (*Source)(nil)
)

// NewSource returns a Source for the node id asking schedulers over nc.
func NewSource(nc *nats.Conn, id string, client *piece.Client, opts SourceOptions) *Source {
	if opts.SchedulerTimeout <= 0 {
		opts.SchedulerTimeout = 500 * time.Millisecond
	}
	if opts.PieceTimeout <= 0 {
		opts.PieceTimeout = 2 * time.Second
	}
	if opts.SeedTimeout <= 0 {
		opts.SeedTimeout = 15 * time.Second
	}
	if opts.FetchingWait <= 0 {
		opts.FetchingWait = 5 * time.Second
	}
	if opts.BanFor <= 0 {
		opts.BanFor = 10 * time.Minute
	}
	if opts.Parallel <= 0 {
		opts.Parallel = 4
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if client == nil {
		client = piece.NewClient(nil)
	}
	return &Source{nc: nc, id: id, client: client, opts: opts, banned: map[string]time.Time{}, served: map[servedKey]string{}}
}

// Name implements fetch.Source.
func (s *Source) Name() string { return Name }

// errNoScheduler: NATS is down or no scheduler runs; the store it is.
var errNoScheduler = errors.New("no scheduler reachable")

// FetchFrame implements fetch.Source.
func (s *Source) FetchFrame(ctx context.Context, blob bootstrap.Digest, off, size int64) ([]byte, error) {
	s.stats.requests.Add(1)
	ctx, span := telemetry.Tracer("skiff/peer").Start(ctx, "peer.fetch")
	defer span.End()
	span.SetAttributes(attribute.String("skiff.blob", blob.String()), attribute.Int64("skiff.offset", off), attribute.Int64("skiff.size", size))
	parents, err := s.parents(ctx, blob, off, size)
	if err != nil {
		s.stats.noScheduler.Add(1)
		return nil, fmt.Errorf("peer fetch %s [%d,+%d): %w", blob, off, size, err)
	}
	if len(parents) == 0 {
		s.stats.noParents.Add(1)
		return nil, fmt.Errorf("peer fetch %s [%d,+%d): no peer holds it: %w", blob, off, size, fetch.ErrNotHeld)
	}
	if data, ok := s.fetchParts(ctx, parents, blob, off, size); ok {
		span.SetAttributes(attribute.Bool("skiff.assembled", true))
		return data, nil
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	var errs []error
	for _, p := range parents {
		if s.isBanned(p.ID) {
			continue
		}
		timeout, wait := s.opts.PieceTimeout, time.Duration(0)
		switch {
		case p.Seeds:
			timeout = s.opts.SeedTimeout
		case p.Fetching:
			wait = s.opts.FetchingWait
			timeout += wait
		}
		pctx, cancel := context.WithTimeout(ctx, timeout)
		data, err := s.client.Get(pctx, p.Addr, blob, off, size, wait)
		cancel()
		if err == nil {
			s.remember(servedKey{blob, off, size}, p.ID)
			if p.Role == schedule.RoleSeeder {
				s.stats.fromSeeders.Add(1)
			} else {
				s.stats.fromPeers.Add(1)
			}
			span.SetAttributes(attribute.String("skiff.parent", p.ID))
			return data, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		s.stats.parentErrors.Add(1)
		s.opts.Logger.Debug("peer: parent failed", "parent", p.ID, "addr", p.Addr, "blob", blob, "offset", off, "err", err)
		errs = append(errs, fmt.Errorf("%s: %w", p.ID, err))
	}
	s.stats.failures.Add(1)
	if len(errs) == 0 {
		return nil, fmt.Errorf("peer fetch %s [%d,+%d): every parent is banned: %w", blob, off, size, fetch.ErrNotHeld)
	}
	// These parents failed; other ranges have parents of their own.
	return nil, fmt.Errorf("peer fetch %s [%d,+%d): %w (every parent failed): %w", blob, off, size, fetch.ErrNotHeld, errors.Join(errs...))
}

// fetchParts reads [off, off+size) of blob in equal parts from up to
// Parallel parents that hold it, at once: with several holders, a range
// arrives at their uplinks' pace added up, not one's. A part whose parent
// fails is asked of the other holders in turn. It reports false when the
// range is too small to cut, fewer than two holders are offered, or some
// part came from none of them: FetchFrame then reads the range from one
// parent at a time, seeders included.
func (s *Source) fetchParts(ctx context.Context, parents []schedule.Parent, blob bootstrap.Digest, off, size int64) ([]byte, bool) {
	var holders []schedule.Parent
	for _, p := range parents {
		// Parts spread the sending over holders' uplinks: a seeder
		// that would fetch the range from the store, or a peer still
		// fetching it, is asked for the whole range, below.
		if !p.Seeds && !p.Fetching && !s.isBanned(p.ID) {
			holders = append(holders, p)
		}
	}
	n := min(len(holders), s.opts.Parallel, int(size/MinPart))
	if n < 2 {
		return nil, false
	}
	buf := make([]byte, size)
	part := (size + int64(n) - 1) / int64(n)
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		pOff := int64(i) * part
		pBuf := buf[pOff:min(pOff+part, size)]
		wg.Go(func() {
			// Part i goes to holder i first, then to the others.
			for j := range holders {
				h := holders[(i+j)%len(holders)]
				pctx, cancel := context.WithTimeout(ctx, s.opts.PieceTimeout)
				err := s.client.GetInto(pctx, h.Addr, blob, off+pOff, pBuf, 0)
				cancel()
				if err == nil {
					ids[i] = h.ID
					return
				}
				if ctx.Err() != nil {
					return
				}
				s.stats.parentErrors.Add(1)
				s.opts.Logger.Debug("peer: parent failed a part", "parent", h.ID, "addr", h.Addr, "blob", blob, "offset", off+pOff, "size", len(pBuf), "err", err)
			}
		})
	}
	wg.Wait()
	for i, id := range ids {
		if id == "" {
			s.opts.Logger.Debug("peer: no holder delivered a part; reading the range whole", "blob", blob, "offset", off+int64(i)*part, "parts", n)
			return nil, false
		}
	}
	for i, id := range ids {
		pOff := int64(i) * part
		s.remember(servedKey{blob, off + pOff, min(part, size-pOff)}, id)
		if p := parentByID(holders, id); p.Role == schedule.RoleSeeder {
			s.stats.fromSeeders.Add(1)
		} else {
			s.stats.fromPeers.Add(1)
		}
	}
	s.stats.assembled.Add(1)
	return buf, true
}

func parentByID(ps []schedule.Parent, id string) schedule.Parent {
	for _, p := range ps {
		if p.ID == id {
			return p
		}
	}
	return schedule.Parent{}
}

// parents asks a scheduler, failing at once when NATS is not connected
// so an outage costs nothing per read.
func (s *Source) parents(ctx context.Context, blob bootstrap.Digest, off, size int64) ([]schedule.Parent, error) {
	if !s.nc.IsConnected() {
		return nil, errNoScheduler
	}
	rctx, cancel := context.WithTimeout(ctx, s.opts.SchedulerTimeout)
	defer cancel()
	var reply skiffv1.ParentsReply
	req := schedule.ParentsRequestMessage(schedule.ParentsRequest{PeerID: s.id, Blob: blob, Off: off, Size: size})
	if err := bus.Request(rctx, s.nc, bus.SubjectParents, req, &reply); err != nil {
		return nil, fmt.Errorf("%w: %w", errNoScheduler, err)
	}
	return schedule.ParentsFromMessage(&reply), nil
}

func (s *Source) isBanned(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	until, ok := s.banned[id]
	if ok && time.Now().After(until) {
		delete(s.banned, id)
		return false
	}
	return ok
}

func (s *Source) remember(k servedKey, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.served) >= maxServed {
		clear(s.served)
	}
	s.served[k] = id
}

// Reject implements fetch.Rejecter: the parents that sent any of the bad
// range are banned here and reported to the schedulers. A range read in
// parts names only the parts it overlaps; a frame across two parts costs
// both parents, since either may have sent the bad bytes.
func (s *Source) Reject(blob bootstrap.Digest, off, size int64, err error) {
	var ids []string
	s.mu.Lock()
	for k, id := range s.served {
		if k.blob == blob && k.off < off+size && off < k.off+k.size {
			delete(s.served, k)
			if !slices.Contains(ids, id) {
				s.banned[id] = time.Now().Add(s.opts.BanFor)
				ids = append(ids, id)
			}
		}
	}
	s.mu.Unlock()
	for _, id := range ids {
		s.stats.rejected.Add(1)
		s.opts.Logger.Warn("peer: parent sent bad data, banned", "parent", id, "blob", blob, "offset", off, "size", size, "for", s.opts.BanFor, "err", err)
		report := schedule.ReportMessage(schedule.Report{Reporter: s.id, Peer: id, Blob: blob, Off: off, Size: size, Reason: err.Error()})
		if serr := bus.Send(context.Background(), s.nc, bus.SubjectPeerReport, report); serr != nil {
			s.opts.Logger.Warn("peer: report bad parent", "parent", id, "err", serr)
		}
	}
}

// SourceStats counts a Source's work.
type SourceStats struct {
	Requests     int64    `json:"requests"`
	NoScheduler  int64    `json:"noScheduler"`  // no scheduler answered: fell through
	NoParents    int64    `json:"noParents"`    // nobody to ask: fell through
	FromPeers    int64    `json:"fromPeers"`    // ranges read from peers
	FromSeeders  int64    `json:"fromSeeders"`  // ranges read from seeders
	Assembled    int64    `json:"assembled"`    // ranges read in parts from several parents (each part counted above)
	ParentErrors int64    `json:"parentErrors"` // reads from a parent that failed (then the next was tried)
	Failures     int64    `json:"failures"`     // requests no parent delivered
	Rejected     int64    `json:"rejected"`     // parents banned for bad bytes
	Banned       []string `json:"banned"`       // parents banned now
}

// Stats returns current counters.
func (s *Source) Stats() SourceStats {
	st := SourceStats{
		Requests: s.stats.requests.Load(), NoScheduler: s.stats.noScheduler.Load(), NoParents: s.stats.noParents.Load(),
		FromPeers: s.stats.fromPeers.Load(), FromSeeders: s.stats.fromSeeders.Load(), Assembled: s.stats.assembled.Load(), ParentErrors: s.stats.parentErrors.Load(),
		Failures: s.stats.failures.Load(), Rejected: s.stats.rejected.Load(), Banned: []string{},
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	for id, until := range s.banned {
		if now.Before(until) {
			st.Banned = append(st.Banned, id)
		}
	}
	return st
}

// Connected reports whether the Source can reach NATS now; while it
// cannot, every FetchFrame fails at once.
func (s *Source) Connected() bool { return s.nc.IsConnected() }
