// Package metrics serves a Skiff process' Prometheus metrics: its own
// collector, which reads the counters the process keeps anyway at each
// scrape, beside the build, Go runtime and process metrics every binary
// reports alike.
package metrics

import (
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler serves GET /metrics for binary (skiff-converter, say) of the
// given version, with the metrics of cs. It has a registry of its own
// rather than the global one, so that two services in one process (tests)
// each report their own.
func Handler(binary, version string, log *slog.Logger, cs ...prometheus.Collector) http.Handler {
	reg := prometheus.NewRegistry()
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        Namespace(binary) + "build_info",
		Help:        "Always 1; version is the build of " + binary + ", which changes on upgrades.",
		ConstLabels: prometheus.Labels{"version": version},
	})
	build.Set(1)
	reg.MustRegister(cs...)
	reg.MustRegister(
		build,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)})
}

// Namespace is the prefix of binary's metric names: skiff-converter's
// are skiff_converter_*.
func Namespace(binary string) string {
	b := []byte(binary + "_")
	for i, c := range b {
		if c == '-' {
			b[i] = '_'
		}
	}
	return string(b)
}

// Descs returns what a collector describes its metrics with, each named
// under namespace (skiff_agent_, say).
func Descs(namespace string) func(name, help string, labels ...string) *prometheus.Desc {
	return func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(namespace+name, help, labels, nil)
	}
}

// Senders returns what a collector's Collect sends its counters' and
// gauges' current values on ch with: Skiff's collectors read counters the
// process keeps anyway, at each scrape.
func Senders(ch chan<- prometheus.Metric) (counter func(d *prometheus.Desc, v int64, labels ...string), gauge func(d *prometheus.Desc, v float64, labels ...string)) {
	counter = func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge = func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	return counter, gauge
}
