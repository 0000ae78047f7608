// Package gc deletes from a blob store what no live Skiff image needs any
// more: bootstraps of images gone from the registries, their startup sets,
// and chunk-data blobs that no remaining bootstrap references.
//
// The store has no transactions and no locks, and conversions run while
// the collector does. A converter deduplicates against every chunk index it
// finds under store.IndexPrefix when a conversion starts, uploads new
// blobs, and writes the bootstrap naming all of them only at the very end.
// So a blob that no bootstrap references now may be referenced by a
// bootstrap written minutes from now, and deleting it at once could leave
// that image pointing at nothing. Collection therefore works in two phases,
// a grace period (default 24h, longer than any conversion) apart:
//
//   - condemn: the index of an unreferenced blob is moved to a tombstone
//     (store.CondemnedKey), so no conversion starting from then on can
//     dedup against the blob; the blob itself stays.
//   - delete: once the tombstone is older than the grace period, every
//     bootstrap in the store is read again. A blob still unreferenced is
//     deleted, then its tombstone. A blob that a conversion started before
//     the condemnation came to use gets its index back instead.
//
// Bootstraps go in two phases too, because the live set is no snapshot: it
// comes from registry scans that race with pushes (a manifest copied to a
// new repository and deleted from the old one while the scan runs is seen
// in neither), and a conversion may write the very same bootstrap again
// at any time, for an image about to be pushed.
//
//   - mark: a bootstrap that no scanned image names and that is older than
//     the grace period gets a tombstone (store.DeadKey) recording its size
//     and modification time. It stays in the store, and so do its blobs,
//     which it still references.
//   - delete: once the tombstone is older than the grace period, a
//     bootstrap that this run's scan does not find live either is deleted
//     with its startup set, unless a fresh Stat shows it written again
//     since it was marked. A bootstrap live again, or written again, loses
//     its tombstone instead.
//
// The grace period also shields what is being made: bootstraps younger
// than it (converted, not pushed yet) count as live, and so do blobs whose
// blob or index object is younger than it (uploaded or republished by a
// conversion whose bootstrap is not written yet). Ages come from the
// objects' modification times, which the store stamps with its own clock
// (an S3 server's, not the collector's): a run starts by writing
// store.ClockKey and takes its modification time as now, so that a
// collector whose clock runs ahead cannot make young objects look old. A
// dry run writes nothing, so it measures with the local clock and says so.
//
// Bootstraps are deleted before blobs are judged, so that the blobs of a
// deleted image become garbage in the same run. Every change is ordered so
// that a run failing anywhere leaves a store in which each bootstrap still
// finds all its blobs, and the next run carries on.
//
// A live image whose bootstrap the store does not hold (converted into
// another store, or lost) still keeps the blobs its bootstrap names here:
// Options.ReadMissing reads that bootstrap from where the image is, and
// without it such a run fails before it marks, condemns or deletes
// anything. If every blob it names is here, the bootstrap is written back
// (checked against its digest first): a conversion can write a dead
// bootstrap again in the moment between a run's last look at it and its
// deletion, and the image pushed then would otherwise lack it for good.
//
// A container reads its image's chunks from the store for as long as it
// runs, whether a registry still names the image or not. So node agents
// keep a lease (store.LeaseKey) on every bootstrap they have mounted,
// written again every LeaseRefresh: a bootstrap with a lease younger than
// LeaseTTL is live for a run just as if a registry named it, except that
// one the store lacks is only counted, as a lease does not say where it
// is. A lease older than LeaseTTL was left by an agent gone without
// deleting it, and is deleted.
//
// Indexes are published before their blobs are uploaded, so an upload
// that fails leaves an index naming nothing; once older than the grace
// period, and with no tombstone, such an index is deleted.
//
// This relies on two things outside the package: one collector runs at a
// time per store, and a converter takes its dedup dictionary from the
// indexes present when each conversion starts, never from a memory of
// indexes that have since been condemned.
package gc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/store"
)

// DefaultGrace is the grace period when Options.Grace is zero: far longer
// than any conversion, and short enough that a store does not hold a
// deleted image's data for long.
const DefaultGrace = 24 * time.Hour

// Options tune Collect.
type Options struct {
	// Grace is how old an object must be before it can be marked dead or
	// condemned, and how long a marked bootstrap or condemned blob waits
	// before it is deleted; zero means DefaultGrace.
	Grace time.Duration
	// DryRun reports what a run would do and changes nothing.
	DryRun bool
	// Now replaces the store's clock (see the package doc); tests move it
	// instead of sleeping through grace periods.
	Now func() time.Time
	// ReadMissing reads a live bootstrap that the store does not hold
	// from where its image is, so that the blobs it names here are kept.
	// Nil: a run finding such a bootstrap fails before it marks, condemns
	// or deletes anything.
	ReadMissing func(ctx context.Context, d bootstrap.Digest) (*bootstrap.Bootstrap, error)
	// Concurrency bounds the store requests in flight; default 8.
	Concurrency int
	// Logger receives a line per object changed at debug level and a
	// summary at info; default slog.Default().
	Logger *slog.Logger
}

