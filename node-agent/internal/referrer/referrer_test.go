package referrer

import (
	"archive/tar"
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/node-agent/internal/snapshot"
	"github.com/skiff-dev/skiff/pkg/convert"
	"github.com/skiff-dev/skiff/pkg/image"
	"github.com/skiff-dev/skiff/pkg/store/dir"
)

// TestResolve looks conversions up in a real registry that requires an
// account, with and without its credentials.
func TestResolve(t *testing.T) {
	ctx := context.Background()
	const user, password = "skiff", "secret"
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{User: user, Password: password})
	creds := authn.AuthConfig{Username: user, Password: password}
	// Pushes and the conversion authenticate with the host's Docker
	// credentials; the resolvers under test get keychains of their own.
	reg.Login(t)

	st, err := dir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	layers := []v1.Layer{
		layer(t, fixture.File("etc/base", 0o644, "base\n")),
		layer(t, fixture.File("app/data", 0o644, "data\n")),
	}
	converted := reg.Addr + "/app:v1"
	src := push(t, ctx, converted, layers...)
	res, err := convert.New(st, convert.Options{}).Convert(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	skiffRef, err := image.SkiffTag(converted)
	if err != nil {
		t.Fatal(err)
	}
	if err := image.Write(ctx, skiffRef, res.Image); err != nil {
		t.Fatal(err)
	}
	plain := reg.Addr + "/plain:v1"
	plainImg := push(t, ctx, plain, layer(t, fixture.File("etc/plain", 0o644, "plain\n")))

	labels := func(ref string, img v1.Image, layer int) map[string]string {
		md, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		ls, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		ld, err := ls[layer].Digest()
		if err != nil {
			t.Fatal(err)
		}
		return map[string]string{snapshot.LabelImageRef: ref, snapshot.LabelManifestDigest: md.String(), snapshot.LabelLayerDigest: ld.String()}
	}
	known := fixedKeychain{reg.Addr: creds}
	tests := []struct {
		name    string
		keys    authn.Keychain
		labels  map[string]string
		want    snapshot.Layer
		wantOK  bool
		wantErr bool
	}{
		{"converted, bottom layer", known, labels(converted, src, 0), snapshot.Layer{Bootstrap: res.Bootstrap, Index: 0, Count: 2}, true, false},
		{"converted, top layer", known, labels(converted, src, 1), snapshot.Layer{Bootstrap: res.Bootstrap, Index: 1, Count: 2}, true, false},
		{"no conversion", known, labels(plain, plainImg, 0), snapshot.Layer{}, false, false},
		{"no labels", known, map[string]string{}, snapshot.Layer{}, false, false},
		{"layer not in the manifest", known, func() map[string]string {
			l := labels(converted, src, 0)
			l[snapshot.LabelLayerDigest] = labels(plain, plainImg, 0)[snapshot.LabelLayerDigest]
			return l
		}(), snapshot.Layer{}, false, true},
		// The snapshotter unpacks the layer as usual on an error.
		{"no credentials", fixedKeychain{}, labels(converted, src, 1), snapshot.Layer{}, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok, err := New(tt.keys, nil).Resolve(ctx, tt.labels)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error: %v", err, tt.wantErr)
			}
			if ok != tt.wantOK || got != tt.want {
				t.Fatalf("Resolve = %+v, %v; want %+v, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}

	// containerd prepares an image's layers at once: they share one
	// lookup. Each keychain use is slow, so that lookups not shared would
	// overlap and each ask on its own.
	t.Run("concurrent layers share a lookup", func(t *testing.T) {
		count := func(n int) int64 {
			keys := &slowKeychain{Keychain: known}
			r := New(keys, nil)
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					if _, ok, err := r.Resolve(ctx, labels(converted, src, i%2)); err != nil || !ok {
						t.Errorf("resolve: %v, %v", ok, err)
					}
				})
			}
			wg.Wait()
			return keys.uses.Load()
		}
		one, eight := count(1), count(8)
		if one == 0 || eight != one {
			t.Fatalf("8 concurrent layers used the keychain %d times, one layer %d", eight, one)
		}
	})

	t.Run("layer download", func(t *testing.T) {
		ld := labels(converted, src, 1)[snapshot.LabelLayerDigest]
		if _, err := New(fixedKeychain{}, nil).Uncompressed(ctx, converted, ld); err == nil {
			t.Fatal("layer downloaded without credentials")
		}
		rc, err := New(known, nil).Uncompressed(ctx, converted, ld)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		hdr, err := tar.NewReader(rc).Next()
		if err != nil || hdr.Name != "app/data" {
			t.Fatalf("layer's first entry %v, %v; want app/data", hdr, err)
		}
	})
}

// slowKeychain counts its uses and takes its time over each.
type slowKeychain struct {
	authn.Keychain
	uses atomic.Int64
}

func (k *slowKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	k.uses.Add(1)
	time.Sleep(100 * time.Millisecond)
	return k.Keychain.Resolve(r)
}

// fixedKeychain has credentials per registry host.
type fixedKeychain map[string]authn.AuthConfig

func (k fixedKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if cfg, ok := k[r.RegistryStr()]; ok {
		return authn.FromConfig(cfg), nil
	}
	return authn.Anonymous, nil
}

func layer(t *testing.T, entries ...fixture.Entry) v1.Layer {
	t.Helper()
	l, err := fixture.Layer(fixture.Gzip, entries)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func push(t *testing.T, ctx context.Context, ref string, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := fixture.Image(layers...)
	if err != nil {
		t.Fatal(err)
	}
	if err := image.Write(ctx, ref, img); err != nil {
		t.Fatal(err)
	}
	src, err := image.Load(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	return src
}
