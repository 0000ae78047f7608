package peer

import (
	"cmp"
	"context"
	"encoding/binary"
	"log/slog"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/piece"
	"github.com/skiff-dev/skiff/pkg/schedule"
)

// Announcer tells the schedulers what a node holds: a full announcement
// every Interval (so a restarted scheduler learns the cluster within one
// interval, and a node that dies expires), and within a second of its
// holdings changing (so new pieces are offered to others quickly).
type Announcer struct {
	NC       *nats.Conn
	ID       string
	Addr     string // host:port of the node's piece server, as others reach it
	Role     schedule.Role
	Store    *piece.Store
	Load     func() int // requests being served; nil: 0
	Zone     string     // where the node runs (schedule.Peer.Zone)
	Interval time.Duration
	Logger   *slog.Logger
}

// Announce announces once, now.
func (a *Announcer) Announce(ctx context.Context) error {
	return a.send(ctx, false)
}

func (a *Announcer) send(ctx context.Context, leaving bool) error {
	p := schedule.Peer{ID: a.ID, Addr: a.Addr, Role: a.Role, Free: a.Store.Free(), Zone: a.Zone}
	if a.Load != nil {
		p.Load = a.Load()
	}
	var holdings []piece.Holding
	if !leaving {
		holdings = a.Store.Holdings()
	}
	m := schedule.AnnounceMessage(p, holdings, leaving)
	// Headers (trace context) and the subject ride beside the payload.
	if limit := int(a.NC.MaxPayload()) - 4<<10; proto.Size(m) > limit {
		m = schedule.AnnounceMessage(p, fitHoldings(holdings, limit-proto.Size(schedule.AnnounceMessage(p, nil, leaving))), leaving)
	}
	return bus.Send(ctx, a.NC, bus.SubjectPeerAnnounce, m)
}

// Per range and per blob, at most what an announcement spends on them.
const (
	announcedRange = 2 * binary.MaxVarintLen64
	announcedBlob  = len(bootstrap.Digest{}) + 16
)

// fitHoldings keeps the largest ranges of holdings that an announcement
// of at most budget bytes can carry. Holdings too fragmented to announce
// whole (a store full of scattered frames) would otherwise exceed NATS'
// message limit, every announcement would fail, and schedulers would
// forget the node: announcing less than it holds only sends fewer peers
// its way.
func fitHoldings(holdings []piece.Holding, budget int) []piece.Holding {
	type ranged struct {
		blob int
		r    piece.Range
	}
	var all []ranged
	for i, h := range holdings {
		for _, r := range h.Ranges {
			all = append(all, ranged{i, r})
		}
	}
	slices.SortFunc(all, func(a, b ranged) int { return cmp.Compare(b.r.End-b.r.Off, a.r.End-a.r.Off) })
	kept := make([]piece.Ranges, len(holdings))
	for _, x := range all {
		cost := announcedRange
		if len(kept[x.blob]) == 0 {
			cost += announcedBlob
		}
		if budget < cost {
			break
		}
		budget -= cost
		kept[x.blob] = append(kept[x.blob], x.r)
	}
	var out []piece.Holding
	for i, rs := range kept {
		if len(rs) > 0 {
			out = append(out, piece.Holding{Blob: holdings[i].Blob, Ranges: piece.Normalize(rs)})
		}
	}
	return out
}

// Run announces until ctx ends, then says goodbye so schedulers stop
// offering this node at once.
func (a *Announcer) Run(ctx context.Context) error {
	log := a.Logger
	if log == nil {
		log = slog.Default()
	}
	interval := a.Interval
	if interval <= 0 {
		interval = 10 * time.Second
	}
	tick := min(time.Second, interval)
	t := time.NewTicker(tick)
	defer t.Stop()
	var sentGen uint64
	var sentAt time.Time
	for {
		if gen := a.Store.Generation(); gen != sentGen || time.Since(sentAt) >= interval {
			if a.NC.IsConnected() {
				if err := a.send(ctx, false); err != nil {
					log.Warn("peer: announce", "err", err)
				} else {
					sentGen, sentAt = gen, time.Now()
				}
			}
		}
		select {
		case <-ctx.Done():
			if err := a.send(context.Background(), true); err == nil {
				a.NC.FlushTimeout(time.Second)
			}
			return nil
		case <-t.C:
		}
	}
}
