package fetch

import "sync"

// tasks runs functions in the background and waits for those already
// started. A sync.WaitGroup cannot do this here: readers start writes and
// streams at any time, also while a Flush waits, and a WaitGroup forbids
// Add from zero during a Wait (it may panic, killing every mount of the
// process); its Wait would also wait for work started after it, which
// under steady reads may never end.
type tasks struct {
	mu   sync.Mutex
	next uint64
	live map[uint64]chan struct{}
}

// Go runs fn in a goroutine of its own.
func (t *tasks) Go(fn func()) {
	t.mu.Lock()
	if t.live == nil {
		t.live = make(map[uint64]chan struct{})
	}
	id := t.next
	t.next++
	done := make(chan struct{})
	t.live[id] = done
	t.mu.Unlock()
	go func() {
		defer func() {
			t.mu.Lock()
			delete(t.live, id)
			t.mu.Unlock()
			close(done)
		}()
		fn()
	}()
}

// Wait returns once every function Go started before Wait was called has
// returned.
func (t *tasks) Wait() {
	t.mu.Lock()
	pending := make([]chan struct{}, 0, len(t.live))
	for _, done := range t.live {
		pending = append(pending, done)
	}
	t.mu.Unlock()
	for _, done := range pending {
		<-done
	}
}
