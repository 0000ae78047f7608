// Package keychain holds the registry credentials the kubelet sends with
// its image pulls, so that the agent can find an image's Skiff conversion,
// and download a layer it must materialize, in registries that require
// them. The kubelet hands imagePullSecrets to the CRI image service only;
// the agent sees them by being that service (kubelet
// --image-service-endpoint) in front of containerd's, as the CRI keychains
// of stargz-snapshotter and nydus-snapshotter do.
package keychain

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// maxEntries bounds the credentials kept: one per repository pulled with
// credentials, the oldest dropped first.
const maxEntries = 4096

// Keychain is an authn.Keychain of the credentials last used to pull
// from each repository. They live in memory only: after a restart the
// agent knows those of the pulls it has seen since.
type Keychain struct {
	mu     sync.Mutex
	byRepo map[string]authn.AuthConfig // by repository name, e.g. "registry.example.com/team/app"
	byHost map[string]string           // registry host to the repository last pulled from it
	order  []string                    // repositories, oldest first
}

var _ authn.Keychain = (*Keychain)(nil)

// New returns an empty Keychain.
func New() *Keychain {
	return &Keychain{byRepo: map[string]authn.AuthConfig{}, byHost: map[string]string{}}
}

// Add records the credentials a pull of image used.
func (k *Keychain) Add(image string, cfg authn.AuthConfig) error {
	ref, err := name.ParseReference(image)
	if err != nil {
		return fmt.Errorf("keychain: image reference %q: %w", image, err)
	}
	repo := ref.Context().Name()
	k.mu.Lock()
	defer k.mu.Unlock()
	if i := slices.Index(k.order, repo); i >= 0 {
		k.order = slices.Delete(k.order, i, i+1)
	}
	k.byRepo[repo] = cfg
	k.byHost[ref.Context().RegistryStr()] = repo
	k.order = append(k.order, repo)
	for len(k.order) > maxEntries {
		k.evictOldest()
	}
	return nil
}

// evictOldest forgets the repository pulled from longest ago. Its
// registry then falls back to the newest other repository of it, if any.
// k.mu is held.
func (k *Keychain) evictOldest() {
	old := k.order[0]
	k.order = slices.Delete(k.order, 0, 1)
	delete(k.byRepo, old)
	host := registryOf(old)
	if k.byHost[host] != old {
		return
	}
	delete(k.byHost, host)
	for _, repo := range slices.Backward(k.order) {
		if registryOf(repo) == host {
			k.byHost[host] = repo
			return
		}
	}
}

// registryOf returns the registry part of a repository name, as
// name.Repository.RegistryStr would.
func registryOf(repo string) string {
	r, err := name.NewRepository(repo)
	if err != nil {
		return ""
	}
	return r.RegistryStr()
}

// Resolve implements authn.Keychain: the credentials of the repository
// itself, else those last used with its registry (a registry-wide
// operation, or another repository under the same account), else
// anonymous, which lets a MultiKeychain go on to the next keychain.
func (k *Keychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	cfg, ok := k.byRepo[r.String()]
	if !ok {
		cfg, ok = k.byRepo[k.byHost[r.RegistryStr()]]
	}
	if !ok {
		return authn.Anonymous, nil
	}
	return authn.FromConfig(cfg), nil
}

// authConfig converts the CRI's credentials. Auth, when set, is
// base64("user:password") and wins over Username and Password, as in
// containerd.
func authConfig(a *cri.AuthConfig) (authn.AuthConfig, error) {
	cfg := authn.AuthConfig{
		Username:      a.Username,
		Password:      a.Password,
		IdentityToken: a.IdentityToken,
		RegistryToken: a.RegistryToken,
	}
	if a.Auth != "" {
		raw, err := base64.StdEncoding.DecodeString(a.Auth)
		if err != nil {
			return authn.AuthConfig{}, fmt.Errorf("auth: %w", err)
		}
		user, pass, ok := strings.Cut(string(raw), ":")
		if !ok {
			return authn.AuthConfig{}, fmt.Errorf("auth: not user:password")
		}
		cfg.Username, cfg.Password = user, pass
	}
	return cfg, nil
}

// Proxy is the CRI image service the kubelet talks to: it passes every
// call on to containerd's, keeping the credentials of each pull first,
// since containerd asks the agent's snapshotter to unpack the image's
// layers before the pull returns.
type Proxy struct {
	cri.UnimplementedImageServiceServer

	upstream cri.ImageServiceClient
	keys     *Keychain
	log      *slog.Logger
}

var _ cri.ImageServiceServer = (*Proxy)(nil)

// NewProxy returns a Proxy in front of upstream that records pull
// credentials in keys.
func NewProxy(upstream cri.ImageServiceClient, keys *Keychain, log *slog.Logger) *Proxy {
	if log == nil {
		log = slog.Default()
	}
	return &Proxy{upstream: upstream, keys: keys, log: log}
}

// PullImage records the pull's credentials, then has containerd pull.
func (p *Proxy) PullImage(ctx context.Context, req *cri.PullImageRequest) (*cri.PullImageResponse, error) {
	if a := req.GetAuth(); a != nil && req.GetImage() != nil {
		cfg, err := authConfig(a)
		if err == nil {
			err = p.keys.Add(req.Image.Image, cfg)
		}
		if err != nil {
			// containerd still gets the pull: without the agent
			// seeing the credentials, the image is unpacked as usual.
			p.log.Warn("keychain: credentials of a pull not kept", "image", req.Image.Image, "err", err)
		}
	}
	return p.upstream.PullImage(ctx, req)
}

// ListImages implements cri.ImageServiceServer.
func (p *Proxy) ListImages(ctx context.Context, req *cri.ListImagesRequest) (*cri.ListImagesResponse, error) {
	return p.upstream.ListImages(ctx, req)
}

// ImageStatus implements cri.ImageServiceServer.
func (p *Proxy) ImageStatus(ctx context.Context, req *cri.ImageStatusRequest) (*cri.ImageStatusResponse, error) {
	return p.upstream.ImageStatus(ctx, req)
}

// RemoveImage implements cri.ImageServiceServer.
func (p *Proxy) RemoveImage(ctx context.Context, req *cri.RemoveImageRequest) (*cri.RemoveImageResponse, error) {
	return p.upstream.RemoveImage(ctx, req)
}

// ImageFsInfo implements cri.ImageServiceServer.
func (p *Proxy) ImageFsInfo(ctx context.Context, req *cri.ImageFsInfoRequest) (*cri.ImageFsInfoResponse, error) {
	return p.upstream.ImageFsInfo(ctx, req)
}
