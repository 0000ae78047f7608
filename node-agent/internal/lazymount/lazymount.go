// Package lazymount keeps the lazy mounts of the Skiff images a node runs:
// one mount per image (the kernel's EROFS over a FUSE-served image file,
// or a FUSE tree), however many containers use it, all served by one
// process through one fetch path (cache, peers and seeders, then the blob
// store), and warmed in the background with the files containers of the
// image read at startup last time.
package lazymount

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/skiff-dev/skiff/node-agent/internal/snapshot"
	"github.com/skiff-dev/skiff/pkg/atomicfile"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/erofs"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/gc"
	"github.com/skiff-dev/skiff/pkg/lazyfs"
	"github.com/skiff-dev/skiff/pkg/startup"
	"github.com/skiff-dev/skiff/pkg/store"
)

// Options configure a Manager.
type Options struct {
	// RecordWindow is how long after an image is mounted the files its
	// containers read are recorded as its startup set; 0 disables it.
	RecordWindow time.Duration
	// WarmSmallFiles is how much of the small files of an image with no
	// startup set yet, mounted through EROFS, is read into the page cache
	// once its first container pauses (see warmSmallFiles); 0 disables
	// it.
	WarmSmallFiles int64
	// WarmPause is how long the image's containers must have stopped
	// reading before WarmSmallFiles starts; 0 means a second.
	WarmPause time.Duration
	// PrefetchAll warms the whole image after the startup set.
	PrefetchAll bool
	// PrefetchRate bounds what PrefetchAll fetches, in stored bytes per
	// second over every image together, and with it what WarmSmallFiles
	// reads, counted in bytes of the image (more than are fetched); 0
	// leaves them unbounded.
	PrefetchRate int64
	// Passthrough lets the kernel read large files that are entirely in
	// the local cache straight from disk (FUSE passthrough). It needs
	// tree mounts, so it turns EROFS off.
	Passthrough bool
	// EROFS mounts images in image mode (see lazyfs.Options.Image): the
	// kernel's EROFS answers names, attributes and cached pages, and the
	// mount process sees only reads of data. Where the kernel cannot
	// (before Linux 6.12), or an image has what EROFS cannot store, the
	// image is served as a FUSE tree instead.
	EROFS bool
	// Node names this node in the leases it keeps on the bootstraps it
	// has mounted, which garbage collection of the store honours (see
	// lease.go); characters a key cannot hold become '_'. Empty: no
	// leases.
	Node string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Manager mounts Skiff images under DIR/mnt/<bootstrap hex> and keeps
// verified bootstraps in DIR/bootstraps.
type Manager struct {
	dir   string
	store store.Store
	fetch Fetcher
	opts  Options
	log   *slog.Logger
	ctx   context.Context // background work; cancelled by Close
	stop  context.CancelFunc

	mu     sync.Mutex
	mounts map[bootstrap.Digest]*mounted
	// mounting and unmounting hold the images being mounted and being
	// unmounted, each closed when that is done: the work (loading the
	// bootstrap, building the layout, the mount itself; saving the
	// startup set, the unmount) runs without mu, so that other images and
	// status requests need not wait for it. A mount waits for either of
	// its image; an unmount only for another unmount, finding nothing to
	// do while a mount is in progress (and Release then leaves it).
	mounting, unmounting map[bootstrap.Digest]chan struct{}
	// usable holds the bootstraps Fetch decoded, by digest.
	usable sync.Map
	// handingOver refuses mount requests while a successor takes over;
	// resumed are mounts taken over and not yet served.
	handingOver bool
	resumed     []*lazyfs.Server
	gen         uint64 // see Generation
	wg          sync.WaitGroup
	// noEROFS is set once the kernel has refused an EROFS mount.
	noEROFS atomic.Bool
	// limit admits what PrefetchAll fetches and WarmSmallFiles reads (see
	// Options.PrefetchRate); nil when unbounded. rest passes it to
	// Prefetch.
	limit *rate.Limiter
	rest  []fetch.PrefetchOption
	// leases are kept on the mounted bootstraps (see lease.go).
	leases leases
}

var _ snapshot.Mounter = (*Manager)(nil)

type mounted struct {
	srv    *lazyfs.Server
	rec    *recorder
	layout *erofs.Image // nil for a FUSE tree
	// stop ends the mount's background work when it is unmounted.
	stop context.CancelFunc
	// warm is that work, started once the mount is recorded.
	warm func()
}

// Fetcher is the node's one chunk fetch path (a *fetch.Fetcher), which
// mounts read through and warming prefetches into. The mounts also use
// the optional interfaces of package lazyfs it implements (Fetcher,
// Warmer, BackingFiler), found as lazyfs finds them.
type Fetcher interface {
	lazyfs.ChunkReader
	Prefetch(ctx context.Context, b *bootstrap.Bootstrap, inodes []uint32, opts ...fetch.PrefetchOption) error
	Flush()
	Stats() fetch.Stats
}

var _ Fetcher = (*fetch.Fetcher)(nil)

// New returns a Manager keeping its state in dir, fetching bootstraps and
// startup sets from st and chunk data through f.
func New(dir string, st store.Store, f Fetcher, opts Options) (*Manager, error) {
	for _, sub := range []string{"mnt", "bootstraps"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("lazy mounts: %w", err)
		}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	ctx, stop := context.WithCancel(context.Background())
	m := &Manager{dir: dir, store: st, fetch: f, opts: opts, log: opts.Logger, ctx: ctx, stop: stop, mounts: map[bootstrap.Digest]*mounted{}, mounting: map[bootstrap.Digest]chan struct{}{}, unmounting: map[bootstrap.Digest]chan struct{}{}}
	m.leases.node, m.leases.every = leaseNode(opts.Node), gc.LeaseRefresh
	if opts.PrefetchRate > 0 {
		m.limit = rate.NewLimiter(rate.Limit(opts.PrefetchRate), prefetchBurst)
		m.rest = append(m.rest, fetch.Limit(m.limit))
	}
	return m, nil
}

// Mountpoint is where the image with bootstrap d is (or will be) mounted.
func (m *Manager) Mountpoint(d bootstrap.Digest) string {
	return filepath.Join(m.dir, "mnt", d.Hex())
}

// openState is where the mount of d keeps how the kernel has its files
// open, for a successor (see lazyfs.Options.OpenState).
func (m *Manager) openState(d bootstrap.Digest) string {
	return m.Mountpoint(d) + ".opens"
}

// imageDir is where the FUSE connection of an image-mode mount of d is
// mounted, and layoutPath where its EROFS layout is kept for a successor
// (see erofs.Image.MarshalBinary).
func (m *Manager) imageDir(d bootstrap.Digest) string   { return m.Mountpoint(d) + ".image" }
func (m *Manager) layoutPath(d bootstrap.Digest) string { return m.Mountpoint(d) + ".erofs" }

func (m *Manager) bootstrapPath(d bootstrap.Digest) string {
	return filepath.Join(m.dir, "bootstraps", d.Hex())
}

// Fetch implements snapshot.Mounter: the bootstrap is on local disk,
// checked and decoded, when it returns. A bootstrap this agent cannot use
// (a newer format, say) fails here, so that the snapshotter unpacks the
// layer as usual rather than a mount failing later. containerd prepares
// every layer of an image and each asks: a bootstrap is decoded once per
// process.
func (m *Manager) Fetch(ctx context.Context, d bootstrap.Digest) error {
	if _, ok := m.usable.Load(d); ok {
		return nil
	}
	if _, err := m.load(ctx, d); err != nil {
		return err
	}
	// Under mu, as Release forgets: a Release since the load has taken
	// the copy away.
	m.mu.Lock()
	if _, err := os.Stat(m.bootstrapPath(d)); err == nil {
		m.usable.Store(d, struct{}{})
	}
	m.mu.Unlock()
	return nil
}

// load returns the decoded bootstrap d.
func (m *Manager) load(ctx context.Context, d bootstrap.Digest) (*bootstrap.Bootstrap, error) {
	blob, err := m.blob(ctx, d)
	if err != nil {
		return nil, err
	}
	b, err := bootstrap.Decode(blob)
	if err != nil {
		return nil, fmt.Errorf("bootstrap %s: %w", d, err)
	}
	return b, nil
}

// blob returns the encoded bootstrap d, from the local copy or the store.
// Both are checked against the digest: a local copy that fails is
// replaced.
func (m *Manager) blob(ctx context.Context, d bootstrap.Digest) ([]byte, error) {
	p := m.bootstrapPath(d)
	if blob, err := os.ReadFile(p); err == nil && bootstrap.Sum(blob) == d {
		return blob, nil
	}
	blob, err := store.ReadAll(ctx, m.store, store.BootstrapKey(d.Hex()), bootstrap.MaxRawSize)
	if err != nil {
		return nil, fmt.Errorf("fetch bootstrap %s: %w", d, err)
	}
	if got := bootstrap.Sum(blob); got != d {
		return nil, fmt.Errorf("fetch bootstrap %s: store returned content with digest %s", d, got)
	}
	if err := atomicfile.WriteFile(p, blob, 0o600); err != nil {
		return nil, fmt.Errorf("save bootstrap %s: %w", d, err)
	}
	return blob, nil
}

// Mount implements snapshot.Mounter.
func (m *Manager) Mount(ctx context.Context, d bootstrap.Digest) (string, error) {
	mp := m.Mountpoint(d)
	for {
		m.mu.Lock()
		if err := m.refusing(); err != nil {
			m.mu.Unlock()
			return "", err
		}
		if _, ok := m.mounts[d]; ok {
			m.mu.Unlock()
			return mp, nil
		}
		busy, ok := m.mounting[d]
		if !ok {
			busy, ok = m.unmounting[d]
		}
		if !ok {
			break
		}
		m.mu.Unlock()
		select {
		case <-busy:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	done := make(chan struct{})
	m.mounting[d] = done
	m.mu.Unlock()

	mt, err := m.mountImage(ctx, d)

	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.mounting, d)
	close(done)
	if err != nil {
		return "", err
	}
	if err := m.refusing(); err != nil {
		// A handover or Close began meanwhile, and has not seen this
		// mount: it must not outlive them.
		mt.stop()
		if uerr := mt.srv.Unmount(); uerr != nil {
			m.log.Warn("lazymount: unmount", "bootstrap", d, "err", uerr)
		}
		return "", err
	}
	m.mounts[d] = mt
	m.gen++
	m.log.Info("lazymount: mounted image", "bootstrap", d, "mountpoint", mp)
	m.leaseMounted(d)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		mt.warm()
	}()
	return mp, nil
}

// refusing says why mounts are refused now, if they are. m.mu is held.
func (m *Manager) refusing() error {
	if m.handingOver {
		return errHandingOver
	}
	if m.ctx.Err() != nil {
		// Closing: what it mounted now would be left behind.
		return errClosed
	}
	return nil
}

// mountImage mounts image d, which is not mounted, and returns it with
// its background work ready to start.
func (m *Manager) mountImage(ctx context.Context, d bootstrap.Digest) (*mounted, error) {
	mp := m.Mountpoint(d)
	b, err := m.load(ctx, d)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(mp, 0o755); err != nil {
		return nil, fmt.Errorf("mount %s: %w", d, err)
	}
	// A mount left by a process that died is dead (ENOTCONN); it has to
	// go before a new one can take its place.
	for _, p := range []string{mp, m.imageDir(d)} {
		if err := unix.Unmount(p, unix.MNT_DETACH); err == nil {
			m.log.Info("lazymount: detached stale mount", "mountpoint", p)
		}
	}
	rec := newRecorder(b, m.fetch, m.opts.RecordWindow)
	srv, layout, err := m.mount(ctx, d, b, rec)
	if err != nil {
		return nil, err
	}
	if layout != nil {
		rec.arm() // for warm
	}
	wctx, stop := context.WithCancel(m.ctx)
	mt := &mounted{srv: srv, rec: rec, layout: layout, stop: stop}
	mt.warm = func() { m.warm(wctx, d, b, rec, layout) }
	return mt, nil
}

// mount mounts b at its mountpoint, in image mode if it can, and returns
// the image's layout then (nil for a tree).
func (m *Manager) mount(ctx context.Context, d bootstrap.Digest, b *bootstrap.Bootstrap, rec *recorder) (*lazyfs.Server, *erofs.Image, error) {
	mp := m.Mountpoint(d)
	os.Remove(m.openState(d))
	os.Remove(m.layoutPath(d))
	opts := lazyfs.Options{Logger: m.log, Passthrough: m.opts.Passthrough, OpenState: m.openState(d)}
	tree := func() (*lazyfs.Server, *erofs.Image, error) {
		opts.Image, opts.ImageDir = nil, ""
		srv, err := lazyfs.Mount(ctx, mp, b, rec, opts)
		return srv, nil, err
	}
	if !m.opts.EROFS || m.opts.Passthrough || m.noEROFS.Load() {
		return tree()
	}
	layout, err := erofs.Build(b)
	if errors.Is(err, erofs.ErrUnsupported) {
		m.log.Warn("lazymount: serving image as a FUSE tree", "bootstrap", d, "reason", err)
		return tree()
	}
	if err != nil {
		return nil, nil, fmt.Errorf("mount %s: %w", d, err)
	}
	if err := m.saveLayout(d, layout); err != nil {
		return nil, nil, err
	}
	// Served from the saved copy, mapped: the built one would stay on
	// the heap for as long as the image is mounted.
	if layout, err = erofs.Load(m.layoutPath(d)); err != nil {
		os.Remove(m.layoutPath(d))
		return nil, nil, fmt.Errorf("mount %s: %w", d, err)
	}
	if err := os.MkdirAll(m.imageDir(d), 0o700); err != nil {
		return nil, nil, fmt.Errorf("mount %s: %w", d, err)
	}
	opts.Image, opts.ImageDir = layout, m.imageDir(d)
	srv, err := lazyfs.Mount(ctx, mp, b, rec, opts)
	if err == nil {
		return srv, layout, nil
	}
	os.Remove(m.layoutPath(d))
	if !errors.Is(err, lazyfs.ErrNoImageMode) {
		return nil, nil, err
	}
	m.log.Warn("lazymount: EROFS unavailable, serving images as FUSE trees", "err", err)
	m.noEROFS.Store(true)
	return tree()
}

func (m *Manager) saveLayout(d bootstrap.Digest, layout *erofs.Image) error {
	data, err := layout.MarshalBinary()
	if err != nil {
		return fmt.Errorf("save layout of %s: %w", d, err)
	}
	if err := atomicfile.WriteFile(m.layoutPath(d), data, 0o600); err != nil {
		return fmt.Errorf("save layout of %s: %w", d, err)
	}
	return nil
}

// loadLayout returns the saved layout of the image-mode mount of d, or
// nil for a tree mount.
func (m *Manager) loadLayout(d bootstrap.Digest) (*erofs.Image, error) {
	layout, err := erofs.Load(m.layoutPath(d))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("layout of %s: %w", d, err)
	}
	return layout, nil
}

