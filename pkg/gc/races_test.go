package gc_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/gc"
	"github.com/skiff-dev/skiff/pkg/store"
)

// hooked is a store into which tests slip what others do to it while a
// collection runs, or whose clock differs from the collector's.
type hooked struct {
	store.Store
	// afterList, if set, runs after each List, with its prefix.
	afterList func(prefix string)
	// beforeGet, if set, runs before each Get; an error it returns is
	// Get's.
	beforeGet func(key string) error
	// afterDelete, if set, runs after each Delete, with its key.
	afterDelete func(key string)
	// skew is added to every modification time: the store's clock minus
	// the collector's.
	skew time.Duration
}

func (h *hooked) List(ctx context.Context, prefix string, fn func(store.Info) error) error {
	err := h.Store.List(ctx, prefix, func(info store.Info) error {
		info.ModTime = info.ModTime.Add(h.skew)
		return fn(info)
	})
	if err == nil && h.afterList != nil {
		h.afterList(prefix)
	}
	return err
}

func (h *hooked) Delete(ctx context.Context, key string) error {
	err := h.Store.Delete(ctx, key)
	if err == nil && h.afterDelete != nil {
		h.afterDelete(key)
	}
	return err
}

func (h *hooked) Stat(ctx context.Context, key string) (store.Info, error) {
	info, err := h.Store.Stat(ctx, key)
	info.ModTime = info.ModTime.Add(h.skew)
	return info, err
}

func (h *hooked) Get(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	if h.beforeGet != nil {
		if err := h.beforeGet(key); err != nil {
			return nil, err
		}
	}
	return h.Store.Get(ctx, key, off, length)
}

// once returns a function that runs fn the first time it is called.
func once(fn func()) func() {
	var o sync.Once
	return func() { o.Do(fn) }
}

// TestCollectRevive: a bootstrap marked dead is deleted only if a grace
// period later the registries still do not name it and it has not been
// written again; otherwise it loses its tombstone and keeps its blobs.
func TestCollectRevive(t *testing.T) {
	t.Run("live again", func(t *testing.T) {
		// The first scan missed a: its manifest was moved to another
		// repository while the scan ran.
		w := newWorld(t)
		if got := countsOf(w.mustCollect(t, []converted{w.b}, later)); got != (counts{marked: 1}) {
			t.Fatalf("first run: %+v, want a marked dead", got)
		}
		checkConsistent(t, w.st)
		if !exists(t, w.st, store.BootstrapKey(w.a.digest.Hex())) || !exists(t, w.st, store.DeadKey(w.a.digest.Hex())) {
			t.Fatal("want a's bootstrap kept, with a tombstone")
		}
		if got := countsOf(w.mustCollect(t, []converted{w.a, w.b}, muchLater)); got != (counts{revived: 1}) {
			t.Fatalf("second run: %+v, want a revived", got)
		}
		w.mustCollect(t, []converted{w.a, w.b}, evenLater)
		checkFinal(t, w.st, w.a, w.b)
	})
	t.Run("written again", func(t *testing.T) {
		w := newWorld(t)
		w.mustCollect(t, []converted{w.b}, later)
		// Converting a again writes its bootstrap again, for an image
		// that is about to be pushed.
		if again := w.convert(t, files{"shared.bin": shared}, files{"a.bin": onlyA}); again.digest != w.a.digest {
			t.Fatalf("converting a again made bootstrap %s, not %s", again.digest, w.a.digest)
		}
		if got := countsOf(w.mustCollect(t, []converted{w.b}, muchLater)); got != (counts{revived: 1}) {
			t.Fatalf("second run: %+v, want a revived", got)
		}
		checkFinal(t, w.st, w.a, w.b)
	})
	t.Run("written again during the run", func(t *testing.T) {
		w := newWorld(t)
		w.mustCollect(t, []converted{w.b}, later)
		data := read(t, w.st, store.BootstrapKey(w.a.digest.Hex()))
		rewrite := once(func() { put(t, w.st, store.BootstrapKey(w.a.digest.Hex()), string(data)) })
		h := &hooked{Store: w.st, afterList: func(prefix string) {
			if prefix == store.BootstrapPrefix {
				rewrite()
			}
		}}
		rep, err := w.collect(t, h, []converted{w.b}, muchLater, 0)
		if err != nil {
			t.Fatal(err)
		}
		if got := countsOf(rep); got != (counts{revived: 1}) {
			t.Fatalf("second run: %+v, want a revived", got)
		}
		checkFinal(t, w.st, w.a, w.b)
	})
	t.Run("written again just after its deletion", func(t *testing.T) {
		// The conversion comes a moment too late to revive the
		// bootstrap, but what it wrote keeps its blobs.
		w := newWorld(t)
		w.mustCollect(t, []converted{w.b}, later)
		key := store.BootstrapKey(w.a.digest.Hex())
		data := read(t, w.st, key)
		h := &hooked{Store: w.st, afterDelete: func(deleted string) {
			if deleted == key {
				put(t, w.st, key, string(data))
			}
		}}
		rep, err := w.collect(t, h, []converted{w.b}, muchLater, 0)
		if err != nil {
			t.Fatal(err)
		}
		if got := countsOf(rep); got != (counts{bootstrapsDeleted: 1, startupsDeleted: 1}) {
			t.Fatalf("second run: %+v, want a's bootstrap deleted and nothing condemned", got)
		}
		checkConsistent(t, w.st)
		for _, hex := range w.a.blobs() {
			if !exists(t, w.st, store.IndexKey(hex)) {
				t.Errorf("blob %s of a, written again, was condemned", hex)
			}
		}
	})
	t.Run("tombstone outlives its bootstrap", func(t *testing.T) {
		// A run failing between deleting a bootstrap and its tombstone
		// leaves the tombstone, which the next run drops.
		w := newWorld(t)
		w.mustCollect(t, []converted{w.b}, later)
		for _, key := range []string{store.StartupKey(w.a.digest.Hex()), store.BootstrapKey(w.a.digest.Hex())} {
			if err := w.st.Delete(context.Background(), key); err != nil {
				t.Fatal(err)
			}
		}
		w.mustCollect(t, []converted{w.b}, muchLater)
		w.mustCollect(t, []converted{w.b}, evenLater)
		checkFinal(t, w.st, w.b)
	})
}

