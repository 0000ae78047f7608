// Package daemon is the common life of Skiff's long-running services
// (converter, scheduler, seeder): they take no arguments, only environment
// variables, print those with --help, log with slog to stderr, and stop on
// SIGINT or SIGTERM. Each service's main only names its parts.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/signal"
	"syscall"
	"time"

	"github.com/caarlos0/env/v11"

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
// A stop by SIGINT or SIGTERM is a clean stop, even when it interrupts
// the service's start.
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
		// Asked to stop while still starting (say, waiting for NATS in
		// Retry): Run has nothing else to return, and the stop is the
		// one that was asked for. A cancellation without the signal is
		// the service's own failure.
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			slog.Info(s.Name+" stopped", "err", err)
			return 0
		}
		slog.Error(s.Name+" stopped", "err", err)
		return 1
	}
	return 0
}

func usage[C any](w io.Writer, s Service[C]) {
	fmt.Fprintf(w, "usage: %s\n\n%s\n\nEnvironment:\n", s.Name, s.Summary)
	if err := envdoc.Write[C](w, env.Options{}); err != nil {
		fmt.Fprintln(w, err)
	}
}

// Retry calls fn until it succeeds or ctx ends, backing off from 100 ms up
// to 5 s: a service started before its NATS or store is up waits for them
// instead of exiting. When ctx ends first, the error wraps both ctx's
// error, so that callers can tell a stop from a failure, and fn's last.
func Retry(ctx context.Context, what string, fn func() error) error {
	delay := 100 * time.Millisecond
	for {
		err := fn()
		if err == nil {
			return nil
		}
		slog.Warn(what+" failed, retrying", "err", err, "in", delay)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last error: %w)", what, ctx.Err(), err)
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// ShutdownTimeout is how long requests in progress get to finish when a
// service stops.
const ShutdownTimeout = 10 * time.Second

// Serve serves srv on ln until ctx ends, then shuts it down gracefully. It
// returns nil after a clean stop.
func Serve(ctx context.Context, srv *http.Server, ln net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("http server on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("http server on %s: shutdown: %w", ln.Addr(), err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("http server on %s: %w", ln.Addr(), err)
	}
	return nil
}
