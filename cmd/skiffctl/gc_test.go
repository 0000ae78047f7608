package main

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/image"
	"github.com/skiff-dev/skiff/pkg/store"
	"github.com/skiff-dev/skiff/pkg/store/storeurl"
)

func TestGCUsage(t *testing.T) {
	storeURL := "file://" + t.TempDir()
	missing := filepath.Join(t.TempDir(), "typo")
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"gc"}, 2, "collecting without knowing the live images would delete them all"},
		{[]string{"gc", "--store", storeURL, "--dry-run"}, 2, "usage: skiffctl gc"},
		{[]string{"gc", "--store", storeURL, "--grace", "0s", "127.0.0.1:1"}, 1, "--grace 0s: must be at least 1h0m0s"},
		{[]string{"gc", "--store", storeURL, "--grace", "24m", "127.0.0.1:1"}, 1, "--grace 24m0s: must be at least 1h0m0s, and longer than the longest conversion"},
		{[]string{"gc", "--store", storeURL, "127.0.0.1:1/app:v1"}, 1, "without tag or digest"},
		{[]string{"gc", "--store", storeURL, "127.0.0.1:1"}, 1, "catalog of 127.0.0.1:1"},
		{[]string{"gc", "--store", "file://" + missing, "--dry-run", "127.0.0.1:1"}, 1, "open store file://" + missing + ": dir store: root " + missing + ": not found"},
		{[]string{"help"}, 0, "gc "},
	}
	for _, tt := range tests {
		var out strings.Builder
		code := run(context.Background(), tt.args, &out, &out)
		if code != tt.code || !strings.Contains(out.String(), tt.want) {
			t.Errorf("skiffctl %v: exit %d, output %q; want exit %d containing %q", tt.args, code, out.String(), tt.code, tt.want)
		}
	}
	// A mistyped store is reported, not created empty.
	if _, err := os.Stat(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("gc created the store it was given: stat %s: %v", missing, err)
	}
}

