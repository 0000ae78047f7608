package worker

import (
	"sync"
	"sync/atomic"
	"time"

	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
)

// DurationBuckets are the upper bounds, in seconds, of the buckets of
// Stats.Durations: from a small image converted in a second to a large
// one taking most of an hour.
var DurationBuckets = []float64{1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600}

// Stats counts what a worker did since it started. Requests are counted
// once settled for good (acked or dropped), so a request retried after a
// failed attempt counts once, by its outcome.
type Stats struct {
	Completed    int64 // converted: Skiff image pushed, completed event published
	Failed       int64 // failed event published after the last attempt or claim
	Retagged     int64 // the digest was converted before: its Skiff image tagged for the request
	Duplicates   int64 // deliveries of requests answered already, only acked
	SkiffSources int64 // pushes of a Skiff image under a plain tag, not converted
	Invalid      int64 // undecodable requests, dropped

	Attempts      int64 // conversion attempts begun
	AttemptErrors int64 // attempts that failed (not cut short by a stop)
	Running       int64 // attempts in progress
	Waits         int64 // deliveries put back while another request converted the digest
	ClaimErrors   int64 // deliveries whose conversion record could not be claimed

	// Of completed conversions, as their completed events report them.
	SourceBytes int64 // compressed source layers
	StoredBytes int64 // compressed frames the bootstraps reference
	NewBytes    int64 // what the conversions added to the store
	Durations   Histogram
}

// Histogram is a distribution of durations over DurationBuckets.
type Histogram struct {
	Count uint64
	Sum   time.Duration
	// Buckets counts the observations up to each bound of
	// DurationBuckets, cumulatively, as Prometheus wants them.
	Buckets map[float64]uint64
}

// Stats returns current counters.
func (w *Worker) Stats() Stats {
	c := &w.counts
	c.mu.Lock()
	done, bytes, durations := c.done, c.bytes, c.durations.snapshot()
	c.mu.Unlock()
	return Stats{
		Completed: done, Failed: c.failed.Load(), Retagged: c.retagged.Load(), Duplicates: c.duplicates.Load(),
		SkiffSources: c.skiffSources.Load(), Invalid: c.invalid.Load(),
		Attempts: c.attempts.Load(), AttemptErrors: c.attemptErrors.Load(), Running: c.running.Load(),
		Waits: c.waits.Load(), ClaimErrors: c.claimErrors.Load(),
		SourceBytes: bytes.source, StoredBytes: bytes.stored, NewBytes: bytes.added, Durations: durations,
	}
}

// counts are a worker's counters.
type counts struct {
	failed, retagged, duplicates, skiffSources, invalid  atomic.Int64
	attempts, attemptErrors, running, waits, claimErrors atomic.Int64

	// What a completed conversion adds is updated together, so that a
	// scrape never sees a conversion counted without its bytes and
	// duration.
	mu        sync.Mutex
	done      int64
	bytes     struct{ source, stored, added int64 }
	durations histogram
}

// completed counts a completed conversion.
func (c *counts) completed(ev *skiffv1.ConversionCompleted, took time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bytes.source += ev.GetSourceBytes()
	c.bytes.stored += ev.GetStoredBytes()
	c.bytes.added += ev.GetNewBytes()
	c.durations.observe(took)
	c.done++
}

// histogram counts observations per bucket of DurationBuckets, the last
// element of counts being those above every bound.
type histogram struct {
	counts []uint64
	sum    time.Duration
}

func (h *histogram) observe(d time.Duration) {
	if h.counts == nil {
		h.counts = make([]uint64, len(DurationBuckets)+1)
	}
	i := 0
	for i < len(DurationBuckets) && d.Seconds() > DurationBuckets[i] {
		i++
	}
	h.counts[i]++
	h.sum += d
}

func (h *histogram) snapshot() Histogram {
	out := Histogram{Sum: h.sum, Buckets: make(map[float64]uint64, len(DurationBuckets))}
	for i, bound := range DurationBuckets {
		if i < len(h.counts) {
			out.Count += h.counts[i]
		}
		out.Buckets[bound] = out.Count
	}
	if len(h.counts) > len(DurationBuckets) {
		out.Count += h.counts[len(DurationBuckets)]
	}
	return out
}
