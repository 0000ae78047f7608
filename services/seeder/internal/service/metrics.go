package service

import (
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/skiff-dev/skiff/pkg/metrics"
)

// counters is what the metrics are read from at each scrape: the same
// counters GET /stats reports, so nothing is counted twice.
type counters interface {
	stats() Stats
	load() int
}

// load is the number of piece requests being served, which the seeder
// announces to the schedulers.
func (s *Service) load() int { return s.server.Load() }

// collector exports a seeder's preheats, piece server and reads from the
// blob store as Prometheus metrics.
type collector struct {
	c counters

	preheats, seeds, heldBytes                             *prometheus.Desc
	pieceRequests, pieceSeeded, pieceBytes, pieceInFlight  *prometheus.Desc
	srcRequests, srcErrors, srcFrames, srcChunks, srcBytes *prometheus.Desc
}

func newCollector(c counters) *collector {
	const ns = "skiff_seeder_"
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(ns+name, help, labels, nil)
	}
	return &collector{
		c:             c,
		preheats:      d("preheats_total", "Preheats of the images of conversion.completed events, by result: completed, or failed (every failed attempt counts; the event is delivered again until its last attempt).", "result"),
		seeds:         d("seeds_total", "Ranges seeded on demand from the blob store, failed ones included: pieces peers asked for that were not held, and seed requests for a range."),
		heldBytes:     d("held_bytes", "Bytes of pieces held (SKIFF_SEEDER_CACHE_SIZE bounds them)."),
		pieceRequests: d("piece_requests_total", "Piece requests from peers, by result: served (answered with data), missed (404: not held) or seed_failed (502: seeding the range from the blob store failed).", "result"),
		pieceSeeded:   d("piece_requests_seeded_total", "Piece requests for ranges not held that seeding from the blob store brought in before the answer."),
		pieceBytes:    d("piece_sent_bytes_total", "Bytes of pieces sent to peers."),
		pieceInFlight: d("piece_requests_in_flight", "Piece requests being served now: the load announced to the schedulers."),
		srcRequests:   d("source_requests_total", "Requests to the blob store for frames, by preheats and seeding.", "source"),
		srcErrors:     d("source_errors_total", "Failed requests to the blob store, and frames from it that failed verification.", "source"),
		srcFrames:     d("source_frames_total", "Verified frames received from the blob store.", "source"),
		srcChunks:     d("source_chunks_total", "Verified chunks received from the blob store.", "source"),
		srcBytes:      d("source_bytes_total", "Compressed bytes received from the blob store.", "source"),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.preheats, c.seeds, c.heldBytes,
		c.pieceRequests, c.pieceSeeded, c.pieceBytes, c.pieceInFlight,
		c.srcRequests, c.srcErrors, c.srcFrames, c.srcChunks, c.srcBytes,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	s := c.c.stats()
	counter(c.preheats, s.Preheats, "completed")
	counter(c.preheats, s.PreheatFailures, "failed")
	counter(c.seeds, s.Seeds)
	gauge(c.heldBytes, s.PieceBytes)
	counter(c.pieceRequests, s.Server.Served, "served")
	counter(c.pieceRequests, s.Server.Missed, "missed")
	counter(c.pieceRequests, s.Server.SeedErrors, "seed_failed")
	counter(c.pieceSeeded, s.Server.Seeded)
	counter(c.pieceBytes, s.Server.ServedBytes)
	gauge(c.pieceInFlight, int64(c.c.load()))
	for _, src := range s.Fetch.Sources {
		counter(c.srcRequests, src.Requests, src.Name)
		counter(c.srcErrors, src.Errors, src.Name)
		counter(c.srcFrames, src.Frames, src.Name)
		counter(c.srcChunks, src.Chunks, src.Name)
		counter(c.srcBytes, src.Bytes, src.Name)
	}
}

// metricsHandler serves GET /metrics.
func metricsHandler(c counters, log *slog.Logger) http.Handler {
	return metrics.Handler("skiff-seeder", Version, newCollector(c), log)
}
