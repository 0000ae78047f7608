package gc_test

import (
	"bytes"
	"context"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/gc"
	"github.com/skiff-dev/skiff/pkg/store"
	"github.com/skiff-dev/skiff/pkg/store/dir"
)

// lease writes key, a lease, as its node agent would at base+at: the
// store stamps it with that time.
func (w *world) lease(t *testing.T, key string, at time.Duration) {
	t.Helper()
	put(t, w.st, key, "lease\n")
	d, ok := w.st.(*dir.Dir)
	if !ok {
		t.Fatalf("the world's store is a %T, not a directory", w.st)
	}
	tm := w.base.Add(at)
	if err := os.Chtimes(filepath.Join(d.Root(), filepath.FromSlash(key)), tm, tm); err != nil {
		t.Fatal(err)
	}
}

// TestCollectLeases: a bootstrap that a node agent holds a fresh lease on
// is live, whatever the registries say, for as long as the agent writes
// the lease again; an agent gone for LeaseTTL releases it, and its lease
// is deleted.
func TestCollectLeases(t *testing.T) {
	const node = "node-1"
	elsewhere := bootstrap.Sum([]byte("a bootstrap this store does not hold")).Hex()
	type step struct {
		at      time.Duration
		refresh bool // the agent writes its lease LeaseRefresh before the run
		want    counts
		// The leases kept live and deleted.
		live, deleted int
	}
	tests := []struct {
		name  string
		live  func(w *world) []converted // named by the registries
		on    func(w *world) string      // the leased bootstrap; a's if nil
		steps []step
		kept  func(w *world) []converted
	}{
		{
			name: "fresh lease keeps an image no registry names",
			live: func(w *world) []converted { return []converted{w.b} },
			steps: []step{
				{at: later, refresh: true, live: 1},
				{at: muchLater, refresh: true, live: 1},
				{at: evenLater, refresh: true, live: 1},
				{at: 4*day + time.Hour, refresh: true, live: 1},
			},
			kept: func(w *world) []converted { return []converted{w.a, w.b} },
		},
		{
			name: "agent gone for LeaseTTL",
			live: func(w *world) []converted { return []converted{w.b} },
			steps: []step{
				{at: later, refresh: true, live: 1},
				{at: later + gc.LeaseRefresh, live: 1},
				{at: later + gc.LeaseTTL - gc.LeaseRefresh - time.Second, live: 1},
				// The lease written at later-LeaseRefresh is
				// LeaseTTL old: stale.
				{at: later + gc.LeaseTTL - gc.LeaseRefresh, deleted: 1, want: counts{marked: 1}},
				{at: muchLater + gc.LeaseTTL, want: counts{bootstrapsDeleted: 1, startupsDeleted: 1, condemned: 1}},
				{at: evenLater + gc.LeaseTTL, want: counts{deleted: 1}},
			},
			kept: func(w *world) []converted { return []converted{w.b} },
		},
		{
			name: "lease revives a bootstrap marked dead",
			live: func(w *world) []converted { return []converted{w.b} },
			steps: []step{
				{at: later, want: counts{marked: 1}},
				{at: muchLater, refresh: true, live: 1, want: counts{revived: 1}},
				{at: evenLater, refresh: true, live: 1},
			},
			kept: func(w *world) []converted { return []converted{w.a, w.b} },
		},
		{
			name: "lease on an image a registry names",
			live: func(w *world) []converted { return []converted{w.a, w.b} },
			steps: []step{
				{at: later, refresh: true},
				{at: muchLater, deleted: 1},
			},
			kept: func(w *world) []converted { return []converted{w.a, w.b} },
		},
		{
			// Nothing says where it is, so it is not read elsewhere,
			// and the run goes on without it.
			name: "lease on a bootstrap the store lacks",
			live: func(w *world) []converted { return []converted{w.b} },
			on:   func(w *world) string { return elsewhere },
			steps: []step{
				{at: later, refresh: true, live: 1, want: counts{marked: 1}},
				{at: muchLater, refresh: true, live: 1, want: counts{bootstrapsDeleted: 1, startupsDeleted: 1, condemned: 1}},
				{at: evenLater, refresh: true, live: 1, want: counts{deleted: 1}},
			},
			kept: func(w *world) []converted { return []converted{w.b} },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			on := w.a.digest.Hex()
			if tt.on != nil {
				on = tt.on(w)
			}
			key := store.LeaseKey(node, on)
			leased := false
			for i, s := range tt.steps {
				if s.refresh {
					w.lease(t, key, s.at-gc.LeaseRefresh)
					leased = true
				}
				rep := w.mustCollect(t, tt.live(w), s.at)
				if got := countsOf(rep); got != s.want || rep.LeasesLive != s.live || rep.LeasesDeleted.Count != s.deleted {
					t.Fatalf("run %d at +%s: %+v, %d leases live, %d deleted; want %+v, %d and %d",
						i+1, s.at, got, rep.LeasesLive, rep.LeasesDeleted.Count, s.want, s.live, s.deleted)
				}
				if s.deleted > 0 {
					leased = false
				}
				if got := exists(t, w.st, key); got != leased {
					t.Fatalf("run %d at +%s: lease in the store: %v, want %v", i+1, s.at, got, leased)
				}
				checkConsistent(t, w.st)
			}
			checkFinal(t, w.st, tt.kept(w)...)
		})
	}
}

