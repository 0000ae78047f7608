package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/cache"
	"github.com/skiff-dev/skiff/pkg/erofs"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/lazyfs"
	"github.com/skiff-dev/skiff/pkg/store"
	"github.com/skiff-dev/skiff/pkg/store/storeurl"
)

// mountReport is the JSON line `skiffctl mount` prints when it exits.
type mountReport struct {
	Image      string `json:"image"`
	Bootstrap  string `json:"bootstrap"`
	Mountpoint string `json:"mountpoint"`
	fetch.Stats
}

// defaultCacheDir is shared by every mount of the same user, so chunks
// common to several images are fetched once.
func defaultCacheDir() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	return filepath.Join(dir, "skiff", "cache")
}

// openImage loads the bootstrap of the Skiff image ref and opens the store
// holding its chunk data.
func openImage(ctx context.Context, ref, platform, storeURL string) (*bootstrap.Bootstrap, bootstrap.Digest, store.Store, error) {
	b, d, err := platformBootstrap(ctx, ref, platform)
	if err != nil {
		return nil, d, nil, err
	}
	st, err := storeurl.OpenExisting(ctx, storeURL)
	if err != nil {
		return nil, d, nil, err
	}
	return b, d, st, nil
}

// unmountGrace bounds how long an interrupted mount waits for open files
// to close after detaching.
const unmountGrace = 5 * time.Second

func runMount(ctx context.Context, env settings, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("mount", "IMAGE MOUNTPOINT", stderr)
	storeURL := fs.String("store", env.Store, storeFlagHelp)
	cacheDir := fs.String("cache", defaultCacheDir(), "chunk cache directory")
	cacheSize := fs.Int64("cache-size", 10<<30, "chunk cache size limit in bytes (0: unlimited)")
	debug := fs.Bool("debug", false, "log every FUSE request")
	useEROFS := fs.Bool("erofs", false, "mount through the kernel's EROFS over one lazily filled image file, as skiff-agent does (root, Linux 6.12+)")
	platform := fs.String("platform", "", "of a Skiff index, the platform to mount (os/arch[/variant]; default: this machine's)")
	if err := parseArgs(fs, args, 2); err != nil {
		return err
	}
	ref, mountpoint := fs.Arg(0), fs.Arg(1)
	b, d, st, err := openImage(ctx, ref, *platform, *storeURL)
	if err != nil {
		return err
	}
	c, err := cache.Open(*cacheDir, *cacheSize)
	if err != nil {
		return err
	}
	f := fetch.New(c, []fetch.Source{fetch.NewStoreSource("store", st)})
	opts := lazyfs.Options{Debug: *debug}
	if *useEROFS {
		layout, err := erofs.Build(b)
		if err != nil {
			return fmt.Errorf("mount %s: %w", ref, err)
		}
		dir, err := os.MkdirTemp("", "skiff-image-")
		if err != nil {
			return fmt.Errorf("mount %s: %w", ref, err)
		}
		defer os.Remove(dir)
		opts.Image, opts.ImageDir = layout, dir
	}
	srv, err := lazyfs.Mount(ctx, mountpoint, b, f, opts)
	if err != nil {
		return err
	}
	s := b.Stats()
	slog.Info("mounted", "image", ref, "bootstrap", d, "mountpoint", mountpoint, "files", s.Files, "bytes", s.LogicalBytes, "cache", *cacheDir)

	unmounted := make(chan struct{})
	go func() {
		srv.Wait()
		close(unmounted)
	}()
	var unmountErr error
	select {
	case <-ctx.Done():
		if unmountErr = srv.Unmount(); unmountErr == nil {
			select {
			case <-unmounted:
			case <-time.After(unmountGrace):
				// Detached while files were still open: they fail from
				// here on, which beats hanging on a signal.
				slog.Warn("image still in use after unmount; exiting anyway", "mountpoint", mountpoint)
			}
		}
	case <-unmounted:
		// Unmounted from outside (umount, fusermount -u).
	}
	f.Flush() // what was fetched stays in --cache for the next mount
	line, err := json.Marshal(mountReport{Image: ref, Bootstrap: d.String(), Mountpoint: mountpoint, Stats: f.Stats()})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, string(line))
	return unmountErr
}
