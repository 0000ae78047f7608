// Command skiff-demo is `make demo`: in one process tree and without
// Docker it starts an embedded NATS JetStream server, a distribution
// registry (bin/registry) that notifies the converter service
// (bin/skiff-converter) of pushes, and a local-directory blob store; pushes
// a generated sample image; waits for the event-driven conversion; mounts
// the Skiff image lazily and reads a file back; and prints what happened.
// It exits 0 only if every step worked.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/caarlos0/env/v11"
)

// settings are the demo's environment.
type settings struct {
	Keep bool `env:"SKIFF_DEMO_KEEP" help:"keep the demo's work directory (store, registry, logs) for a look afterwards"`
}

func main() {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	s, err := env.ParseAs[settings]()
	if err != nil {
		fmt.Fprintln(os.Stderr, "skiff-demo:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, s, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "skiff-demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, s settings, out io.Writer) error {
	d, err := newDemo(out)
	if err != nil {
		return err
	}
	d.keep = s.Keep
	defer d.close()
	return d.run(ctx)
}
