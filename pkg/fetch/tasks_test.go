package fetch

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestTasksWaitForStartedOnly(t *testing.T) {
	var ts tasks
	release := make(chan struct{})
	var done atomic.Int32
	ts.Go(func() { <-release; done.Add(1) })

	waited := make(chan struct{})
	go func() { ts.Wait(); close(waited) }()
	time.Sleep(20 * time.Millisecond)
	select {
	case <-waited:
		t.Fatal("Wait returned before the task it should wait for")
	default:
	}
	// A task started during the Wait does not hold it up.
	late := make(chan struct{})
	ts.Go(func() { <-late })
	close(release)
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Fatal("Wait waited for a task started after it")
	}
	if done.Load() != 1 {
		t.Fatal("Wait returned before the task ended")
	}
	close(late)
	ts.Wait()
}

// Starting tasks from zero while others wait is what readers and Flush do
// all the time; a sync.WaitGroup may panic on it.
func TestTasksStartDuringWait(t *testing.T) {
	var ts tasks
	stop := make(chan struct{})
	var started atomic.Int64
	for range 4 {
		go func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ts.Go(func() { started.Add(1) })
			}
		}()
	}
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) {
		ts.Wait()
	}
	close(stop)
	if started.Load() == 0 {
		t.Fatal("no task ran")
	}
}
