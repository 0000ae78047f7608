// Package referrer finds the Skiff conversion of an ordinary image through
// the OCI referrers API, or its tag-schema fallback (what the distribution
// registry offers), so that users keep their image names: a node with the
// agent runs app:v1 lazily, a node without it pulls app:v1 as usual.
package referrer

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sync/singleflight"

	"github.com/skiff-dev/skiff/node-agent/internal/snapshot"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/image"
)

// negativeTTL is how long "this image has no Skiff conversion" is
// remembered: long enough that unpacking the layers of one image asks the
// registry once, short enough that a conversion published a moment later
// is used by the next pull.
const negativeTTL = 30 * time.Second

// lookupTimeout bounds a registry lookup shared by an image's layers.
const lookupTimeout = time.Minute

// maxFound bounds the manifests remembered; past it they are all
// forgotten, costing each image pulled again one more lookup.
const maxFound = 4096

// Resolver answers snapshot.Resolver from registry lookups, remembering
// results per manifest.
type Resolver struct {
	keys authn.Keychain
	log  *slog.Logger

	mu    sync.Mutex
	found map[string]*conversion // by repository@manifest-digest
	// lookups shares one registry query among the layers of an image,
	// which containerd prepares at once.
	lookups singleflight.Group
}

var (
	_ snapshot.Resolver = (*Resolver)(nil)
	_ snapshot.Layers   = (*Resolver)(nil)
)

// conversion is what is known about one source manifest.
type conversion struct {
	ok        bool
	bootstrap bootstrap.Digest
	layers    []string // the source manifest's layer digests, bottom first
	at        time.Time
}

// New returns a Resolver that authenticates to registries with keys, or
// with the host's Docker credentials (authn.DefaultKeychain) if nil.
func New(keys authn.Keychain, log *slog.Logger) *Resolver {
	if keys == nil {
		keys = authn.DefaultKeychain
	}
	if log == nil {
		log = slog.Default()
	}
	return &Resolver{keys: keys, log: log, found: map[string]*conversion{}}
}

// Resolve implements snapshot.Resolver. A layer of a Skiff image carries
// the bootstrap digest itself; a layer of an ordinary image is looked up
// by its image reference and manifest digest.
func (r *Resolver) Resolve(ctx context.Context, labels map[string]string) (snapshot.Layer, bool, error) {
	if v, ok := labels[snapshot.LabelBootstrap]; ok {
		d, err := bootstrap.ParseDigest(v)
		if err != nil {
			return snapshot.Layer{}, false, fmt.Errorf("label %s: %w", snapshot.LabelBootstrap, err)
		}
		return snapshot.Layer{Bootstrap: d, Index: 0, Count: 1}, true, nil
	}
	ref, md, ld := labels[snapshot.LabelImageRef], labels[snapshot.LabelManifestDigest], labels[snapshot.LabelLayerDigest]
	if ref == "" || md == "" || ld == "" {
		return snapshot.Layer{}, false, nil
	}
	c, err := r.lookup(ctx, ref, md)
	if err != nil || !c.ok {
		return snapshot.Layer{}, false, err
	}
	i := slices.Index(c.layers, ld)
	if i < 0 {
		return snapshot.Layer{}, false, fmt.Errorf("layer %s is not in manifest %s of %s", ld, md, ref)
	}
	return snapshot.Layer{Bootstrap: c.bootstrap, Index: i, Count: len(c.layers)}, true, nil
}

func (r *Resolver) lookup(ctx context.Context, ref, md string) (*conversion, error) {
	src, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", ref, err)
	}
	dref := src.Context().Digest(md)
	key := dref.String()
	r.mu.Lock()
	c, ok := r.found[key]
	r.mu.Unlock()
	if ok && (c.ok || time.Since(c.at) < negativeTTL) {
		return c, nil
	}
	v, err, _ := r.lookups.Do(key, func() (any, error) {
		// Shared with the image's other layers: one of them giving up
		// must not fail the rest, which would then be unpacked in full.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lookupTimeout)
		defer cancel()
		c, err := r.query(ctx, dref)
		if err != nil {
			return nil, err
		}
		r.mu.Lock()
		if len(r.found) >= maxFound {
			clear(r.found)
		}
		r.found[key] = c
		r.mu.Unlock()
		if c.ok {
			r.log.Info("referrer: found skiff conversion", "image", ref, "manifest", md, "bootstrap", c.bootstrap)
		}
		return c, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*conversion), nil
}

// query asks the registry for the referrers of dref and picks the Skiff
// image among them.
func (r *Resolver) query(ctx context.Context, dref name.Digest) (*conversion, error) {
	opts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(r.keys), remote.WithTransport(image.Transport)}
	idx, err := remote.Referrers(dref, opts...)
	if err != nil {
		return nil, fmt.Errorf("referrers of %s: %w", dref, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("referrers of %s: %w", dref, err)
	}
	c := &conversion{at: time.Now()}
	for _, desc := range im.Manifests {
		if _, ok := desc.Annotations[image.AnnotationBootstrap]; !ok {
			continue
		}
		d, err := bootstrap.ParseDigest(desc.Annotations[image.AnnotationBootstrapDigest])
		if err != nil {
			r.log.Warn("referrer: skiff referrer without a usable bootstrap digest", "image", dref, "referrer", desc.Digest, "err", err)
			continue
		}
		c.ok, c.bootstrap = true, d
		break
	}
	if !c.ok {
		return c, nil
	}
	desc, err := remote.Get(dref, opts...)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", dref, err)
	}
	m, err := v1.ParseManifest(bytes.NewReader(desc.Manifest))
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", dref, err)
	}
	for _, l := range m.Layers {
		c.layers = append(c.layers, l.Digest.String())
	}
	return c, nil
}

// Uncompressed implements snapshot.Layers.
func (r *Resolver) Uncompressed(ctx context.Context, imageRef, layerDigest string) (io.ReadCloser, error) {
	src, err := name.ParseReference(imageRef)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", imageRef, err)
	}
	l, err := remote.Layer(src.Context().Digest(layerDigest), remote.WithContext(ctx), remote.WithAuthFromKeychain(r.keys), remote.WithTransport(image.Transport))
	if err != nil {
		return nil, fmt.Errorf("layer %s of %s: %w", layerDigest, imageRef, err)
	}
	rc, err := l.Uncompressed()
	if err != nil {
		return nil, fmt.Errorf("layer %s of %s: %w", layerDigest, imageRef, err)
	}
	return rc, nil
}
