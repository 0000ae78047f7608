package schedule

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"

	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/telemetry"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
)

// Server puts a Table on NATS: it takes every announcement and report
// (each scheduler keeps the whole table) and answers parent requests in
// the schedulers' queue group (one scheduler answers each). It tells the
// other schedulers where it sent each asker, and hears where they did
// (Table.Record), so that they all count a parent's children alike.
type Server struct {
	nc    *nats.Conn
	table *Table
	log   *slog.Logger
	now   func() time.Time
	id    string // tells this scheduler's ParentChosen from the others'

	announces, requests, reports, misses, heard atomic.Int64
}

// NewServer returns a Server for table on nc.
func NewServer(nc *nats.Conn, table *Table, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	return &Server{nc: nc, table: table, log: log, now: time.Now, id: nats.NewInbox()}
}

// Run serves until ctx ends, expiring silent peers every interval.
func (s *Server) Run(ctx context.Context, expireEvery time.Duration) error {
	subs := make([]*nats.Subscription, 0, 4)
	defer func() {
		for _, sub := range subs {
			sub.Unsubscribe()
		}
	}()
	for _, h := range []struct {
		subject, queue string
		fn             nats.MsgHandler
	}{
		{bus.SubjectPeerAnnounce, "", s.onAnnounce},
		{bus.SubjectPeerReport, "", s.onReport},
		{bus.SubjectParentChosen, "", s.onChosen},
		{bus.SubjectParents, bus.QueueSchedulers, s.onParents},
	} {
		sub, err := s.nc.QueueSubscribe(h.subject, h.queue, h.fn)
		if err != nil {
			return fmt.Errorf("subscribe %s: %w", h.subject, err)
		}
		subs = append(subs, sub)
	}
	// Flush so the subscriptions are in place when Run is known to run;
	// a NATS that is down now is not an error (the client resubscribes
	// when it reconnects).
	if err := s.nc.FlushTimeout(5 * time.Second); err != nil {
		s.log.Warn("schedule: subscriptions not confirmed yet", "err", err)
	}
	if expireEvery <= 0 {
		expireEvery = 5 * time.Second
	}
	t := time.NewTicker(expireEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			for _, id := range s.table.Expire(s.now()) {
				s.log.Info("schedule: peer expired", "peer", id)
			}
		}
	}
}

func (s *Server) onAnnounce(m *nats.Msg) {
	var a skiffv1.PeerAnnounce
	if _, err := bus.DecodeMsg(context.Background(), m, &a); err != nil {
		s.log.Warn("schedule: bad announcement", "err", err)
		return
	}
	s.announces.Add(1)
	if a.GetLeaving() {
		s.table.Leave(a.GetPeerId())
		s.log.Info("schedule: peer left", "peer", a.GetPeerId())
		return
	}
	p, err := PeerFromMessage(&a)
	if err != nil {
		s.log.Warn("schedule: bad announcement", "err", err)
		return
	}
	s.table.Announce(p, s.now())
}

func (s *Server) onReport(m *nats.Msg) {
	var r skiffv1.PeerReport
	if _, err := bus.DecodeMsg(context.Background(), m, &r); err != nil {
		s.log.Warn("schedule: bad report", "err", err)
		return
	}
	rep, err := ReportFromMessage(&r)
	if err != nil {
		s.log.Warn("schedule: bad report", "err", err)
		return
	}
	s.reports.Add(1)
	s.table.Report(rep.Peer, s.now())
	s.log.Warn("schedule: peer reported for bad data, set aside", "peer", rep.Peer, "reporter", rep.Reporter, "blob", rep.Blob, "offset", rep.Off, "reason", rep.Reason)
}

func (s *Server) onParents(m *nats.Msg) {
	var req skiffv1.ParentsRequest
	ctx, err := bus.DecodeMsg(context.Background(), m, &req)
	if err != nil {
		s.log.Warn("schedule: bad parents request", "err", err)
		bus.Respond(ctx, m, &skiffv1.ParentsReply{})
		return
	}
	ctx, span := telemetry.Tracer("skiff/schedule").Start(ctx, "schedule.parents")
	defer span.End()
	s.requests.Add(1)
	var ps []Parent
	var fl Flight
	chose := false
	if r, err := ParentsRequestFromMessage(&req); err == nil {
		ps, fl, chose = s.table.Choose(r.PeerID, r.Blob, r.Off, r.Size, s.now())
		span.SetAttributes(attribute.String("skiff.blob", r.Blob.String()), attribute.Int("skiff.parents", len(ps)))
	}
	if len(ps) == 0 {
		s.misses.Add(1)
	}
	if err := bus.Respond(ctx, m, ParentsMessage(ps)); err != nil {
		s.log.Warn("schedule: answer parents request", "err", err)
	}
	// After the answer, which the asker waits for; a scheduler that
	// misses this only ranks the range's next asker as if this one had
	// not asked.
	if chose {
		if err := bus.Send(ctx, s.nc, bus.SubjectParentChosen, FlightMessage(s.id, fl)); err != nil {
			s.log.Debug("schedule: tell the other schedulers", "err", err)
		}
	}
}

func (s *Server) onChosen(m *nats.Msg) {
	var c skiffv1.ParentChosen
	if _, err := bus.DecodeMsg(context.Background(), m, &c); err != nil {
		s.log.Warn("schedule: bad parent chosen", "err", err)
		return
	}
	from, fl, err := FlightFromMessage(&c)
	if err != nil {
		s.log.Warn("schedule: bad parent chosen", "err", err)
		return
	}
	if from == s.id {
		return
	}
	s.heard.Add(1)
	s.table.Record(fl, s.now())
}

// ServerStats counts a Server's traffic.
type ServerStats struct {
	Table     Stats `json:"table"`
	Announces int64 `json:"announces"`
	Requests  int64 `json:"requests"`
	Misses    int64 `json:"misses"` // requests answered with no parent at all
	Reports   int64 `json:"reports"`
	Heard     int64 `json:"heard"` // parents other schedulers chose, recorded here
}

// Stats returns current counters.
func (s *Server) Stats() ServerStats {
	return ServerStats{Table: s.table.Stats(s.now()), Announces: s.announces.Load(), Requests: s.requests.Load(), Misses: s.misses.Load(), Reports: s.reports.Load(), Heard: s.heard.Load()}
}
