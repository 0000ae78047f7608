// Package service composes the seeder service: the store, a Fetcher
// reading it into the piece store, the piece server answering peers (and
// seeding on demand what nobody holds), the announcer, the preheat worker
// over conversion.completed events and the SeedRequest handler. The
// skiff-seeder command runs it after reading its configuration; tests run
// it in process.
package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"golang.org/x/sync/errgroup"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/daemon"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/peer"
	"github.com/skiff-dev/skiff/pkg/piece"
	"github.com/skiff-dev/skiff/pkg/schedule"
	"github.com/skiff-dev/skiff/pkg/store/storeurl"
	"github.com/skiff-dev/skiff/pkg/telemetry"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
	"github.com/skiff-dev/skiff/services/seeder/internal/config"
	"github.com/skiff-dev/skiff/services/seeder/internal/seed"
)

// Version is reported to tracing backends.
var Version = "dev"

// maxPreheatAttempts bounds deliveries of one completed event; the
// consumer's MaxDeliver is the backstop.
const maxPreheatAttempts = 4

type service struct {
	cfg      config.Config
	seeder   *seed.Seeder
	fetcher  *fetch.Fetcher
	pieces   *piece.Store
	server   *piece.Server
	announce *peer.Announcer

	preheats, preheatFailures, seeds atomic.Int64
}

// Run serves pieces and preheats converted images until ctx ends. The
// logger is slog.Default.
func Run(ctx context.Context, cfg config.Config) error {
	shutdown, err := telemetry.Setup(ctx, "skiff-seeder", Version)
	if err != nil {
		return err
	}
	defer shutdown(context.Background())

	st, err := storeurl.Open(ctx, cfg.Store)
	if err != nil {
		return err
	}
	pieces, err := piece.Open(cfg.Dir, cfg.CacheSize)
	if err != nil {
		return err
	}
	f := fetch.New(nil, fetch.NewStoreSource("store", st))
	f.SetFrameSink(pieces)
	s := &service{cfg: cfg, fetcher: f, pieces: pieces, seeder: seed.New(st, f, pieces)}
	s.server = piece.NewServer(pieces, s, slog.Default())

	nc, err := bus.Connect(cfg.NATS, "skiff-seeder "+cfg.ID, nats.RetryOnFailedConnect(true))
	if err != nil {
		return err
	}
	defer nc.Close()
	b, err := bus.New(nc)
	if err != nil {
		return err
	}
	// NATS may come up after us: wait for it.
	if err := daemon.Retry(ctx, "set up jetstream", func() error { return b.Setup(ctx) }); err != nil {
		return err
	}
	cons, err := b.SeederConsumer(ctx, cfg.AckWait)
	if err != nil {
		return err
	}
	s.announce = &peer.Announcer{NC: nc, ID: cfg.ID, Addr: cfg.Advertise, Role: schedule.RoleSeeder, Store: pieces, Load: s.server.Load, Interval: cfg.Interval}
	sub, err := nc.Subscribe(bus.SubjectSeed(cfg.ID), s.onSeedRequest)
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", bus.SubjectSeed(cfg.ID), err)
	}
	defer sub.Unsubscribe()

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	srv := &http.Server{Handler: s.routes(), ReadHeaderTimeout: 10 * time.Second}
	slog.Info("skiff-seeder ready", "id", cfg.ID, "listen", ln.Addr().String(), "advertise", cfg.Advertise, "nats", cfg.NATS, "store", cfg.Store, "pieces", pieces.Size())

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return daemon.Serve(ctx, srv, ln) })
	g.Go(func() error { return s.announce.Run(ctx) })
	g.Go(func() error {
		err := bus.Consume(ctx, cons, cfg.Concurrency, s.handleCompleted)
		if errors.Is(err, context.Canceled) {
			return nil
		}
		return err
	})
	return g.Wait()
}