// Tally counts objects and their bytes.
type Tally struct {
	Count int
	Bytes int64
}

func (t *Tally) add(n int64) {
	t.Count++
	t.Bytes += n
}

// Report says what a Collect run did, or with Options.DryRun would do.
// Bytes are the stored sizes of the objects named.
type Report struct {
	DryRun bool
	// LiveMissing counts live bootstraps the store does not hold: the
	// registries name images converted into another store, or data was
	// lost. The blobs they name were kept all the same.
	LiveMissing int
	// BootstrapsRestored are live bootstraps missing from the store,
	// read with Options.ReadMissing and written back because the store
	// holds every blob they name; counted in LiveMissing too.
	BootstrapsRestored Tally
	// BootstrapsKept are live or younger than the grace period, those
	// revived included.
	BootstrapsKept Tally
	// BootstrapsMarked were marked dead in this run.
	BootstrapsMarked Tally
	// BootstrapsPending were marked dead less than the grace period ago
	// and are still not live.
	BootstrapsPending Tally
	BootstrapsDeleted Tally
	// BootstrapsRevived were marked dead, and found live again or written
	// again by a conversion: their tombstone went.
	BootstrapsRevived Tally
	// StartupSetsDeleted went with their bootstraps, or had lost theirs.
	StartupSetsDeleted Tally
	// BlobsKept are referenced, or too young to judge.
	BlobsKept Tally
	// BlobsCondemned lost their index in this run.
	BlobsCondemned Tally
	// BlobsPending were condemned less than the grace period ago and
	// are still unreferenced.
	BlobsPending Tally
	BlobsDeleted Tally
	// BlobsRaced were deleted while a conversion published their index
	// again: an image converted then may lack them. Each is logged as an
	// error; counted in BlobsDeleted too.
	BlobsRaced int
	// IndexesRestored are indexes of condemned blobs that came back into
	// use, counted with the tombstone's size.
	IndexesRestored Tally
	// BlobsMissing counts blobs that bootstraps in the store reference
	// and the store does not hold: damage that collection did not cause,
	// reported so that it is seen.
	BlobsMissing int
	// IndexesDeleted had no blob and no tombstone, and were older than
	// the grace period: left by uploads that failed after their index
	// was published.
	IndexesDeleted Tally
	// LeasesLive counts the bootstraps that no registry named and that
	// a node agent's lease younger than LeaseTTL kept live: images
	// still running somewhere. Those the store does not hold are
	// counted too, and logged; the blobs they name are unknown.
	LeasesLive int
	// LeasesDeleted were older than LeaseTTL: left by node agents gone
	// without deleting them.
	LeasesDeleted Tally
}

