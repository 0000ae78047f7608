// Command skiff-seeder is the seeder of Skiff's peer-to-peer distribution:
// it preheats every converted image from the blob store into its piece
// store, serves pieces to node agents over HTTP, fetches pieces nobody
// holds from the store when the scheduler sends a peer its way, and
// announces what it holds. Configuration comes from the environment; run
// with --help to list it.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"

	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/daemon"
	"github.com/skiff-dev/skiff/pkg/piece"
	"github.com/skiff-dev/skiff/pkg/store/storeurl"
	"github.com/skiff-dev/skiff/pkg/telemetry"
	"github.com/skiff-dev/skiff/services/seeder/internal/config"
	"github.com/skiff-dev/skiff/services/seeder/internal/service"
)

func main() {
	os.Exit(daemon.Main(os.Args[1:], os.Stdout, os.Stderr, seeder))
}

var seeder = daemon.Service[config.Config]{
	Name:    "skiff-seeder",
	Summary: "Preheats converted images from the blob store and serves their pieces to\nSkiff node agents; run skiff-scheduler next to it.",
	Load:    config.Load,
	Debug:   func(c config.Config) bool { return c.Debug },
	Run:     run,
}

// run builds the seeder's dependencies from cfg and runs its parts until
// ctx ends. The logger is slog.Default.
func run(ctx context.Context, cfg config.Config) error {
	shutdown, err := telemetry.Setup(ctx, "skiff-seeder", service.Version)
	if err != nil {
		return err
	}
	defer shutdown(context.Background())

	st, err := storeurl.Open(ctx, cfg.Store)
	if err != nil {
		return err
	}
	pieces, err := piece.Open(cfg.Dir, cfg.CacheSize, nil)
	if err != nil {
		return err
	}
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
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	s := service.New(
		service.Deps{ID: cfg.ID, Advertise: cfg.Advertise, Store: st, Pieces: pieces, NATS: nc, Completed: cons},
		service.WithConcurrency(cfg.Concurrency),
		service.WithAnnounceInterval(cfg.Interval),
		service.WithAckWait(cfg.AckWait),
		service.WithUploadRate(cfg.UploadRate),
		service.WithZone(cfg.Zone),
	)
	slog.Info("skiff-seeder ready", "id", cfg.ID, "listen", ln.Addr().String(), "advertise", cfg.Advertise, "nats", cfg.NATS, "store", cfg.Store, "pieces", pieces.Size())

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.Serve(ctx, ln) })
	g.Go(func() error { return s.Announce(ctx) })
	g.Go(func() error { return s.ServeSeedRequests(ctx) })
	g.Go(func() error { return s.Preheat(ctx) })
	return g.Wait()
}
