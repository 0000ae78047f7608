package gc_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/convert"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/gc"
	"github.com/skiff-dev/skiff/pkg/image"
	"github.com/skiff-dev/skiff/pkg/store"
	"github.com/skiff-dev/skiff/pkg/store/dir"
)

// Contents of the test images. Each file is one chunk of its own frame
// (above the batch size, under the chunk size), so dedup works per file.
var (
	shared = fixture.Random(1, 300<<10)
	onlyA  = fixture.Random(2, 300<<10)
	onlyB  = fixture.Random(3, 300<<10)
	onlyA2 = fixture.Random(4, 300<<10)
)

// files is one layer: path to content.
type files map[string][]byte

// converted is an image converted into the store, with the content every
// file must read back as.
type converted struct {
	digest bootstrap.Digest
	b      *bootstrap.Bootstrap
	files  files
}

func (c converted) blobs() []string {
	var hexes []string
	for _, d := range c.b.Blobs {
		hexes = append(hexes, d.Hex())
	}
	return hexes
}

// world is a store holding two converted images: a (shared.bin in one
// layer, a.bin in another) and b (shared.bin and b.bin in one layer,
// converted after a). a has two blobs; b has one of its own and uses a's
// blob of shared.bin. Every object in it is older than base.
type world struct {
	st   store.Store
	conv *convert.Converter // the converter of a and b, remembering their chunks
	view *startedView       // the store as conv sees it
	a, b converted
	base time.Time
}

func newWorld(t *testing.T) *world {
	t.Helper()
	st, err := dir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	view := &startedView{Store: st}
	w := &world{st: st, view: view, conv: convert.New(view, convert.Options{WorkDir: t.TempDir(), Logger: quiet})}
	w.a = w.convert(t, files{"shared.bin": shared}, files{"a.bin": onlyA})
	w.b = w.convert(t, files{"shared.bin": shared, "b.bin": onlyB})
	sharedBlobs := 0
	for _, hex := range w.a.blobs() {
		if slices.Contains(w.b.blobs(), hex) {
			sharedBlobs++
		}
	}
	if len(w.a.b.Blobs) != 2 || len(w.b.b.Blobs) != 2 || sharedBlobs != 1 {
		t.Fatalf("want a and b with 2 blobs each, one shared: a %v, b %v", w.a.blobs(), w.b.blobs())
	}
	// Node agents record startup sets next to bootstraps.
	for _, c := range []converted{w.a, w.b} {
		put(t, st, store.StartupKey(c.digest.Hex()), "# skiff startup set v1\n/shared.bin\n")
	}
	w.base = time.Now()
	return w
}

var quiet = slog.New(slog.DiscardHandler)

// startedView is the store as a converter sees it. Once started, it lists
// the chunk indexes there were at that moment, whatever happens to them
// after: a conversion that began then and is still running, which found
// its dictionary in those indexes.
type startedView struct {
	store.Store
	indexes []store.Info // nil: not started
}

