// Command skiff-scheduler is the scheduler of Skiff's peer-to-peer
// distribution: it keeps track of which node agents and seeders hold which
// pieces of chunk data and tells a node where to read a piece from, so
// each piece leaves the blob store about once per cluster. Configuration
// comes from the environment; run with --help to list it.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"

	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/daemon"
	"github.com/skiff-dev/skiff/pkg/schedule"
	"github.com/skiff-dev/skiff/pkg/telemetry"
	"github.com/skiff-dev/skiff/services/scheduler/internal/config"
	"github.com/skiff-dev/skiff/services/scheduler/internal/service"
)

func main() {
	os.Exit(daemon.Main(os.Args[1:], os.Stdout, os.Stderr, scheduler))
}

var scheduler = daemon.Service[config.Config]{
	Name:    "skiff-scheduler",
	Summary: "Tells Skiff node agents which peers or seeders to read pieces of chunk data\nfrom. Run one or more next to NATS; they share the work.",
	Load:    config.Load,
	Debug:   func(c config.Config) bool { return c.Debug },
	Run:     run,
}

// run builds the scheduler's dependencies from cfg and runs its parts
// until ctx ends. The logger is slog.Default.
func run(ctx context.Context, cfg config.Config) error {
	shutdown, err := telemetry.Setup(ctx, "skiff-scheduler", service.Version)
	if err != nil {
		return err
	}
	defer shutdown(context.Background())

	nc, err := bus.Connect(cfg.NATS, "skiff-scheduler", nats.RetryOnFailedConnect(true))
	if err != nil {
		return err
	}
	defer nc.Close()
	table := schedule.NewTable(schedule.Options{TTL: cfg.TTL, Quarantine: cfg.Quarantine, MaxParents: cfg.MaxParents, MaxChildren: cfg.MaxChildren, InFlight: cfg.InFlight})
	// Expire often relative to the TTL, so a dead peer is dropped soon
	// after it is due.
	s := service.New(service.Deps{NATS: nc, Table: table}, service.WithExpireEvery(max(cfg.TTL/4, 250*time.Millisecond)))

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	slog.Info("skiff-scheduler ready", "listen", ln.Addr().String(), "nats", cfg.NATS, "ttl", cfg.TTL)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.Serve(ctx, ln) })
	g.Go(func() error { return s.Schedule(ctx) })
	return g.Wait()
}
