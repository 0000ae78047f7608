package peer

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/skiff-dev/skiff/pkg/metrics"
)

// collector exports a Source's counters as Prometheus metrics, read from
// the same counters Stats reports.
type collector struct {
	src *Source

	requests, ranges, assembled, fellThrough, parentErrors, rejected, banned *prometheus.Desc
}

// NewCollector returns the Prometheus collector of src, its metrics named
// under namespace (skiff_agent_).
func NewCollector(namespace string, src *Source) prometheus.Collector {
	d := metrics.Descs(namespace)
	return &collector{
		src:          src,
		requests:     d("peer_requests_total", "Ranges asked of the peer-to-peer network, before the blob store."),
		ranges:       d("peer_ranges_total", "Ranges, or parts of ranges read from several parents, received from other nodes (peer) and from seeders (seeder).", "parent"),
		assembled:    d("peer_ranges_assembled_total", "Ranges read in parts from several parents at once (SKIFF_AGENT_PEER_PARALLEL)."),
		fellThrough:  d("peer_requests_fell_through_total", "Ranges the peer-to-peer network did not deliver, left to the blob store, by reason: no_scheduler (NATS or every scheduler down), no_parents (nobody to ask) or parents_failed.", "reason"),
		parentErrors: d("peer_parent_errors_total", "Reads from a parent that failed; the next parent was tried."),
		rejected:     d("peer_rejected_total", "Parents banned for sending bytes that failed verification."),
		banned:       d("peer_banned", "Parents banned now (for SourceOptions.BanFor after bad bytes)."),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.requests, c.ranges, c.assembled, c.fellThrough, c.parentErrors, c.rejected, c.banned} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counter, gauge := metrics.Senders(ch)
	s := c.src.Stats()
	counter(c.requests, s.Requests)
	counter(c.ranges, s.FromPeers, "peer")
	counter(c.ranges, s.FromSeeders, "seeder")
	counter(c.assembled, s.Assembled)
	counter(c.fellThrough, s.NoScheduler, "no_scheduler")
	counter(c.fellThrough, s.NoParents, "no_parents")
	counter(c.fellThrough, s.Failures, "parents_failed")
	counter(c.parentErrors, s.ParentErrors)
	counter(c.rejected, s.Rejected)
	gauge(c.banned, float64(len(s.Banned)))
}
