// Package image is Skiff's side of OCI images: resolving references
// (registries and oci: layouts), building the Skiff manifest whose one layer
// carries the bootstrap (and the Skiff index of a multi-platform image, one
// such manifest per platform), and reading that bootstrap back.
package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// Annotations that mark Skiff images, on the manifest and on the bootstrap
// layer's descriptor. Tools recognise a Skiff image by AnnotationBootstrap.
const (
	// AnnotationBootstrap is set on the bootstrap layer (value: the format
	// version) and on the manifest, so it also shows in referrers listings.
	AnnotationBootstrap = "dev.skiff.bootstrap"
	// AnnotationBootstrapDigest is the sha256 of the bootstrap blob itself
	// (not of the tar that wraps it): the key nodes fetch it by.
	AnnotationBootstrapDigest = "dev.skiff.bootstrap.digest"
	// AnnotationSnapshotBootstrap repeats the bootstrap digest on the layer
	// under the containerd.io/snapshot/ prefix, the only annotations
	// containerd forwards to a remote snapshotter as snapshot labels.
	AnnotationSnapshotBootstrap = "containerd.io/snapshot/skiff.bootstrap.digest"
	// AnnotationSourceDigest is the manifest digest of the converted image.
	AnnotationSourceDigest = "dev.skiff.source.digest"
	// FormatVersion is the value of AnnotationBootstrap.
	FormatVersion = "1"
	// BootstrapFile is the bootstrap's name inside the layer tar.
	BootstrapFile = "skiff.boot"
	// TagSuffix is appended to a source tag to name its Skiff image.
	TagSuffix = "-skiff"
)

const (
	layoutPrefix      = "oci:"
	annotationRefName = "org.opencontainers.image.ref.name"
)

// ParseLayout splits "oci:DIR:TAG" (TAG optional) and reports whether ref
// names an OCI image layout at all.
func ParseLayout(ref string) (dir, tag string, ok bool) {
	rest, ok := strings.CutPrefix(ref, layoutPrefix)
	if !ok {
		return "", "", false
	}
	if i := strings.LastIndexByte(rest, ':'); i >= 0 {
		return rest[:i], rest[i+1:], true
	}
	return rest, "", true
}

func remoteOptions(ctx context.Context) []remote.Option {
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(authn.DefaultKeychain),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: runtime.GOARCH}),
		remote.WithTransport(Transport),
	}
}

// Transport is the HTTP transport of every registry request: go-
// containerregistry's default, each request a client span with its trace
// context in the request's headers.
var Transport http.RoundTripper = otelhttp.NewTransport(remote.DefaultTransport)

// ParseReference parses a registry reference. Registries on localhost and
// 127.0.0.1 are spoken to over plain HTTP.
func ParseReference(ref string) (name.Reference, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("parse reference %q: %w", ref, err)
	}
	return r, nil
}

// Digest returns the digest of the manifest that ref, a registry
// reference, names now.
func Digest(ctx context.Context, ref string) (v1.Hash, error) {
	r, err := ParseReference(ref)
	if err != nil {
		return v1.Hash{}, err
	}
	desc, err := remote.Head(r, remoteOptions(ctx)...)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("resolve %s: %w", ref, err)
	}
	return desc.Digest, nil
}

// Load resolves ref, a registry reference or "oci:DIR:TAG", to an image.
// An index resolves to its linux image for this machine's architecture.
func Load(ctx context.Context, ref string) (v1.Image, error) {
	if dir, tag, ok := ParseLayout(ref); ok {
		return loadLayout(dir, tag)
	}
	r, err := ParseReference(ref)
	if err != nil {
		return nil, err
	}
	img, err := remote.Image(r, remoteOptions(ctx)...)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", ref, err)
	}
	return img, nil
}

