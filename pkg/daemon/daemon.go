// Package daemon is the common life of Skiff's long-running services
// (converter, scheduler, seeder): they take no arguments, only environment
// variables, print those with --help, log with slog to stderr, and stop on
// SIGINT or SIGTERM. Each service's main only names its parts.
package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os/signal"
	"syscall"

	"github.com/skiff-dev/skiff/pkg/envdoc"
)

// Service describes a service binary whose configuration struct is C (a
// caarlos0/env struct with help tags, see envdoc).
type Service[C any] struct {
	Name    string // binary name, for messages
	Summary string // what --help says above the settings
	Load    func() (C, error)
	Debug   func(C) bool // whether to log at debug level
	Run     func(context.Context, C) error
}

// Main runs s with the command-line arguments args (without the program
// name) and returns the process's exit code: 0 after a clean stop or
// --help, 2 for bad arguments or configuration, 1 when the service fails.
func Main[C any](args []string, stdout, stderr io.Writer, s Service[C]) int {
	for _, a := range args {
		if a == "-h" || a == "-help" || a == "--help" || a == "help" {
			usage(stdout, s)
			return 0
		}
	}
	if len(args) > 0 {
		fmt.Fprintf(stderr, "%s takes no arguments, only environment variables\n\n", s.Name)
		usage(stderr, s)
		return 2
	}
	cfg, err := s.Load()
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", s.Name, err)
		return 2
	}
	level := slog.LevelInfo
	if s.Debug != nil && s.Debug(cfg) {
		level = slog.LevelDebug
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := s.Run(ctx, cfg); err != nil {
		slog.Error(s.Name+" stopped", "err", err)
		return 1
	}
	return 0
}

func usage[C any](w io.Writer, s Service[C]) {
	fmt.Fprintf(w, "usage: %s\n\n%s\n\nEnvironment:\n", s.Name, s.Summary)
	if err := envdoc.Write[C](w); err != nil {
		fmt.Fprintln(w, err)
	}
}
