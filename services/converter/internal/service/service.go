// Package service is the converter service: the webhook, /healthz and
// /metrics (Prometheus) on one HTTP handler, and the worker pool over the
// converter's consumer. It is built from dependencies its caller makes
// (the skiff-converter command, or tests in process) and runs as two
// parts, Serve and Convert, which the caller runs for as long as it likes.
package service

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/conversion"
	"github.com/skiff-dev/skiff/pkg/daemon"
	"github.com/skiff-dev/skiff/services/converter/internal/webhook"
	"github.com/skiff-dev/skiff/services/converter/internal/worker"
)

// Version is reported to tracing backends. It lives here, not in the
// command, because the release build sets it here.
var Version = "dev"

// PathHealth answers 200 while the service can take requests, 503 while
// NATS is not connected.
const PathHealth = "/healthz"

// PathMetrics serves the webhook's and the worker's counters to
// Prometheus.
const PathMetrics = "/metrics"

// Bus is what the service needs of pkg/bus: publishing requests and
// outcomes, and reading conversion records.
type Bus interface {
	Publish(ctx context.Context, subject, msgID string, m proto.Message) (*jetstream.PubAck, error)
	Record(ctx context.Context, digest string) (*conversion.Record, error)
}

// Conn is the NATS connection under Bus, whose state /healthz reports.
type Conn interface {
	IsConnected() bool
}

// Deps are the service's dependencies. JetStream must be set up (see
// bus.Bus.Setup) before Records and Requests are opened.
type Deps struct {
	Bus  Bus
	Conn Conn
	// Records is the conversion-record bucket.
	Records jetstream.KeyValue
	// Requests is the converter's durable consumer of conversion
	// requests.
	Requests jetstream.Consumer
	// Converter converts images into the blob store.
	Converter worker.Converter
}

type options struct {
	concurrency int
	worker      worker.Options
	log         *slog.Logger
}

// Option tunes the service.
type Option func(*options)

// WithConcurrency sets how many conversions run at once (default 1).
func WithConcurrency(n int) Option { return func(o *options) { o.concurrency = n } }

// WithWorker sets the retry policy and the name the worker records.
func WithWorker(w worker.Options) Option { return func(o *options) { o.worker = w } }

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// Service is a converter service built from its dependencies.
type Service struct {
	handler     http.Handler
	webhook     *webhook.Handler
	worker      *worker.Worker
	requests    jetstream.Consumer
	concurrency int
}

// New returns the service made of deps.
func New(deps Deps, opts ...Option) *Service {
	o := options{concurrency: 1, log: slog.Default()}
	for _, opt := range opts {
		opt(&o)
	}
	if o.worker.Logger == nil {
		o.worker.Logger = o.log
	}
	s := &Service{
		webhook:     webhook.New(deps.Bus, o.log),
		worker:      worker.New(deps.Bus, deps.Records, deps.Converter, o.worker),
		requests:    deps.Requests,
		concurrency: o.concurrency,
	}
	mux := http.NewServeMux()
	mux.Handle("/", s.webhook)
	mux.HandleFunc("GET "+PathHealth, func(w http.ResponseWriter, _ *http.Request) {
		// Without NATS a notification cannot be queued (the webhook
		// answers 503) and nothing converts.
		if !deps.Conn.IsConnected() {
			http.Error(w, "nats not connected", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.Handle("GET "+PathMetrics, metricsHandler(s, o.log))
	s.handler = mux
	return s
}

// Handler serves the webhook endpoints, /healthz and /metrics.
func (s *Service) Handler() http.Handler { return s.handler }

// Serve serves Handler on ln until ctx ends, then shuts down gracefully.
func (s *Service) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s.handler, ReadHeaderTimeout: 10 * time.Second}
	return daemon.Serve(ctx, srv, ln)
}

// Convert handles conversion requests until ctx ends, and returns nil
// then.
func (s *Service) Convert(ctx context.Context) error {
	err := bus.Consume(ctx, s.requests, s.concurrency, s.worker.Handle)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
