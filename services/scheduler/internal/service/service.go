// Package service composes the scheduler service: a schedule.Table served
// on NATS (announcements in, parent requests answered in a queue group so
// several schedulers share the load, reports of bad peers) and an HTTP
// endpoint for /healthz and /stats. The skiff-scheduler command runs it
// after reading its configuration; tests run it in process.
package service

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"

	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/daemon"
	"github.com/skiff-dev/skiff/pkg/schedule"
	"github.com/skiff-dev/skiff/pkg/telemetry"
	"github.com/skiff-dev/skiff/services/scheduler/internal/config"
)

// Version is reported to tracing backends.
var Version = "dev"

// Run schedules until ctx ends. The logger is slog.Default.
func Run(ctx context.Context, cfg config.Config) error {
	shutdown, err := telemetry.Setup(ctx, "skiff-scheduler", Version)
	if err != nil {
		return err
	}
	defer shutdown(context.Background())

	nc, err := bus.Connect(cfg.NATS, "skiff-scheduler", nats.RetryOnFailedConnect(true))
	if err != nil {
		return err
	}
	defer nc.Close()
	table := schedule.NewTable(schedule.Options{TTL: cfg.TTL, Quarantine: cfg.Quarantine, MaxParents: cfg.MaxParents})
	sched := schedule.NewServer(nc, table, slog.Default())

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if !nc.IsConnected() {
			http.Error(w, "nats not connected", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(sched.Stats())
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	slog.Info("skiff-scheduler ready", "listen", ln.Addr().String(), "nats", cfg.NATS, "ttl", cfg.TTL)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return daemon.Serve(ctx, srv, ln) })
	// Expire often relative to the TTL, so a dead peer is dropped soon
	// after it is due.
	g.Go(func() error { return sched.Run(ctx, max(cfg.TTL/4, 250*time.Millisecond)) })
	return g.Wait()
}
