package lazymount

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/store"
)

// testNode is the node the lease tests' managers keep their leases under,
// and testNodeKey it as a key element.
const (
	testNode    = "node 1/a"
	testNodeKey = "node_1_a"
)

// leaseManager returns a Manager of e's state directory and store keeping
// leases as testNode, logging to log (when not nil).
func leaseManager(t *testing.T, e *takeoverEnv, st store.Store, log io.Writer) *Manager {
	t.Helper()
	if log == nil {
		log = os.Stderr
	}
	m, err := New(e.root, st, fetch.New(nil, []fetch.Source{fetch.NewStoreSource("store", e.st)}), Options{Node: testNode, Logger: slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// waitLease waits until the lease key is in st and returns its metadata;
// after, when not zero, it must be younger than that.
func waitLease(t *testing.T, st store.Store, key string, after time.Time) store.Info {
	t.Helper()
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		var fi store.Info
		if fi, err = st.Stat(context.Background(), key); err == nil && fi.ModTime.After(after) {
			return fi
		}
	}
	t.Fatalf("no lease %s (written after %v): %v", key, after, err)
	return store.Info{}
}

func noLease(t *testing.T, st store.Store, key, when string) {
	t.Helper()
	if fi, err := st.Stat(context.Background(), key); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("lease %s %s: %+v, %v", key, when, fi, err)
	}
}

// TestLeaseWhileMounted: a mounted image has its lease in the store,
// written again every refresh interval, and deleted when it is released.
func TestLeaseWhileMounted(t *testing.T) {
	e := newTakeoverEnv(t, false)
	ctx := context.Background()
	m := leaseManager(t, e, e.st, nil)
	defer m.Close()
	m.leases.every = 50 * time.Millisecond
	key := store.LeaseKey(testNodeKey, e.d.Hex())
	mp, err := m.Mount(ctx, e.d)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(mp, "data")); err != nil || !bytes.Equal(got, e.data) {
		t.Fatalf("read: %d bytes, %v", len(got), err)
	}
	first := waitLease(t, e.st, key, time.Time{})
	waitLease(t, e.st, key, first.ModTime)
	if err := m.Release(ctx, e.d); err != nil {
		t.Fatal(err)
	}
	noLease(t, e.st, key, "after the release")
	// Nor does the refresh bring it back.
	time.Sleep(3 * m.leases.every)
	noLease(t, e.st, key, "after the release and a refresh")
}

// TestLeaseStaysAfterClose: a mount process that stops leaves its
// leases, which a successor writes again or which lapse.
func TestLeaseStaysAfterClose(t *testing.T) {
	e := newTakeoverEnv(t, false)
	m := leaseManager(t, e, e.st, nil)
	key := store.LeaseKey(testNodeKey, e.d.Hex())
	if _, err := m.Mount(context.Background(), e.d); err != nil {
		t.Fatal(err)
	}
	waitLease(t, e.st, key, time.Time{})
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.Stat(context.Background(), key); err != nil {
		t.Fatalf("lease after Close: %v", err)
	}
}

// TestLeaseTakenOver: a successor writes the leases of the mounts it
// takes over, and the old process leaves them.
func TestLeaseTakenOver(t *testing.T) {
	e := newTakeoverEnv(t, true)
	ctx := context.Background()
	e.old.leases.node = testNodeKey
	e.node = testNode
	key := store.LeaseKey(testNodeKey, e.d.Hex())
	_, mp := e.mount(t)
	waitLease(t, e.st, key, time.Time{})
	tk, err := TakeOver(ctx, e.sock)
	if err != nil {
		t.Fatal(err)
	}
	// Gone as if lapsed: only the successor can write it again.
	if err := e.st.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	next := e.commit(t, tk)
	waitLease(t, e.st, key, time.Time{})
	if got, err := os.ReadFile(filepath.Join(mp, "data")); err != nil || !bytes.Equal(got, e.data) {
		t.Fatalf("read after the takeover: %d bytes, %v", len(got), err)
	}
	if err := next.Unmount(ctx, e.d); err != nil {
		t.Fatal(err)
	}
	noLease(t, e.st, key, "after the successor unmounted")
}

// failingLeases holds every write of a lease until released, then fails
// it.
type failingLeases struct {
	store.Store
	entered chan struct{}
	release chan struct{}
}

func (s *failingLeases) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if !strings.HasPrefix(key, store.LeasePrefix) {
		return s.Store.Put(ctx, key, r, size)
	}
	select {
	case s.entered <- struct{}{}:
	default:
	}
	select {
	case <-s.release:
	case <-ctx.Done():
	}
	return errors.New("store refuses leases")
}

// lockedBuffer is a log a test reads while the Manager writes it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestLeaseFailureLeavesMount: a store that is slow to refuse a lease
// neither fails nor holds up the mount; the failure is logged.
func TestLeaseFailureLeavesMount(t *testing.T) {
	e := newTakeoverEnv(t, false)
	ctx := context.Background()
	st := &failingLeases{Store: e.st, entered: make(chan struct{}, 1), release: make(chan struct{})}
	var log lockedBuffer
	m := leaseManager(t, e, st, &log)
	defer m.Close()
	start := time.Now()
	mp, err := m.Mount(ctx, e.d)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took >= leaseTimeout {
		t.Fatalf("the mount took %s: it waited for its lease", took)
	}
	if got, err := os.ReadFile(filepath.Join(mp, "data")); err != nil || !bytes.Equal(got, e.data) {
		t.Fatalf("read: %d bytes, %v", len(got), err)
	}
	select {
	case <-st.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("no lease was written")
	}
	close(st.release)
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(log.String(), "store refuses leases"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the failed lease was not logged; log:\n%s", log.String())
		}
	}
	if err := m.Unmount(ctx, e.d); err != nil {
		t.Fatal(err)
	}
}

// TestLeaseNode: node names become valid key elements.
func TestLeaseNode(t *testing.T) {
	for in, want := range map[string]string{
		"node-1.example_x": "node-1.example_x",
		testNode:           testNodeKey,
		"ünïcode\\n":       "_n_code_n",
		".":                "_",
		"..":               "__",
		"...":              "...",
	} {
		got := leaseNode(in)
		if got != want || !store.ValidKey(store.LeaseKey(got, "ab")) {
			t.Errorf("leaseNode(%q) = %q, want %q (valid in a key)", in, got, want)
		}
	}
}
