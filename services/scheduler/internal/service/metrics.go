package service

import (
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/skiff-dev/skiff/pkg/metrics"
	"github.com/skiff-dev/skiff/pkg/schedule"
)

// counters is what the metrics are read from at each scrape: the same
// counters GET /stats reports, so nothing is counted twice.
type counters interface {
	Stats() schedule.ServerStats
}

// collector exports a scheduler's traffic and table as Prometheus metrics.
type collector struct {
	c counters

	announces, requests, misses, reports, heard *prometheus.Desc
	peers, quarantined, blobs, heldBytes        *prometheus.Desc
}

func newCollector(c counters) *collector {
	const ns = "skiff_scheduler_"
	d := metrics.Descs(ns)
	return &collector{
		c:           c,
		announces:   d("announces_total", "Peer announcements received, departures included; every scheduler hears every one."),
		requests:    d("parents_requests_total", "Parent requests this scheduler answered; the schedulers share them through a NATS queue group."),
		misses:      d("parents_misses_total", "Parent requests answered with no parent at all: the reader goes to the blob store."),
		reports:     d("reports_total", "Reports of peers that sent data failing verification."),
		heard:       d("parents_heard_total", "Parents other schedulers of the queue group chose, recorded here so that all count a parent's children alike."),
		peers:       d("peers", "Live peers in the table, by role: peer (a node agent) or seeder.", "role"),
		quarantined: d("quarantined_peers", "Peers reported for bad data, not offered as parents until their quarantine (SKIFF_SCHEDULER_QUARANTINE) ends."),
		blobs:       d("blobs", "Distinct blobs live peers hold pieces of."),
		heldBytes:   d("held_bytes", "Bytes of pieces live peers hold, summed over the peers (a piece two peers hold counts twice)."),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.announces, c.requests, c.misses, c.reports, c.heard,
		c.peers, c.quarantined, c.blobs, c.heldBytes,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counter, gauge := metrics.Senders(ch)
	s := c.c.Stats()
	counter(c.announces, s.Announces)
	counter(c.requests, s.Requests)
	counter(c.misses, s.Misses)
	counter(c.reports, s.Reports)
	counter(c.heard, s.Heard)
	gauge(c.peers, float64(s.Table.Peers), schedule.RolePeer.String())
	gauge(c.peers, float64(s.Table.Seeders), schedule.RoleSeeder.String())
	gauge(c.quarantined, float64(s.Table.Quarantined))
	gauge(c.blobs, float64(s.Table.Blobs))
	gauge(c.heldBytes, float64(s.Table.HeldBytes))
}

// metricsHandler serves GET /metrics.
func metricsHandler(c counters, log *slog.Logger) http.Handler {
	return metrics.Handler("skiff-scheduler", Version, log, newCollector(c))
}
