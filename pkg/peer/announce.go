package peer

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"

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
	Interval time.Duration
	Logger   *slog.Logger
}

// Announce announces once, now.
func (a *Announcer) Announce(ctx context.Context) error {
	return a.send(ctx, false)
}

func (a *Announcer) send(ctx context.Context, leaving bool) error {
	p := schedule.Peer{ID: a.ID, Addr: a.Addr, Role: a.Role, Free: a.Store.Free()}
	if a.Load != nil {
		p.Load = a.Load()
	}
	var holdings []piece.Holding
	if !leaving {
		holdings = a.Store.Holdings()
	}
	return bus.Send(ctx, a.NC, bus.SubjectPeerAnnounce, schedule.AnnounceMessage(p, holdings, leaving))
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