// Unmount implements snapshot.Mounter.
func (m *Manager) Unmount(ctx context.Context, d bootstrap.Digest) error {
	for {
		m.mu.Lock()
		if m.handingOver {
			m.mu.Unlock()
			return errHandingOver
		}
		busy, ok := m.unmounting[d]
		if !ok {
			break
		}
		m.mu.Unlock()
		select {
		case <-busy:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	mt, ok := m.mounts[d]
	if !ok {
		m.mu.Unlock()
		return nil
	}
	delete(m.mounts, d)
	m.gen++
	// A mount of d arriving now waits until the old one is gone: it
	// would otherwise mount at the same place, and have its mount and
	// its saved layout taken by this unmount.
	done := make(chan struct{})
	m.unmounting[d] = done
	m.mu.Unlock()
	// After the unmount is done, not within it: a mount of d waiting
	// for it need not wait for the store too.
	unmounted := false
	defer func() {
		if unmounted {
			m.dropLease(d)
		}
	}()
	defer func() {
		m.mu.Lock()
		delete(m.unmounting, d)
		close(done)
		m.mu.Unlock()
	}()
	if mt.stop != nil {
		mt.stop()
	}
	m.saveStartupSet(ctx, d, mt.rec, mt.layout)
	if err := mt.srv.Unmount(); err != nil {
		return err
	}
	// Serving ends when the kernel lets go of the mount, at once or, for
	// a busy mount detached lazily, when its last file closes; then the
	// device is closed, not whenever the collector finds it.
	go mt.srv.Wait()
	os.Remove(m.openState(d))
	os.Remove(m.layoutPath(d))
	m.log.Info("lazymount: unmounted image", "bootstrap", d)
	unmounted = true
	return nil
}

// Release implements snapshot.Mounter: it unmounts d and removes the
// copy of its bootstrap and its mount directories, which would otherwise
// pile up on a node over every image it ever ran. The chunk cache keeps
// the image's chunks, which other images may share, until it evicts
// them. An image mounted again meanwhile is left alone; one fetched again
// meanwhile fetches its bootstrap once more when mounted.
func (m *Manager) Release(ctx context.Context, d bootstrap.Digest) error {
	if err := m.Unmount(ctx, d); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.mounts[d]; ok || m.mounting[d] != nil || m.handingOver {
		return nil
	}
	// The bootstrap copy goes: Fetch must check it anew.
	m.usable.Delete(d)
	// os.Remove, not RemoveAll: a directory still mounted on is refused
	// (EBUSY), never emptied.
	var errs []error
	for _, p := range []string{m.bootstrapPath(d), m.Mountpoint(d), m.imageDir(d)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("release %s: %w", d, err)
	}
	return nil
}

// MountInfo describes one mounted image.
type MountInfo struct {
	Bootstrap  bootstrap.Digest `json:"bootstrap"`
	Mountpoint string           `json:"mountpoint"`
	// EROFS is set for an image mounted through the kernel's EROFS,
	// unset for one served as a FUSE tree.
	EROFS bool `json:"erofs"`
}

// Mounts describes the images currently mounted, by bootstrap digest.
func (m *Manager) Mounts() []MountInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	ms := make([]MountInfo, 0, len(m.mounts))
	for d, mt := range m.mounts {
		ms = append(ms, MountInfo{Bootstrap: d, Mountpoint: mt.srv.Mountpoint(), EROFS: mt.layout != nil})
	}
	slices.SortFunc(ms, func(a, b MountInfo) int { return strings.Compare(a.Bootstrap.String(), b.Bootstrap.String()) })
	return ms
}

// errClosed refuses mounts once Close has begun.
var errClosed = errors.New("lazy mounts: closed")

// Close stops background work and unmounts every image. It may be called
// again, which does nothing more. It leaves the leases (see lease.go):
// the mounts may live on with a successor.
func (m *Manager) Close() error {
	m.stop()
	m.wg.Wait()
	// One bound for every image's startup set: with the store down, the
	// unmounts still all happen in time.
	ctx, cancel := context.WithTimeout(context.Background(), saveTimeout)
	defer cancel()
	var errs []error
	for _, mi := range m.Mounts() {
		errs = append(errs, m.Unmount(ctx, mi.Bootstrap))
	}
	m.fetch.Flush()
	return errors.Join(errs...)
}

// warm prefetches the image's startup set, then the rest if asked to, and
// records a startup set when the image has none yet. An image mounted
// through EROFS (layout set) has the startup set's pages read into the
// kernel too.
func (m *Manager) warm(ctx context.Context, d bootstrap.Digest, b *bootstrap.Bootstrap, rec *recorder, layout *erofs.Image) {
	set, err := m.loadStartupSet(ctx, d, b)
	switch {
	case errors.Is(err, store.ErrNotFound):
		if layout != nil && m.opts.WarmSmallFiles > 0 {
			m.wg.Add(1)
			go func() {
				defer m.wg.Done()
				m.warmSmallFiles(ctx, d, layout, rec)
			}()
		}
	case err != nil:
		m.log.Warn("lazymount: read startup set", "bootstrap", d, "err", err)
	case err == nil:
		rec.disable()
		// What a container reads first comes before the rest of the set,
		// which it must not wait behind. The rest waits for a container
		// to read through an image-mode mount: until then the node is
		// busy starting it, and prefetching took the CPU from runc.
		head, tail := startupHead(b, set)
		m.prefetchStartup(ctx, d, b, layout, rec, head, "head")
		if len(tail) > 0 {
			if layout != nil {
				select {
				case <-rec.used:
				case <-ctx.Done():
					return
				}
			}
			m.prefetchStartup(ctx, d, b, layout, rec, tail, "rest")
		}
	}
	if m.opts.PrefetchAll {
		all := make([]uint32, 0, len(b.Inodes))
		for i := range b.Inodes {
			all = append(all, uint32(i))
		}
		if err := m.fetch.Prefetch(ctx, b, all, m.rest...); err != nil {
			m.log.Warn("lazymount: prefetch image", "bootstrap", d, "err", err)
		}
	}
	if !rec.active() {
		return
	}
	select {
	case <-ctx.Done():
		return
	case <-time.After(m.opts.RecordWindow):
	}
	m.saveStartupSet(ctx, d, rec, layout)
}

// prefetchStartup fetches files of a startup set (part names which) and,
// for a mount through EROFS, reads them into the kernel's page cache.
func (m *Manager) prefetchStartup(ctx context.Context, d bootstrap.Digest, b *bootstrap.Bootstrap, layout *erofs.Image, rec *recorder, files []uint32, part string) {
	if err := m.fetch.Prefetch(ctx, b, files, fetch.Streams(startupStreams)); err != nil {
		m.log.Warn("lazymount: prefetch startup set", "bootstrap", d, "part", part, "err", err)
	} else {
		m.log.Info("lazymount: prefetched startup set", "bootstrap", d, "part", part, "files", len(files))
	}
	if layout == nil {
		return
	}
	start := time.Now()
	if n, err := m.pageIn(ctx, d, layout, files, rec); err != nil {
		m.log.Warn("lazymount: read startup set into the page cache", "bootstrap", d, "part", part, "err", err)
	} else {
		m.log.Info("lazymount: startup set in the page cache", "bootstrap", d, "part", part, "bytes", n, "took", time.Since(start))
	}
}

// headBytes is how much file content of a startup set, in the order its
// files were first read, is prefetched before the rest: about what a
// container reads before its first output. A variable for tests.
var headBytes int64 = 4 << 20

// startupStreams is how many requests a startup set's prefetch keeps in
// flight. It runs beside a starting container, whose own reads then wait
// for the CPU behind the frames being decompressed. With 2 instead of 8,
// on 2 vCPUs where the prefetch is bound by the CPU, not the network, a
// second node's first output came at 0.043–0.053 of a plain pull and run
// instead of 0.050–0.057, with 11–15 MB fetched by then instead of
// 18–21, and its small-file command took 1.00–1.45 of the pulled image's
// time instead of 1.24–1.39.
const startupStreams = 2

// startupHead splits a startup set after its first headBytes of content.
func startupHead(b *bootstrap.Bootstrap, set []uint32) (head, tail []uint32) {
	var n int64
	for i, ino := range set {
		if n >= headBytes {
			return set[:i], set[i:]
		}
		if int(ino) < len(b.Inodes) {
			n += int64(b.Inodes[ino].Size)
		}
	}
	return set, nil
}

// prefetchBurst is the most PrefetchRate lets through at once: one
// merged request (8 MiB of frames) and then some.
const prefetchBurst = 16 << 20

// loadStartupSet reads the startup set stored beside bootstrap d (see
// store.StartupKey), so that every node benefits from the first.
func (m *Manager) loadStartupSet(ctx context.Context, d bootstrap.Digest, b *bootstrap.Bootstrap) ([]uint32, error) {
	data, err := store.ReadAll(ctx, m.store, store.StartupKey(d.Hex()), startup.MaxSize)
	if err != nil {
		return nil, err
	}
	return startup.Parse(data, b)
}

func (m *Manager) saveStartupSet(ctx context.Context, d bootstrap.Digest, rec *recorder, layout *erofs.Image) {
	files := rec.finish()
	if len(files) == 0 {
		return
	}
	if layout != nil {
		read, err := m.readFiles(d, rec.b, layout)
		if err != nil {
			m.log.Warn("lazymount: list the files read through EROFS; saving every file the mount served instead", "bootstrap", d, "err", err)
		} else {
			files = inReadOrder(read, files)
		}
	}
	if len(files) == 0 {
		return
	}
	data := startup.Format(rec.b, files)
	if err := m.store.Put(ctx, store.StartupKey(d.Hex()), bytes.NewReader(data), int64(len(data))); err != nil {
		m.log.Warn("lazymount: save startup set", "bootstrap", d, "err", err)
		return
	}
	m.log.Info("lazymount: recorded startup set", "bootstrap", d, "files", len(files))
}
