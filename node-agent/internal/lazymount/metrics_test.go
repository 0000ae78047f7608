package lazymount

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/skiff-dev/skiff/pkg/cache"
	"github.com/skiff-dev/skiff/pkg/fetch"
)

type fixedCounters struct {
	stats   fetch.Stats
	mounted int
}

func (f fixedCounters) Stats() fetch.Stats { return f.stats }

func (f fixedCounters) Mounts() []MountInfo { return make([]MountInfo, f.mounted) }

func TestCollector(t *testing.T) {
	tests := []struct {
		name  string
		c     fixedCounters
		names []string
		want  string
	}{
		{
			name:  "sources and cache",
			names: []string{"skiff_agent_mounts", "skiff_agent_chunk_reads_total", "skiff_agent_chunk_miss_wait_seconds_total", "skiff_agent_source_bytes_total", "skiff_agent_source_errors_total", "skiff_agent_cache_bytes", "skiff_agent_cache_corrupt_total", "skiff_agent_cache_pending_bytes"},
			c: fixedCounters{mounted: 2, stats: fetch.Stats{
				MemoryHits: 5, CacheHits: 4, FileHits: 3, CacheMisses: 2, ZeroChunks: 1,
				MissWait: 1500 * time.Millisecond, PendingBytes: 8192,
				Sources: []fetch.SourceStats{
					{Name: "peer", Requests: 3, Errors: 1, Bytes: 100},
					{Name: "store", Requests: 7, Bytes: 900},
				},
				Cache: &cache.Stats{Entries: 10, Bytes: 4096, MaxBytes: 1 << 20, Corrupt: 1},
			}},
			want: `
# HELP skiff_agent_cache_bytes Bytes of chunks in the chunk cache.
# TYPE skiff_agent_cache_bytes gauge
skiff_agent_cache_bytes 4096
# HELP skiff_agent_cache_corrupt_total Cache files deleted because their content did not match their digest.
# TYPE skiff_agent_cache_corrupt_total counter
skiff_agent_cache_corrupt_total 1
# HELP skiff_agent_cache_pending_bytes Verified chunk bytes held in memory until the node is quiet enough to write them to the chunk cache.
# TYPE skiff_agent_cache_pending_bytes gauge
skiff_agent_cache_pending_bytes 8192
# HELP skiff_agent_chunk_miss_wait_seconds_total Time readers spent waiting on chunks fetched from a source, summed.
# TYPE skiff_agent_chunk_miss_wait_seconds_total counter
skiff_agent_chunk_miss_wait_seconds_total 1.5
# HELP skiff_agent_chunk_reads_total Chunk reads by where the chunk was found: memory, cache (read by this process), file (a cache file the kernel read), zero (all-zero, no I/O) or miss (fetched from a source).
# TYPE skiff_agent_chunk_reads_total counter
skiff_agent_chunk_reads_total{result="cache"} 4
skiff_agent_chunk_reads_total{result="file"} 3
skiff_agent_chunk_reads_total{result="memory"} 5
skiff_agent_chunk_reads_total{result="miss"} 2
skiff_agent_chunk_reads_total{result="zero"} 1
# HELP skiff_agent_mounts Images mounted.
# TYPE skiff_agent_mounts gauge
skiff_agent_mounts 2
# HELP skiff_agent_source_bytes_total Compressed bytes received from a source.
# TYPE skiff_agent_source_bytes_total counter
skiff_agent_source_bytes_total{source="peer"} 100
skiff_agent_source_bytes_total{source="store"} 900
# HELP skiff_agent_source_errors_total Failed requests to a source, and data from it that failed verification.
# TYPE skiff_agent_source_errors_total counter
skiff_agent_source_errors_total{source="peer"} 1
skiff_agent_source_errors_total{source="store"} 0
`,
		},
		{
			// Without a disk cache there are no cache metrics.
			name:  "no cache",
			names: []string{"skiff_agent_mounts", "skiff_agent_cache_bytes"},
			c:     fixedCounters{},
			want: `
# HELP skiff_agent_mounts Images mounted.
# TYPE skiff_agent_mounts gauge
skiff_agent_mounts 0
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := testutil.CollectAndCompare(newCollector(tt.c), strings.NewReader(tt.want), tt.names...); err != nil {
				t.Fatal(err)
			}
			// Every described metric is valid and unique.
			if problems, err := testutil.CollectAndLint(newCollector(tt.c)); err != nil || len(problems) > 0 {
				t.Fatalf("lint: %v %v", problems, err)
			}
		})
	}
}
