package lazymount

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/metrics"
)

// counters is what the metrics are read from at each scrape: the same
// counters GET /stats reports, so nothing is counted twice.
type counters interface {
	Stats() fetch.Stats
	Mounts() []MountInfo
}

// Stats returns the fetcher's counters, as GET /stats does.
func (m *Manager) Stats() fetch.Stats { return m.fetch.Stats() }

// collector exports a mount process' counters as Prometheus metrics.
type collector struct {
	c counters

	mounts, chunkReads, missWait                                 *prometheus.Desc
	srcRequests, srcErrors, srcFrames, srcChunks, srcBytes       *prometheus.Desc
	cacheEntries, cacheBytes, cacheMax, cacheEvictions, cacheBad *prometheus.Desc
	cachePending                                                 *prometheus.Desc
}

// NewCollector returns the Prometheus collector of m's mounts, chunk
// reads, sources and disk cache.
func NewCollector(m *Manager) prometheus.Collector { return newCollector(m) }

func newCollector(c counters) *collector {
	const ns = "skiff_agent_"
	d := metrics.Descs(ns)
	return &collector{
		c:              c,
		mounts:         d("mounts", "Images mounted."),
		chunkReads:     d("chunk_reads_total", "Chunk reads by where the chunk was found: memory, cache (read by this process), file (a cache file the kernel read), zero (all-zero, no I/O) or miss (fetched from a source).", "result"),
		missWait:       d("chunk_miss_wait_seconds_total", "Time readers spent waiting on chunks fetched from a source, summed."),
		srcRequests:    d("source_requests_total", "Requests to a chunk source (peer, seeder, store).", "source"),
		srcErrors:      d("source_errors_total", "Failed requests to a source, and data from it that failed verification.", "source"),
		srcFrames:      d("source_frames_total", "Verified frames received from a source.", "source"),
		srcChunks:      d("source_chunks_total", "Verified chunks received from a source.", "source"),
		srcBytes:       d("source_bytes_total", "Compressed bytes received from a source.", "source"),
		cacheEntries:   d("cache_entries", "Files in the chunk cache."),
		cacheBytes:     d("cache_bytes", "Bytes of chunks in the chunk cache."),
		cacheMax:       d("cache_max_bytes", "The chunk cache's size limit (SKIFF_AGENT_CACHE_SIZE)."),
		cacheEvictions: d("cache_evictions_total", "Chunks evicted from the cache, least recently used first."),
		cacheBad:       d("cache_corrupt_total", "Cache files deleted because their content did not match their digest."),
		cachePending:   d("cache_pending_bytes", "Verified chunk bytes held in memory until the node is quiet enough to write them to the chunk cache."),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.mounts, c.chunkReads, c.missWait,
		c.srcRequests, c.srcErrors, c.srcFrames, c.srcChunks, c.srcBytes,
		c.cacheEntries, c.cacheBytes, c.cacheMax, c.cacheEvictions, c.cacheBad, c.cachePending,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counter, gauge := metrics.Senders(ch)
	gauge(c.mounts, float64(len(c.c.Mounts())))
	s := c.c.Stats()
	counter(c.chunkReads, s.MemoryHits, "memory")
	counter(c.chunkReads, s.CacheHits, "cache")
	counter(c.chunkReads, s.FileHits, "file")
	counter(c.chunkReads, s.ZeroChunks, "zero")
	counter(c.chunkReads, s.CacheMisses, "miss")
	ch <- prometheus.MustNewConstMetric(c.missWait, prometheus.CounterValue, s.MissWait.Seconds())
	for _, src := range s.Sources {
		counter(c.srcRequests, src.Requests, src.Name)
		counter(c.srcErrors, src.Errors, src.Name)
		counter(c.srcFrames, src.Frames, src.Name)
		counter(c.srcChunks, src.Chunks, src.Name)
		counter(c.srcBytes, src.Bytes, src.Name)
	}
	if cs := s.Cache; cs != nil {
		gauge(c.cacheEntries, float64(cs.Entries))
		gauge(c.cacheBytes, float64(cs.Bytes))
		gauge(c.cacheMax, float64(cs.MaxBytes))
		counter(c.cacheEvictions, cs.Evictions)
		counter(c.cacheBad, cs.Corrupt)
		gauge(c.cachePending, float64(s.PendingBytes))
	}
}
