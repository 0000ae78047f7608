package image_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"

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
	}{
		{"whole registry", []string{reg.Addr}, []bootstrap.Digest{appBoot, multiBoot}, 3},
		{"one repository", []string{reg.Addr + "/app"}, []bootstrap.Digest{appBoot}, 1},
		{"referrer of an index child", []string{reg.Addr + "/multi/"}, []bootstrap.Digest{multiBoot}, 1},
		{"deleted", []string{reg.Addr + "/gone"}, nil, 1},
		{"registry and one of its repositories", []string{reg.Addr + "/app", reg.Addr}, []bootstrap.Digest{appBoot, multiBoot}, 3},
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
