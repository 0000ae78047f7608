package service

import (
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/skiff-dev/skiff/pkg/metrics"
	"github.com/skiff-dev/skiff/services/converter/internal/webhook"
	"github.com/skiff-dev/skiff/services/converter/internal/worker"
)

// Stats is what the service counted: the webhook's notifications and the
// worker's requests and conversions.
type Stats struct {
	Webhook webhook.Stats
	Worker  worker.Stats
}

// counters is what the metrics are read from at each scrape: the
// counters the webhook and the worker keep, so nothing is counted twice.
type counters interface {
	stats() Stats
}

func (s *Service) stats() Stats {
	return Stats{Webhook: s.webhook.Stats(), Worker: s.worker.Stats()}
}

// collector exports a converter's counters as Prometheus metrics.
type collector struct {
	c counters

	notifications, events                        *prometheus.Desc
	requests, attempts, attemptErrors, running   *prometheus.Desc
	waits, claimErrors                           *prometheus.Desc
	duration, sourceBytes, storedBytes, newBytes *prometheus.Desc
}

func newCollector(c counters) *collector {
	const ns = "skiff_converter_"
	d := metrics.Descs(ns)
	return &collector{
		c:             c,
		notifications: d("notifications_total", "Registry notifications received on the webhook, by answer: ok (200), malformed (400: nothing published) or unavailable (503: NATS failed; the registry sends it again).", "result"),
		events:        d("notification_events_total", "Events of notifications, by what became of them: published (a new conversion request), duplicate (a request JetStream had already, as from a registry's retry) or ignored (no push of a convertible tag: pulls, blobs, Skiff's own tags).", "result"),
		requests:      d("requests_total", "Conversion requests settled for good, by outcome: completed (converted, completed event published), failed (failed event published after the last attempt), retagged (digest converted before: its Skiff image tagged for the request), duplicate (a delivery of a request answered already: only acked), skiff_source (a Skiff image under a plain tag: not converted) or invalid (undecodable: dropped).", "outcome"),
		attempts:      d("attempts_total", "Conversion attempts begun; a request has up to SKIFF_CONVERTER_MAX_ATTEMPTS."),
		attemptErrors: d("attempt_errors_total", "Conversion attempts that failed (pull, convert, upload, push or publish); all but a request's last are retried after a backoff."),
		running:       d("conversions_in_progress", "Conversion attempts running in this process (SKIFF_CONVERTER_CONCURRENCY bounds them)."),
		waits:         d("waits_total", "Deliveries put back because another request for the same digest was converting it; they retag once it is done."),
		claimErrors:   d("claim_errors_total", "Deliveries whose conversion record could not be claimed (record unreadable or not written, or an earlier conversion not tagged); retried after a backoff, and failed after SKIFF_CONVERTER_MAX_ATTEMPTS in a row."),
		duration:      d("conversion_duration_seconds", "Time from the start of the attempt that converted an image to its completed event: pull, convert, upload, push."),
		sourceBytes:   d("source_bytes_total", "Compressed bytes of the source layers of completed conversions."),
		storedBytes:   d("stored_bytes_total", "Compressed bytes of the frames completed conversions' bootstraps reference, new and deduplicated."),
		newBytes:      d("new_bytes_total", "Bytes completed conversions added to the blob store; the rest of stored_bytes_total was there already (deduplicated)."),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.notifications, c.events,
		c.requests, c.attempts, c.attemptErrors, c.running,
		c.waits, c.claimErrors,
		c.duration, c.sourceBytes, c.storedBytes, c.newBytes,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counter, gauge := metrics.Senders(ch)
	s := c.c.stats()
	h, w := s.Webhook, s.Worker
	counter(c.notifications, h.OK, "ok")
	counter(c.notifications, h.Malformed, "malformed")
	counter(c.notifications, h.Unavailable, "unavailable")
	counter(c.events, h.Published, "published")
	counter(c.events, h.Duplicates, "duplicate")
	counter(c.events, h.Ignored, "ignored")

	counter(c.requests, w.Completed, "completed")
	counter(c.requests, w.Failed, "failed")
	counter(c.requests, w.Retagged, "retagged")
	counter(c.requests, w.Duplicates, "duplicate")
	counter(c.requests, w.SkiffSources, "skiff_source")
	counter(c.requests, w.Invalid, "invalid")
	counter(c.attempts, w.Attempts)
	counter(c.attemptErrors, w.AttemptErrors)
	gauge(c.running, float64(w.Running))
	counter(c.waits, w.Waits)
	counter(c.claimErrors, w.ClaimErrors)

	ch <- prometheus.MustNewConstHistogram(c.duration, w.Durations.Count, w.Durations.Sum.Seconds(), w.Durations.Buckets)
	counter(c.sourceBytes, w.SourceBytes)
	counter(c.storedBytes, w.StoredBytes)
	counter(c.newBytes, w.NewBytes)
}

// metricsHandler serves GET /metrics.
func metricsHandler(c counters, log *slog.Logger) http.Handler {
	return metrics.Handler("skiff-converter", Version, log, newCollector(c))
}
