package benchratio

import (
	"testing"
	"time"
)

var sink []byte

// spin keeps the CPU busy for d: a sleep overshoots by a varying amount.
func spin(d time.Duration) {
	for start := time.Now(); time.Since(start) < d; {
	}
}

func TestReport(t *testing.T) {
	r := testing.Benchmark(func(b *testing.B) {
		Report(b, "subject/base", func() {
			spin(2 * time.Millisecond)
			sink = make([]byte, 64<<10)
		}, func() {
			spin(time.Millisecond)
			sink = make([]byte, 256<<10)
		})
	})
	if got := r.Extra["subject/base"]; got < 1.5 || got > 2.7 {
		t.Errorf("ratio %.2f, want about 2 (2 ms of work against 1 ms)", got)
	}
	if ns := r.NsPerOp(); ns < int64(2*time.Millisecond) || ns > int64(6*time.Millisecond) {
		t.Errorf("%d ns/op, want the subject's ~2 ms per run", ns)
	}
	// The subject's 64 KiB per run, not the baseline's 256 KiB.
	if b := r.AllocedBytesPerOp(); b < 64<<10 || b > 128<<10 {
		t.Errorf("%d B/op, want the subject's 64 KiB per run", b)
	}
}
