// Command skiff-scheduler is the scheduler of Skiff's peer-to-peer
// distribution: it keeps track of which node agents and seeders hold which
// pieces of chunk data and tells a node where to read a piece from, so
// each piece leaves the blob store about once per cluster. Configuration
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

	"github.com/skiff-dev/skiff/services/scheduler/internal/config"
	"github.com/skiff-dev/skiff/services/scheduler/internal/service"
)

func main() {
	for _, a := range os.Args[1:] {
		if a == "-h" || a == "-help" || a == "--help" || a == "help" {
			usage(os.Stdout)
			return
		}
	}
	if len(os.Args) > 1 {
		fmt.Fprintf(os.Stderr, "skiff-scheduler takes no arguments, only environment variables\n\n")
		usage(os.Stderr)
		os.Exit(2)
	}
	cfg, err := config.Load()
	if err != nil {
		fmt.Fprintln(os.Stderr, "skiff-scheduler:", err)
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
		slog.Error("skiff-scheduler stopped", "err", err)
		os.Exit(1)
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: skiff-scheduler\n\nTells Skiff node agents which peers or seeders to read pieces of chunk data\nfrom. Run one or more next to NATS; they share the work.\n\nEnvironment:")
	config.Help(w)
}