// TestCollectStoreClock: ages are measured with the store's clock. A store
// whose clock runs two days behind the collector's stamps a fresh
// conversion two days in the past; measured with the collector's clock,
// the image would be collected before it is pushed.
func TestCollectStoreClock(t *testing.T) {
	w := newWorld(t)
	behind := &hooked{Store: w.st, skew: -2 * day}
	rep, err := gc.Collect(context.Background(), behind, nil, gc.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if got := countsOf(rep); got != (counts{}) {
		t.Errorf("young images on a store whose clock is behind: %+v, want nothing collected", got)
	}
	if !exists(t, w.st, store.ClockKey) {
		t.Errorf("no %s written", store.ClockKey)
	}
	checkFinal(t, w.st, w.a, w.b)

	// A dry run writes nothing, not even the clock.
	w = newWorld(t)
	before := snapshot(t, w.st)
	if _, err := gc.Collect(context.Background(), w.st, nil, gc.Options{DryRun: true, Logger: quiet}); err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, w.st); !reflect.DeepEqual(before, after) {
		t.Errorf("dry run changed the store: %v", slices.Sorted(maps.Keys(after)))
	}

	// A store that cannot be written stops the run before anything.
	w = newWorld(t)
	before = snapshot(t, w.st)
	broken := failing{w.st, func(op, key string) bool { return key == store.ClockKey }}
	if _, err := gc.Collect(context.Background(), broken, nil, gc.Options{Logger: quiet}); !errors.Is(err, errInjected) || !strings.Contains(err.Error(), "clock") {
		t.Errorf("clock not writable: %v, want the injected error", err)
	}
	if after := snapshot(t, w.st); !reflect.DeepEqual(before, after) {
		t.Errorf("failed run changed the store: %v", slices.Sorted(maps.Keys(after)))
	}
}

