package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/skiff-dev/skiff/node-agent/internal/lazymount"
	"github.com/skiff-dev/skiff/pkg/metrics"
)

// serveMetrics serves the mount process' Prometheus metrics on addr until
// ctx ends: its mounts', and those of more (P2P's, when it is on).
func serveMetrics(ctx context.Context, addr string, m *lazymount.Manager, version string, log *slog.Logger, more ...prometheus.Collector) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for metrics on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.Handler("skiff-agent", version, log, append([]prometheus.Collector{lazymount.NewCollector(m)}, more...)...))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	log.Info("skiff-agent mountd: serving metrics", "listen", ln.Addr().String())
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics server: %w", err)
	}
	return nil
}
