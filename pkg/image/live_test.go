package image_test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/image"
)

func sourceImage(t *testing.T, content string) v1.Image {
	t.Helper()
	l, err := fixture.Layer(fixture.Gzip, []fixture.Entry{fixture.File("f", 0o644, content)})
	if err != nil {
		t.Fatal(err)
	}
	img, err := fixture.Image(l)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// skiffOf builds the Skiff image of src around a stand-in bootstrap blob
// and returns it with the bootstrap's digest.
func skiffOf(t *testing.T, src v1.Image, blob string) (v1.Image, bootstrap.Digest) {
	t.Helper()
	cfg, err := src.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	subject, err := partial.Descriptor(src)
	if err != nil {
		t.Fatal(err)
	}
	img, err := image.New(cfg, []byte(blob), *subject)
	if err != nil {
		t.Fatal(err)
	}
	return img, bootstrap.Sum([]byte(blob))
}

func write(t *testing.T, ref string, img v1.Image) {
	t.Helper()
	if err := image.Write(context.Background(), ref, img); err != nil {
		t.Fatal(err)
	}
}

// TestLiveBootstraps: on a real distribution registry (no referrers API),
// the bootstraps of Skiff images are found whether they are tagged or
// only listed in the referrers fallback index of an index's child; a
// deleted Skiff manifest, still listed in its fallback index, is not
// live; a whole registry is searched through its catalog.
func TestLiveBootstraps(t *testing.T) {
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	ctx := context.Background()

	// app: a tagged source and its tagged Skiff image.
	app := sourceImage(t, "app")
	write(t, reg.Addr+"/app:v1", app)
	appSkiff, appBoot := skiffOf(t, app, "bootstrap of app")
	write(t, reg.Addr+"/app:v1-skiff", appSkiff)

	// multi: a tagged index whose linux/amd64 child was converted, the
	// Skiff image pushed by digest only, as its referrer.
	amd, arm := sourceImage(t, "amd64"), sourceImage(t, "arm64")
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
	)
	multiTag, err := name.NewTag(reg.Addr + "/multi:v2")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(multiTag, idx, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	multiSkiff, multiBoot := skiffOf(t, amd, "bootstrap of multi")
	multiDigest, err := multiSkiff.Digest()
	if err != nil {
		t.Fatal(err)
	}
	write(t, reg.Addr+"/multi@"+multiDigest.String(), multiSkiff)

	// gone: converted, then the Skiff manifest deleted.
	gone := sourceImage(t, "gone")
	write(t, reg.Addr+"/gone:v3", gone)
	goneSkiff, _ := skiffOf(t, gone, "bootstrap of gone")
	write(t, reg.Addr+"/gone:v3-skiff", goneSkiff)
	goneDigest, err := goneSkiff.Digest()
	if err != nil {
		t.Fatal(err)
	}
	goneRef, err := name.NewDigest(reg.Addr + "/gone@" + goneDigest.String())
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Delete(goneRef, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		targets []string
		want    []bootstrap.Digest
		repos   int
		skiff   map[string]int // Skiff manifests by target
	}{
		{"whole registry", []string{reg.Addr}, []bootstrap.Digest{appBoot, multiBoot}, 3, map[string]int{reg.Addr: 2}},
		{"one repository", []string{reg.Addr + "/app"}, []bootstrap.Digest{appBoot}, 1, map[string]int{reg.Addr + "/app": 1}},
		{"referrer of an index child", []string{reg.Addr + "/multi/"}, []bootstrap.Digest{multiBoot}, 1, map[string]int{reg.Addr + "/multi/": 1}},
		{"deleted", []string{reg.Addr + "/gone"}, nil, 1, map[string]int{reg.Addr + "/gone": 0}},
		{"registry and one of its repositories", []string{reg.Addr + "/app", reg.Addr}, []bootstrap.Digest{appBoot, multiBoot}, 3, map[string]int{reg.Addr + "/app": 1, reg.Addr: 2}},
		{"registry and a repository without Skiff images", []string{reg.Addr, reg.Addr + "/gone"}, []bootstrap.Digest{appBoot, multiBoot}, 3, map[string]int{reg.Addr: 2, reg.Addr + "/gone": 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			live, err := image.LiveBootstraps(ctx, tt.targets, image.LiveOptions{})
			if err != nil {
				t.Fatal(err)
			}
			want := slices.Clone(tt.want)
			slices.SortFunc(want, func(a, b bootstrap.Digest) int { return strings.Compare(a.Hex(), b.Hex()) })
			if got := live.Digests(); !slices.Equal(got, want) {
				t.Errorf("bootstraps %v, want %v", got, want)
			}
			if live.Repositories != tt.repos {
				t.Errorf("searched %d repositories, want %d", live.Repositories, tt.repos)
			}
			if !maps.Equal(live.Targets, tt.skiff) {
				t.Errorf("Skiff manifests by target %v, want %v", live.Targets, tt.skiff)
			}
		})
	}
	if refs := mustLive(t, reg.Addr+"/app").Bootstraps[appBoot]; len(refs) != 1 || !strings.HasPrefix(refs[0], reg.Addr+"/app@sha256:") {
		t.Errorf("app's bootstrap named by %v, want its Skiff manifest", refs)
	}

	for _, targets := range [][]string{
		nil,
		{reg.Addr + "/missing"}, // a typo must not make every image look dead
		{reg.Addr + "/app:v1"},
		{"127.0.0.1:1"},
	} {
		if _, err := image.LiveBootstraps(ctx, targets, image.LiveOptions{}); err == nil {
			t.Errorf("LiveBootstraps(%q) succeeded, want an error", targets)
		}
	}
}

func mustLive(t *testing.T, targets ...string) *image.Live {
	t.Helper()
	live, err := image.LiveBootstraps(context.Background(), targets, image.LiveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return live
}

// skiffLike builds a Skiff image without a subject around blob, its
// bootstrap layer and manifest annotated as given.
func skiffLike(t *testing.T, blob []byte, layerAnn, manifestAnn map[string]string) v1.Image {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: image.BootstrapFile, Mode: 0o444, Size: int64(len(blob)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(blob); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	img, err := mutate.Append(mutate.MediaType(empty.Image, types.OCIManifestSchema1), mutate.Addendum{
		Layer:       static.NewLayer(buf.Bytes(), types.OCIUncompressedLayer),
		Annotations: layerAnn,
		MediaType:   types.OCIUncompressedLayer,
	})
	if err != nil {
		t.Fatal(err)
	}
	return mutate.Annotations(img, manifestAnn).(v1.Image)
}

// TestLiveBootstrapsFailClosed: what could hide a live image is an error,
// never a warning: a Skiff manifest naming no bootstrap, and indexes
// nested too deep to follow. A Skiff manifest whose bootstrap layer lacks
// its digest falls back to the manifest's annotation.
func TestLiveBootstrapsFailClosed(t *testing.T) {
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	ctx := context.Background()

	blob := []byte("bootstrap of an odd manifest")
	d := bootstrap.Sum(blob)
	skiffOnly := map[string]string{image.AnnotationBootstrap: image.FormatVersion}
	withDigest := map[string]string{image.AnnotationBootstrap: image.FormatVersion, image.AnnotationBootstrapDigest: d.String()}
	write(t, reg.Addr+"/fallback:v1", skiffLike(t, blob, skiffOnly, withDigest))
	if live := mustLive(t, reg.Addr+"/fallback"); !slices.Equal(live.Digests(), []bootstrap.Digest{d}) {
		t.Errorf("manifest annotation only: bootstraps %v, want %s", live.Digests(), d)
	}

	write(t, reg.Addr+"/nodigest:v1", skiffLike(t, blob, skiffOnly, skiffOnly))
	if _, err := image.LiveBootstraps(ctx, []string{reg.Addr + "/nodigest"}, image.LiveOptions{}); err == nil || !strings.Contains(err.Error(), "names no bootstrap") {
		t.Errorf("Skiff manifest naming no bootstrap: %v, want an error", err)
	}

	// An image under n nested indexes, tagged.
	nested := func(n int) v1.ImageIndex {
		var idx v1.ImageIndex = mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: sourceImage(t, "deep")})
		for range n - 1 {
			idx = mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: idx})
		}
		return idx
	}
	for _, tt := range []struct {
		depth int
		ok    bool
	}{{4, true}, {5, false}} {
		tag, err := name.NewTag(fmt.Sprintf("%s/nested%d:v1", reg.Addr, tt.depth))
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.WriteIndex(tag, nested(tt.depth), remote.WithContext(ctx)); err != nil {
			t.Fatal(err)
		}
		_, err = image.LiveBootstraps(ctx, []string{tag.Context().String()}, image.LiveOptions{})
		if ok := err == nil; ok != tt.ok || !ok && !strings.Contains(err.Error(), "nested more than") {
			t.Errorf("image under %d indexes: %v, want success %v", tt.depth, err, tt.ok)
		}
	}
}

