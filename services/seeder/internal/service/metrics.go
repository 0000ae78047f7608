package service

import (
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/skiff-dev/skiff/pkg/metrics"
	"github.com/skiff-dev/skiff/pkg/piece"
)

// counters is what the metrics are read from at each scrape: the same
// counters GET /stats reports, so nothing is counted twice.
type counters interface {
	stats() Stats
}

// collector exports a seeder's preheats and reads from the blob store as
// Prometheus metrics; its piece server's are piece.NewCollector's.
type collector struct {
	c counters

	preheats, seeds                                        *prometheus.Desc
	srcRequests, srcErrors, srcFrames, srcChunks, srcBytes *prometheus.Desc
}

func newCollector(c counters) *collector {
	const ns = "skiff_seeder_"
	d := metrics.Descs(ns)
	return &collector{
		c:           c,
		preheats:    d("preheats_total", "Preheats of the images of conversion.completed events, by result: completed, or failed (every failed attempt counts; the event is delivered again until its last attempt).", "result"),
		seeds:       d("seeds_total", "Ranges seeded on demand from the blob store, failed ones included: pieces peers asked for that were not held, and seed requests for a range."),
		srcRequests: d("source_requests_total", "Requests to the blob store for frames, by preheats and seeding.", "source"),
		srcErrors:   d("source_errors_total", "Failed requests to the blob store, and frames from it that failed verification.", "source"),
		srcFrames:   d("source_frames_total", "Verified frames received from the blob store.", "source"),
		srcChunks:   d("source_chunks_total", "Verified chunks received from the blob store.", "source"),
		srcBytes:    d("source_bytes_total", "Compressed bytes received from the blob store.", "source"),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.preheats, c.seeds,
		c.srcRequests, c.srcErrors, c.srcFrames, c.srcChunks, c.srcBytes,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counter, _ := metrics.Senders(ch)
	s := c.c.stats()
	counter(c.preheats, s.Preheats, "completed")
	counter(c.preheats, s.PreheatFailures, "failed")
	counter(c.seeds, s.Seeds)
	for _, src := range s.Fetch.Sources {
		counter(c.srcRequests, src.Requests, src.Name)
		counter(c.srcErrors, src.Errors, src.Name)
		counter(c.srcFrames, src.Frames, src.Name)
		counter(c.srcChunks, src.Chunks, src.Name)
		counter(c.srcBytes, src.Bytes, src.Name)
	}
}

// metricsHandler serves GET /metrics.
func metricsHandler(c counters, server *piece.Server, log *slog.Logger) http.Handler {
	return metrics.Handler("skiff-seeder", Version, log, newCollector(c), piece.NewCollector("skiff_seeder_", server))
}
