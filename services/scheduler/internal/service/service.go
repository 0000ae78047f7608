// Package service is the scheduler of Skiff's peer-to-peer distribution:
// a schedule.Table served on NATS (announcements in, parent requests
// answered in a queue group so several schedulers share the load, reports
// of bad peers) and an HTTP handler for /healthz, /stats and /metrics
// (Prometheus). The skiff-scheduler command builds its dependencies from
// the configuration and runs its parts; tests do the same in process.
package service

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/skiff-dev/skiff/pkg/daemon"
	"github.com/skiff-dev/skiff/pkg/schedule"
)

// Version is reported to tracing backends.
var Version = "dev"

// Deps are what a Service is made of. Every field is required.
type Deps struct {
	NATS  *nats.Conn      // announcements, parent requests and reports
	Table *schedule.Table // who holds what
}

type options struct {
	expireEvery time.Duration
	log         *slog.Logger
}

// Option tunes a Service.
type Option func(*options)

// WithExpireEvery sets how often peers not heard from are dropped from
// the table; default 1s.
func WithExpireEvery(d time.Duration) Option { return func(o *options) { o.expireEvery = d } }

// WithLogger sets the logger; default slog.Default().
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// Service answers parent requests from its table.
type Service struct {
	nc      *nats.Conn
	server  *schedule.Server
	metrics http.Handler
	opts    options
}

// New returns a Service serving d.Table on d.NATS.
func New(d Deps, opts ...Option) *Service {
	o := options{expireEvery: time.Second, log: slog.Default()}
	for _, opt := range opts {
		opt(&o)
	}
	server := schedule.NewServer(d.NATS, d.Table, o.log)
	return &Service{nc: d.NATS, server: server, metrics: metricsHandler(server, o.log), opts: o}
}

// Schedule serves the table on NATS until ctx ends, and returns nil then.
func (s *Service) Schedule(ctx context.Context) error { return s.server.Run(ctx, s.opts.expireEvery) }

// Serve serves Handler on ln until ctx ends, then shuts down gracefully.
func (s *Service) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	return daemon.Serve(ctx, srv, ln)
}

// Handler serves /healthz, /stats and /metrics, the same counters as
// /stats for Prometheus.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	// Without NATS a scheduler hears no one and answers no one.
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if !s.nc.IsConnected() {
			http.Error(w, "nats not connected", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(s.server.Stats())
	})
	mux.Handle("GET /metrics", s.metrics)
	return mux
}
