package main

import (
	"context"
	"encoding/json"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/fetch/fetchtest"
	"github.com/skiff-dev/skiff/pkg/image"
	"github.com/skiff-dev/skiff/pkg/store/dir"
)

// TestConvertRegistryToRegistry converts between references on a real
// registry, storing blobs in a real MinIO through an s3:// store URL, and
// checks the Skiff manifest, its referrer listing and inspect's report.
func TestConvertRegistryToRegistry(t *testing.T) {
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	s3 := testenv.StartMinIO(t)
	bucket := s3.Bucket(t, "skiff")
	t.Setenv("AWS_ACCESS_KEY_ID", s3.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", s3.SecretKey)
	storeURL := "s3://" + bucket + "?endpoint=" + s3.Endpoint + "&insecure=true"

	ctx := context.Background()
	img, err := fixture.RichImage()
	if err != nil {
		t.Fatal(err)
	}
	src := reg.Addr + "/rich:v1"
	if err := image.Write(ctx, src, img); err != nil {
		t.Fatal(err)
	}
	out := runCLI(t, ctx, "convert", "--store", storeURL, "--compression", "lz4", "--chunk-size", "262144", src, reg.Addr+"/rich:v1-skiff")
	if !strings.Contains(out, reg.Addr+"/rich:v1-skiff@sha256:") {
		t.Fatalf("convert output does not name the pushed manifest:\n%s", out)
	}

	converted, err := image.Load(ctx, reg.Addr+"/rich:v1-skiff")
	if err != nil {
		t.Fatal(err)
	}
	m, err := converted.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	srcDigest, _ := img.Digest()
	if !image.IsSkiff(m) || m.Subject == nil || m.Subject.Digest != srcDigest || m.Annotations[image.AnnotationSourceDigest] != srcDigest.String() {
		t.Fatalf("manifest is not a Skiff referrer of %s: %+v", srcDigest, m)
	}
	if len(m.Layers) != 1 || m.Layers[0].Annotations[image.AnnotationSnapshotBootstrap] == "" {
		t.Fatalf("bootstrap layer not annotated for containerd: %+v", m.Layers)
	}
	cfg, _ := converted.ConfigFile()
	if strings.Join(cfg.Config.Cmd, " ") != "/bin/sh" || len(cfg.RootFS.DiffIDs) != 1 {
		t.Fatalf("config not carried over: cmd %v, diff ids %v", cfg.Config.Cmd, cfg.RootFS.DiffIDs)
	}

	// The distribution registry has no referrers API: the tag-schema
	// fallback must list the Skiff manifest under the source digest.
	repo, _ := name.NewRepository(reg.Addr + "/rich")
	idx, err := remote.Referrers(repo.Digest(srcDigest.String()), remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	skiffDigest, _ := converted.Digest()
	found := false
	for _, d := range im.Manifests {
		if d.Digest == skiffDigest && d.Annotations[image.AnnotationBootstrap] != "" {
			found = true
		}
	}
	if !found {
		t.Fatalf("referrers of %s do not list the Skiff manifest %s: %+v", srcDigest, skiffDigest, im.Manifests)
	}

	var report inspectReport
	if err := json.Unmarshal([]byte(runCLI(t, ctx, "inspect", "--json", reg.Addr+"/rich:v1-skiff")), &report); err != nil {
		t.Fatal(err)
	}
	if report.Files < 35 || report.ZeroChunks == 0 || report.DedupRatio < 5 || report.ChunkSize != 262144 {
		t.Fatalf("inspect report: %+v", report)
	}

	// Converting a Skiff image is refused with a clear error.
	var stderr strings.Builder
	if code := run(ctx, []string{"convert", "--store", storeURL, reg.Addr + "/rich:v1-skiff", reg.Addr + "/rich:again"}, &stderr, &stderr); code == 0 || !strings.Contains(stderr.String(), "already a Skiff image") {
		t.Fatalf("converting a Skiff image: exit %d, %s", code, stderr.String())
	}
}

func TestConvertUsage(t *testing.T) {
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"convert"}, 2, "usage: skiffctl convert"},
		{[]string{"convert", "--compression", "brotli", "oci:/nonexistent:x", "oci:/nonexistent:y"}, 1, "unknown compression"},
		{[]string{"convert", "--chunking", "rabin", "oci:/nonexistent:x"}, 1, "unknown chunking"},
		{[]string{"convert", "--store", "ftp://x", "oci:/nonexistent:x"}, 1, "ftp"},
		{[]string{"convert", "--prefetch", "/nonexistent/paths", "oci:/nonexistent:x"}, 1, "read --prefetch paths"},
		{[]string{"convert", "--prefetch", "/dev/null", "oci:/nonexistent:x"}, 1, "lists no paths"},
		{[]string{"convert", "--remote", "--prefetch", "/dev/null", "oci:/nonexistent:x"}, 1, "not with --remote"},
		{[]string{"bogus"}, 2, "unknown command"},
		{[]string{"inspect"}, 2, "usage: skiffctl inspect"},
	}
	for _, tt := range tests {
		var out strings.Builder
		code := run(context.Background(), tt.args, &out, &out)
		if code != tt.code || !strings.Contains(out.String(), tt.want) {
			t.Errorf("skiffctl %v: exit %d, output %q; want exit %d containing %q", tt.args, code, out.String(), tt.code, tt.want)
		}
	}
}

