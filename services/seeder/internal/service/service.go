// Package service is the seeder of Skiff's peer-to-peer distribution: a
// Fetcher reading the store into the piece store, the piece server
// answering peers (and seeding on demand what nobody holds), the
// announcer, the preheat of conversion.completed events, the SeedRequest
// handler, and /healthz, /stats and /metrics (Prometheus) beside the
// pieces. The skiff-seeder command builds its dependencies from the
// configuration and runs its parts; tests do the same in process.
package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/daemon"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/peer"
	"github.com/skiff-dev/skiff/pkg/piece"
	"github.com/skiff-dev/skiff/pkg/schedule"
	"github.com/skiff-dev/skiff/pkg/store"
	"github.com/skiff-dev/skiff/pkg/telemetry"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
	"github.com/skiff-dev/skiff/services/seeder/internal/seed"
)

// Version is reported to tracing backends.
var Version = "dev"

// maxPreheatAttempts bounds deliveries of one completed event; the
// consumer's MaxDeliver is the backstop.
const maxPreheatAttempts = 4

// Deps are what a Service is made of. Every field is required.
type Deps struct {
	ID        string       // this seeder's id in the cluster, unique
	Advertise string       // host:port peers reach Handler at
	Store     store.Store  // where converted images' data is
	Pieces    *piece.Store // what this seeder holds and serves
	NATS      *nats.Conn   // announcements and seed requests
	// Completed is the seeders' consumer of conversion.completed events
	// (bus.Bus.SeederConsumer).
	Completed jetstream.Consumer
}

type options struct {
	interval    time.Duration
	ackWait     time.Duration
	concurrency int
	uploadRate  int64
	zone        string
	log         *slog.Logger
}

// Option tunes a Service.
type Option func(*options)

// WithAnnounceInterval sets how often holdings are announced; default 10s.
func WithAnnounceInterval(d time.Duration) Option { return func(o *options) { o.interval = d } }

// WithAckWait sets the ack wait of Deps.Completed, so that a long preheat
// tells JetStream in time that it is still at work; default 1m.
func WithAckWait(d time.Duration) Option { return func(o *options) { o.ackWait = d } }

// WithConcurrency bounds the images preheated at once from events, and
// the SeedRequests worked on at once besides; default 2.
func WithConcurrency(n int) Option { return func(o *options) { o.concurrency = n } }

// WithUploadRate bounds the bytes a second the piece server sends, over
// all peers together; default 0, unlimited.
func WithUploadRate(bytesPerSecond int64) Option {
	return func(o *options) { o.uploadRate = bytesPerSecond }
}

// WithZone announces where the seeder runs (schedule.Peer.Zone), so
// that nodes in its zone are sent to it before seeders elsewhere.
func WithZone(zone string) Option { return func(o *options) { o.zone = zone } }

// WithLogger sets the logger; default slog.Default().
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// Service preheats images and seeds pieces from the store for its peers.
type Service struct {
	id        string
	nc        *nats.Conn
	completed jetstream.Consumer
	opts      options
	log       *slog.Logger
	seeder    *seed.Seeder
	fetcher   *fetch.Fetcher
	pieces    *piece.Store
	server    *piece.Server
	announce  *peer.Announcer
	metrics   http.Handler
	slots     chan struct{} // one per SeedRequest being worked on

	preheats, preheatFailures, seeds atomic.Int64
}

// New returns a Service reading d.Store into d.Pieces.
func New(d Deps, opts ...Option) *Service {
	o := options{interval: 10 * time.Second, ackWait: time.Minute, concurrency: 2, log: slog.Default()}
	for _, opt := range opts {
		opt(&o)
	}
	f := fetch.New(nil, []fetch.Source{fetch.NewStoreSource("store", d.Store)}, fetch.WithFrameSink(d.Pieces), fetch.WithLogger(o.log))
	s := &Service{
		id: d.ID, nc: d.NATS, completed: d.Completed, opts: o, log: o.log, fetcher: f, pieces: d.Pieces,
		seeder: seed.New(d.Store, f, d.Pieces), slots: make(chan struct{}, max(o.concurrency, 1)),
	}
	s.server = piece.NewServer(d.Pieces, s, o.log, piece.WithUploadRate(o.uploadRate))
	s.announce = &peer.Announcer{NC: d.NATS, ID: d.ID, Addr: d.Advertise, Role: schedule.RoleSeeder, Store: d.Pieces,
		Load: s.server.Load, Zone: o.zone, Interval: o.interval, Logger: o.log}
	s.metrics = metricsHandler(s, s.server, o.log)
	return s
}