func loadLayout(dir, tag string) (v1.Image, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("open layout %s: %w", dir, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("open layout %s: %w", dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("open layout %s: %w", dir, err)
	}
	for _, d := range im.Manifests {
		if tag != "" && d.Annotations[annotationRefName] != tag {
			continue
		}
		if tag == "" && len(im.Manifests) != 1 {
			return nil, fmt.Errorf("layout %s holds %d images: name one as oci:%s:TAG", dir, len(im.Manifests), dir)
		}
		switch {
		case d.MediaType.IsImage():
			img, err := idx.Image(d.Digest)
			if err != nil {
				return nil, fmt.Errorf("open layout %s: image %s: %w", dir, d.Digest, err)
			}
			return img, nil
		case d.MediaType.IsIndex():
			child, err := idx.ImageIndex(d.Digest)
			if err != nil {
				return nil, fmt.Errorf("open layout %s: %w", dir, err)
			}
			img, err := platformImage(child)
			if err != nil {
				return nil, fmt.Errorf("open layout %s: index %s: %w", dir, d.Digest, err)
			}
			return img, nil
		}
	}
	return nil, fmt.Errorf("layout %s has no image tagged %q", dir, tag)
}

func platformImage(idx v1.ImageIndex) (v1.Image, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("index manifest: %w", err)
	}
	for _, d := range im.Manifests {
		if d.Platform == nil || (d.Platform.OS == "linux" && d.Platform.Architecture == runtime.GOARCH) {
			img, err := idx.Image(d.Digest)
			if err != nil {
				return nil, fmt.Errorf("image %s: %w", d.Digest, err)
			}
			return img, nil
		}
	}
	return nil, fmt.Errorf("no linux/%s image in index", runtime.GOARCH)
}

// Write stores img at ref, a registry reference or "oci:DIR:TAG". A layout
// is created if missing, and an image already carrying TAG is replaced.
// When img has a subject, registries without the referrers API get the
// OCI tag-schema fallback index updated as well.
func Write(ctx context.Context, ref string, img v1.Image) error {
	if dir, tag, ok := ParseLayout(ref); ok {
		return writeLayout(dir, tag, func(p layout.Path, m match.Matcher, opts ...layout.Option) error {
			return p.ReplaceImage(img, m, opts...)
		})
	}
	r, err := ParseReference(ref)
	if err != nil {
		return err
	}
	if err := remote.Write(r, img, remoteOptions(ctx)...); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	return nil
}

// writeLayout has replace put an image or index under tag in the layout
// at dir, created if missing, in place of what the tag named.
func writeLayout(dir, tag string, replace func(p layout.Path, m match.Matcher, opts ...layout.Option) error) error {
	p, err := layout.FromPath(dir)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("open layout %s: %w", dir, err)
		}
		if p, err = layout.Write(dir, empty.Index); err != nil {
			return fmt.Errorf("create layout %s: %w", dir, err)
		}
	}
	var opts []layout.Option
	if tag != "" {
		opts = append(opts, layout.WithAnnotations(map[string]string{annotationRefName: tag}))
	}
	if err := replace(p, match.Annotation(annotationRefName, tag), opts...); err != nil {
		return fmt.Errorf("write layout %s: %w", dir, err)
	}
	return nil
}

// SkiffTag returns the reference under which the Skiff conversion of ref
// is published: the same repository with TagSuffix appended to the tag.
func SkiffTag(ref string) (string, error) {
	if dir, tag, ok := ParseLayout(ref); ok {
		if tag == "" {
			return "", fmt.Errorf("%s has no tag to derive a Skiff tag from", ref)
		}
		return layoutPrefix + dir + ":" + tag + TagSuffix, nil
	}
	r, err := ParseReference(ref)
	if err != nil {
		return "", err
	}
	t, ok := r.(name.Tag)
	if !ok {
		return "", fmt.Errorf("%s is a digest reference: name a tag", ref)
	}
	return t.Context().Tag(t.TagStr() + TagSuffix).String(), nil
}

// New builds the Skiff image for a converted source: the source's config
// (runtime settings, labels) with one layer, a tar holding the bootstrap
// blob, annotated so tools recognise it, and the source manifest as its
// subject so the Skiff image is found as a referrer of the original.
func New(src *v1.ConfigFile, bootstrapBlob []byte, subject v1.Descriptor) (v1.Image, error) {
	d := bootstrap.Sum(bootstrapBlob)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: BootstrapFile, Mode: 0o444, Size: int64(len(bootstrapBlob)), Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
		return nil, fmt.Errorf("build bootstrap layer: %w", err)
	}
	if _, err := tw.Write(bootstrapBlob); err != nil {
		return nil, fmt.Errorf("build bootstrap layer: %w", err)
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("build bootstrap layer: %w", err)
	}
	cfg := src.DeepCopy()
	cfg.RootFS = v1.RootFS{Type: "layers"}
	cfg.History = nil
	img, err := mutate.ConfigFile(mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON), cfg)
	if err != nil {
		return nil, fmt.Errorf("build skiff image: %w", err)
	}
	layerAnn := map[string]string{AnnotationBootstrap: FormatVersion, AnnotationBootstrapDigest: d.String(), AnnotationSnapshotBootstrap: d.String()}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:       static.NewLayer(buf.Bytes(), types.OCIUncompressedLayer),
		Annotations: layerAnn,
		History:     v1.History{Created: src.Created, CreatedBy: "skiff convert", Comment: "bootstrap " + d.String() + " of " + subject.Digest.String()},
		MediaType:   types.OCIUncompressedLayer,
	})
	if err != nil {
		return nil, fmt.Errorf("build skiff image: %w", err)
	}
	img = mutate.Annotations(img, map[string]string{
		AnnotationBootstrap:       FormatVersion,
		AnnotationBootstrapDigest: d.String(),
		AnnotationSourceDigest:    subject.Digest.String(),
	}).(v1.Image)
	return mutate.Subject(img, subject).(v1.Image), nil
}

