// Package snapshot is the agent's containerd snapshotter. It is an overlay
// snapshotter for ordinary layers and a remote snapshotter for Skiff
// images: when containerd unpacks a layer whose image has a Skiff
// conversion, the layer is recorded as committed without any data, so
// containerd never downloads it, and containers on top of it get the
// image's lazy FUSE mount as their overlay lower directory.
package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/errdefs"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/image"
)

// Snapshot labels. Those under containerd.io/snapshot/ are set by
// containerd's CRI plugin or by skiffctl pull from the image being pulled;
// the dev.skiff ones are the agent's own record on a lazily served layer.
const (
	// LabelTarget names the committed snapshot containerd wants a layer
	// unpacked into (its chain ID).
	LabelTarget = "containerd.io/snapshot.ref"
	// LabelBootstrap carries a Skiff image's bootstrap digest. containerd
	// forwards it from the bootstrap layer's annotation; the agent sets it
	// on every layer it serves lazily.
	LabelBootstrap = image.AnnotationSnapshotBootstrap
	// LabelImageRef, LabelManifestDigest and LabelLayerDigest identify the
	// layer being unpacked, as containerd's CRI plugin sets them.
	LabelImageRef       = "containerd.io/snapshot/cri.image-ref"
	LabelManifestDigest = "containerd.io/snapshot/cri.manifest-digest"
	LabelLayerDigest    = "containerd.io/snapshot/cri.layer-digest"
	LabelImageLayers    = "containerd.io/snapshot/cri.image-layers"
	// LabelLayer is "INDEX/COUNT": which layer of the image's manifest a
	// lazily served snapshot stands for. Only the top one can be mounted,
	// since the bootstrap describes the merged tree of all of them.
	LabelLayer = "dev.skiff.layer"
)

// Layer is a layer being unpacked that a Skiff image can serve lazily.
type Layer struct {
	Bootstrap bootstrap.Digest
	Index     int // position in the source manifest, 0 = bottom
	Count     int // layers in the source manifest
}

// Resolver decides whether a layer containerd is unpacking belongs to an
// image with a Skiff conversion, from the labels of the Prepare call.
type Resolver interface {
	// Resolve returns ok=false for a layer to unpack as usual. An error
	// means the labels claim a Skiff image that cannot be served.
	Resolve(ctx context.Context, labels map[string]string) (l Layer, ok bool, err error)
}

// Mounter provides the lazy filesystems of Skiff images.
type Mounter interface {
	// Fetch makes the bootstrap available locally, verifying it, so
	// that a later Mount does not depend on the network.
	Fetch(ctx context.Context, d bootstrap.Digest) error
	// Mount returns the directory where the image is mounted, mounting
	// it first if needed.
	Mount(ctx context.Context, d bootstrap.Digest) (string, error)
	// Release is called once no snapshot uses the image: it detaches
	// the image's filesystem if it is mounted, and drops what the node
	// kept of the image for it (the local bootstrap, mount directories).
	Release(ctx context.Context, d bootstrap.Digest) error
}

// Layers downloads layers of ordinary images, for the rare lower layer
// that must be materialized (see materialize).
type Layers interface {
	// Uncompressed returns the layer's tar stream.
	Uncompressed(ctx context.Context, imageRef, layerDigest string) (io.ReadCloser, error)
}

// Snapshotter wraps an overlay snapshotter with lazily served layers.
type Snapshotter struct {
	base    snapshots.Snapshotter
	resolve Resolver
	mounts  Mounter
	layers  Layers
	log     *slog.Logger

	materializing sync.Mutex
}

var (
	_ snapshots.Snapshotter = (*Snapshotter)(nil)
	_ snapshots.Cleaner     = (*Snapshotter)(nil)
)