// TestGCRegistryMinIO collects a real MinIO store against a real registry:
// two images share chunks, one's Skiff manifest is deleted, and three runs
// a grace period apart delete what only it used, while the other still
// checks out and new conversions dedup against the data they share. A
// live image whose bootstrap the store lost keeps its blobs, and naming a
// repository without Skiff images stops the collection.
func TestGCRegistryMinIO(t *testing.T) {
	defer func(g time.Duration) { minGrace = g }(minGrace)
	minGrace = 0
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	s3 := testenv.StartMinIO(t)
	bucket := s3.Bucket(t, "skiff")
	t.Setenv("AWS_ACCESS_KEY_ID", s3.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", s3.SecretKey)
	storeURL := "s3://" + bucket + "?endpoint=" + s3.Endpoint + "&insecure=true"
	ctx := context.Background()
	st, err := storeurl.Open(ctx, storeURL)
	if err != nil {
		t.Fatal(err)
	}

	var out strings.Builder
	if code := run(ctx, []string{"gc", "--store", storeURL, reg.Addr}, &out, &out); code != 1 || !strings.Contains(out.String(), "no Skiff image found") {
		t.Fatalf("gc of a registry without Skiff images: exit %d, %s", code, out.String())
	}

	shared := fixture.Random(1, 300<<10)
	push := func(repo string, layers ...[]fixture.Entry) string {
		t.Helper()
		img := mustImage(t, layers...)
		src := reg.Addr + "/" + repo + ":v1"
		if err := image.Write(ctx, src, img); err != nil {
			t.Fatal(err)
		}
		runCLI(t, ctx, "convert", "--store", storeURL, src)
		return src + image.TagSuffix
	}
	refA := push("a", []fixture.Entry{fixture.File("shared.bin", 0o644, string(shared))}, []fixture.Entry{fixture.File("a.bin", 0o644, string(fixture.Random(2, 300<<10)))})
	refB := push("b", []fixture.Entry{fixture.File("shared.bin", 0o644, string(shared)), fixture.File("b.bin", 0o644, string(fixture.Random(3, 300<<10)))})
	bootA, digestA := loadBootstrap(t, refA)
	bootB, _ := loadBootstrap(t, refB)
	var uniqueA, sharedBlob string
	for _, d := range bootA.Blobs {
		if slices.Contains(bootB.Blobs, d) {
			sharedBlob = d.Hex()
		} else {
			uniqueA = d.Hex()
		}
	}
	if uniqueA == "" || sharedBlob == "" {
		t.Fatalf("want a with a blob of its own and one shared with b: a %v, b %v", bootA.Blobs, bootB.Blobs)
	}

	// A repository without Skiff images, named by mistake, would make
	// every image look dead.
	if err := image.Write(ctx, reg.Addr+"/plain:v1", mustImage(t, []fixture.Entry{fixture.File("p", 0o644, "p")})); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if code := run(ctx, []string{"gc", "--store", storeURL, reg.Addr + "/b", reg.Addr + "/plain"}, &out, &out); code != 1 || !strings.Contains(out.String(), "no Skiff image found in "+reg.Addr+"/plain:") {
		t.Fatalf("gc naming a repository without Skiff images: exit %d, %s", code, out.String())
	}

	// Deleting a's Skiff manifest leaves its source, and the fallback
	// index listing it as the source's referrer.
	skiffA, err := image.Load(ctx, refA)
	if err != nil {
		t.Fatal(err)
	}
	dA, err := skiffA.Digest()
	if err != nil {
		t.Fatal(err)
	}
	del, err := name.NewDigest(reg.Addr + "/a@" + dA.String())
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Delete(del, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}

	const grace = time.Second
	gc := func(extra ...string) string {
		t.Helper()
		// Past the grace period of everything written so far.
		time.Sleep(grace + 500*time.Millisecond)
		out := runCLI(t, ctx, append(append([]string{"gc", "--store", storeURL, "--grace", grace.String()}, extra...), reg.Addr)...)
		t.Logf("skiffctl gc %v:\n%s", extra, out)
		return out
	}
	before := storeKeys(t, st)
	report := gc("--dry-run")
	if !strings.Contains(report, "dry run") || !strings.Contains(line(report, "bootstraps:"), ", 1 would be marked dead") || !strings.Contains(line(report, "blobs:"), ", 0 would be condemned") {
		t.Errorf("dry run report:\n%s", report)
	}
	if after := storeKeys(t, st); !slices.Equal(before, after) {
		t.Fatalf("dry run changed the store:\nbefore %v\nafter  %v", before, after)
	}

	report = gc()
	if !strings.Contains(report, "live:       1 bootstraps") || !strings.Contains(line(report, "bootstraps:"), ", 1 marked dead") || !strings.Contains(line(report, "blobs:"), ", 0 condemned") {
		t.Errorf("first run report:\n%s", report)
	}
	if !has(t, st, store.BootstrapKey(digestA.Hex())) || !has(t, st, store.DeadKey(digestA.Hex())) || !has(t, st, store.IndexKey(uniqueA)) || !has(t, st, store.ClockKey) {
		t.Fatalf("after the first run want a's bootstrap marked dead, its blobs untouched, and the store's clock read; store holds %v", storeKeys(t, st))
	}

	report = gc()
	if !strings.Contains(line(report, "bootstraps:"), ", 1 deleted") || !strings.Contains(line(report, "blobs:"), ", 1 condemned") {
		t.Errorf("second run report:\n%s", report)
	}
	if has(t, st, store.BootstrapKey(digestA.Hex())) || has(t, st, store.DeadKey(digestA.Hex())) || has(t, st, store.IndexKey(uniqueA)) || !has(t, st, store.BlobKey(uniqueA)) || !has(t, st, store.CondemnedKey(uniqueA)) {
		t.Fatalf("after the second run want a's bootstrap and its blob's index gone, the blob condemned; store holds %v", storeKeys(t, st))
	}

	report = gc()
	if !strings.Contains(line(report, "blobs:"), ", 1 deleted") {
		t.Errorf("third run report:\n%s", report)
	}
	if has(t, st, store.BlobKey(uniqueA)) || has(t, st, store.CondemnedKey(uniqueA)) {
		t.Fatalf("after the second run a's own blob %s is still stored: %v", uniqueA, storeKeys(t, st))
	}
	for _, d := range bootB.Blobs {
		if !has(t, st, store.BlobKey(d.Hex())) || !has(t, st, store.IndexKey(d.Hex())) {
			t.Fatalf("b's blob %s or its index is gone: %v", d, storeKeys(t, st))
		}
	}
	if out := runCLI(t, ctx, "check", "--store", storeURL, refB); !strings.Contains(out, "result:    ok") {
		t.Fatalf("b after collection:\n%s", out)
	}

	// A new conversion still dedups against the data b shares.
	refC := push("c", []fixture.Entry{fixture.File("shared.bin", 0o644, string(shared)), fixture.File("c.bin", 0o644, "c")})
	bootC, _ := loadBootstrap(t, refC)
	if !slices.ContainsFunc(bootC.Blobs, func(d bootstrap.Digest) bool { return d.Hex() == sharedBlob }) {
		t.Errorf("c does not reuse the shared blob %s: %v", sharedBlob, bootC.Blobs)
	}
	if out := runCLI(t, ctx, "check", "--store", storeURL, refC); !strings.Contains(out, "result:    ok") {
		t.Fatalf("c:\n%s", out)
	}
	if report := gc(); !strings.Contains(report, "live:       2 bootstraps") || !strings.Contains(line(report, "blobs:"), ", 0 condemned") {
		t.Errorf("run with nothing to collect:\n%s", report)
	}

	// The store loses c's bootstrap: c's own blob stays all the same,
	// read from c's Skiff manifest in the registry.
	_, digestC := loadBootstrap(t, refC)
	if err := st.Delete(ctx, store.BootstrapKey(digestC.Hex())); err != nil {
		t.Fatal(err)
	}
	if report := gc(); !strings.Contains(report, "live:       2 bootstraps") || !strings.Contains(report, "1 of them not in this store") || !strings.Contains(line(report, "blobs:"), ", 0 condemned") {
		t.Errorf("run with a live bootstrap missing from the store:\n%s", report)
	}
	for _, d := range bootC.Blobs {
		if !has(t, st, store.BlobKey(d.Hex())) || !has(t, st, store.IndexKey(d.Hex())) {
			t.Errorf("blob %s of live image c, or its index, is gone: %v", d, storeKeys(t, st))
		}
	}
}

func mustImage(t *testing.T, layers ...[]fixture.Entry) v1.Image {
	t.Helper()
	var ls []v1.Layer
	for _, entries := range layers {
		l, err := fixture.Layer(fixture.Gzip, entries)
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	img, err := fixture.Image(ls...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func loadBootstrap(t *testing.T, ref string) (*bootstrap.Bootstrap, bootstrap.Digest) {
	t.Helper()
	b, d, err := image.LoadBootstrap(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return b, d
}

func storeKeys(t *testing.T, st store.Store) []string {
	t.Helper()
	var keys []string
	if err := st.List(context.Background(), "", func(info store.Info) error {
		keys = append(keys, info.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return keys
}

func has(t *testing.T, st store.Store, key string) bool {
	t.Helper()
	_, err := st.Stat(context.Background(), key)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	return err == nil
}

// line returns the line of report starting with prefix.
func line(report, prefix string) string {
	for l := range strings.Lines(report) {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}
