// Package service composes the converter service from its parts: the
// store, the bus, the webhook and the worker pool. The skiff-converter
// command runs it after reading its configuration; tests run it in process.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/convert"
	"github.com/skiff-dev/skiff/pkg/daemon"
	"github.com/skiff-dev/skiff/pkg/store/storeurl"
	"github.com/skiff-dev/skiff/pkg/telemetry"
	"github.com/skiff-dev/skiff/services/converter/internal/config"
	"github.com/skiff-dev/skiff/services/converter/internal/webhook"
	"github.com/skiff-dev/skiff/services/converter/internal/worker"
)

// Version is reported to tracing backends.
var Version = "dev"

// Run serves the webhook and converts requests until ctx ends. The
// logger is slog.Default.
func Run(ctx context.Context, cfg config.Config) error {
	shutdown, err := telemetry.Setup(ctx, "skiff-converter", Version)
	if err != nil {
		return err
	}
	defer shutdown(context.Background())

	st, err := storeurl.Open(ctx, cfg.Store)
	if err != nil {
		return err
	}
	comp, err := bootstrap.ParseCompression(cfg.Compression)
	if err != nil {
		return fmt.Errorf("SKIFF_COMPRESSION: %w", err)
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
	conv := convert.New(st, convert.Options{ChunkSize: cfg.ChunkSize, Compression: comp, WorkDir: cfg.WorkDir})
	w := worker.New(b, kv, conv, worker.Options{
		MaxAttempts: cfg.MaxAttempts, AckWait: cfg.AckWait, Backoff: cfg.Backoff, BackoffMax: cfg.BackoffMax,
		Registry: cfg.Registry, Name: cfg.Worker,
	})

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	srv := &http.Server{Handler: webhook.New(b, slog.Default()), ReadHeaderTimeout: 10 * time.Second}
	slog.Info("skiff-converter ready", "listen", ln.Addr().String(), "nats", cfg.NATS, "store", cfg.Store, "concurrency", cfg.Concurrency)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return daemon.Serve(ctx, srv, ln) })
	g.Go(func() error {
		err := bus.Consume(ctx, cons, cfg.Concurrency, w.Handle)
		if errors.Is(err, context.Canceled) {
			return nil
		}
		return err
	})
	return g.Wait()
}