// TestLiveReadBootstrap: a live bootstrap is read back from the Skiff
// manifest naming it, for a store that does not hold it.
func TestLiveReadBootstrap(t *testing.T) {
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	ctx := context.Background()
	want := &bootstrap.Bootstrap{
		ChunkSize: 4096,
		Blobs:     []bootstrap.Digest{bootstrap.Sum([]byte("blob"))},
		Frames:    []bootstrap.Frame{{Offset: 0, Size: 100, CompressedSize: 100, Compression: bootstrap.None}},
		Inodes:    []bootstrap.Inode{{Mode: bootstrap.ModeDir | 0o755}},
	}
	blob, err := bootstrap.Encode(want)
	if err != nil {
		t.Fatal(err)
	}
	src := sourceImage(t, "app")
	write(t, reg.Addr+"/app:v1", src)
	img, d := skiffOf(t, src, string(blob))
	write(t, reg.Addr+"/app:v1-skiff", img)
	live := mustLive(t, reg.Addr+"/app")
	got, err := live.ReadBootstrap(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Blobs, want.Blobs) {
		t.Errorf("read bootstrap names blobs %v, want %v", got.Blobs, want.Blobs)
	}
	if _, err := live.ReadBootstrap(ctx, bootstrap.Sum([]byte("other"))); err == nil {
		t.Error("read a bootstrap no live image names")
	}
}

