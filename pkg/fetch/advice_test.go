package fetch

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// recordingAdvisor returns an advisor whose advice is recorded, and
// whose first advice blocks until release is closed; entered is closed
// once it is being given.
func recordingAdvisor() (a *advisor, got func() []bootstrap.Digest, entered, release chan struct{}) {
	var mu sync.Mutex
	var calls []bootstrap.Digest
	entered, release = make(chan struct{}), make(chan struct{})
	a = &advisor{willNeed: func(d bootstrap.Digest) bool {
		mu.Lock()
		calls = append(calls, d)
		first := len(calls) == 1
		mu.Unlock()
		if first {
			close(entered)
			<-release
		}
		return true
	}}
	got = func() []bootstrap.Digest {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(calls)
	}
	return a, got, entered, release
}

func digestN(i int) bootstrap.Digest {
	return bootstrap.Sum([]byte{byte(i), byte(i >> 8)})
}

// waitCalls waits until got returns n calls, and a moment longer for any
// that should not come.
func waitCalls(t *testing.T, got func() []bootstrap.Digest, n int) []bootstrap.Digest {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(got()) < n && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	return got()
}

func TestAdvisor(t *testing.T) {
	tests := []struct {
		name string
		// adds are the chunks asked for while the first is being
		// advised, after it.
		adds []int
		want []int
	}{
		{name: "in the order asked", adds: []int{1, 2, 3, 4}, want: []int{0, 1, 2, 3, 4}},
		{name: "queued or advised once", adds: []int{1, 0, 2, 1, 2, 3}, want: []int{0, 1, 2, 3}},
		{name: "bounded", adds: seq(1, maxAdvice+10), want: seq(0, maxAdvice+1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, got, entered, release := recordingAdvisor()
			a.add(digestN(0))
			<-entered
			for _, i := range tt.adds {
				a.add(digestN(i))
			}
			close(release)
			var want []bootstrap.Digest
			for _, i := range tt.want {
				want = append(want, digestN(i))
			}
			if calls := waitCalls(t, got, len(want)); !slices.Equal(calls, want) {
				t.Fatalf("advised %d chunks %v, want %d %v", len(calls), calls, len(want), want)
			}
		})
	}
}

// TestAdvisorRestarts checks that advice asked for after the queue ran
// dry is given: the goroutine that gave the earlier advice has ended.
func TestAdvisorRestarts(t *testing.T) {
	a, got, entered, release := recordingAdvisor()
	a.add(digestN(0))
	<-entered
	close(release)
	waitCalls(t, got, 1)
	a.mu.Lock()
	running := a.running
	a.mu.Unlock()
	if running {
		t.Fatal("the advisor still runs with no advice to give")
	}
	a.add(digestN(1))
	if calls := waitCalls(t, got, 2); len(calls) != 2 || calls[1] != digestN(1) {
		t.Fatalf("advised %v, want chunks 0 and 1", calls)
	}
}

// seq returns the integers in [from, to).
func seq(from, to int) []int {
	var s []int
	for i := from; i < to; i++ {
		s = append(s, i)
	}
	return s
}