// Collect collects garbage in st, keeping the images whose bootstrap
// digests are in live and those a node agent holds a fresh lease on: it
// deletes the bootstraps marked dead a grace period ago and still dead,
// marks those newly dead, deletes blobs condemned at least a grace period
// ago that are still unreferenced (restoring the index of those
// referenced again), and condemns blobs newly unreferenced. On error the report counts what was done before it.
func Collect(ctx context.Context, st store.Store, live []bootstrap.Digest, opts Options) (*Report, error) {
	if opts.Grace < 0 {
		return nil, fmt.Errorf("gc: negative grace period %s", opts.Grace)
	}
	if opts.Grace == 0 {
		opts.Grace = DefaultGrace
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 8
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	c := &collector{
		st:   st,
		opts: opts,
		log:  opts.Logger.With("dry_run", opts.DryRun),
		rep:  &Report{DryRun: opts.DryRun},
	}
	liveHex := make(map[string]bootstrap.Digest, len(live))
	for _, d := range live {
		liveHex[d.Hex()] = d
	}
	if err := c.run(ctx, liveHex); err != nil {
		return c.report(), err
	}
	r := c.report()
	c.log.Info("gc: done",
		"bootstraps_marked", r.BootstrapsMarked.Count, "bootstraps_deleted", r.BootstrapsDeleted.Count, "bootstraps_revived", r.BootstrapsRevived.Count,
		"blobs_condemned", r.BlobsCondemned.Count, "blobs_deleted", r.BlobsDeleted.Count,
		"bytes_deleted", r.BlobsDeleted.Bytes+r.BootstrapsDeleted.Bytes+r.StartupSetsDeleted.Bytes,
		"indexes_restored", r.IndexesRestored.Count, "blobs_pending", r.BlobsPending.Count,
		"bootstraps_restored", r.BootstrapsRestored.Count, "indexes_deleted", r.IndexesDeleted.Count, "blobs_raced", r.BlobsRaced,
		"leases_live", r.LeasesLive, "leases_deleted", r.LeasesDeleted.Count)
	return r, nil
}

type collector struct {
	st   store.Store
	opts Options
	now  time.Time
	log  *slog.Logger

	mu  sync.Mutex // guards rep
	rep *Report
}

func (c *collector) report() *Report {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := *c.rep
	return &r
}

func (c *collector) count(fn func(r *Report)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fn(c.rep)
}

func (c *collector) old(t time.Time) bool { return c.now.Sub(t) >= c.opts.Grace }

func (c *collector) run(ctx context.Context, live map[string]bootstrap.Digest) error {
	// One instant for the whole run, taken before anything is listed:
	// objects written while it runs only ever look younger than they are.
	now, err := c.clock(ctx)
	if err != nil {
		return err
	}
	c.now = now
	boots, err := c.listBootstraps(ctx)
	if err != nil {
		return err
	}
	// Before any change: without the blobs of every live bootstrap, no
	// blob can be judged.
	read, err := c.liveMissing(ctx, live, boots.boots)
	if err != nil {
		return err
	}
	// Listed as late as possible before bootstraps are judged, and after
	// the run has checked everything it needs before a change.
	kept, err := c.leases(ctx, live, boots.boots)
	if err != nil {
		return err
	}
	gone, err := c.sweepBootstraps(ctx, kept, boots)
	if err != nil {
		return err
	}
	// Listed after the bootstraps are read: every blob a bootstrap read
	// here names was uploaded before it, so a referenced blob absent from
	// this listing is really missing.
	refs, err := c.references(ctx, gone)
	if err != nil {
		return err
	}
	blobs, err := c.list(ctx, store.BlobPrefix)
	if err != nil {
		return err
	}
	indexes, err := c.list(ctx, store.IndexPrefix)
	if err != nil {
		return err
	}
	tombstones, err := c.list(ctx, store.CondemnedPrefix)
	if err != nil {
		return err
	}
	for hex := range refs {
		if _, ok := blobs[hex]; !ok {
			c.log.Error("gc: a bootstrap references a missing blob", "blob", hex)
			c.count(func(r *Report) { r.BlobsMissing++ })
		}
	}
	// The blobs of bootstraps held elsewhere need not be here, but those
	// that are stay.
	for _, b := range read {
		for _, d := range b.Blobs {
			refs[d.Hex()] = true
		}
	}
	if err := c.restoreBootstraps(ctx, live, read, blobs); err != nil {
		return err
	}
	if err := c.settle(ctx, refs, blobs, indexes, tombstones); err != nil {
		return err
	}
	if err := c.condemn(ctx, refs, blobs, indexes, tombstones); err != nil {
		return err
	}
	return c.dropStaleIndexes(ctx, blobs, indexes, tombstones)
}

// clock returns the run's now: Options.Now if set, else the modification
// time the store gives store.ClockKey when it is written. A dry run
// writes nothing, so it takes the local clock instead and warns that the
// ages it reports are only as good as that clock's agreement with the
// store's.
func (c *collector) clock(ctx context.Context) (time.Time, error) {
	if c.opts.Now != nil {
		return c.opts.Now(), nil
	}
	local := time.Now()
	if c.opts.DryRun {
		c.log.Warn("gc: dry run: ages are measured with this machine's clock, not the store's as in a real run")
		return local, nil
	}
	// What is written does not matter; the local time helps to see skew.
	data := []byte(local.UTC().Format(time.RFC3339Nano) + "\n")
	if err := c.st.Put(ctx, store.ClockKey, bytes.NewReader(data), int64(len(data))); err != nil {
		return time.Time{}, fmt.Errorf("gc: read the store's clock: write %s: %w", store.ClockKey, err)
	}
	// Listed rather than Stat'ed: ages compare now with listed times,
	// which S3 gives to the millisecond and its Stat to the second.
	var info store.Info
	err := c.st.List(ctx, store.ClockKey, func(i store.Info) error {
		if i.Key == store.ClockKey {
			info = i
		}
		return nil
	})
	if err == nil && info.Key == "" {
		err = store.ErrNotFound
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("gc: read the store's clock: list %s: %w", store.ClockKey, err)
	}
	if skew := info.ModTime.Sub(local); skew > time.Minute || skew < -time.Minute {
		c.log.Warn("gc: the store's clock differs from this machine's; ages are measured with the store's", "skew", skew.Round(time.Second))
	}
	return info.ModTime, nil
}

// list returns the objects under prefix whose name is a sha256 hex
// digest, by that hex. Other keys are not Skiff's to judge.
func (c *collector) list(ctx context.Context, prefix string) (map[string]store.Info, error) {
	objs := map[string]store.Info{}
	err := c.st.List(ctx, prefix, func(info store.Info) error {
		if hex := strings.TrimPrefix(info.Key, prefix); validHex(hex) {
			objs[hex] = info
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("gc: list %s: %w", prefix, err)
	}
	return objs, nil
}

func validHex(s string) bool {
	_, err := bootstrap.ParseDigest("sha256:" + s)
	return err == nil
}

// bootstrapObjects are the bootstraps, startup sets and dead-bootstrap
// tombstones of a store, by hex digest.
type bootstrapObjects struct {
	boots, startups, dead map[string]store.Info
}

func (c *collector) listBootstraps(ctx context.Context) (*bootstrapObjects, error) {
	o := &bootstrapObjects{boots: map[string]store.Info{}, startups: map[string]store.Info{}}
	err := c.st.List(ctx, store.BootstrapPrefix, func(info store.Info) error {
		name := strings.TrimPrefix(info.Key, store.BootstrapPrefix)
		if hex, ok := strings.CutSuffix(name, store.StartupSuffix); ok && validHex(hex) {
			o.startups[hex] = info
		} else if validHex(name) {
			o.boots[name] = info
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("gc: list bootstraps: %w", err)
	}
	// Listed after the bootstraps: a tombstone written meanwhile (by no
	// one, as one collector runs at a time) would only be judged later.
	if o.dead, err = c.list(ctx, store.DeadPrefix); err != nil {
		return nil, err
	}
	return o, nil
}

// liveMissing reads the live bootstraps that boots lacks with
// Options.ReadMissing and returns them by hex digest.
func (c *collector) liveMissing(ctx context.Context, live map[string]bootstrap.Digest, boots map[string]store.Info) (map[string]*bootstrap.Bootstrap, error) {
	var missing []string
	for hex := range live {
		if _, ok := boots[hex]; !ok {
			c.log.Warn("gc: live image's bootstrap is not in the store", "bootstrap", hex)
			c.count(func(r *Report) { r.LiveMissing++ })
			missing = append(missing, hex)
		}
	}
	if len(missing) == 0 {
		return nil, nil
	}
	slices.Sort(missing)
	if c.opts.ReadMissing == nil {
		return nil, fmt.Errorf("gc: %d live bootstraps are not in the store (%s first), and nothing reads them elsewhere: the blobs they need are unknown", len(missing), missing[0])
	}
	var mu sync.Mutex
	read := map[string]*bootstrap.Bootstrap{}
	err := c.each(ctx, missing, func(ctx context.Context, hex string) error {
		b, err := c.opts.ReadMissing(ctx, live[hex])
		if err != nil {
			return fmt.Errorf("gc: read live bootstrap %s, which the store does not hold: %w", hex, err)
		}
		if b != nil {
			mu.Lock()
			defer mu.Unlock()
			read[hex] = b
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return read, nil
}

// leases returns live with the bootstraps that a lease younger than
// LeaseTTL names added, and deletes the leases older than that. A
// leased bootstrap missing from boots is only counted and logged: a
// lease does not say where the bootstrap is, so it cannot be read.
func (c *collector) leases(ctx context.Context, live map[string]bootstrap.Digest, boots map[string]store.Info) (map[string]bootstrap.Digest, error) {
	var mu sync.Mutex
	leased := map[string]bootstrap.Digest{} // by hex; those no registry named
	hold := func(node string, d bootstrap.Digest) {
		mu.Lock()
		defer mu.Unlock()
		hex := d.Hex()
		if _, ok := live[hex]; ok {
			return
		}
		if _, ok := leased[hex]; ok {
			return
		}
		leased[hex] = d
		if _, ok := boots[hex]; !ok {
			c.log.Warn("gc: leased bootstrap is not in the store; the blobs it names are unknown", "bootstrap", hex, "node", node)
		}
	}
	fresh := func(t time.Time) bool { return c.now.Sub(t) < LeaseTTL }
	var stale []string
	err := c.st.List(ctx, store.LeasePrefix, func(info store.Info) error {
		node, d, ok := parseLease(info.Key)
		switch {
		case !ok:
			c.log.Warn("gc: ignoring a lease whose key is not "+store.LeasePrefix+"<node>/<sha256 hex>", "key", info.Key)
		case fresh(info.ModTime):
			hold(node, d)
		default:
			stale = append(stale, info.Key)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("gc: list %s: %w", store.LeasePrefix, err)
	}
	err = c.each(ctx, stale, func(ctx context.Context, key string) error {
		// The listing is a moment old: an agent back since may have
		// written its lease again, or deleted it at unmount.
		info, err := c.st.Stat(ctx, key)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("gc: delete stale lease %s: stat: %w", key, err)
		}
		if fresh(info.ModTime) {
			node, d, _ := parseLease(key)
			hold(node, d)
			return nil
		}
		if err := c.delete(ctx, "delete stale lease", key); err != nil {
			return err
		}
		c.count(func(r *Report) { r.LeasesDeleted.add(info.Size) })
		c.log.Debug("gc: deleted stale lease", "key", key, "age", c.now.Sub(info.ModTime).Round(time.Second))
		return nil
	})
	if err != nil {
		return nil, err
	}
	c.count(func(r *Report) { r.LeasesLive = len(leased) })
	kept := maps.Clone(live)
	if kept == nil {
		kept = map[string]bootstrap.Digest{}
	}
	maps.Copy(kept, leased)
	return kept, nil
}

// parseLease returns the node and the bootstrap digest of the lease at
// key, store.LeaseKey(node, hex).
func parseLease(key string) (node string, d bootstrap.Digest, ok bool) {
	name := strings.TrimPrefix(key, store.LeasePrefix)
	i := strings.LastIndexByte(name, '/')
	if i <= 0 {
		return "", d, false
	}
	d, err := bootstrap.ParseDigest("sha256:" + name[i+1:])
	if err != nil {
		return "", d, false
	}
	return name[:i], d, true
}

// restoreBootstraps writes back the live bootstraps read elsewhere
// whose blobs are all in blobs: most likely deleted as dead in the
// moment a conversion wrote them again. A bootstrap whose encoding does
// not give back its digest is left out, and so is one naming a blob not
// here (converted into another store).
func (c *collector) restoreBootstraps(ctx context.Context, live map[string]bootstrap.Digest, read map[string]*bootstrap.Bootstrap, blobs map[string]store.Info) error {
	var hexes []string
	for hex, b := range read {
		if !slices.ContainsFunc(b.Blobs, func(d bootstrap.Digest) bool {
			_, ok := blobs[d.Hex()]
			return !ok
		}) {
			hexes = append(hexes, hex)
		}
	}
	slices.Sort(hexes)
	return c.each(ctx, hexes, func(ctx context.Context, hex string) error {
		data, err := bootstrap.Encode(read[hex])
		if err != nil {
			c.log.Warn("gc: cannot write back a live bootstrap missing from the store: encode", "bootstrap", hex, "err", err)
			return nil
		}
		if bootstrap.Sum(data) != live[hex] {
			c.log.Warn("gc: cannot write back a live bootstrap missing from the store: its encoding does not match its digest", "bootstrap", hex)
			return nil
		}
		if !c.opts.DryRun {
			if err := c.st.Put(ctx, store.BootstrapKey(hex), bytes.NewReader(data), int64(len(data))); err != nil {
				return fmt.Errorf("gc: write back live bootstrap %s: %w", hex, err)
			}
		}
		c.count(func(r *Report) { r.BootstrapsRestored.add(int64(len(data))) })
		c.log.Warn("gc: wrote back a live bootstrap missing from the store, whose blobs are all here", "bootstrap", hex, "bytes", len(data))
		return nil
	})
}

// deadMark is what the tombstone of a dead bootstrap records: the
// bootstrap as it was when marked, so that one written again since is
// told apart.
type deadMark struct {
	Size    int64     `json:"size"`
	ModTime time.Time `json:"modTime"`
}

// sweepBootstraps settles the bootstraps marked dead earlier, marks those
// neither live nor young, and deletes startup sets whose bootstrap is
// gone. It returns the hex digests of the bootstraps deleted (or, in a
// dry run, that would be).
func (c *collector) sweepBootstraps(ctx context.Context, live map[string]bootstrap.Digest, o *bootstrapObjects) (map[string]bool, error) {
	var marked, unmarked, stale []string
	for hex, info := range o.boots {
		_, isLive := live[hex]
		switch _, dead := o.dead[hex]; {
		case dead:
			marked = append(marked, hex)
		case isLive || !c.old(info.ModTime):
			c.count(func(r *Report) { r.BootstrapsKept.add(info.Size) })
		default:
			unmarked = append(unmarked, hex)
		}
	}
	for hex := range o.dead {
		if _, ok := o.boots[hex]; !ok {
			stale = append(stale, hex)
		}
	}
	var mu sync.Mutex
	gone := map[string]bool{}
	err := c.each(ctx, marked, func(ctx context.Context, hex string) error {
		deleted, err := c.settleBootstrap(ctx, live, o, hex)
		if deleted {
			mu.Lock()
			defer mu.Unlock()
			gone[hex] = true
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := c.each(ctx, unmarked, func(ctx context.Context, hex string) error { return c.markDead(ctx, hex) }); err != nil {
		return nil, err
	}
	// A tombstone without its bootstrap is left by a run that failed
	// between deleting the bootstrap and the tombstone.
	err = c.each(ctx, stale, func(ctx context.Context, hex string) error {
		return c.delete(ctx, "delete tombstone of deleted bootstrap", store.DeadKey(hex))
	})
	if err != nil {
		return nil, err
	}
	// A startup set is written for a mounted bootstrap, so one without
	// its bootstrap lost it, to an earlier run that failed in between
	// or to an agent that saved it late; once old it is garbage too.
	var orphans []string
	for hex, info := range o.startups {
		if _, ok := o.boots[hex]; !ok && c.old(info.ModTime) {
			orphans = append(orphans, hex)
		}
	}
	err = c.each(ctx, orphans, func(ctx context.Context, hex string) error {
		s := o.startups[hex]
		if err := c.delete(ctx, "delete startup set", s.Key); err != nil {
			return err
		}
		c.count(func(r *Report) { r.StartupSetsDeleted.add(s.Size) })
		return nil
	})
	return gone, err
}

// markDead writes the tombstone of bootstrap hex, found neither live nor
// young in the listing.
func (c *collector) markDead(ctx context.Context, hex string) error {
	// Stat, not the listing, gives what the tombstone records: deleting
	// compares it with a Stat, and a store's listing may carry finer
	// times than its Stat (S3's do).
	info, err := c.st.Stat(ctx, store.BootstrapKey(hex))
	if errors.Is(err, store.ErrNotFound) {
		return nil // deleted since listed: nothing to mark
	}
	if err != nil {
		return fmt.Errorf("gc: mark bootstrap %s dead: %w", hex, err)
	}
	if !c.old(info.ModTime) {
		// Written again since listed, by a conversion.
		c.count(func(r *Report) { r.BootstrapsKept.add(info.Size) })
		return nil
	}
	data, err := json.Marshal(deadMark{Size: info.Size, ModTime: info.ModTime})
	if err != nil {
		return fmt.Errorf("gc: mark bootstrap %s dead: %w", hex, err)
	}
	if !c.opts.DryRun {
		if err := c.st.Put(ctx, store.DeadKey(hex), bytes.NewReader(data), int64(len(data))); err != nil {
			return fmt.Errorf("gc: mark bootstrap %s dead: write tombstone: %w", hex, err)
		}
	}
	c.count(func(r *Report) { r.BootstrapsMarked.add(info.Size) })
	c.log.Debug("gc: marked bootstrap dead", "bootstrap", hex, "bytes", info.Size)
	return nil
}

// settleBootstrap decides bootstrap hex, marked dead by an earlier run:
// live again, it is revived; dead for a grace period since, it is
// deleted with its startup set, unless written again meanwhile. It
// reports whether the bootstrap was deleted.
func (c *collector) settleBootstrap(ctx context.Context, live map[string]bootstrap.Digest, o *bootstrapObjects, hex string) (bool, error) {
	ts := o.dead[hex]
	if _, ok := live[hex]; ok {
		return false, c.revive(ctx, hex, o.boots[hex].Size, "live again")
	}
	if !c.old(ts.ModTime) {
		c.count(func(r *Report) { r.BootstrapsPending.add(o.boots[hex].Size) })
		return false, nil
	}
	data, err := store.ReadAll(ctx, c.st, ts.Key, bootstrap.MaxRawSize)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil // settled since listed: nothing to do
	}
	if err != nil {
		return false, fmt.Errorf("gc: delete bootstrap %s: read tombstone: %w", hex, err)
	}
	var mark deadMark
	if err := json.Unmarshal(data, &mark); err != nil {
		// Unknown, so not the same: marking it again is safe.
		c.log.Warn("gc: unreadable tombstone of a dead bootstrap", "key", ts.Key, "err", err)
		return false, c.revive(ctx, hex, o.boots[hex].Size, "unreadable tombstone")
	}
	// The listing is a moment old, and the mark a grace period: a
	// conversion may have written the bootstrap again since either.
	info, err := c.st.Stat(ctx, store.BootstrapKey(hex))
	if errors.Is(err, store.ErrNotFound) {
		return false, c.delete(ctx, "delete tombstone of deleted bootstrap", ts.Key)
	}
	if err != nil {
		return false, fmt.Errorf("gc: delete bootstrap %s: stat: %w", hex, err)
	}
	if info.Size != mark.Size || !info.ModTime.Equal(mark.ModTime) {
		return false, c.revive(ctx, hex, info.Size, "written again")
	}
	// The startup set goes first and the tombstone last: a failure in
	// between leaves a dead bootstrap the next run finds again, or a
	// tombstone without its bootstrap, which it drops; never an orphan
	// startup set, nor a bootstrap without its blobs.
	if s, ok := o.startups[hex]; ok {
		if err := c.delete(ctx, "delete startup set", s.Key); err != nil {
			return false, err
		}
		c.count(func(r *Report) { r.StartupSetsDeleted.add(s.Size) })
	}
	if err := c.delete(ctx, "delete bootstrap", store.BootstrapKey(hex)); err != nil {
		return false, err
	}
	c.count(func(r *Report) { r.BootstrapsDeleted.add(info.Size) })
	c.log.Debug("gc: deleted bootstrap", "bootstrap", hex, "bytes", info.Size)
	if err := c.delete(ctx, "delete tombstone of deleted bootstrap", ts.Key); err != nil {
		return true, err
	}
	return true, nil
}

// revive drops the tombstone of bootstrap hex, of size bytes, for why.
func (c *collector) revive(ctx context.Context, hex string, size int64, why string) error {
	if err := c.delete(ctx, "revive bootstrap: delete tombstone", store.DeadKey(hex)); err != nil {
		return err
	}
	c.count(func(r *Report) {
		r.BootstrapsRevived.add(size)
		r.BootstrapsKept.add(size)
	})
	c.log.Debug("gc: revived bootstrap marked dead", "bootstrap", hex, "why", why)
	return nil
}

// references reads every bootstrap in the store and returns the hex
// digests of the blobs they name. It lists the store afresh, so
// bootstraps written since the sweep count too. A dry run leaves out
// those in gone, which a real run would have deleted.
func (c *collector) references(ctx context.Context, gone map[string]bool) (map[string]bool, error) {
	boots, err := c.list(ctx, store.BootstrapPrefix)
	if err != nil {
		return nil, err
	}
	var keep []string
	for hex := range boots {
		// In a real run, a bootstrap deleted and listed all the same
		// was written again by a conversion: it counts.
		if !c.opts.DryRun || !gone[hex] {
			keep = append(keep, hex)
		}
	}
	return c.blobsOf(ctx, keep, func(ctx context.Context, hex string) (*bootstrap.Bootstrap, error) {
		key := store.BootstrapKey(hex)
		data, err := store.ReadAll(ctx, c.st, key, bootstrap.MaxRawSize)
		if errors.Is(err, store.ErrNotFound) {
			return nil, nil // deleted since listed: it references nothing now
		}
		if err != nil {
			return nil, fmt.Errorf("gc: read bootstrap: %w", err)
		}
		// A bootstrap that cannot be decoded stops the run: its blobs
		// are unknown, and guessing could delete an image's data.
		b, err := bootstrap.Decode(data)
		if err != nil {
			return nil, fmt.Errorf("gc: decode bootstrap %s: %w", key, err)
		}
		return b, nil
	})
}

// blobsOf returns the hex digests of the blobs that the bootstraps load
// returns for hexes name; a nil bootstrap names none.
func (c *collector) blobsOf(ctx context.Context, hexes []string, load func(context.Context, string) (*bootstrap.Bootstrap, error)) (map[string]bool, error) {
	var mu sync.Mutex
	refs := map[string]bool{}
	err := c.each(ctx, hexes, func(ctx context.Context, hex string) error {
		b, err := load(ctx, hex)
		if err != nil || b == nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		for _, d := range b.Blobs {
			refs[d.Hex()] = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return refs, nil
}

// settle decides the blobs condemned earlier: those referenced again, or
// whose index a conversion published again, are reprieved; those
// unreferenced for a grace period since are deleted.
func (c *collector) settle(ctx context.Context, refs map[string]bool, blobs, indexes, tombstones map[string]store.Info) error {
	return c.each(ctx, sortedKeys(tombstones), func(ctx context.Context, hex string) error {
		ts := tombstones[hex]
		_, indexed := indexes[hex]
		switch {
		case refs[hex]:
			if _, ok := blobs[hex]; !ok {
				// Restoring would advertise chunks that are not there;
				// the bootstrap is already reported as broken.
				return nil
			}
			if !indexed {
				if err := c.restoreIndex(ctx, hex); err != nil {
					return err
				}
			}
			if err := c.delete(ctx, "delete tombstone", ts.Key); err != nil {
				return err
			}
			c.count(func(r *Report) { r.IndexesRestored.add(ts.Size) })
			c.log.Debug("gc: restored index of a blob referenced again", "blob", hex)
		case indexed:
			return c.reprieve(ctx, hex, ts)
		case !c.old(ts.ModTime):
			c.count(func(r *Report) { r.BlobsPending.add(blobs[hex].Size) })
		default:
			return c.deleteBlob(ctx, hex, blobs[hex].Size, ts)
		}
		return nil
	})
}

// reprieve drops the tombstone of a blob whose index a conversion has
// published again since it was condemned: that conversion produced the
// very same blob and is about to reference it.
func (c *collector) reprieve(ctx context.Context, hex string, ts store.Info) error {
	if err := c.delete(ctx, "delete tombstone", ts.Key); err != nil {
		return err
	}
	c.count(func(r *Report) { r.IndexesRestored.add(ts.Size) })
	c.log.Debug("gc: blob published again since condemned", "blob", hex)
	return nil
}

func (c *collector) restoreIndex(ctx context.Context, hex string) error {
	key := store.CondemnedKey(hex)
	data, err := store.ReadAll(ctx, c.st, key, bootstrap.MaxRawSize)
	if err != nil {
		return fmt.Errorf("gc: restore index of %s: %w", hex, err)
	}
	if len(data) == 0 {
		return nil // the blob had no index when it was condemned
	}
	if c.opts.DryRun {
		return nil
	}
	if err := c.st.Put(ctx, store.IndexKey(hex), bytes.NewReader(data), int64(len(data))); err != nil {
		return fmt.Errorf("gc: restore index of %s: %w", hex, err)
	}
	return nil
}

// deleteBlob deletes a condemned blob of size bytes (0 if it is gone
// already) and then its tombstone.
func (c *collector) deleteBlob(ctx context.Context, hex string, size int64, ts store.Info) error {
	// The index listing is a moment old; a conversion republishing the
	// blob since would have put its index back.
	if _, err := c.st.Stat(ctx, store.IndexKey(hex)); err == nil {
		return c.reprieve(ctx, hex, ts)
	} else if !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("gc: delete blob %s: stat index: %w", hex, err)
	}
	// The blob goes first: a failure in between leaves a tombstone that
	// the next run finishes, never a blob nothing will judge again.
	if err := c.delete(ctx, "delete blob", store.BlobKey(hex)); err != nil {
		return err
	}
	if !c.opts.DryRun {
		// A conversion that Stat'ed the blob before it went, and
		// published its index after the Stat above, deduplicated
		// against a blob that is gone. Too late to undo; say so.
		if _, err := c.st.Stat(ctx, store.IndexKey(hex)); err == nil {
			c.log.Error("gc: a conversion published the index of a blob while it was deleted; a conversion may reference it; re-push or reconvert its image", "blob", hex)
			c.count(func(r *Report) { r.BlobsRaced++ })
		} else if !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("gc: delete blob %s: stat index after delete: %w", hex, err)
		}
	}
	if err := c.delete(ctx, "delete tombstone", ts.Key); err != nil {
		return err
	}
	c.count(func(r *Report) { r.BlobsDeleted.add(size) })
	c.log.Debug("gc: deleted blob", "blob", hex, "bytes", size)
	return nil
}

// condemn moves the index of every unreferenced blob older than the grace
// period to its tombstone. Blobs that had a tombstone when this run began
// were settled already.
func (c *collector) condemn(ctx context.Context, refs map[string]bool, blobs, indexes, tombstones map[string]store.Info) error {
	var doomed []string
	for _, hex := range sortedKeys(blobs) {
		if _, ok := tombstones[hex]; ok {
			continue
		}
		info := blobs[hex]
		// A republished blob keeps its old modification time; its
		// fresh index is what shows that a conversion just used it.
		newest := info.ModTime
		if idx, ok := indexes[hex]; ok && idx.ModTime.After(newest) {
			newest = idx.ModTime
		}
		if refs[hex] || !c.old(newest) {
			c.count(func(r *Report) { r.BlobsKept.add(info.Size) })
			continue
		}
		doomed = append(doomed, hex)
	}
	return c.each(ctx, doomed, func(ctx context.Context, hex string) error {
		// Read even if not listed: an index published since is fresh.
		_, listed := indexes[hex]
		data, err := store.ReadAll(ctx, c.st, store.IndexKey(hex), bootstrap.MaxRawSize)
		switch {
		case errors.Is(err, store.ErrNotFound):
			if listed {
				// Gone since listed, most likely into a tombstone that
				// an empty one must not overwrite: that index would be
				// lost for good if the blob came back into use.
				c.log.Warn("gc: index of a blob to condemn disappeared; leaving the blob to the next run", "blob", hex)
				return nil
			}
			data = nil // no index: the tombstone is empty
		case err != nil:
			return fmt.Errorf("gc: condemn blob %s: %w", hex, err)
		case !listed:
			// Published since listed: a conversion just used the blob.
			c.count(func(r *Report) { r.BlobsKept.add(blobs[hex].Size) })
			c.log.Debug("gc: blob to condemn published since listed; keeping it", "blob", hex)
			return nil
		}
		if !c.opts.DryRun {
			// The tombstone is written before the index goes: a failure
			// in between leaves both, which the next run reads as a
			// blob published again, never as an unmarked loss of its
			// index.
			if err := c.st.Put(ctx, store.CondemnedKey(hex), bytes.NewReader(data), int64(len(data))); err != nil {
				return fmt.Errorf("gc: condemn blob %s: write tombstone: %w", hex, err)
			}
		}
		if err := c.delete(ctx, "condemn blob "+hex+": delete index", store.IndexKey(hex)); err != nil {
			return err
		}
		c.count(func(r *Report) { r.BlobsCondemned.add(blobs[hex].Size) })
		c.log.Debug("gc: condemned blob", "blob", hex, "bytes", blobs[hex].Size)
		return nil
	})
}

// dropStaleIndexes deletes the indexes older than the grace period whose
// blob is not in the store and that have no tombstone: left by uploads
// that failed after their index was published. Each is checked again
// first, as a conversion may have published it anew or uploaded its blob
// since the listing.
func (c *collector) dropStaleIndexes(ctx context.Context, blobs, indexes, tombstones map[string]store.Info) error {
	var stale []string
	for _, hex := range sortedKeys(indexes) {
		_, hasBlob := blobs[hex]
		_, hasTombstone := tombstones[hex]
		if !hasBlob && !hasTombstone && c.old(indexes[hex].ModTime) {
			stale = append(stale, hex)
		}
	}
	return c.each(ctx, stale, func(ctx context.Context, hex string) error {
		info, err := c.st.Stat(ctx, store.IndexKey(hex))
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("gc: delete stale index %s: stat: %w", hex, err)
		}
		if !c.old(info.ModTime) {
			return nil // published again
		}
		if _, err := c.st.Stat(ctx, store.BlobKey(hex)); err == nil {
			return nil // uploaded since listed
		} else if !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("gc: delete stale index %s: stat blob: %w", hex, err)
		}
		if err := c.delete(ctx, "delete stale index", store.IndexKey(hex)); err != nil {
			return err
		}
		c.count(func(r *Report) { r.IndexesDeleted.add(info.Size) })
		c.log.Debug("gc: deleted index of a blob not in the store", "blob", hex, "bytes", info.Size)
		return nil
	})
}

// delete deletes key unless this is a dry run.
func (c *collector) delete(ctx context.Context, op, key string) error {
	if c.opts.DryRun {
		return nil
	}
	if err := c.st.Delete(ctx, key); err != nil {
		return fmt.Errorf("gc: %s %s: %w", op, key, err)
	}
	return nil
}

// each runs fn for every item, Options.Concurrency at a time, and stops
// starting new ones after the first error.
func (c *collector) each(ctx context.Context, items []string, fn func(context.Context, string) error) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.opts.Concurrency)
	for _, it := range items {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error { return fn(gctx, it) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

func sortedKeys(m map[string]store.Info) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