// Seed implements piece.Seeder for the piece server, counting.
func (s *service) Seed(ctx context.Context, blob bootstrap.Digest, off, size int64) error {
	s.seeds.Add(1)
	return s.seeder.Seed(ctx, blob, off, size)
}

func (s *service) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle(piece.Path, s.server)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(s.stats())
	})
	return mux
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

func (s *service) stats() Stats {
	return Stats{ID: s.cfg.ID, Preheats: s.preheats.Load(), PreheatFailures: s.preheatFailures.Load(), Seeds: s.seeds.Load(),
		PieceBytes: s.pieces.Size(), Server: s.server.Stats(), Fetch: s.fetcher.Stats()}
}

// handleCompleted preheats the image of one conversion.completed event.
func (s *service) handleCompleted(ctx context.Context, msg jetstream.Msg) {
	var ev skiffv1.ConversionCompleted
	ectx, err := bus.Decode(ctx, msg, &ev)
	if err != nil {
		slog.Warn("skiff-seeder: dropping undecodable event", "err", err)
		msg.Term()
		return
	}
	digest, err := bootstrap.ParseDigest(ev.GetBootstrapDigest())
	if err != nil {
		slog.Warn("skiff-seeder: event without a bootstrap digest", "target", ev.GetTarget(), "err", err)
		msg.Term()
		return
	}
	ectx, span := telemetry.Tracer("skiff/seeder").Start(ectx, "seeder.preheat")
	defer span.End()
	span.SetAttributes(attribute.String("skiff.target", ev.GetTarget()), attribute.String("skiff.bootstrap", digest.String()))
	kctx, stop := context.WithCancel(ectx)
	go bus.KeepAlive(kctx, msg, s.cfg.AckWait/3)
	start := time.Now()
	res, err := s.seeder.Preheat(ectx, digest)
	stop()
	if err != nil {
		s.preheatFailures.Add(1)
		span.RecordError(err)
		span.SetStatus(codes.Error, "preheat failed")
		md, _ := msg.Metadata()
		if ctx.Err() == nil && (md == nil || md.NumDelivered < maxPreheatAttempts) {
			slog.Warn("skiff-seeder: preheat failed, will retry", "target", ev.GetTarget(), "err", err)
			msg.NakWithDelay(2 * time.Second)
			return
		}
		slog.Error("skiff-seeder: preheat failed", "target", ev.GetTarget(), "err", err)
		msg.Term()
		return
	}
	s.preheats.Add(1)
	msg.Ack()
	// Tell the schedulers now rather than at the next tick.
	if err := s.announce.Announce(ctx); err != nil {
		slog.Warn("skiff-seeder: announce after preheat", "err", err)
	}
	slog.Info("skiff-seeder: preheated", "target", ev.GetTarget(), "bootstrap", digest, "frames", res.Frames, "bytes", res.Bytes, "held", res.Held, "took", time.Since(start).Round(time.Millisecond))
}

// onSeedRequest answers a SeedRequest: a whole image or one range.
func (s *service) onSeedRequest(m *nats.Msg) {
	var req skiffv1.SeedRequest
	ctx, err := bus.DecodeMsg(context.Background(), m, &req)
	reply := &skiffv1.SeedReply{}
	if err == nil {
		ctx, span := telemetry.Tracer("skiff/seeder").Start(ctx, "seeder.seed")
		var res seed.Result
		res, err = s.seed(ctx, &req)
		reply.Frames, reply.Bytes = int64(res.Frames), res.Bytes
		if err != nil {
			span.RecordError(err)
		}
		span.End()
	}
	if err != nil {
		reply.Error = err.Error()
	}
	if err := bus.Respond(ctx, m, reply); err != nil {
		slog.Warn("skiff-seeder: answer seed request", "err", err)
	}
	if err == nil {
		s.announce.Announce(ctx)
	}
}

func (s *service) seed(ctx context.Context, req *skiffv1.SeedRequest) (seed.Result, error) {
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
