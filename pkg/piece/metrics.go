package piece

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/skiff-dev/skiff/pkg/metrics"
)

// collector exports a piece server's requests and its store's holdings as
// Prometheus metrics, read from the counters GET /stats reports.
type collector struct {
	srv *Server
	st  *Store

	requests, seeded, waited, sent, inFlight, held *prometheus.Desc
}

// NewCollector returns the Prometheus collector of srv and the store it
// serves, its metrics named under namespace (skiff_seeder_, skiff_agent_).
func NewCollector(namespace string, srv *Server) prometheus.Collector {
	d := metrics.Descs(namespace)
	return &collector{
		srv:      srv,
		st:       srv.store,
		requests: d("piece_requests_total", "Piece requests from peers, by result: served (answered with data), missed (404: not held) or seed_failed (502: seeding the range from the blob store failed).", "result"),
		seeded:   d("piece_requests_seeded_total", "Piece requests for ranges not held that seeding from the blob store brought in before the answer."),
		waited:   d("piece_requests_waited_total", "Piece requests answered once the range, still on its way to this node, arrived (nodes fetching one range at once form a tree)."),
		sent:     d("piece_sent_bytes_total", "Bytes of pieces sent to peers."),
		inFlight: d("piece_requests_in_flight", "Piece requests being served now: the load announced to the schedulers."),
		held:     d("held_bytes", "Bytes of pieces held for peers; the piece store's size limit bounds them."),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.requests, c.seeded, c.waited, c.sent, c.inFlight, c.held} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counter, gauge := metrics.Senders(ch)
	s := c.srv.Stats()
	counter(c.requests, s.Served, "served")
	counter(c.requests, s.Missed, "missed")
	counter(c.requests, s.SeedErrors, "seed_failed")
	counter(c.seeded, s.Seeded)
	counter(c.waited, s.Waited)
	counter(c.sent, s.ServedBytes)
	gauge(c.inFlight, float64(c.srv.Load()))
	gauge(c.held, float64(c.st.Size()))
}
