package lazymount

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/store"
)

// TestRelease: releasing an image no snapshot uses unmounts it and drops
// its bootstrap copy and mount directories; mounting it again fetches the
// bootstrap anew. A mount process from before releases is asked to
// unmount instead. The mount process lists its mounts and counters
// meanwhile (skiff-agent status).
func TestRelease(t *testing.T) {
	for _, mode := range []string{"fuse tree", "erofs"} {
		t.Run(mode, func(t *testing.T) {
			e := newTakeoverEnvIn(t, false, mode == "erofs")
			ctx := context.Background()
			client, mp := e.mount(t)
			if got, err := os.ReadFile(filepath.Join(mp, "data")); err != nil || !bytes.Equal(got, e.data) {
				t.Fatalf("read: %d bytes, %v", len(got), err)
			}
			ms, err := client.Mounts(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(ms) != 1 || ms[0].Bootstrap != e.d || ms[0].Mountpoint != mp || ms[0].EROFS != (mode == "erofs") {
				t.Fatalf("mounts: %+v, want %s at %s", ms, e.d, mp)
			}
			if st, err := client.Stats(ctx); err != nil || len(st.Sources) != 1 || st.Sources[0].Bytes == 0 {
				t.Fatalf("stats after a read: %+v, %v", st, err)
			}
			kept := []string{e.old.bootstrapPath(e.d), mp}
			if mode == "erofs" {
				kept = append(kept, e.old.imageDir(e.d))
			}
			for _, p := range kept {
				if _, err := os.Stat(p); err != nil {
					t.Fatalf("before the release: %v", err)
				}
			}
			if err := client.Release(ctx, e.d); err != nil {
				t.Fatal(err)
			}
			if ms, err := client.Mounts(ctx); err != nil || len(ms) != 0 {
				t.Fatalf("mounts after the release: %+v, %v", ms, err)
			}
			for _, p := range kept {
				if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s after the release: %v, want it gone", p, err)
				}
			}
			mp, err = client.Mount(ctx, e.d)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := os.ReadFile(filepath.Join(mp, "data")); err != nil || !bytes.Equal(got, e.data) {
				t.Fatalf("read after mounting again: %d bytes, %v", len(got), err)
			}
			if err := e.old.Unmount(ctx, e.d); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("mount process before releases", func(t *testing.T) {
		e := newTakeoverEnv(t, false)
		ctx := context.Background()
		sock := filepath.Join(t.TempDir(), "old.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		h := Handler(e.old, HandlerOptions{})
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/release") {
				http.NotFound(w, r)
				return
			}
			h.ServeHTTP(w, r)
		})}
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
		client := NewClient(sock)
		if _, err := client.Mount(ctx, e.d); err != nil {
			t.Fatal(err)
		}
		if err := client.Release(ctx, e.d); err != nil {
			t.Fatal(err)
		}
		if ms := e.old.Mounts(); len(ms) != 0 {
			t.Fatalf("still mounted after the release: %+v", ms)
		}
	})
}

// slowBootstrapStore holds every bootstrap download until released.
type slowBootstrapStore struct {
	store.Store
	entered chan struct{}
	release chan struct{}
}

func (s *slowBootstrapStore) Get(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	if strings.HasPrefix(key, store.BootstrapKey("")) {
		s.entered <- struct{}{}
		<-s.release
	}
	return s.Store.Get(ctx, key, off, n)
}

