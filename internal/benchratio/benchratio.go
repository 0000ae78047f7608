// Package benchratio times a piece of Skiff against a baseline doing the
// same job, in the same benchmark run, and reports the ratio of the two.
// A lone time says little: it moves with the machine, and the shared
// 2-vCPU machines Skiff is measured on drift from minute to minute. Taking
// turns, the two see the same drift, and their ratio is a figure another
// machine can check.
package benchratio

import (
	"runtime"
	"testing"
	"time"
)

// A turn runs base and then subject, each as many times as base takes
// turnTime to run, and an iteration of b.Loop takes turns turns: `make
// bench` runs one iteration (-benchtime 1x), and one run of a job of a few
// microseconds is noise.
const (
	turnTime = 10 * time.Millisecond
	turns    = 8
)

// Report runs base and subject in turns and reports the ratio of
// subject's total time to base's under unit ("decode/toc-decode": subject
// first). Runs before the first turn, which set how many runs a turn
// takes, are not counted, so that neither pays for first use
// (connections, tables built lazily, the page cache). ns/op, B/op and
// allocs/op are subject's, per run.
func Report(b *testing.B, unit string, subject, base func()) {
	b.Helper()
	subject() // b.Loop starts the benchmark's clock afresh
	runs := 0
	for start := time.Now(); runs < 10_000 && (runs == 0 || time.Since(start) < turnTime); runs++ {
		base()
	}

	var s, t time.Duration
	var n, bytes, allocs uint64
	var ms runtime.MemStats
	for b.Loop() {
		for range turns {
			b.StopTimer()
			start := time.Now()
			for range runs {
				base()
			}
			t += time.Since(start)
			runtime.ReadMemStats(&ms)
			bytes0, allocs0 := ms.TotalAlloc, ms.Mallocs
			b.StartTimer()
			start = time.Now()
			for range runs {
				subject()
			}
			s += time.Since(start)
			b.StopTimer()
			runtime.ReadMemStats(&ms)
			bytes += ms.TotalAlloc - bytes0
			allocs += ms.Mallocs - allocs0
			n += uint64(runs)
			b.StartTimer()
		}
	}
	if n > 0 && t > 0 {
		b.ReportMetric(float64(s.Nanoseconds())/float64(n), "ns/op")
		b.ReportMetric(float64(bytes)/float64(n), "B/op")
		b.ReportMetric(float64(allocs)/float64(n), "allocs/op")
		b.ReportMetric(float64(s)/float64(t), unit)
	}
}