// TestCollectLiveMissing: a live image whose bootstrap the store does not
// hold keeps the blobs its bootstrap (read elsewhere) names, and gets its
// bootstrap back, byte for byte, if the store holds all those blobs;
// without a way to read it, or when reading fails, the run changes
// nothing.
func TestCollectLiveMissing(t *testing.T) {
	// a's bootstrap is lost from the store, though a is still live: say
	// deleted as dead just as a conversion wrote it again for a push.
	lose := func(t *testing.T, w *world) {
		t.Helper()
		for _, key := range []string{store.StartupKey(w.a.digest.Hex()), store.BootstrapKey(w.a.digest.Hex())} {
			if err := w.st.Delete(context.Background(), key); err != nil {
				t.Fatal(err)
			}
		}
	}
	elsewhere := bootstrap.Sum([]byte("an image converted into another store"))
	t.Run("read elsewhere", func(t *testing.T) {
		w := newWorld(t)
		stored := read(t, w.st, store.BootstrapKey(w.a.digest.Hex()))
		lose(t, w)
		var reads []bootstrap.Digest
		var mu sync.Mutex
		readMissing := func(ctx context.Context, d bootstrap.Digest) (*bootstrap.Bootstrap, error) {
			mu.Lock()
			defer mu.Unlock()
			reads = append(reads, d)
			switch d {
			case w.a.digest:
				return w.a.b, nil
			case elsewhere:
				// Its blobs are in the other store: no damage here.
				return &bootstrap.Bootstrap{Blobs: []bootstrap.Digest{bootstrap.Sum([]byte("a blob of another store"))}}, nil
			}
			return nil, fmt.Errorf("unexpected %s", d)
		}
		live := []bootstrap.Digest{w.a.digest, w.b.digest, elsewhere}
		// A dry run says it would write a's bootstrap back, and does not.
		opts := w.at(later, 0)
		opts.ReadMissing, opts.DryRun = readMissing, true
		rep, err := gc.Collect(context.Background(), w.st, live, opts)
		if err != nil {
			t.Fatal(err)
		}
		if rep.BootstrapsRestored.Count != 1 || exists(t, w.st, store.BootstrapKey(w.a.digest.Hex())) {
			t.Fatalf("dry run: %d bootstraps restored, a's in the store: %v; want 1 reported and none written", rep.BootstrapsRestored.Count, exists(t, w.st, store.BootstrapKey(w.a.digest.Hex())))
		}
		reads = nil
		for i, at := range []time.Duration{later, muchLater, evenLater} {
			opts := w.at(at, 0)
			opts.ReadMissing = readMissing
			rep, err := gc.Collect(context.Background(), w.st, live, opts)
			if err != nil {
				t.Fatal(err)
			}
			// The first run writes a's bootstrap back, as all its
			// blobs are here; elsewhere's stays missing.
			want, restored := counts{missing: 1}, 0
			if i == 0 {
				want, restored = counts{missing: 2}, 1
			}
			if got := countsOf(rep); got != want || rep.BlobsMissing != 0 || rep.BootstrapsRestored.Count != restored {
				t.Fatalf("run at +%s: %+v, %d blobs missing, %d bootstraps restored; want %+v, 0 and %d", at, got, rep.BlobsMissing, rep.BootstrapsRestored.Count, want, restored)
			}
		}
		if len(reads) != 4 {
			t.Errorf("read %d bootstraps elsewhere, want 2 in the first run and 1 in each other", len(reads))
		}
		if got := read(t, w.st, store.BootstrapKey(w.a.digest.Hex())); !bytes.Equal(got, stored) {
			t.Errorf("a's bootstrap written back with %d bytes that differ from the %d lost", len(got), len(stored))
		}
		for _, hex := range w.a.blobs() {
			if !exists(t, w.st, store.BlobKey(hex)) || !exists(t, w.st, store.IndexKey(hex)) {
				t.Errorf("blob %s of live image a, or its index, is gone", hex)
			}
		}
		verifyImage(t, w.st, w.a)
	})
	t.Run("blob missing", func(t *testing.T) {
		// A bootstrap naming a blob the store lacks is not written
		// back: it would be a broken image.
		w := newWorld(t)
		lose(t, w)
		uniqueA := uniqueBlob(t, w.a, w.b)
		for _, key := range []string{store.BlobKey(uniqueA), store.IndexKey(uniqueA)} {
			if err := w.st.Delete(context.Background(), key); err != nil {
				t.Fatal(err)
			}
		}
		opts := w.at(later, 0)
		opts.ReadMissing = func(context.Context, bootstrap.Digest) (*bootstrap.Bootstrap, error) { return w.a.b, nil }
		rep, err := gc.Collect(context.Background(), w.st, []bootstrap.Digest{w.a.digest, w.b.digest}, opts)
		if err != nil {
			t.Fatal(err)
		}
		if rep.BootstrapsRestored.Count != 0 || exists(t, w.st, store.BootstrapKey(w.a.digest.Hex())) {
			t.Errorf("bootstrap naming a missing blob written back")
		}
	})
	t.Run("digest mismatch", func(t *testing.T) {
		// What ReadMissing returns must encode to the live digest.
		w := newWorld(t)
		lose(t, w)
		opts := w.at(later, 0)
		opts.ReadMissing = func(context.Context, bootstrap.Digest) (*bootstrap.Bootstrap, error) { return w.b.b, nil }
		rep, err := gc.Collect(context.Background(), w.st, []bootstrap.Digest{w.a.digest, w.b.digest}, opts)
		if err != nil {
			t.Fatal(err)
		}
		if rep.BootstrapsRestored.Count != 0 || exists(t, w.st, store.BootstrapKey(w.a.digest.Hex())) {
			t.Errorf("bootstrap whose encoding does not match its digest written back")
		}
	})
	for _, tt := range []struct {
		name string
		read func(context.Context, bootstrap.Digest) (*bootstrap.Bootstrap, error)
		want string
	}{
		{"no reader", nil, "not in the store"},
		{"reader fails", func(context.Context, bootstrap.Digest) (*bootstrap.Bootstrap, error) { return nil, errInjected }, "read live bootstrap"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			lose(t, w)
			// Left to run, these would condemn a's blobs.
			before := snapshot(t, w.st)
			for _, at := range []time.Duration{later, muchLater} {
				opts := w.at(at, 0)
				opts.ReadMissing = tt.read
				_, err := gc.Collect(context.Background(), w.st, []bootstrap.Digest{w.a.digest, w.b.digest}, opts)
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("run at +%s: %v, want an error saying %q", at, err, tt.want)
				}
			}
			if after := snapshot(t, w.st); !reflect.DeepEqual(before, after) {
				t.Errorf("failed runs changed the store: %v", slices.Sorted(maps.Keys(after)))
			}
		})
	}
}