// start fixes the indexes the view lists from now on.
func (v *startedView) start(t *testing.T) {
	t.Helper()
	v.indexes = []store.Info{}
	if err := v.Store.List(context.Background(), store.IndexPrefix, func(info store.Info) error {
		v.indexes = append(v.indexes, info)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func (v *startedView) List(ctx context.Context, prefix string, fn func(store.Info) error) error {
	if v.indexes == nil || prefix != store.IndexPrefix {
		return v.Store.List(ctx, prefix, fn)
	}
	for _, info := range v.indexes {
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// convert converts an image of the given layers with c, the world's
// converter unless given.
func (w *world) convert(t *testing.T, layers ...files) converted {
	t.Helper()
	return convertWith(t, w.conv, layers...)
}

func convertWith(t *testing.T, c *convert.Converter, layers ...files) converted {
	t.Helper()
	var ls []v1.Layer
	all := files{}
	for _, fs := range layers {
		var entries []fixture.Entry
		for _, name := range slices.Sorted(maps.Keys(fs)) {
			entries = append(entries, fixture.File(name, 0o644, string(fs[name])))
			all[name] = fs[name]
		}
		l, err := fixture.Layer(fixture.Gzip, entries)
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	img, err := fixture.Image(ls...)
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Convert(context.Background(), img)
	if err != nil {
		t.Fatal(err)
	}
	return converted{digest: res.Bootstrap, b: manifestBootstrap(t, res), files: all}
}

// manifestBootstrap decodes the bootstrap that the Skiff manifest of a
// conversion carries, as a node would get it.
func manifestBootstrap(t *testing.T, res *convert.Result) *bootstrap.Bootstrap {
	t.Helper()
	b, _, err := image.ImageBootstrap(res.Image)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (w *world) at(d time.Duration, grace time.Duration) gc.Options {
	return gc.Options{Grace: grace, Now: func() time.Time { return w.base.Add(d) }, Logger: quiet}
}

func (w *world) collect(t *testing.T, st store.Store, live []converted, d time.Duration, grace time.Duration) (*gc.Report, error) {
	t.Helper()
	var ds []bootstrap.Digest
	for _, c := range live {
		ds = append(ds, c.digest)
	}
	return gc.Collect(context.Background(), st, ds, w.at(d, grace))
}

func (w *world) mustCollect(t *testing.T, live []converted, d time.Duration) *gc.Report {
	t.Helper()
	rep, err := w.collect(t, w.st, live, d, 0)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func put(t *testing.T, st store.Store, key, data string) {
	t.Helper()
	if err := st.Put(context.Background(), key, strings.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
}

func exists(t *testing.T, st store.Store, key string) bool {
	t.Helper()
	_, err := st.Stat(context.Background(), key)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	return err == nil
}

func read(t *testing.T, st store.Store, key string) []byte {
	t.Helper()
	data, err := store.ReadAll(context.Background(), st, key, bootstrap.MaxRawSize)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// keys lists the hex names under prefix.
func keys(t *testing.T, st store.Store, prefix string) []string {
	t.Helper()
	var out []string
	err := st.List(context.Background(), prefix, func(info store.Info) error {
		out = append(out, strings.TrimPrefix(info.Key, prefix))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// object is everything observable about a stored object.
type object struct {
	size    int64
	modTime time.Time
	sum     [32]byte
}

// snapshot lists the whole store with each object's content digest.
func snapshot(t *testing.T, st store.Store) map[string]object {
	t.Helper()
	objs := map[string]object{}
	err := st.List(context.Background(), "", func(info store.Info) error {
		objs[info.Key] = object{info.Size, info.ModTime, sha256.Sum256(read(t, st, info.Key))}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// verifyImage reads every file of c back through its bootstrap, as stored,
// and every frame through fetch.Verify.
func verifyImage(t *testing.T, st store.Store, c converted) {
	t.Helper()
	b, err := bootstrap.Decode(read(t, st, store.BootstrapKey(c.digest.Hex())))
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range c.files {
		ino, ok := b.LookupPath(name)
		if !ok {
			t.Fatalf("image %s has no %s", c.digest, name)
		}
		if got := readFile(t, st, b, ino); !bytes.Equal(got, want) {
			t.Fatalf("image %s: %s reads back %d bytes that differ from the %d written", c.digest, name, len(got), len(want))
		}
	}
	rep, err := fetch.Verify(context.Background(), b, fetch.NewStoreSource("store", st), fetch.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Bad) > 0 {
		t.Fatalf("image %s: %d bad chunks, first: %v", c.digest, len(rep.Bad), rep.Bad[0].Err)
	}
}

// readFile reads a file through the node's fetch path, straight from the
// store: every chunk checked against its digest.
func readFile(t *testing.T, st store.Store, b *bootstrap.Bootstrap, ino uint32) []byte {
	t.Helper()
	f := fetch.New(nil, []fetch.Source{fetch.NewStoreSource("store", st)})
	var out []byte
	for _, ci := range b.FileChunks(ino) {
		data, err := f.ReadChunk(context.Background(), b, ci)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, data...)
	}
	return out
}

// checkConsistent fails unless every bootstrap in the store finds every
// blob it references: what no failure of a collection may break.
func checkConsistent(t *testing.T, st store.Store) {
	t.Helper()
	for _, name := range keys(t, st, store.BootstrapPrefix) {
		if strings.HasSuffix(name, ".startup") {
			continue
		}
		b, err := bootstrap.Decode(read(t, st, store.BootstrapKey(name)))
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range b.Blobs {
			if !exists(t, st, store.BlobKey(d.Hex())) {
				t.Fatalf("bootstrap %s references blob %s, which is gone", name, d)
			}
		}
	}
}

// checkFinal fails unless the store holds exactly the live images: their
// bootstraps and startup sets, their blobs each with its index, and no
// tombstone; and every live image reads back intact.
func checkFinal(t *testing.T, st store.Store, live ...converted) {
	t.Helper()
	checkConsistent(t, st)
	var wantBoots, wantBlobs []string
	for _, c := range live {
		wantBoots = append(wantBoots, c.digest.Hex())
		wantBlobs = append(wantBlobs, c.blobs()...)
	}
	var gotBoots []string
	for _, name := range keys(t, st, store.BootstrapPrefix) {
		if hex, ok := strings.CutSuffix(name, ".startup"); ok {
			if !slices.Contains(wantBoots, hex) {
				t.Errorf("startup set of dead bootstrap %s kept", hex)
			}
			continue
		}
		gotBoots = append(gotBoots, name)
	}
	if want := sortedSet(wantBoots); !slices.Equal(gotBoots, want) {
		t.Errorf("bootstraps %v, want %v", gotBoots, want)
	}
	if got, want := keys(t, st, store.BlobPrefix), sortedSet(wantBlobs); !slices.Equal(got, want) {
		t.Errorf("blobs %v, want %v", got, want)
	}
	if got, want := keys(t, st, store.IndexPrefix), sortedSet(wantBlobs); !slices.Equal(got, want) {
		t.Errorf("indexes %v, want %v", got, want)
	}
	if got := keys(t, st, store.CondemnedPrefix); len(got) > 0 {
		t.Errorf("tombstones left: %v", got)
	}
	if got := keys(t, st, store.DeadPrefix); len(got) > 0 {
		t.Errorf("dead-bootstrap tombstones left: %v", got)
	}
	for _, c := range live {
		verifyImage(t, st, c)
	}
}

func sortedSet(s []string) []string {
	s = slices.Clone(s)
	sort.Strings(s)
	return slices.Compact(s)
}

// counts is the part of a report the tests pin down exactly.
type counts struct {
	marked, bootstrapsPending, revived, bootstrapsDeleted, startupsDeleted, condemned, pending, deleted, restored, missing int
}

func countsOf(r *gc.Report) counts {
	return counts{r.BootstrapsMarked.Count, r.BootstrapsPending.Count, r.BootstrapsRevived.Count, r.BootstrapsDeleted.Count, r.StartupSetsDeleted.Count,
		r.BlobsCondemned.Count, r.BlobsPending.Count, r.BlobsDeleted.Count, r.IndexesRestored.Count, r.LiveMissing}
}

// Every object, tombstones included, is written at about base, so each of
// these times is past the grace period of all of them: runs at them mark
// dead bootstraps, delete them and condemn their blobs, and delete the
// blobs.
const (
	day       = 24 * time.Hour
	later     = day + time.Hour
	muchLater = 2*day + time.Hour
	evenLater = 3*day + time.Hour
)

// TestCollect: which images stay live decides exactly which bootstraps and
// blobs go, over the three runs a grace period apart that an unused blob
// needs (its bootstrap marked dead, deleted, then the blob condemned and
// deleted); images kept live still read back byte for byte, shared chunks
// included.
func TestCollect(t *testing.T) {
	tests := []struct {
		name string
		live func(w *world) []converted
		at   [3]time.Duration
		want [3]counts
		kept func(w *world) []converted
	}{
		{
			name: "both live",
			live: func(w *world) []converted { return []converted{w.a, w.b} },
			at:   [3]time.Duration{later, muchLater, evenLater},
			kept: func(w *world) []converted { return []converted{w.a, w.b} },
		},
		{
			name: "a dropped keeps the blob b shares",
			live: func(w *world) []converted { return []converted{w.b} },
			at:   [3]time.Duration{later, muchLater, evenLater},
			want: [3]counts{{marked: 1}, {bootstrapsDeleted: 1, startupsDeleted: 1, condemned: 1}, {deleted: 1}},
			kept: func(w *world) []converted { return []converted{w.b} },
		},
		{
			name: "b dropped",
			live: func(w *world) []converted { return []converted{w.a} },
			at:   [3]time.Duration{later, muchLater, evenLater},
			want: [3]counts{{marked: 1}, {bootstrapsDeleted: 1, startupsDeleted: 1, condemned: 1}, {deleted: 1}},
			kept: func(w *world) []converted { return []converted{w.a} },
		},
		{
			name: "nothing live",
			live: func(w *world) []converted { return nil },
			at:   [3]time.Duration{later, muchLater, evenLater},
			want: [3]counts{{marked: 2}, {bootstrapsDeleted: 2, startupsDeleted: 2, condemned: 3}, {deleted: 3}},
			kept: func(w *world) []converted { return nil },
		},
		{
			name: "nothing old enough",
			live: func(w *world) []converted { return nil },
			at:   [3]time.Duration{time.Hour, 2 * time.Hour, 3 * time.Hour},
			kept: func(w *world) []converted { return []converted{w.a, w.b} },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			for run, at := range tt.at {
				if got := countsOf(w.mustCollect(t, tt.live(w), at)); got != tt.want[run] {
					t.Errorf("run %d: %+v, want %+v", run+1, got, tt.want[run])
				}
				checkConsistent(t, w.st)
			}
			checkFinal(t, w.st, tt.kept(w)...)
		})
	}
}

// TestCollectBytes: the report's bytes are the stored sizes of what went.
func TestCollectBytes(t *testing.T) {
	w := newWorld(t)
	var uniqueA string
	for _, hex := range w.a.blobs() {
		if !slices.Contains(w.b.blobs(), hex) {
			uniqueA = hex
		}
	}
	info, err := w.st.Stat(context.Background(), store.BlobKey(uniqueA))
	if err != nil {
		t.Fatal(err)
	}
	boot, err := w.st.Stat(context.Background(), store.BootstrapKey(w.a.digest.Hex()))
	if err != nil {
		t.Fatal(err)
	}
	r := w.mustCollect(t, []converted{w.b}, later)
	if r.BootstrapsMarked != (gc.Tally{Count: 1, Bytes: boot.Size}) || r.BootstrapsKept.Count != 1 || r.BlobsKept.Count != 3 {
		t.Errorf("first run marked %+v (want 1, %d bytes), kept %d bootstraps and %d blobs (want 1 and 3)", r.BootstrapsMarked, boot.Size, r.BootstrapsKept.Count, r.BlobsKept.Count)
	}
	r = w.mustCollect(t, []converted{w.b}, muchLater)
	if r.BlobsCondemned != (gc.Tally{Count: 1, Bytes: info.Size}) || r.BootstrapsDeleted != (gc.Tally{Count: 1, Bytes: boot.Size}) {
		t.Errorf("second run condemned %+v (want 1, %d bytes), deleted bootstraps %+v (want 1, %d bytes)", r.BlobsCondemned, info.Size, r.BootstrapsDeleted, boot.Size)
	}
	if r.BlobsKept.Count != 2 || r.BootstrapsKept.Count != 1 {
		t.Errorf("second run kept %d blobs and %d bootstraps, want 2 and 1", r.BlobsKept.Count, r.BootstrapsKept.Count)
	}
	r = w.mustCollect(t, []converted{w.b}, evenLater)
	if r.BlobsDeleted != (gc.Tally{Count: 1, Bytes: info.Size}) {
		t.Errorf("third run deleted %+v, want 1 blob of %d bytes", r.BlobsDeleted, info.Size)
	}
}

// TestCollectGrace: nothing younger than the grace period is marked dead,
// condemned or deleted, and a marked bootstrap or condemned blob waits a
// whole grace period, whatever the period is.
func TestCollectGrace(t *testing.T) {
	w := newWorld(t)
	live := []converted{w.b}
	steps := []struct {
		at, grace time.Duration
		want      counts
	}{
		{at: 23 * time.Hour}, // default grace: a is not old enough yet
		{at: 2 * time.Hour, grace: time.Hour, want: counts{marked: 1}},
		{at: 23 * time.Hour, want: counts{bootstrapsPending: 1}},
		{at: 30 * time.Minute, grace: time.Hour, want: counts{bootstrapsPending: 1}},
		{at: 2 * time.Hour, grace: time.Hour, want: counts{bootstrapsDeleted: 1, startupsDeleted: 1, condemned: 1}},
		{at: 23 * time.Hour, want: counts{pending: 1}},
		{at: 30 * time.Minute, grace: time.Hour, want: counts{pending: 1}},
		{at: 2 * time.Hour, grace: time.Hour, want: counts{deleted: 1}},
	}
	for i, s := range steps {
		rep, err := w.collect(t, w.st, live, s.at, s.grace)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if got := countsOf(rep); got != s.want {
			t.Fatalf("step %d (at +%s, grace %s): %+v, want %+v", i, s.at, s.grace, got, s.want)
		}
		checkConsistent(t, w.st)
	}
	checkFinal(t, w.st, w.b)

	if _, err := gc.Collect(context.Background(), w.st, nil, gc.Options{Grace: -time.Second}); err == nil || !strings.Contains(err.Error(), "grace") {
		t.Errorf("negative grace: %v, want an error", err)
	}
}

// TestCollectReprieve: a condemned blob that a conversion started before
// the condemnation came to reference gets its index back, byte for byte,
// instead of being deleted; one a conversion produced again (and so
// published again) is reprieved as well.
func TestCollectReprieve(t *testing.T) {
	t.Run("referenced again", func(t *testing.T) {
		w := newWorld(t)
		uniqueA := uniqueBlob(t, w.a, w.b)
		index := read(t, w.st, store.IndexKey(uniqueA))
		w.view.start(t)
		w.mustCollect(t, []converted{w.b}, later)
		if got := countsOf(w.mustCollect(t, []converted{w.b}, muchLater)); got.condemned != 1 {
			t.Fatalf("second run: %+v, want a's own blob condemned", got)
		}
		if exists(t, w.st, store.IndexKey(uniqueA)) || !exists(t, w.st, store.CondemnedKey(uniqueA)) || !exists(t, w.st, store.BlobKey(uniqueA)) {
			t.Fatal("condemned blob: want its blob and tombstone, not its index")
		}
		// A conversion that read a's index before it was condemned
		// dedups a.bin into a's blob.
		a2 := w.convert(t, files{"a.bin": onlyA, "a2.bin": onlyA2})
		if !slices.Contains(a2.blobs(), uniqueA) {
			t.Fatalf("a2 does not use a's blob %s: %v", uniqueA, a2.blobs())
		}
		got := countsOf(w.mustCollect(t, []converted{w.b, a2}, evenLater))
		if want := (counts{restored: 1}); got != want {
			t.Fatalf("third run: %+v, want %+v", got, want)
		}
		if !bytes.Equal(read(t, w.st, store.IndexKey(uniqueA)), index) {
			t.Fatal("restored index differs from the one condemned")
		}
		checkFinal(t, w.st, w.b, a2)
	})
	t.Run("published again", func(t *testing.T) {
		w := newWorld(t)
		uniqueA := uniqueBlob(t, w.a, w.b)
		w.mustCollect(t, []converted{w.b}, later)
		w.mustCollect(t, []converted{w.b}, muchLater)
		// A converter started after the condemnation does not dedup
		// against a's blob, but converting a again makes the same
		// blob, which it finds stored and publishes the index of.
		convertWith(t, convert.New(w.st, convert.Options{WorkDir: t.TempDir(), Logger: quiet}), files{"shared.bin": shared}, files{"a.bin": onlyA})
		if !exists(t, w.st, store.IndexKey(uniqueA)) || !exists(t, w.st, store.CondemnedKey(uniqueA)) {
			t.Fatalf("converting a again did not publish the index of its blob %s next to its tombstone", uniqueA)
		}
		// The new image is not pushed (yet): its bootstrap is old by
		// now and is marked dead, but the blob it made is not deleted
		// under it.
		got := countsOf(w.mustCollect(t, []converted{w.b}, evenLater))
		if want := (counts{marked: 1, restored: 1}); got != want {
			t.Fatalf("third run: %+v, want %+v", got, want)
		}
		if !exists(t, w.st, store.BlobKey(uniqueA)) || !exists(t, w.st, store.IndexKey(uniqueA)) || exists(t, w.st, store.CondemnedKey(uniqueA)) {
			t.Fatal("a blob published again was not reprieved")
		}
		checkConsistent(t, w.st)
		// Still unused a grace period later, it is condemned anew
		// with the bootstrap.
		if got := countsOf(w.mustCollect(t, []converted{w.b}, 4*day)); got != (counts{bootstrapsDeleted: 1, condemned: 1}) {
			t.Fatalf("fourth run: %+v, want the bootstrap deleted and the blob condemned again", got)
		}
	})
}

func uniqueBlob(t *testing.T, of, other converted) string {
	t.Helper()
	for _, hex := range of.blobs() {
		if !slices.Contains(other.blobs(), hex) {
			return hex
		}
	}
	t.Fatal("no blob of its own")
	return ""
}

// TestCollectDryRun: a dry run changes nothing in the store, down to
// modification times, and reports exactly what the real run then does.
func TestCollectDryRun(t *testing.T) {
	w := newWorld(t)
	live := []converted{w.b}
	for _, at := range []time.Duration{later, muchLater, evenLater} {
		before := snapshot(t, w.st)
		opts := w.at(at, 0)
		opts.DryRun = true
		dry, err := gc.Collect(context.Background(), w.st, []bootstrap.Digest{w.b.digest}, opts)
		if err != nil {
			t.Fatal(err)
		}
		if after := snapshot(t, w.st); !reflect.DeepEqual(before, after) {
			t.Fatalf("dry run at +%s changed the store:\nbefore %v\nafter  %v", at, slices.Sorted(maps.Keys(before)), slices.Sorted(maps.Keys(after)))
		}
		if !dry.DryRun {
			t.Error("dry-run report does not say so")
		}
		real := w.mustCollect(t, live, at)
		dry.DryRun = false
		if !reflect.DeepEqual(dry, real) {
			t.Errorf("at +%s the dry run reported\n%+v\nand the real run did\n%+v", at, dry, real)
		}
		if *real == (gc.Report{BootstrapsKept: real.BootstrapsKept, BlobsKept: real.BlobsKept}) {
			t.Errorf("at +%s nothing was collected: the test proves nothing", at)
		}
	}
	checkFinal(t, w.st, w.b)
}

var errInjected = errors.New("injected store failure")

// failing is a store whose Put or Delete fails for the keys fail picks.
type failing struct {
	store.Store
	fail func(op, key string) bool
}

func (f failing) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if f.fail("put", key) {
		return errInjected
	}
	return f.Store.Put(ctx, key, r, size)
}

func (f failing) Delete(ctx context.Context, key string) error {
	if f.fail("delete", key) {
		return errInjected
	}
	return f.Store.Delete(ctx, key)
}

// TestCollectStoreErrors: a store failing a write anywhere in a run makes
// Collect return an error naming the operation, leaves every bootstrap
// with all its blobs, and later runs on a healthy store finish the job.
func TestCollectStoreErrors(t *testing.T) {
	tests := []struct {
		name   string
		op     string
		prefix string // keys failing; a trailing ".startup" selects startup sets
		run    int    // 1: marking run; 2: bootstrap-deleting and condemning run; 3: blob-deleting run
		reuse  bool   // a conversion references a's condemned blob before the third run
		wantOp string
	}{
		{name: "mark bootstrap", op: "put", prefix: store.DeadPrefix, run: 1, wantOp: "write tombstone"},
		{name: "startup set", op: "delete", prefix: ".startup", run: 2, wantOp: "delete startup set"},
		{name: "bootstrap", op: "delete", prefix: store.BootstrapPrefix, run: 2, wantOp: "delete bootstrap"},
		{name: "dead tombstone delete", op: "delete", prefix: store.DeadPrefix, run: 2, wantOp: "delete tombstone of deleted bootstrap"},
		{name: "tombstone write", op: "put", prefix: store.CondemnedPrefix, run: 2, wantOp: "write tombstone"},
		{name: "index delete", op: "delete", prefix: store.IndexPrefix, run: 2, wantOp: "delete index"},
		{name: "blob delete", op: "delete", prefix: store.BlobPrefix, run: 3, wantOp: "delete blob"},
		{name: "tombstone delete", op: "delete", prefix: store.CondemnedPrefix, run: 3, wantOp: "delete tombstone"},
		{name: "index restore", op: "put", prefix: store.IndexPrefix, run: 3, reuse: true, wantOp: "restore index"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			broken := failing{w.st, func(op, key string) bool {
				if op != tt.op {
					return false
				}
				if tt.prefix == ".startup" {
					return strings.HasSuffix(key, ".startup")
				}
				return strings.HasPrefix(key, tt.prefix) && !strings.HasSuffix(key, ".startup")
			}}
			live := []converted{w.b}
			if tt.reuse {
				w.view.start(t)
			}
			for run, at := range []time.Duration{later, muchLater, evenLater} {
				if run == 2 && tt.reuse {
					live = append(live, w.convert(t, files{"a.bin": onlyA, "a2.bin": onlyA2}))
				}
				st := w.st
				if run+1 == tt.run {
					st = broken
				}
				_, err := w.collect(t, st, live, at, 0)
				switch {
				case run+1 != tt.run && err != nil:
					t.Fatalf("run %d on a healthy store: %v", run+1, err)
				case run+1 == tt.run && (!errors.Is(err, errInjected) || !strings.Contains(err.Error(), tt.wantOp)):
					t.Fatalf("run %d: error %v, want the injected failure and %q", run+1, err, tt.wantOp)
				}
				checkConsistent(t, w.st)
			}
			// Healthy again: marking, deleting and condemning finish.
			for _, at := range []time.Duration{4*day + time.Hour, 5*day + time.Hour, 6*day + time.Hour} {
				w.mustCollect(t, live, at)
			}
			checkFinal(t, w.st, live...)
		})
	}
}