// Seed implements piece.Seeder for the piece server, counting.
func (s *Service) Seed(ctx context.Context, blob bootstrap.Digest, off, size int64) error {
	s.seeds.Add(1)
	return s.seeder.Seed(ctx, blob, off, size)
}

// Handler serves pieces (piece.Path), /healthz, /stats and /metrics, the
// same counters as /stats for Prometheus.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle(piece.Path, s.server)
	// Without NATS a seeder is neither announced nor sent peers, nor
	// told what to preheat: not healthy, as the scheduler says of itself.
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if !s.nc.IsConnected() {
			http.Error(w, "nats not connected", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(s.stats())
	})
	mux.Handle("GET /metrics", s.metrics)
	return mux
}

// Serve serves Handler on ln until ctx ends, then shuts down gracefully.
func (s *Service) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	return daemon.Serve(ctx, srv, ln)
}

// Announce announces what the seeder holds until ctx ends.
func (s *Service) Announce(ctx context.Context) error { return s.announce.Run(ctx) }

// Preheat preheats the image of each conversion.completed event from
// Deps.Completed until ctx ends, and returns nil then. When ctx ends
// during a preheat, the event goes back to the stream for another
// seeder: a rolling restart loses no preheat.
func (s *Service) Preheat(ctx context.Context) error {
	err := bus.Consume(ctx, s.completed, s.opts.concurrency, s.handleCompleted)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// Stats is what /stats reports.
type Stats struct {
	ID              string            `json:"id"`
	Preheats        int64             `json:"preheats"`
	PreheatFailures int64             `json:"preheatFailures"`
	Seeds           int64             `json:"seeds"` // ranges seeded on demand
	PieceBytes      int64             `json:"pieceBytes"`
	Server          piece.ServerStats `json:"server"`
	Fetch           fetch.Stats       `json:"fetch"`
}

func (s *Service) stats() Stats {
	return Stats{ID: s.id, Preheats: s.preheats.Load(), PreheatFailures: s.preheatFailures.Load(), Seeds: s.seeds.Load(),
		PieceBytes: s.pieces.Size(), Server: s.server.Stats(), Fetch: s.fetcher.Stats()}
}

// handleCompleted preheats the image of one conversion.completed event.
func (s *Service) handleCompleted(ctx context.Context, msg jetstream.Msg) {
	var ev skiffv1.ConversionCompleted
	ectx, err := bus.Decode(ctx, msg, &ev)
	if err != nil {
		s.log.Warn("skiff-seeder: dropping undecodable event", "err", err)
		s.settle(msg.Term())
		return
	}
	// A multi-platform conversion has a bootstrap per platform: the
	// cluster's nodes may run any of them.
	names := ev.GetBootstrapDigests()
	if len(names) == 0 {
		names = []string{ev.GetBootstrapDigest()}
	}
	digests := make([]bootstrap.Digest, len(names))
	for i, n := range names {
		if digests[i], err = bootstrap.ParseDigest(n); err != nil {
			s.log.Warn("skiff-seeder: event without a usable bootstrap digest", "target", ev.GetTarget(), "err", err)
			s.settle(msg.Term())
			return
		}
	}
	ectx, span := telemetry.Tracer("skiff/seeder").Start(ectx, "seeder.preheat")
	defer span.End()
	span.SetAttributes(attribute.String("skiff.target", ev.GetTarget()), attribute.StringSlice("skiff.bootstraps", names))
	kctx, stop := context.WithCancel(ectx)
	go bus.KeepAlive(kctx, msg, s.opts.ackWait/3)
	start := time.Now()
	var res seed.Result
	for _, d := range digests {
		var r seed.Result
		r, err = s.seeder.Preheat(ectx, d)
		res.Frames, res.Bytes, res.Held = res.Frames+r.Frames, res.Bytes+r.Bytes, res.Held+r.Held
		if err != nil {
			break
		}
	}
	stop()
	if err != nil && ctx.Err() != nil {
		// Stopping cut the preheat short; it did not fail. Hand the
		// event straight back rather than after the ack wait.
		s.log.Info("skiff-seeder: stopping, preheat handed back", "target", ev.GetTarget())
		span.SetAttributes(attribute.Bool("skiff.handed_back", true))
		s.settle(msg.Nak())
		return
	}
	if err != nil {
		s.preheatFailures.Add(1)
		span.RecordError(err)
		span.SetStatus(codes.Error, "preheat failed")
		md, _ := msg.Metadata()
		if md == nil || md.NumDelivered < maxPreheatAttempts {
			s.log.Warn("skiff-seeder: preheat failed, will retry", "target", ev.GetTarget(), "err", err)
			s.settle(msg.NakWithDelay(2 * time.Second))
			return
		}
		s.log.Error("skiff-seeder: preheat failed", "target", ev.GetTarget(), "err", err)
		s.settle(msg.Term())
		return
	}
	s.preheats.Add(1)
	s.settle(msg.Ack())
	// Tell the schedulers now rather than at the next tick.
	if err := s.announce.Announce(ctx); err != nil {
		s.log.Warn("skiff-seeder: announce after preheat", "err", err)
	}
	s.log.Info("skiff-seeder: preheated", "target", ev.GetTarget(), "bootstraps", names, "frames", res.Frames, "bytes", res.Bytes, "held", res.Held, "took", time.Since(start).Round(time.Millisecond))
}

// settle logs a failed ack, nak or term. There is nothing more to do:
// JetStream delivers a message nobody settled again after its ack wait.
func (s *Service) settle(err error) {
	if err != nil {
		s.log.Warn("skiff-seeder: settle message", "err", err)
	}
}

// ServeSeedRequests answers the SeedRequests sent to this seeder
// (bus.SubjectSeed) until ctx ends, then waits for those in progress,
// which ctx ending cuts short. Each request is worked on by itself, so a
// whole-image preheat holds up no other, and is answered when done: the
// SeedReply says what was fetched from the store, or why it failed.
func (s *Service) ServeSeedRequests(ctx context.Context) error {
	subject := bus.SubjectSeed(s.id)
	// Messages are handed over on a channel so that the goroutines are
	// started, and waited for, here only.
	msgs := make(chan *nats.Msg, 64)
	sub, err := s.nc.ChanSubscribe(subject, msgs)
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", subject, err)
	}
	// A NATS that is down now is not an error: the client resubscribes
	// when it reconnects.
	if err := s.nc.FlushTimeout(5 * time.Second); err != nil {
		s.log.Warn("skiff-seeder: seed request subscription not confirmed yet", "err", err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case m := <-msgs:
			wg.Go(func() { s.answerSeed(ctx, m) })
		case <-ctx.Done():
			if err := sub.Unsubscribe(); err != nil {
				s.log.Warn("skiff-seeder: unsubscribe seed requests", "err", err)
			}
			// Requests already received get an answer, not a timeout.
			for len(msgs) > 0 {
				m := <-msgs
				wg.Go(func() { s.answerSeed(ctx, m) })
			}
			return nil
		}
	}
}