// New returns a Snapshotter storing ordinary layers and its metadata in
// base, an overlay snapshotter.
func New(base snapshots.Snapshotter, r Resolver, m Mounter, l Layers, log *slog.Logger) *Snapshotter {
	if log == nil {
		log = slog.Default()
	}
	return &Snapshotter{base: base, resolve: r, mounts: m, layers: l, log: log}
}

// Stat implements snapshots.Snapshotter.
func (s *Snapshotter) Stat(ctx context.Context, key string) (snapshots.Info, error) {
	return s.base.Stat(ctx, key)
}

// Update implements snapshots.Snapshotter.
func (s *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (snapshots.Info, error) {
	return s.base.Update(ctx, info, fieldpaths...)
}

// Usage implements snapshots.Snapshotter.
func (s *Snapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	return s.base.Usage(ctx, key)
}

// Walk implements snapshots.Snapshotter.
func (s *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	return s.base.Walk(ctx, fn, filters...)
}

// Commit implements snapshots.Snapshotter.
func (s *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	return s.base.Commit(ctx, name, key, opts...)
}

// Mounts implements snapshots.Snapshotter.
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	m, err := s.base.Mounts(ctx, key)
	if err != nil {
		return nil, err
	}
	return s.lazy(ctx, key, m)
}

// Prepare implements snapshots.Snapshotter. A layer being unpacked that a
// Skiff image serves is committed at once, empty, and reported as already
// existing, which tells containerd to skip downloading and applying it.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	var info snapshots.Info
	for _, o := range opts {
		if err := o(&info); err != nil {
			return nil, err
		}
	}
	if target := info.Labels[LabelTarget]; target != "" {
		l, ok, err := s.resolve.Resolve(ctx, info.Labels)
		if err == nil && ok {
			err = s.mounts.Fetch(ctx, l.Bootstrap)
		}
		switch {
		case err == nil && ok:
			return nil, s.commitLazy(ctx, key, parent, target, l, info.Labels)
		case err != nil && info.Labels[LabelBootstrap] != "":
			// The layer is a bootstrap tar: unpacking it as usual
			// would give the container a rootfs holding one file.
			return nil, fmt.Errorf("prepare %s: skiff image: %w", target, err)
		case err != nil:
			s.log.Warn("snapshot: skiff conversion unusable, unpacking the layer as usual", "target", target, "image", info.Labels[LabelImageRef], "err", err)
		}
	}
	m, err := s.base.Prepare(ctx, key, parent, opts...)
	if err != nil {
		return nil, err
	}
	return s.lazy(ctx, key, m)
}

// commitLazy records target as a committed, empty snapshot standing for
// layer l and returns the ErrAlreadyExists containerd expects.
func (s *Snapshotter) commitLazy(ctx context.Context, key, parent, target string, l Layer, labels map[string]string) error {
	own := make(map[string]string, len(labels)+2)
	for k, v := range labels {
		own[k] = v
	}
	own[LabelBootstrap] = l.Bootstrap.String()
	own[LabelLayer] = strconv.Itoa(l.Index) + "/" + strconv.Itoa(l.Count)
	if _, err := s.base.Prepare(ctx, key, parent, snapshots.WithLabels(own)); err != nil {
		return fmt.Errorf("prepare lazy layer %s: %w", target, err)
	}
	if err := s.base.Commit(ctx, target, key, snapshots.WithLabels(own)); err != nil {
		if rerr := s.base.Remove(ctx, key); rerr != nil {
			s.log.Warn("snapshot: remove after failed commit", "key", key, "err", rerr)
		}
		if !errdefs.IsAlreadyExists(err) {
			return fmt.Errorf("commit lazy layer %s: %w", target, err)
		}
	}
	s.log.Info("snapshot: layer served lazily", "target", target, "bootstrap", l.Bootstrap, "layer", own[LabelLayer], "image", labels[LabelImageRef])
	return fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
}

// View implements snapshots.Snapshotter.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	m, err := s.base.View(ctx, key, parent, opts...)
	if err != nil {
		return nil, err
	}
	return s.lazy(ctx, key, m)
}