// TestConvertMultiPlatform converts an index of two platforms on a real
// registry: the Skiff conversion is an index of one Skiff image per
// platform, each a referrer of its own platform's image, so a node of
// either architecture finds its conversion from the name it pulls.
func TestConvertMultiPlatform(t *testing.T) {
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	storeURL := "file://" + t.TempDir()
	ctx := context.Background()
	src, err := fixture.PlatformIndex([]fixture.Entry{
		fixture.Dir("data", 0o755),
		{Header: fixture.File("data/shared", 0o644, "").Header, Data: fixture.Random(7, 2<<20)},
	}, "linux/amd64", "linux/arm64")
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.Addr + "/multi:v1"
	if err := image.WriteIndex(ctx, ref, src); err != nil {
		t.Fatal(err)
	}
	srcDigest, _ := src.Digest()
	srcManifest, _ := src.IndexManifest()

	out := runCLI(t, ctx, "convert", "--store", storeURL, ref)
	if !strings.Contains(out, "(2 platforms)") || !strings.Contains(out, "linux/arm64:") {
		t.Fatalf("convert output:\n%s", out)
	}
	r, _ := name.ParseReference(ref + image.TagSuffix)
	desc, err := remote.Get(r, remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	if !desc.MediaType.IsIndex() {
		t.Fatalf("%s is a %s, want an index", r, desc.MediaType)
	}
	idx, _ := desc.ImageIndex()
	im, _ := idx.IndexManifest()
	if im.Subject == nil || im.Subject.Digest != srcDigest || len(im.Manifests) != 2 {
		t.Fatalf("skiff index: subject %+v, %d manifests, want the source index and two", im.Subject, len(im.Manifests))
	}
	for i, d := range im.Manifests {
		want := srcManifest.Manifests[i] // same order, the attestation left out
		if d.Platform == nil || !d.Platform.Equals(*want.Platform) {
			t.Fatalf("manifest %d: platform %v, want %v", i, d.Platform, want.Platform)
		}
		img, _ := idx.Image(d.Digest)
		m, _ := img.Manifest()
		if !image.IsSkiff(m) || m.Subject == nil || m.Subject.Digest != want.Digest {
			t.Fatalf("%s: not a Skiff image of %s: %+v", d.Platform, want.Digest, m)
		}
		// What an agent on this platform looks up: the referrers of the
		// platform image it resolved app:v1 to.
		refs, err := remote.Referrers(r.Context().Digest(want.Digest.String()), remote.WithContext(ctx))
		if err != nil {
			t.Fatal(err)
		}
		rm, _ := refs.IndexManifest()
		if len(rm.Manifests) != 1 || rm.Manifests[0].Digest != d.Digest {
			t.Errorf("referrers of the %s image: %+v, want its Skiff image %s", d.Platform, rm.Manifests, d.Digest)
		}
	}
	// inspect takes this machine's platform, or the one named.
	var report inspectReport
	for _, tt := range []struct {
		args []string
		want bootstrap.Digest
	}{
		{nil, platformDigest(t, ctx, ref+image.TagSuffix, runtime.GOARCH)},
		{[]string{"--platform", "linux/arm64"}, platformDigest(t, ctx, ref+image.TagSuffix, "arm64")},
	} {
		args := append(append([]string{"inspect", "--json"}, tt.args...), ref+image.TagSuffix)
		if err := json.Unmarshal([]byte(runCLI(t, ctx, args...)), &report); err != nil || report.Bootstrap != tt.want.String() {
			t.Errorf("skiffctl %v: bootstrap %s (%v), want %s", args, report.Bootstrap, err, tt.want)
		}
	}

	// Every platform's image checks out against the store; a chunk only
	// the arm64 image has, damaged, fails the check naming that platform.
	out = runCLI(t, ctx, "check", "--store", storeURL, ref+image.TagSuffix)
	if strings.Count(out, "result:    ok") != 2 || !strings.Contains(out, "platform:  linux/amd64") || !strings.Contains(out, "platform:  linux/arm64") {
		t.Errorf("check:\n%s", out)
	}
	boots, err := image.LoadBootstraps(ctx, ref+image.TagSuffix)
	if err != nil || len(boots) != 2 {
		t.Fatalf("%d bootstraps, %v", len(boots), err)
	}
	st, err := dir.New(strings.TrimPrefix(storeURL, "file://"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fetchtest.CorruptFile(ctx, st, boots[1].Bootstrap, "/etc/platform"); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr strings.Builder
	if code := run(ctx, []string{"check", "--store", storeURL, ref + image.TagSuffix}, &stdout, &stderr); code == 0 ||
		!strings.Contains(stderr.String(), "linux/arm64: 1 of") || strings.Contains(stderr.String(), "linux/amd64") {
		t.Errorf("check of a damaged arm64 image: exit %d\n%s\n%s", code, stdout.String(), stderr.String())
	}

	// One platform only; a platform the index lacks; a single image.
	runCLI(t, ctx, "convert", "--store", storeURL, "--platform", "linux/arm64", ref, reg.Addr+"/multi:arm")
	armRef, _ := name.ParseReference(reg.Addr + "/multi:arm")
	armIdx, err := remote.Index(armRef, remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	if am, _ := armIdx.IndexManifest(); len(am.Manifests) != 1 || am.Manifests[0].Platform.Architecture != "arm64" {
		t.Errorf("--platform linux/arm64: %+v", am.Manifests)
	}
	single, err := fixture.OneLayer([]fixture.Entry{fixture.File("a", 0o644, "a")})
	if err != nil {
		t.Fatal(err)
	}
	if err := image.Write(ctx, reg.Addr+"/single:v1", single); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--platform", "linux/s390x", ref}, "the index has linux/amd64, linux/arm64"},
		{[]string{"--platform", "linux/arm64", reg.Addr + "/single:v1"}, "is a single image"},
		{[]string{"--platform", "linux/", ref}, "--platform"},
	} {
		var stderr strings.Builder
		args := append([]string{"convert", "--store", storeURL}, tt.args...)
		if code := run(ctx, args, &stderr, &stderr); code == 0 || !strings.Contains(stderr.String(), tt.want) {
			t.Errorf("skiffctl %v: exit %d, %q, want %q", args, code, stderr.String(), tt.want)
		}
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--platform", "linux/s390x", ref + image.TagSuffix}, "the index has linux/amd64, linux/arm64"},
		{[]string{"--platform", "linux/amd64,linux/arm64", ref + image.TagSuffix}, "names 2 of the index's platforms; name one"},
		{[]string{"--platform", "linux/amd64", reg.Addr + "/multi:arm"}, "the index has linux/arm64"},
	} {
		var stderr strings.Builder
		args := append([]string{"inspect"}, tt.args...)
		if code := run(ctx, args, &stderr, &stderr); code == 0 || !strings.Contains(stderr.String(), tt.want) {
			t.Errorf("skiffctl %v: exit %d, %q, want %q", args, code, stderr.String(), tt.want)
		}
	}
}

// platformDigest returns the bootstrap digest of the linux/arch image of the Skiff
// index at ref.
func platformDigest(t *testing.T, ctx context.Context, ref, arch string) bootstrap.Digest {
	t.Helper()
	boots, err := image.LoadBootstraps(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range boots {
		if b.Platform.Architecture == arch {
			return b.Digest
		}
	}
	t.Fatalf("%s has no linux/%s image", ref, arch)
	return bootstrap.Digest{}
}
