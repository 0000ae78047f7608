// Command skiff-converter is the event-driven conversion service: it takes
// registry push notifications over HTTP, queues them on NATS JetStream and
// converts each pushed image into a Skiff image exactly once. Configuration
// comes from the environment; run with --help to list it.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/skiff-dev/skiff/services/converter/internal/config"
	"github.com/skiff-dev/skiff/services/converter/internal/service"
)

func main() {
	for _, a := range os.Args[1:] {
		if a == "-h" || a == "-help" || a == "--help" || a == "help" {
			usage(os.Stdout)
			return
		}
	}
	if len(os.Args) > 1 {
		fmt.Fprintf(os.Stderr, "skiff-converter takes no arguments, only environment variables\n\n")
		usage(os.Stderr)
		os.Exit(2)
	}
	cfg, err := config.Load()
	if err != nil {
		fmt.Fprintln(os.Stderr, "skiff-converter:", err)
		os.Exit(2)
	}
	level := slog.LevelInfo
	if cfg.Debug {
		level = slog.LevelDebug
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := service.Run(ctx, cfg); err != nil {
		slog.Error("skiff-converter stopped", "err", err)
		os.Exit(1)
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: skiff-converter\n\nConverts images pushed to a registry into Skiff images. Point the registry's\nnotifications at http://LISTEN/notify (distribution) or http://LISTEN/harbor.\n\nEnvironment:")
	config.Help(w)
}
