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
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/skiff-dev/skiff/services/seeder/internal/config"
	"github.com/skiff-dev/skiff/services/seeder/internal/service"
)

func main() {
	for _, a := range os.Args[1:] {
		if a == "-h" || a == "-help" || a == "--help" || a == "help" {
			usage(os.Stdout)
			return
		}
	}
	if len(os.Args) > 1 {
		fmt.Fprintf(os.Stderr, "skiff-seeder takes no arguments, only environment variables\n\n")
		usage(os.Stderr)
		os.Exit(2)
	}
	cfg, err := config.Load()
	if err != nil {
		fmt.Fprintln(os.Stderr, "skiff-seeder:", err)
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
		slog.Error("skiff-seeder stopped", "err", err)
		os.Exit(1)
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: skiff-seeder\n\nPreheats converted images from the blob store and serves their pieces to\nSkiff node agents; run skiff-scheduler next to it.\n\nEnvironment:")
	config.Help(w)
}