// TestCollectIndexGone: an index that disappears between the listing and
// the condemnation (another collector condemning it) is left alone, and
// its tombstone keeps the index.
func TestCollectIndexGone(t *testing.T) {
	w := newWorld(t)
	uniqueA := uniqueBlob(t, w.a, w.b)
	index := read(t, w.st, store.IndexKey(uniqueA))
	w.mustCollect(t, []converted{w.b}, later)
	// Another collector condemns the blob just before this one reads
	// its index.
	other := once(func() {
		put(t, w.st, store.CondemnedKey(uniqueA), string(index))
		if err := w.st.Delete(context.Background(), store.IndexKey(uniqueA)); err != nil {
			t.Error(err)
		}
	})
	h := &hooked{Store: w.st, beforeGet: func(key string) error {
		if key == store.IndexKey(uniqueA) {
			other()
		}
		return nil
	}}
	rep, err := w.collect(t, h, []converted{w.b}, muchLater, 0)
	if err != nil {
		t.Fatal(err)
	}
	if rep.BlobsCondemned.Count != 0 {
		t.Errorf("condemned %d blobs, want the one whose index went left alone", rep.BlobsCondemned.Count)
	}
	if got := read(t, w.st, store.CondemnedKey(uniqueA)); !bytes.Equal(got, index) {
		t.Fatalf("tombstone holds %d bytes, want the %d of the index", len(got), len(index))
	}
	w.mustCollect(t, []converted{w.b}, evenLater)
	checkFinal(t, w.st, w.b)
}

// TestCollectUndecodable: a bootstrap that does not decode stops the run
// before any blob is judged.
func TestCollectUndecodable(t *testing.T) {
	w := newWorld(t)
	w.mustCollect(t, []converted{w.b}, later)
	put(t, w.st, store.BootstrapKey(bootstrap.Sum([]byte("garbage")).Hex()), "garbage")
	_, err := w.collect(t, w.st, []converted{w.b}, muchLater, 0)
	if err == nil || !strings.Contains(err.Error(), "decode bootstrap") {
		t.Fatalf("run with an undecodable bootstrap: %v, want a decode error", err)
	}
	if got := keys(t, w.st, store.CondemnedPrefix); len(got) > 0 {
		t.Errorf("condemned %v", got)
	}
	for _, hex := range w.a.blobs() {
		if !exists(t, w.st, store.IndexKey(hex)) {
			t.Errorf("index of blob %s went", hex)
		}
	}
}