// TestCollectLeaseMalformed: a key under store.LeasePrefix that is not a
// node's lease on a bootstrap keeps nothing, is logged, and is left alone,
// however old; a lease next to it still counts.
func TestCollectLeaseMalformed(t *testing.T) {
	w := newWorld(t)
	a, b := w.a.digest.Hex(), w.b.digest.Hex()
	malformed := []string{
		store.LeasePrefix + a,                          // no node
		store.LeasePrefix + "node-1/" + a + ".tmp",     // not a digest
		store.LeasePrefix + "node-1/" + a[:63],         // too short
		store.LeasePrefix + "node-1/sha256:" + a,       // a digest, not its hex
		store.LeasePrefix + "node-1/" + a + "/renewed", // not a digest either
	}
	for _, key := range malformed {
		w.lease(t, key, later-gc.LeaseRefresh)
	}
	w.lease(t, store.LeaseKey("node-1", b), later-gc.LeaseRefresh)
	var logged bytes.Buffer
	opts := w.at(later, 0)
	opts.Logger = slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelWarn}))
	rep, err := gc.Collect(context.Background(), w.st, nil, opts)
	if err != nil {
		t.Fatal(err)
	}
	if got := countsOf(rep); got != (counts{marked: 1}) || rep.LeasesLive != 1 {
		t.Fatalf("%+v, %d leases live; want a marked dead and b kept by its lease", got, rep.LeasesLive)
	}
	if !exists(t, w.st, store.DeadKey(a)) {
		t.Error("a, with malformed leases only, is not marked dead")
	}
	for _, key := range malformed {
		if !strings.Contains(logged.String(), "key="+key+"\n") {
			t.Errorf("malformed lease %s not logged:\n%s", key, logged.String())
		}
	}
	// Long past LeaseTTL, they are still not the collector's to delete.
	w.lease(t, store.LeaseKey("node-1", b), muchLater-gc.LeaseRefresh)
	rep = w.mustCollect(t, nil, muchLater)
	if rep.LeasesDeleted.Count != 0 {
		t.Errorf("%d leases deleted, want none", rep.LeasesDeleted.Count)
	}
	for _, key := range malformed {
		if !exists(t, w.st, key) {
			t.Errorf("malformed lease %s deleted", key)
		}
	}
	w.lease(t, store.LeaseKey("node-1", b), evenLater-gc.LeaseRefresh)
	w.mustCollect(t, nil, evenLater)
	checkFinal(t, w.st, w.b)
}

// TestCollectLeaseDryRun: a dry run deletes no stale lease, and reports
// the leases as the real run then counts them.
func TestCollectLeaseDryRun(t *testing.T) {
	w := newWorld(t)
	fresh, stale := store.LeaseKey("node-1", w.a.digest.Hex()), store.LeaseKey("node-2", w.b.digest.Hex())
	w.lease(t, fresh, later-gc.LeaseRefresh)
	w.lease(t, stale, later-gc.LeaseTTL)
	before := snapshot(t, w.st)
	opts := w.at(later, 0)
	opts.DryRun = true
	dry, err := gc.Collect(context.Background(), w.st, nil, opts)
	if err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, w.st); !reflect.DeepEqual(before, after) {
		t.Fatalf("dry run changed the store: %v", slices.Sorted(maps.Keys(after)))
	}
	if dry.LeasesDeleted.Count != 1 || dry.LeasesLive != 1 || countsOf(dry) != (counts{marked: 1}) {
		t.Fatalf("dry run: %d leases deleted, %d live, %+v; want 1, 1 and b marked dead", dry.LeasesDeleted.Count, dry.LeasesLive, countsOf(dry))
	}
	real := w.mustCollect(t, nil, later)
	dry.DryRun = false
	if !reflect.DeepEqual(dry, real) {
		t.Errorf("the dry run reported\n%+v\nand the real run did\n%+v", dry, real)
	}
	if exists(t, w.st, stale) || !exists(t, w.st, fresh) {
		t.Errorf("after the real run: stale lease in the store: %v, fresh one: %v; want false, true", exists(t, w.st, stale), exists(t, w.st, fresh))
	}
}
