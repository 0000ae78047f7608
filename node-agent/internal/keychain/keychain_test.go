package keychain

import (
	"context"
	"encoding/base64"
	"strconv"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"google.golang.org/grpc"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestResolve(t *testing.T) {
	k := New()
	alice := authn.AuthConfig{Username: "alice", Password: "a"}
	bob := authn.AuthConfig{Username: "bob", Password: "b"}
	// In order: which pull came last decides a registry's credentials.
	for _, p := range []struct {
		image string
		cfg   authn.AuthConfig
	}{
		{"reg.example.com/team/app:v1", alice},
		{"reg.example.com/other/db@sha256:" + zeros, bob},
		{"nginx:1", authn.AuthConfig{RegistryToken: "hub"}},
	} {
		if err := k.Add(p.image, p.cfg); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		resource string
		registry bool
		want     authn.AuthConfig
	}{
		{"reg.example.com/team/app", false, alice},
		{"reg.example.com/other/db", false, bob},
		// Another repository of a registry: its last pull's
		// credentials (bob pulled last there).
		{"reg.example.com/team/lib", false, bob},
		{"reg.example.com", true, bob},
		{"index.docker.io/library/nginx", false, authn.AuthConfig{RegistryToken: "hub"}},
		{"other.example.com/app", false, authn.AuthConfig{}},
	}
	for _, tt := range tests {
		t.Run(tt.resource, func(t *testing.T) {
			var r authn.Resource
			var err error
			if tt.registry {
				r, err = name.NewRegistry(tt.resource)
			} else {
				r, err = name.NewRepository(tt.resource)
			}
			if err != nil {
				t.Fatal(err)
			}
			a, err := k.Resolve(r)
			if err != nil {
				t.Fatal(err)
			}
			got, err := a.Authorization()
			if err != nil {
				t.Fatal(err)
			}
			if *got != tt.want {
				t.Errorf("Resolve(%s) = %+v, want %+v", tt.resource, *got, tt.want)
			}
		})
	}
}

const zeros = "0000000000000000000000000000000000000000000000000000000000000000"

func TestAddBounded(t *testing.T) {
	k := New()
	for i := range maxEntries + 10 {
		if err := k.Add("reg.example.com/r"+strconv.Itoa(i)+":v1", authn.AuthConfig{Username: strconv.Itoa(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if len(k.byRepo) != maxEntries || len(k.order) != maxEntries {
		t.Fatalf("kept %d credentials (%d in order), want %d", len(k.byRepo), len(k.order), maxEntries)
	}
	// Adding a repository again moves it to the end rather than
	// keeping two entries.
	last := k.order[len(k.order)-1]
	if err := k.Add(k.order[0]+":v2", authn.AuthConfig{Username: "again"}); err != nil {
		t.Fatal(err)
	}
	if len(k.order) != maxEntries || k.order[len(k.order)-2] != last {
		t.Fatalf("re-adding a repository: %d entries, next to last %s", len(k.order), k.order[len(k.order)-2])
	}
}

// TestEvictedHostFallsBack: when the repository a registry's fallback
// points at is evicted, the registry falls back to its newest other
// repository, not to anonymous.
func TestEvictedHostFallsBack(t *testing.T) {
	k := New()
	add := func(image, user string) {
		t.Helper()
		if err := k.Add(image, authn.AuthConfig{Username: user}); err != nil {
			t.Fatal(err)
		}
	}
	add("a.example.com/team/one:v1", "one")
	add("b.example.com/other:v1", "b")
	add("a.example.com/team/two:v1", "two")
	add("a.example.com/team/three:v1", "three")
	// a.example.com falls back to three; evict up to and including it
	// but keep two.
	k.mu.Lock()
	k.order = []string{"a.example.com/team/three", "a.example.com/team/two", "b.example.com/other"}
	k.evictOldest()
	k.mu.Unlock()
	res, err := name.NewRepository("a.example.com/team/unknown")
	if err != nil {
		t.Fatal(err)
	}
	auth, err := k.Resolve(res)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := auth.Authorization()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Username != "two" {
		t.Fatalf("registry fallback after eviction: user %q, want two", cfg.Username)
	}
	// With no repository of the registry left, it resolves anonymously.
	k.mu.Lock()
	k.evictOldest()
	k.mu.Unlock()
	if auth, _ := k.Resolve(res); auth != authn.Anonymous {
		t.Fatal("a registry with no credentials left did not resolve anonymously")
	}
}

func TestAuthConfig(t *testing.T) {
	tests := []struct {
		name    string
		in      *cri.AuthConfig
		want    authn.AuthConfig
		wantErr bool
	}{
		{"user and password", &cri.AuthConfig{Username: "u", Password: "p"}, authn.AuthConfig{Username: "u", Password: "p"}, false},
		{"auth wins", &cri.AuthConfig{Username: "u", Password: "p", Auth: base64.StdEncoding.EncodeToString([]byte("a:b:c"))}, authn.AuthConfig{Username: "a", Password: "b:c"}, false},
		{"tokens", &cri.AuthConfig{IdentityToken: "id", RegistryToken: "reg"}, authn.AuthConfig{IdentityToken: "id", RegistryToken: "reg"}, false},
		{"auth not base64", &cri.AuthConfig{Auth: "%%%"}, authn.AuthConfig{}, true},
		{"auth without colon", &cri.AuthConfig{Auth: base64.StdEncoding.EncodeToString([]byte("user"))}, authn.AuthConfig{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := authConfig(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error: %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// upstream is containerd's image service, as far as the proxy uses it.
type upstream struct {
	cri.ImageServiceClient
	pulls  []*cri.PullImageRequest
	status int
}

func (u *upstream) PullImage(_ context.Context, req *cri.PullImageRequest, _ ...grpc.CallOption) (*cri.PullImageResponse, error) {
	u.pulls = append(u.pulls, req)
	return &cri.PullImageResponse{ImageRef: "sha256:" + zeros}, nil
}

func (u *upstream) ImageStatus(context.Context, *cri.ImageStatusRequest, ...grpc.CallOption) (*cri.ImageStatusResponse, error) {
	u.status++
	return &cri.ImageStatusResponse{}, nil
}

func TestProxy(t *testing.T) {
	ctx := context.Background()
	up := &upstream{}
	k := New()
	p := NewProxy(up, k, nil)
	pulls := []*cri.PullImageRequest{
		{Image: &cri.ImageSpec{Image: "reg.example.com/app:v1"}, Auth: &cri.AuthConfig{Username: "u", Password: "p"}},
		// Unusable credentials still reach containerd.
		{Image: &cri.ImageSpec{Image: "reg.example.com/bad:v1"}, Auth: &cri.AuthConfig{Auth: "%%%"}},
		{Image: &cri.ImageSpec{Image: "public.example.com/app:v1"}},
	}
	for _, req := range pulls {
		resp, err := p.PullImage(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.ImageRef != "sha256:"+zeros {
			t.Fatalf("pull answered %q, not containerd's answer", resp.ImageRef)
		}
	}
	if len(up.pulls) != len(pulls) {
		t.Fatalf("containerd got %d pulls, want %d", len(up.pulls), len(pulls))
	}
	if len(k.byRepo) != 1 || k.byRepo["reg.example.com/app"].Username != "u" {
		t.Fatalf("kept %v, want the first pull's credentials alone", k.byRepo)
	}
	if _, err := p.ImageStatus(ctx, &cri.ImageStatusRequest{}); err != nil || up.status != 1 {
		t.Fatalf("image status: %v, %d calls reached containerd", err, up.status)
	}
}
