package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"golang.org/x/sync/errgroup"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// LiveOptions tune LiveBootstraps.
type LiveOptions struct {
	// Concurrency bounds the registry requests in flight; default 8.
	Concurrency int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Live is what LiveBootstraps found.
type Live struct {
	// Bootstraps maps the digest of each bootstrap found to the Skiff
	// manifests naming it, as repository@digest.
	Bootstraps map[bootstrap.Digest][]string
	// Targets counts the Skiff manifests found under each target, by the
	// target as given. One counting none is suspect: a wrong name, a
	// catalog filtered by permissions, or a registry that lost its images.
	Targets      map[string]int
	Repositories int // repositories searched
	Manifests    int // manifests read
}

// Digests returns the bootstrap digests found, in order.
func (l *Live) Digests() []bootstrap.Digest {
	ds := make([]bootstrap.Digest, 0, len(l.Bootstraps))
	for d := range l.Bootstraps {
		ds = append(ds, d)
	}
	slices.SortFunc(ds, func(a, b bootstrap.Digest) int { return bytes.Compare(a[:], b[:]) })
	return ds
}

// ReadBootstrap reads the live bootstrap d from a Skiff manifest that
// names it, for a collector whose store does not hold it (see
// gc.Options.ReadMissing).
func (l *Live) ReadBootstrap(ctx context.Context, d bootstrap.Digest) (*bootstrap.Bootstrap, error) {
	refs := l.Bootstraps[d]
	if len(refs) == 0 {
		return nil, fmt.Errorf("read bootstrap %s: no live image names it", d)
	}
	var errs []error
	for _, ref := range refs {
		b, got, err := LoadBootstrap(ctx, ref)
		if err == nil && got != d {
			err = fmt.Errorf("%s: carries bootstrap %s", ref, got)
		}
		if err == nil {
			return b, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("read bootstrap %s: %w", d, errors.Join(errs...))
}

// maxIndexDepth bounds how deep indexes nested in indexes (and referrers
// listings, which count as indexes) are followed. Deeper nesting is an
// error: what lies below might be a live image.
const maxIndexDepth = 4

// LiveBootstraps returns the bootstraps of every Skiff image that the
// given registries hold, for garbage collection of the store: what it
// misses, the collector deletes. A target "host[:port]" stands for every
// repository the registry's catalog lists, "host[:port]/repo" for that
// repository. In each repository it reads the manifest of every tag,
// referrers tag-schema fallback tags ("sha256-<hex>") included, and the
// children of every index, and asks for the referrers of every image and
// index, since registries with the referrers API keep no fallback tags.
// Registries on localhost and 127.0.0.1 are spoken to over plain HTTP, as
// everywhere in this package.
func LiveBootstraps(ctx context.Context, targets []string, opts LiveOptions) (*Live, error) {
	if len(targets) == 0 {
		return nil, errors.New("find live images: no registry or repository named")
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 8
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	f := &finder{
		ropts: remoteOptions(ctx),
		log:   opts.Logger,
		seen:  map[string]bool{},
		live:  &Live{Bootstraps: map[bootstrap.Digest][]string{}, Targets: map[string]int{}},
	}
	for _, t := range targets {
		f.live.Targets[t] = 0
	}
	repos, err := f.repositories(ctx, targets, opts.Concurrency)
	if err != nil {
		return nil, err
	}
	f.live.Repositories = len(repos)
	f.targets = map[string][]string{}
	for _, r := range repos {
		f.targets[r.repo.String()] = r.targets
	}
	type tagRef struct {
		repo name.Repository
		tag  string
	}
	var mu sync.Mutex
	var tags []tagRef
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.Concurrency)
	for _, r := range repos {
		g.Go(func() error {
			ts, err := remote.List(r.repo, f.opts(gctx)...)
			if notFound(err) && !r.named {
				return nil // emptied since the catalog listed it
			}
			if err != nil {
				return fmt.Errorf("find live images: list tags of %s: %w", r.repo, err)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, t := range ts {
				tags = append(tags, tagRef{r.repo, t})
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(opts.Concurrency)
	for _, t := range tags {
		g.Go(func() error { return f.tag(gctx, t.repo, t.tag) })
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	for _, refs := range f.live.Bootstraps {
		slices.Sort(refs)
	}
	return f.live, nil
}

type finder struct {
	ropts []remote.Option
	log   *slog.Logger

	mu      sync.Mutex
	seen    map[string]bool     // repository@digest of manifests visited
	targets map[string][]string // by repository: the targets it is under
	live    *Live
}

type searchRepo struct {
	repo    name.Repository
	named   bool     // by a target, rather than listed by a catalog
	targets []string // that it is under, as given
}

// opts are the package's remote options, bound to ctx.
func (f *finder) opts(ctx context.Context) []remote.Option {
	return append(slices.Clip(f.ropts), remote.WithContext(ctx))
}

// repositories resolves targets to repositories, listing the catalog of
// each registry named alone.
func (f *finder) repositories(ctx context.Context, targets []string, concurrency int) ([]searchRepo, error) {
	var mu sync.Mutex
	byName := map[string]searchRepo{}
	add := func(r searchRepo) {
		mu.Lock()
		defer mu.Unlock()
		prev, ok := byName[r.repo.String()]
		if ok {
			r.named = r.named || prev.named
			r.targets = slices.Concat(prev.targets, r.targets)
		}
		byName[r.repo.String()] = r
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(concurrency)
	for _, target := range targets {
		t := strings.TrimSuffix(target, "/")
		if strings.Contains(t, "/") {
			// Default name options, as ParseReference: plain HTTP for
			// loopback registries.
			repo, err := name.NewRepository(t)
			if err != nil {
				return nil, fmt.Errorf("find live images: %q is no REGISTRY/REPOSITORY (without tag or digest): %w", t, err)
			}
			add(searchRepo{repo, true, []string{target}})
			continue
		}
		reg, err := name.NewRegistry(t)
		if err != nil {
			return nil, fmt.Errorf("find live images: %q is no registry: %w", t, err)
		}
		g.Go(func() error {
			names, err := remote.Catalog(gctx, reg, f.opts(gctx)...)
			if err != nil {
				return fmt.Errorf("find live images: catalog of %s: %w", reg, err)
			}
			for _, n := range names {
				repo, err := name.NewRepository(reg.RegistryStr() + "/" + n)
				if err != nil {
					return fmt.Errorf("find live images: catalog of %s lists %q: %w", reg, n, err)
				}
				add(searchRepo{repo, false, []string{target}})
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	repos := make([]searchRepo, 0, len(byName))
	for _, r := range byName {
		repos = append(repos, r)
	}
	slices.SortFunc(repos, func(a, b searchRepo) int { return strings.Compare(a.repo.String(), b.repo.String()) })
	return repos, nil
}

// first reports whether the manifest dg of repo is visited for the first
// time, and counts it.
func (f *finder) first(repo name.Repository, dg v1.Hash) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := repo.String() + "@" + dg.String()
	if f.seen[key] {
		return false
	}
	f.seen[key] = true
	return true
}

func (f *finder) tag(ctx context.Context, repo name.Repository, tag string) error {
	ref := repo.Tag(tag)
	desc, err := remote.Get(ref, f.opts(ctx)...)
	if notFound(err) {
		return nil // deleted since listed
	}
	if err != nil {
		return fmt.Errorf("find live images: get %s: %w", ref, err)
	}
	if !f.first(repo, desc.Digest) {
		return nil
	}
	return f.manifest(ctx, repo, desc, isFallbackTag(tag), 0)
}

// manifest looks for Skiff images in desc, a manifest of repo: desc
// itself, the children of an index, and the referrers of anything else.
// A fallback-tag index is the referrers listing itself.
func (f *finder) manifest(ctx context.Context, repo name.Repository, desc *remote.Descriptor, fallback bool, depth int) error {
	f.mu.Lock()
	f.live.Manifests++
	f.mu.Unlock()
	switch {
	case desc.MediaType.IsImage():
		m, err := v1.ParseManifest(bytes.NewReader(desc.Manifest))
		if err != nil {
			return fmt.Errorf("find live images: manifest %s@%s: %w", repo, desc.Digest, err)
		}
		if IsSkiff(m) {
			return f.skiff(repo, desc, m)
		}
	case desc.MediaType.IsIndex():
		im, err := v1.ParseIndexManifest(bytes.NewReader(desc.Manifest))
		if err != nil {
			return fmt.Errorf("find live images: index %s@%s: %w", repo, desc.Digest, err)
		}
		if err := f.children(ctx, repo, im.Manifests, depth); err != nil {
			return err
		}
	default:
		return nil
	}
	if fallback {
		return nil
	}
	return f.referrers(ctx, repo, desc.Digest, depth)
}

// children visits the manifests an index or referrers listing names.
func (f *finder) children(ctx context.Context, repo name.Repository, descs []v1.Descriptor, depth int) error {
	for _, d := range descs {
		if !d.MediaType.IsImage() && !d.MediaType.IsIndex() {
			continue
		}
		// Checked before the manifest counts as visited, so that it is
		// never skipped as seen without having been searched.
		if depth >= maxIndexDepth {
			return fmt.Errorf("find live images: %s lists manifests nested more than %d indexes deep, which might be live Skiff images", repo.Digest(d.Digest.String()), maxIndexDepth)
		}
		if !f.first(repo, d.Digest) {
			continue
		}
		ref := repo.Digest(d.Digest.String())
		child, err := remote.Get(ref, f.opts(ctx)...)
		if notFound(err) {
			// Deleting a Skiff manifest leaves it listed in its
			// source's fallback index; the deletion is what marks
			// the image for collection.
			f.log.Debug("find live images: listed manifest is gone", "manifest", ref.String())
			continue
		}
		if err != nil {
			return fmt.Errorf("find live images: get %s: %w", ref, err)
		}
		if err := f.manifest(ctx, repo, child, false, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// referrers visits the Skiff images among the referrers of manifest dg.
func (f *finder) referrers(ctx context.Context, repo name.Repository, dg v1.Hash, depth int) error {
	ref := repo.Digest(dg.String())
	idx, err := remote.Referrers(ref, f.opts(ctx)...)
	if err != nil {
		return fmt.Errorf("find live images: referrers of %s: %w", ref, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return fmt.Errorf("find live images: referrers of %s: %w", ref, err)
	}
	var skiff []v1.Descriptor
	for _, d := range im.Manifests {
		if _, ok := d.Annotations[AnnotationBootstrap]; ok {
			skiff = append(skiff, d)
		}
	}
	return f.children(ctx, repo, skiff, depth+1)
}

// skiff records the bootstrap of Skiff manifest m, read as LoadBootstrap
// reads it, or else from the manifest's own annotation. A Skiff manifest
// naming no bootstrap is an error: whatever it was converted into might
// be deleted under it.
func (f *finder) skiff(repo name.Repository, desc *remote.Descriptor, m *v1.Manifest) error {
	ref := repo.Digest(desc.Digest.String()).String()
	img, err := desc.Image()
	if err != nil {
		return fmt.Errorf("find live images: %s: %w", ref, err)
	}
	_, d, err := BootstrapLayer(img)
	if err != nil {
		var aerr error
		if d, aerr = bootstrap.ParseDigest(m.Annotations[AnnotationBootstrapDigest]); aerr != nil {
			return fmt.Errorf("find live images: Skiff manifest %s names no bootstrap (delete it if it is broken): %w; manifest annotation %s: %w", ref, err, AnnotationBootstrapDigest, aerr)
		}
		f.log.Warn("find live images: Skiff manifest's bootstrap layer is unusable; taking the manifest's annotation", "manifest", ref, "err", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.live.Bootstraps[d] = append(f.live.Bootstraps[d], ref)
	for _, t := range f.targets[repo.String()] {
		f.live.Targets[t]++
	}
	return nil
}

func notFound(err error) bool {
	var te *transport.Error
	return errors.As(err, &te) && te.StatusCode == http.StatusNotFound
}

// isFallbackTag reports whether tag is a referrers tag-schema fallback
// tag, "sha256-<hex>", under which the index of a manifest's referrers is
// kept.
func isFallbackTag(tag string) bool {
	alg, hex, ok := strings.Cut(tag, "-")
	if !ok || alg != "sha256" {
		return false
	}
	_, err := v1.NewHash(alg + ":" + hex)
	return err == nil
}