// Remove implements snapshots.Snapshotter. Removing the last snapshot of
// a Skiff image releases it: its filesystem is unmounted and its local
// state dropped.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	info, err := s.base.Stat(ctx, key)
	if err != nil {
		return err
	}
	if err := s.base.Remove(ctx, key); err != nil {
		return err
	}
	d, ok := info.Labels[LabelBootstrap]
	if !ok {
		return nil
	}
	inUse := false
	err = s.base.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		if i.Labels[LabelBootstrap] == d {
			inUse = true
		}
		return nil
	})
	if err != nil || inUse {
		return nil
	}
	bd, err := bootstrap.ParseDigest(d)
	if err != nil {
		return nil
	}
	if err := s.mounts.Release(ctx, bd); err != nil {
		s.log.Warn("snapshot: release unused image", "bootstrap", d, "err", err)
	}
	return nil
}

// Cleanup implements snapshots.Cleaner.
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	if c, ok := s.base.(snapshots.Cleaner); ok {
		return c.Cleanup(ctx)
	}
	return nil
}

// Close implements snapshots.Snapshotter.
func (s *Snapshotter) Close() error { return s.base.Close() }

// lazy rewrites the overlay snapshotter's mounts for key so that the
// nearest lazily served ancestor and everything below it is replaced by
// the image's FUSE mount. Each lower directory of the overlay mount is one
// ancestor, nearest first, so ancestors and lower directories line up.
func (s *Snapshotter) lazy(ctx context.Context, key string, ms []mount.Mount) ([]mount.Mount, error) {
	info, err := s.base.Stat(ctx, key)
	if err != nil {
		return nil, err
	}
	var chain []snapshots.Info // ancestors, nearest first
	for p := info.Parent; p != ""; {
		pi, err := s.base.Stat(ctx, p)
		if err != nil {
			return nil, fmt.Errorf("mounts of %s: parent %s: %w", key, p, err)
		}
		chain = append(chain, pi)
		p = pi.Parent
	}
	depth := slices.IndexFunc(chain, isLazy)
	if depth < 0 {
		return ms, nil
	}
	top := chain[depth]
	if idx, count, ok := parseLayer(top.Labels[LabelLayer]); !ok || idx != count-1 {
		// A lower layer of a lazily served image, shared by an image
		// that adds layers of its own: those need the real content.
		if err := s.materialize(ctx, chain, lowerDirs(ms)); err != nil {
			return nil, fmt.Errorf("mounts of %s: %w", key, err)
		}
		return s.lazy(ctx, key, ms)
	}
	d, err := bootstrap.ParseDigest(top.Labels[LabelBootstrap])
	if err != nil {
		return nil, fmt.Errorf("mounts of %s: snapshot %s: %w", key, top.Name, err)
	}
	mp, err := s.mounts.Mount(ctx, d)
	if err != nil {
		return nil, fmt.Errorf("mounts of %s: %w", key, err)
	}
	return rewrite(ms, depth, mp)
}

func isLazy(i snapshots.Info) bool {
	_, ok := i.Labels[LabelBootstrap]
	return ok
}

// lowerDirs returns the directories of a snapshot's ancestors, nearest
// first, from the overlay snapshotter's mounts.
func lowerDirs(ms []mount.Mount) []string {
	if len(ms) != 1 {
		return nil
	}
	for _, o := range ms[0].Options {
		if l, ok := strings.CutPrefix(o, "lowerdir="); ok {
			return strings.Split(l, ":")
		}
	}
	if ms[0].Type == "bind" && slices.Contains(ms[0].Options, "ro") {
		return []string{ms[0].Source}
	}
	return nil
}