// TestCollectPublishedBeforeDelete: a condemned blob whose index a
// conversion publishes again between the listing and the deletion is
// reprieved, not deleted.
func TestCollectPublishedBeforeDelete(t *testing.T) {
	w := newWorld(t)
	uniqueA := uniqueBlob(t, w.a, w.b)
	index := read(t, w.st, store.IndexKey(uniqueA))
	w.mustCollect(t, []converted{w.b}, later)
	w.mustCollect(t, []converted{w.b}, muchLater)
	publish := once(func() { put(t, w.st, store.IndexKey(uniqueA), string(index)) })
	h := &hooked{Store: w.st, afterList: func(prefix string) {
		if prefix == store.IndexPrefix {
			publish()
		}
	}}
	rep, err := w.collect(t, h, []converted{w.b}, evenLater, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := countsOf(rep); got != (counts{restored: 1}) {
		t.Errorf("run: %+v, want the blob reprieved", got)
	}
	if !exists(t, w.st, store.BlobKey(uniqueA)) || exists(t, w.st, store.CondemnedKey(uniqueA)) {
		t.Error("blob published again was deleted, or kept its tombstone")
	}
}

// TestCollectOrphanStartupSets: a startup set whose bootstrap is gone is
// deleted once older than the grace period.
func TestCollectOrphanStartupSets(t *testing.T) {
	w := newWorld(t)
	orphan := store.StartupKey(bootstrap.Sum([]byte("gone")).Hex())
	put(t, w.st, orphan, "# skiff startup set v1\n/x\n")
	live := []converted{w.a, w.b}
	if got := countsOf(w.mustCollect(t, live, time.Hour)); got != (counts{}) || !exists(t, w.st, orphan) {
		t.Fatalf("young orphan: %+v, want it kept", got)
	}
	if got := countsOf(w.mustCollect(t, live, later)); got != (counts{startupsDeleted: 1}) || exists(t, w.st, orphan) {
		t.Fatalf("old orphan: %+v, want it deleted", got)
	}
	checkFinal(t, w.st, w.a, w.b)
}

// TestCollectReferencedBlobMissing: a condemned blob that a bootstrap
// came to reference but that is gone is reported, and its index is not
// restored to advertise chunks that are not there.
func TestCollectReferencedBlobMissing(t *testing.T) {
	w := newWorld(t)
	uniqueA := uniqueBlob(t, w.a, w.b)
	w.view.start(t)
	w.mustCollect(t, []converted{w.b}, later)
	w.mustCollect(t, []converted{w.b}, muchLater)
	a2 := w.convert(t, files{"a.bin": onlyA, "a2.bin": onlyA2})
	if !slices.Contains(a2.blobs(), uniqueA) {
		t.Fatalf("a2 does not use a's blob %s: %v", uniqueA, a2.blobs())
	}
	if err := w.st.Delete(context.Background(), store.BlobKey(uniqueA)); err != nil {
		t.Fatal(err)
	}
	for _, at := range []time.Duration{evenLater, 4 * day} {
		rep := w.mustCollect(t, []converted{w.b, a2}, at)
		if rep.BlobsMissing != 1 || rep.IndexesRestored.Count != 0 {
			t.Errorf("run at +%s: %d blobs missing, %d indexes restored; want 1 and 0", at, rep.BlobsMissing, rep.IndexesRestored.Count)
		}
	}
	if exists(t, w.st, store.IndexKey(uniqueA)) || !exists(t, w.st, store.CondemnedKey(uniqueA)) {
		t.Error("index of a missing blob restored, or its tombstone dropped")
	}
}

// TestCollectPublishedDuringDelete: a conversion publishing the index of
// a condemned blob just as it is deleted is too late to save it, but the
// run says so instead of passing over it.
func TestCollectPublishedDuringDelete(t *testing.T) {
	w := newWorld(t)
	uniqueA := uniqueBlob(t, w.a, w.b)
	index := read(t, w.st, store.IndexKey(uniqueA))
	w.mustCollect(t, []converted{w.b}, later)
	w.mustCollect(t, []converted{w.b}, muchLater)
	h := &hooked{Store: w.st, afterDelete: func(key string) {
		if key == store.BlobKey(uniqueA) {
			put(t, w.st, store.IndexKey(uniqueA), string(index))
		}
	}}
	rep, err := w.collect(t, h, []converted{w.b}, evenLater, 0)
	if err != nil {
		t.Fatal(err)
	}
	if rep.BlobsRaced != 1 || rep.BlobsDeleted.Count != 1 {
		t.Errorf("run: %d blobs raced, %d deleted; want 1 and 1", rep.BlobsRaced, rep.BlobsDeleted.Count)
	}
	if exists(t, w.st, store.BlobKey(uniqueA)) || !exists(t, w.st, store.IndexKey(uniqueA)) {
		t.Error("want the blob deleted and the index published meanwhile left alone")
	}
}

// TestCollectPublishedBeforeCondemn: a blob without an index when listed,
// whose index a conversion publishes before it is condemned, was just
// used: it is kept, with that index, and gets no empty tombstone.
func TestCollectPublishedBeforeCondemn(t *testing.T) {
	w := newWorld(t)
	uniqueA := uniqueBlob(t, w.a, w.b)
	index := read(t, w.st, store.IndexKey(uniqueA))
	w.mustCollect(t, []converted{w.b}, later)
	if err := w.st.Delete(context.Background(), store.IndexKey(uniqueA)); err != nil {
		t.Fatal(err)
	}
	publish := once(func() { put(t, w.st, store.IndexKey(uniqueA), string(index)) })
	h := &hooked{Store: w.st, afterList: func(prefix string) {
		if prefix == store.IndexPrefix {
			publish()
		}
	}}
	rep, err := w.collect(t, h, []converted{w.b}, muchLater, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := countsOf(rep); got != (counts{bootstrapsDeleted: 1, startupsDeleted: 1}) {
		t.Errorf("run: %+v, want a's bootstrap deleted and nothing condemned", got)
	}
	if !bytes.Equal(read(t, w.st, store.IndexKey(uniqueA)), index) || exists(t, w.st, store.CondemnedKey(uniqueA)) {
		t.Error("want the index published kept, and no tombstone")
	}
	checkConsistent(t, w.st)

	// Without an index still, the blob gets an empty tombstone.
	w = newWorld(t)
	uniqueA = uniqueBlob(t, w.a, w.b)
	w.mustCollect(t, []converted{w.b}, later)
	if err := w.st.Delete(context.Background(), store.IndexKey(uniqueA)); err != nil {
		t.Fatal(err)
	}
	if got := countsOf(w.mustCollect(t, []converted{w.b}, muchLater)); got.condemned != 1 {
		t.Fatalf("run: %+v, want the blob without an index condemned", got)
	}
	if len(read(t, w.st, store.CondemnedKey(uniqueA))) != 0 {
		t.Error("tombstone of a blob without an index is not empty")
	}
}

// TestCollectStaleIndex: an index whose blob never arrived (the upload
// failed after the index was published) and that has no tombstone is
// deleted once older than the grace period, not in a dry run.
func TestCollectStaleIndex(t *testing.T) {
	w := newWorld(t)
	key := store.IndexKey(bootstrap.Sum([]byte("never uploaded")).Hex())
	put(t, w.st, key, "an index")
	live := []converted{w.a, w.b}
	if rep := w.mustCollect(t, live, time.Hour); rep.IndexesDeleted.Count != 0 || !exists(t, w.st, key) {
		t.Fatalf("young index: %d deleted, want it kept", rep.IndexesDeleted.Count)
	}
	opts := w.at(later, 0)
	opts.DryRun = true
	rep, err := gc.Collect(context.Background(), w.st, []bootstrap.Digest{w.a.digest, w.b.digest}, opts)
	if err != nil {
		t.Fatal(err)
	}
	if rep.IndexesDeleted.Count != 1 || !exists(t, w.st, key) {
		t.Fatalf("dry run: %d indexes deleted, want 1 reported and it kept", rep.IndexesDeleted.Count)
	}
	rep = w.mustCollect(t, live, later)
	if rep.IndexesDeleted != (gc.Tally{Count: 1, Bytes: int64(len("an index"))}) || exists(t, w.st, key) {
		t.Fatalf("old index: %+v deleted, want it deleted", rep.IndexesDeleted)
	}
	if got := countsOf(rep); got != (counts{}) {
		t.Errorf("run: %+v, want nothing else changed", got)
	}
	checkFinal(t, w.st, w.a, w.b)
}
