// Command skiff-converter is the event-driven conversion service: it takes
// registry push notifications over HTTP, queues them on NATS JetStream and
// converts each pushed image into a Skiff image exactly once. Configuration
// comes from the environment; run with --help to list it.
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
	"github.com/skiff-dev/skiff/pkg/convert"
	"github.com/skiff-dev/skiff/pkg/daemon"
	"github.com/skiff-dev/skiff/pkg/store/storeurl"
	"github.com/skiff-dev/skiff/pkg/telemetry"
	"github.com/skiff-dev/skiff/services/converter/internal/config"
	"github.com/skiff-dev/skiff/services/converter/internal/service"
	"github.com/skiff-dev/skiff/services/converter/internal/worker"
)

func main() {
	os.Exit(daemon.Main(os.Args[1:], os.Stdout, os.Stderr, converter))
}

var converter = daemon.Service[config.Config]{
	Name:    "skiff-converter",
	Summary: "Converts images pushed to a registry into Skiff images. Point the registry's\nnotifications at http://LISTEN/notify (distribution) or http://LISTEN/harbor.",
	Load:    config.Load,
	Debug:   func(c config.Config) bool { return c.Debug },
	Run:     run,
}

// run builds the converter's dependencies from cfg and runs the service
// until ctx ends. The logger is slog.Default.
func run(ctx context.Context, cfg config.Config) error {
	shutdown, err := telemetry.Setup(ctx, "skiff-converter", service.Version)
	if err != nil {
		return err
	}
	defer shutdown(context.Background())

	st, err := storeurl.Open(ctx, cfg.Store)
	if err != nil {
		return err
	}
	convOpts, err := cfg.ConvertOptions()
	if err != nil {
		return err
	}
	nc, err := bus.Connect(cfg.NATS, "skiff-converter", nats.RetryOnFailedConnect(true))
	if err != nil {
		return err
	}
	defer nc.Close()
	b, err := bus.New(nc)
	if err != nil {
		return err
	}
	// NATS may come up after us (one compose file, one demo): wait for it.
	if err := daemon.Retry(ctx, "set up jetstream", func() error { return b.Setup(ctx) }); err != nil {
		return err
	}
	kv, err := b.Records(ctx)
	if err != nil {
		return err
	}
	cons, err := b.ConverterConsumer(ctx, cfg.AckWait)
	if err != nil {
		return err
	}
	svc := service.New(
		service.Deps{Bus: b, Conn: nc, Records: kv, Requests: cons, Converter: convert.New(st, convOpts)},
		service.WithConcurrency(cfg.Concurrency),
		service.WithWorker(worker.Options{
			MaxAttempts: cfg.MaxAttempts, AckWait: cfg.AckWait, Backoff: cfg.Backoff, BackoffMax: cfg.BackoffMax,
			Registry: cfg.Registry, Name: cfg.Worker,
		}),
	)

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	slog.Info("skiff-converter ready", "listen", ln.Addr().String(), "nats", cfg.NATS, "store", cfg.Store, "concurrency", cfg.Concurrency)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return svc.Serve(ctx, ln) })
	g.Go(func() error { return svc.Convert(ctx) })
	return g.Wait()
}