// answerSeed works on one SeedRequest and answers it.
func (s *Service) answerSeed(ctx context.Context, m *nats.Msg) {
	var req skiffv1.SeedRequest
	reply := &skiffv1.SeedReply{}
	rctx, err := bus.DecodeMsg(ctx, m, &req)
	if err == nil {
		var res seed.Result
		res, err = s.seed(rctx, &req)
		reply.Frames, reply.Bytes = int64(res.Frames), res.Bytes
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("stopping: %w", err)
		}
		reply.Error = err.Error()
	}
	if rerr := bus.Respond(rctx, m, reply); rerr != nil {
		s.log.Warn("skiff-seeder: answer seed request", "err", rerr)
	}
	if err == nil {
		if err := s.announce.Announce(rctx); err != nil {
			s.log.Warn("skiff-seeder: announce after seeding", "err", err)
		}
	}
}

// seed brings in a whole image or one range, once a slot is free.
func (s *Service) seed(ctx context.Context, req *skiffv1.SeedRequest) (seed.Result, error) {
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	case <-ctx.Done():
		return seed.Result{}, ctx.Err()
	}
	ctx, span := telemetry.Tracer("skiff/seeder").Start(ctx, "seeder.seed")
	defer span.End()
	res, err := s.seedNow(ctx, req)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "seed failed")
	}
	return res, err
}

func (s *Service) seedNow(ctx context.Context, req *skiffv1.SeedRequest) (seed.Result, error) {
	if req.GetBootstrapDigest() != "" {
		d, err := bootstrap.ParseDigest(req.GetBootstrapDigest())
		if err != nil {
			return seed.Result{}, fmt.Errorf("seed request: %w", err)
		}
		return s.seeder.Preheat(ctx, d)
	}
	blob, err := schedule.Digest(req.GetBlob())
	if err != nil || req.GetSize() == 0 {
		return seed.Result{}, fmt.Errorf("seed request: needs a bootstrap digest or a blob and a range")
	}
	s.seeds.Add(1)
	return s.seeder.SeedRange(ctx, blob, int64(req.GetOffset()), int64(req.GetSize()))
}