// IsSkiff reports whether a manifest describes a Skiff image.
func IsSkiff(m *v1.Manifest) bool {
	_, ok := m.Annotations[AnnotationBootstrap]
	return ok
}

// BootstrapLayer returns the bootstrap layer of a Skiff image and the
// digest of the bootstrap blob it carries.
func BootstrapLayer(img v1.Image) (v1.Layer, bootstrap.Digest, error) {
	m, err := img.Manifest()
	if err != nil {
		return nil, bootstrap.Digest{}, fmt.Errorf("read manifest: %w", err)
	}
	for _, l := range m.Layers {
		if _, ok := l.Annotations[AnnotationBootstrap]; !ok {
			continue
		}
		d, err := bootstrap.ParseDigest(l.Annotations[AnnotationBootstrapDigest])
		if err != nil {
			return nil, d, fmt.Errorf("bootstrap layer %s: %w", l.Digest, err)
		}
		layer, err := img.LayerByDigest(l.Digest)
		if err != nil {
			return nil, d, fmt.Errorf("bootstrap layer %s: %w", l.Digest, err)
		}
		return layer, d, nil
	}
	return nil, bootstrap.Digest{}, errors.New("not a Skiff image: no layer is annotated " + AnnotationBootstrap)
}

// ReadBootstrapBlob extracts the bootstrap blob from the layer tar and
// checks it against its digest.
func ReadBootstrapBlob(r io.Reader, want bootstrap.Digest) ([]byte, error) {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err != nil {
			return nil, fmt.Errorf("read bootstrap layer: %w", err)
		}
		if hdr.Name != BootstrapFile {
			continue
		}
		if hdr.Size > bootstrap.MaxRawSize {
			return nil, fmt.Errorf("read bootstrap layer: bootstrap of %d bytes exceeds the limit", hdr.Size)
		}
		blob, err := io.ReadAll(tr)
		if err != nil {
			return nil, fmt.Errorf("read bootstrap layer: %w", err)
		}
		if got := bootstrap.Sum(blob); got != want {
			return nil, fmt.Errorf("read bootstrap layer: bootstrap digest is %s, manifest says %s", got, want)
		}
		return blob, nil
	}
}

// LoadBootstrap loads and decodes the bootstrap of the Skiff image at ref.
func LoadBootstrap(ctx context.Context, ref string) (*bootstrap.Bootstrap, bootstrap.Digest, error) {
	img, err := Load(ctx, ref)
	if err != nil {
		return nil, bootstrap.Digest{}, err
	}
	b, d, err := ImageBootstrap(img)
	if err != nil {
		return nil, d, fmt.Errorf("%s: %w", ref, err)
	}
	return b, d, nil
}

// ImageBootstrap reads and decodes the bootstrap that Skiff image img
// carries, checked against the digest its manifest names.
func ImageBootstrap(img v1.Image) (*bootstrap.Bootstrap, bootstrap.Digest, error) {
	layer, d, err := BootstrapLayer(img)
	if err != nil {
		return nil, d, err
	}
	rc, err := layer.Uncompressed()
	if err != nil {
		return nil, d, fmt.Errorf("fetch bootstrap: %w", err)
	}
	defer rc.Close()
	blob, err := ReadBootstrapBlob(rc, d)
	if err != nil {
		return nil, d, err
	}
	b, err := bootstrap.Decode(blob)
	if err != nil {
		return nil, d, err
	}
	return b, d, nil
}