// materialize downloads and applies every lazily served layer of chain
// (ancestors, nearest first, with their directories in dirs), bottom up,
// and drops their lazy labels: they become ordinary overlay layers.
func (s *Snapshotter) materialize(ctx context.Context, chain []snapshots.Info, dirs []string) error {
	if len(dirs) != len(chain) {
		return fmt.Errorf("materialize: %d ancestors but %d lower directories", len(chain), len(dirs))
	}
	s.materializing.Lock()
	defer s.materializing.Unlock()
	for i := len(chain) - 1; i >= 0; i-- {
		info, err := s.base.Stat(ctx, chain[i].Name)
		if err != nil {
			return err
		}
		if !isLazy(info) {
			continue
		}
		ref, ld := info.Labels[LabelImageRef], info.Labels[LabelLayerDigest]
		if ref == "" || ld == "" {
			return fmt.Errorf("materialize %s: snapshot does not say which image layer it is", info.Name)
		}
		rc, err := s.layers.Uncompressed(ctx, ref, ld)
		if err != nil {
			return fmt.Errorf("materialize %s: %w", info.Name, err)
		}
		_, err = archive.Apply(ctx, dirs[i], rc, archive.WithConvertWhiteout(archive.OverlayConvertWhiteout), archive.WithParents(dirs[i+1:]))
		rc.Close()
		if err != nil {
			return fmt.Errorf("materialize %s: apply layer %s: %w", info.Name, ld, err)
		}
		delete(info.Labels, LabelBootstrap)
		delete(info.Labels, LabelLayer)
		if _, err := s.base.Update(ctx, info, "labels."+LabelBootstrap, "labels."+LabelLayer); err != nil {
			return fmt.Errorf("materialize %s: %w", info.Name, err)
		}
		s.log.Info("snapshot: materialized lower layer of a lazily served image", "snapshot", info.Name, "image", ref, "layer", ld)
	}
	return nil
}

// rewrite replaces lower directories depth and below of an overlay mount
// (or the read-only bind of a single parent) by dir.
func rewrite(ms []mount.Mount, depth int, dir string) ([]mount.Mount, error) {
	if len(ms) != 1 {
		return nil, fmt.Errorf("rewrite mounts: want one mount, have %d", len(ms))
	}
	m := ms[0]
	switch m.Type {
	case "bind":
		if depth != 0 {
			return nil, fmt.Errorf("rewrite mounts: bind mount with lazy layer at depth %d", depth)
		}
		m.Source = dir
		return []mount.Mount{m}, nil
	case "overlay":
	default:
		return nil, fmt.Errorf("rewrite mounts: unexpected mount type %q", m.Type)
	}
	opts := make([]string, 0, len(m.Options))
	upper := false
	var lowers []string
	for _, o := range m.Options {
		if l, ok := strings.CutPrefix(o, "lowerdir="); ok {
			lowers = strings.Split(l, ":")
			continue
		}
		if strings.HasPrefix(o, "upperdir=") {
			upper = true
		}
		opts = append(opts, o)
	}
	if depth >= len(lowers) {
		return nil, fmt.Errorf("rewrite mounts: lazy layer at depth %d of %d lower directories", depth, len(lowers))
	}
	lowers = append(lowers[:depth:depth], dir)
	if !upper && len(lowers) == 1 {
		// overlayfs refuses a single lower directory without an upper.
		return []mount.Mount{{Type: "bind", Source: dir, Options: []string{"ro", "rbind"}}}, nil
	}
	m.Options = append(opts, "lowerdir="+strings.Join(lowers, ":"))
	return []mount.Mount{m}, nil
}

func parseLayer(s string) (idx, count int, ok bool) {
	a, b, ok := strings.Cut(s, "/")
	if !ok {
		return 0, 0, false
	}
	idx, err1 := strconv.Atoi(a)
	count, err2 := strconv.Atoi(b)
	if err := errors.Join(err1, err2); err != nil || idx < 0 || idx >= count {
		return 0, 0, false
	}
	return idx, count, true
}