// TestLiveBootstrapsOfSkiffIndex: the Skiff index of a multi-platform
// image keeps every platform's bootstrap live, tagged or found only as a
// referrer of the source index.
func TestLiveBootstrapsOfSkiffIndex(t *testing.T) {
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	ctx := context.Background()
	for _, tagged := range []bool{true, false} {
		repo := fmt.Sprintf("%s/plat%v", reg.Addr, tagged)
		src, err := fixture.PlatformIndex(nil, "linux/amd64", "linux/arm64")
		if err != nil {
			t.Fatal(err)
		}
		if err := image.WriteIndex(ctx, repo+":v1", src); err != nil {
			t.Fatal(err)
		}
		im, _ := src.IndexManifest()
		var skiff []image.Platform
		var want []bootstrap.Digest
		for i, d := range im.Manifests[:2] {
			img, _ := src.Image(d.Digest)
			s, boot := skiffOf(t, img, fmt.Sprintf("bootstrap %d of %s", i, repo))
			skiff = append(skiff, image.Platform{Platform: *d.Platform, Image: s})
			want = append(want, boot)
		}
		subject, _ := partial.Descriptor(src)
		idx, err := image.NewIndex(*subject, skiff)
		if err != nil {
			t.Fatal(err)
		}
		target := repo + ":v1-skiff"
		if !tagged {
			d, _ := idx.Digest()
			target = repo + "@" + d.String()
		}
		if err := image.WriteIndex(ctx, target, idx); err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(want, func(a, b bootstrap.Digest) int { return strings.Compare(a.Hex(), b.Hex()) })
		if got := mustLive(t, repo).Digests(); !slices.Equal(got, want) {
			t.Errorf("%s: live bootstraps %v, want both platforms' %v", target, got, want)
		}
	}
}
