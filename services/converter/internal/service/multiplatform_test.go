package service

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/image"
	"github.com/skiff-dev/skiff/pkg/store"
	"github.com/skiff-dev/skiff/pkg/store/storeurl"
)

// TestPushMultiPlatform pushes a multi-platform index: the service
// converts every linux platform once into a Skiff index, each platform's
// Skiff image a referrer of that platform's image with its chunks in
// MinIO, reports every bootstrap in the completed event and the record,
// and tags the same index under a second tag without converting again.
func TestPushMultiPlatform(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ctx := context.Background()
	src, err := fixture.PlatformIndex([]fixture.Entry{
		fixture.Dir("data", 0o755),
		{Header: fixture.File("data/shared", 0o644, "").Header, Data: fixture.Random(11, 1<<20)},
	}, "linux/amd64", "linux/arm64")
	if err != nil {
		t.Fatal(err)
	}
	ref := h.ref("multi/app:v1")
	if err := image.WriteIndex(ctx, ref, src); err != nil {
		t.Fatal(err)
	}
	digest, _ := src.Digest()
	srcManifest, _ := src.IndexManifest()
	o := h.waitOutcome(digest, 2*time.Minute)
	if o.Completed == nil {
		t.Fatalf("conversion failed: %s", o.Failed.GetReason())
	}
	c := o.Completed
	if len(c.GetBootstrapDigests()) != 2 || c.GetBootstrapDigest() != c.GetBootstrapDigests()[0] {
		t.Fatalf("completed event names bootstraps %q and %q, want one per platform", c.GetBootstrapDigest(), c.GetBootstrapDigests())
	}

	tag, _ := name.NewTag(ref + image.TagSuffix)
	desc, err := remote.Get(tag)
	if err != nil {
		t.Fatal(err)
	}
	if !desc.MediaType.IsIndex() || desc.Digest.String() != c.GetTargetDigest() {
		t.Fatalf("%s: %s %s, want the index the event names, %s", tag, desc.MediaType, desc.Digest, c.GetTargetDigest())
	}
	idx, _ := desc.ImageIndex()
	im, _ := idx.IndexManifest()
	if len(im.Manifests) != 2 {
		t.Fatalf("skiff index lists %d manifests, want 2", len(im.Manifests))
	}
	st, err := storeurl.Open(ctx, h.storeURL)
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range im.Manifests {
		want := srcManifest.Manifests[i]
		img, _ := idx.Image(d.Digest)
		m, _ := img.Manifest()
		if !d.Platform.Equals(*want.Platform) || m.Subject == nil || m.Subject.Digest != want.Digest {
			t.Fatalf("%s: subject %+v, want the %s image %s", d.Platform, m.Subject, want.Platform, want.Digest)
		}
		b, bd, err := image.ImageBootstrap(img)
		if err != nil {
			t.Fatal(err)
		}
		if bd.String() != c.GetBootstrapDigests()[i] {
			t.Errorf("%s: bootstrap %s, event names %s", d.Platform, bd, c.GetBootstrapDigests()[i])
		}
		if _, err := st.Stat(ctx, store.BootstrapKey(bd.Hex())); err != nil {
			t.Errorf("%s: bootstrap not in the store: %v", d.Platform, err)
		}
		if rep, err := fetch.Verify(ctx, b, fetch.NewStoreSource("s3", st), fetch.VerifyOptions{}); err != nil || len(rep.Bad) != 0 || rep.Chunks == 0 {
			t.Errorf("%s: store check: %+v, %v", d.Platform, rep, err)
		}
	}
	rec := h.record(digest)
	if len(rec.BootstrapDigests) != 2 || rec.TargetDigest != c.GetTargetDigest() {
		t.Errorf("record %+v", rec)
	}
	var bds []bootstrap.Digest
	for _, s := range rec.Bootstraps() {
		d, err := bootstrap.ParseDigest(s)
		if err != nil {
			t.Fatal(err)
		}
		bds = append(bds, d)
	}
	if len(bds) != 2 || bds[0] == bds[1] {
		t.Errorf("record's bootstraps %v, want two", bds)
	}

	// The same index under another tag: tagged, not converted again.
	ref2 := h.ref("multi/app:v2")
	if err := image.WriteIndex(ctx, ref2, src); err != nil {
		t.Fatal(err)
	}
	tag2, _ := name.NewTag(ref2 + image.TagSuffix)
	var got string
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if d, err := remote.Head(tag2); err == nil {
			got = d.Digest.String()
			break
		}
	}
	if got != c.GetTargetDigest() {
		t.Errorf("%s is %q, want the existing Skiff index %s", tag2, got, c.GetTargetDigest())
	}
	time.Sleep(2 * time.Second)
	if n := h.outcomeCount(digest); n != 1 {
		t.Errorf("%d outcomes for the index, want 1", n)
	}
}