// TestMountWaitsForNobody: while an image's bootstrap downloads, the
// mount process still answers for its other mounts, and a second mount
// of the same image waits for the first and shares its mount.
func TestMountWaitsForNobody(t *testing.T) {
	e := newTakeoverEnv(t, false)
	ctx := context.Background()
	slow := &slowBootstrapStore{Store: e.st, entered: make(chan struct{}, 1), release: make(chan struct{})}
	m := e.manager(t)
	m.store = slow
	defer m.Close()

	first := make(chan error, 1)
	go func() { _, err := m.Mount(ctx, e.d); first <- err }()
	<-slow.entered
	second := make(chan string, 1)
	go func() {
		mp, err := m.Mount(ctx, e.d)
		if err != nil {
			t.Error(err)
		}
		second <- mp
	}()
	listed := make(chan []MountInfo, 1)
	go func() { listed <- m.Mounts() }()
	select {
	case ms := <-listed:
		if len(ms) != 0 {
			t.Fatalf("mounts while the only one is in progress: %+v", ms)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("listing the mounts waited for a bootstrap download")
	}
	close(slow.release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	mp := <-second
	if got, err := os.ReadFile(filepath.Join(mp, "data")); err != nil || !bytes.Equal(got, e.data) {
		t.Fatalf("read: %d bytes, %v", len(got), err)
	}
	if ms := m.Mounts(); len(ms) != 1 {
		t.Fatalf("%d mounts of one image", len(ms))
	}
}

// blockingPuts holds every Put until released.
type blockingPuts struct {
	store.Store
	entered chan struct{}
	release chan struct{}
}

func (s *blockingPuts) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	s.entered <- struct{}{}
	<-s.release
	return s.Store.Put(ctx, key, r, size)
}

// TestMountWaitsForUnmount: a mount of an image still being unmounted
// (saving its startup set) waits for the unmount, then mounts anew; it
// would otherwise have its mount and layout taken by that unmount.
func TestMountWaitsForUnmount(t *testing.T) {
	e := newTakeoverEnvIn(t, false, true)
	ctx := context.Background()
	e.old.opts.RecordWindow = time.Minute
	slow := &blockingPuts{Store: e.st, entered: make(chan struct{}, 1), release: make(chan struct{})}
	e.old.store = slow
	_, mp := e.mount(t)
	if got, err := os.ReadFile(filepath.Join(mp, "data")); err != nil || !bytes.Equal(got, e.data) {
		t.Fatalf("read: %d bytes, %v", len(got), err)
	}
	unmounted := make(chan error, 1)
	go func() { unmounted <- e.old.Unmount(ctx, e.d) }()
	<-slow.entered
	mounted := make(chan error, 1)
	go func() {
		_, err := e.old.Mount(ctx, e.d)
		mounted <- err
	}()
	select {
	case err := <-mounted:
		t.Fatalf("mount returned while the unmount was in progress: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(slow.release)
	if err := <-unmounted; err != nil {
		t.Fatal(err)
	}
	if err := <-mounted; err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(mp, "data")); err != nil || !bytes.Equal(got, e.data) {
		t.Fatalf("read after mounting again: %d bytes, %v", len(got), err)
	}
	if _, err := os.Stat(e.old.layoutPath(e.d)); err != nil {
		t.Fatalf("the new mount's layout: %v", err)
	}
	if err := e.old.Unmount(ctx, e.d); err != nil {
		t.Fatal(err)
	}
}

// TestFetchRefusesUnusableBootstrap: a bootstrap with the right digest
// that this agent cannot decode fails Fetch, so that the snapshotter
// unpacks the layer as usual instead of a mount failing later.
func TestFetchRefusesUnusableBootstrap(t *testing.T) {
	e := newTakeoverEnv(t, false)
	ctx := context.Background()
	blob := []byte("SKIFF\x09 a format from the future")
	d := bootstrap.Sum(blob)
	if err := e.st.Put(ctx, store.BootstrapKey(d.Hex()), bytes.NewReader(blob), int64(len(blob))); err != nil {
		t.Fatal(err)
	}
	if err := e.old.Fetch(ctx, d); err == nil {
		t.Fatal("Fetch accepted a bootstrap it cannot decode")
	}
	if err := e.old.Fetch(ctx, e.d); err != nil {
		t.Fatal(err)
	}
}

// TestFetchAfterRelease: once an image is released, Fetch checks its
// bootstrap anew: with the store's copy gone too, it fails (and the
// snapshotter unpacks the layer as usual) rather than promise a mount
// that cannot happen.
func TestFetchAfterRelease(t *testing.T) {
	e := newTakeoverEnv(t, false)
	ctx := context.Background()
	if err := e.old.Fetch(ctx, e.d); err != nil {
		t.Fatal(err)
	}
	if err := e.old.Release(ctx, e.d); err != nil {
		t.Fatal(err)
	}
	if err := e.st.Delete(ctx, store.BootstrapKey(e.d.Hex())); err != nil {
		t.Fatal(err)
	}
	if err := e.old.Fetch(ctx, e.d); err == nil {
		t.Fatal("Fetch succeeded with the bootstrap gone from the node and the store")
	}
}

// TestReleaseLeavesMountInProgress: releasing an image whose mount is in
// progress (a new pull of it) neither waits for nor undoes that mount.
func TestReleaseLeavesMountInProgress(t *testing.T) {
	e := newTakeoverEnv(t, false)
	ctx := context.Background()
	slow := &slowBootstrapStore{Store: e.st, entered: make(chan struct{}, 1), release: make(chan struct{})}
	m := e.manager(t)
	m.store = slow
	defer m.Close()
	mounted := make(chan error, 1)
	var mp string
	go func() {
		var err error
		mp, err = m.Mount(ctx, e.d)
		mounted <- err
	}()
	<-slow.entered
	released := make(chan error, 1)
	go func() { released <- m.Release(ctx, e.d) }()
	select {
	case err := <-released:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Release waited for a mount in progress")
	}
	close(slow.release)
	if err := <-mounted; err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(mp, "data")); err != nil || !bytes.Equal(got, e.data) {
		t.Fatalf("read from the mount after the release: %d bytes, %v", len(got), err)
	}
}
