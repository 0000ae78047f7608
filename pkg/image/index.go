package image

import (
	"context"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// Platform is the image of one platform of a multi-platform index.
type Platform struct {
	Platform v1.Platform
	Image    v1.Image
}

// LoadIndex resolves ref, a registry reference or "oci:DIR:TAG", like
// Load, but when it names an index returns the index's descriptor and its
// images for every Linux platform it lists, in its order: the images
// clusters of several architectures run. Attestations (platform
// unknown/unknown), nested indexes and other operating systems are left
// out. When ref names a single image, the descriptor is nil and that
// image is the only one.
func LoadIndex(ctx context.Context, ref string) (*v1.Descriptor, []Platform, error) {
	var idx v1.ImageIndex
	var single v1.Image
	if dir, tag, ok := ParseLayout(ref); ok {
		p, err := layout.FromPath(dir)
		if err != nil {
			return nil, nil, fmt.Errorf("open layout %s: %w", dir, err)
		}
		root, err := p.ImageIndex()
		if err != nil {
			return nil, nil, fmt.Errorf("open layout %s: %w", dir, err)
		}
		if idx, err = layoutIndex(root, tag); err != nil {
			return nil, nil, fmt.Errorf("open layout %s: %w", dir, err)
		}
	} else {
		r, err := ParseReference(ref)
		if err != nil {
			return nil, nil, err
		}
		desc, err := remote.Get(r, remoteOptions(ctx)...)
		if err != nil {
			return nil, nil, fmt.Errorf("load %s: %w", ref, err)
		}
		if desc.MediaType.IsIndex() {
			idx, err = desc.ImageIndex()
		} else {
			single, err = desc.Image()
		}
		if err != nil {
			return nil, nil, fmt.Errorf("load %s: %w", ref, err)
		}
	}
	if idx == nil {
		if single == nil {
			img, err := Load(ctx, ref) // a layout's image
			if err != nil {
				return nil, nil, err
			}
			single = img
		}
		return nil, []Platform{{Image: single}}, nil
	}
	desc, err := partial.Descriptor(idx)
	if err != nil {
		return nil, nil, fmt.Errorf("load %s: %w", ref, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, nil, fmt.Errorf("load %s: %w", ref, err)
	}
	var out []Platform
	for _, d := range im.Manifests {
		if !d.MediaType.IsImage() || d.Platform == nil || d.Platform.OS != "linux" {
			continue
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			return nil, nil, fmt.Errorf("load %s: image %s: %w", ref, d.Digest, err)
		}
		out = append(out, Platform{Platform: *d.Platform, Image: img})
	}
	if len(out) == 0 {
		return nil, nil, fmt.Errorf("load %s: the index lists no linux image", ref)
	}
	return desc, out, nil
}

// layoutIndex returns the index tagged tag in a layout's root index, or
// nil when the tag names an image.
func layoutIndex(root v1.ImageIndex, tag string) (v1.ImageIndex, error) {
	im, err := root.IndexManifest()
	if err != nil {
		return nil, err
	}
	for _, d := range im.Manifests {
		if (tag == "" && len(im.Manifests) == 1) || (tag != "" && d.Annotations[annotationRefName] == tag) {
			if d.MediaType.IsIndex() {
				return root.ImageIndex(d.Digest)
			}
			return nil, nil
		}
	}
	return nil, nil // Load says what is wrong
}

// NewIndex builds the Skiff image of a multi-platform source: an OCI index
// of the Skiff image of each platform, with its platform, and the source
// index as its subject. Each image's own subject is its platform's source
// image, so a node that resolved the source index to its platform finds
// that platform's conversion among the referrers of what it resolved.
func NewIndex(subject v1.Descriptor, images []Platform) (v1.ImageIndex, error) {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range images {
		d, err := partial.Descriptor(p.Image)
		if err != nil {
			return nil, fmt.Errorf("build skiff index: %w", err)
		}
		platform := p.Platform
		d.Platform = &platform
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: p.Image, Descriptor: *d})
	}
	idx = mutate.Annotations(idx, map[string]string{
		AnnotationBootstrap:    FormatVersion,
		AnnotationSourceDigest: subject.Digest.String(),
	}).(v1.ImageIndex)
	return mutate.Subject(idx, subject).(v1.ImageIndex), nil
}

// WriteIndex stores idx and its images at ref, a registry reference or
// "oci:DIR:TAG", as Write stores an image.
func WriteIndex(ctx context.Context, ref string, idx v1.ImageIndex) error {
	if dir, tag, ok := ParseLayout(ref); ok {
		return writeLayout(dir, tag, func(p layout.Path, m match.Matcher, opts ...layout.Option) error {
			return p.ReplaceIndex(idx, m, opts...)
		})
	}
	r, err := ParseReference(ref)
	if err != nil {
		return err
	}
	if err := remote.WriteIndex(r, idx, remoteOptions(ctx)...); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	return nil
}

// Copy stores what registry reference from names, an image or an index
// with its images, at registry reference to (another tag, or another
// repository, whose blobs are mounted or copied as needed).
func Copy(ctx context.Context, from, to string) error {
	src, err := ParseReference(from)
	if err != nil {
		return err
	}
	dst, err := ParseReference(to)
	if err != nil {
		return err
	}
	desc, err := remote.Get(src, remoteOptions(ctx)...)
	if err != nil {
		return fmt.Errorf("copy %s: %w", from, err)
	}
	if desc.MediaType.IsIndex() {
		idx, err := desc.ImageIndex()
		if err == nil {
			err = remote.WriteIndex(dst, idx, remoteOptions(ctx)...)
		}
		if err != nil {
			return fmt.Errorf("copy %s to %s: %w", from, to, err)
		}
		return nil
	}
	img, err := desc.Image()
	if err == nil {
		err = remote.Write(dst, img, remoteOptions(ctx)...)
	}
	if err != nil {
		return fmt.Errorf("copy %s to %s: %w", from, to, err)
	}
	return nil
}

// PlatformBootstrap is the bootstrap of one platform's Skiff image.
type PlatformBootstrap struct {
	Platform  v1.Platform // zero for a single image
	Bootstrap *bootstrap.Bootstrap
	Digest    bootstrap.Digest
}

// LoadBootstraps loads the bootstrap of the Skiff image at ref or, when
// ref names a Skiff index, of every platform's image in it: what checking
// or preheating a multi-platform image is about.
func LoadBootstraps(ctx context.Context, ref string) ([]PlatformBootstrap, error) {
	_, images, err := LoadIndex(ctx, ref)
	if err != nil {
		return nil, err
	}
	out := make([]PlatformBootstrap, 0, len(images))
	for _, p := range images {
		b, d, err := ImageBootstrap(p.Image)
		if err != nil {
			if p.Platform.OS != "" {
				return nil, fmt.Errorf("%s (%s): %w", ref, p.Platform.String(), err)
			}
			return nil, fmt.Errorf("%s: %w", ref, err)
		}
		out = append(out, PlatformBootstrap{Platform: p.Platform, Bootstrap: b, Digest: d})
	}
	return out, nil
}
