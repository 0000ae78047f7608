package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/node-agent/internal/lazymount"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/cache"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/store/dir"
)

// TestStatus asks a real mount process, serving on the state directory's
// socket, for its status, as text and as JSON.
func TestStatus(t *testing.T) {
	root := t.TempDir()
	st, err := dir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c, err := cache.Open(filepath.Join(root, "cache"), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	m, err := lazymount.New(root, st, fetch.New(c, []fetch.Source{fetch.NewStoreSource("store", st)}), lazymount.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	l, err := net.Listen("unix", mountdSocket(config{Root: root}))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: lazymount.Handler(m, lazymount.HandlerOptions{Version: "v-test"})}
	go srv.Serve(l)
	defer srv.Close()

	var stdout, stderr bytes.Buffer
	if code := printStatus(config{Root: root}, nil, &stdout, &stderr); code != 0 {
		t.Fatalf("status = %d; stderr %q", code, stderr.String())
	}
	for _, want := range []string{"mount process v-test (pid " + strconv.Itoa(os.Getpid()) + ")", "0 images mounted", "  source", "store", "cache: 0 B of 1.0 GiB"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, stdout.String())
		}
	}

	stdout.Reset()
	if code := printStatus(config{Root: root}, []string{"--json"}, &stdout, &stderr); code != 0 {
		t.Fatalf("status --json = %d; stderr %q", code, stderr.String())
	}
	var r statusReport
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("status --json: %v\n%s", err, stdout.String())
	}
	if r.Version != "v-test" || r.PID != os.Getpid() || r.Mounts == nil || len(r.Stats.Sources) != 1 || r.Stats.Cache == nil || r.Stats.Cache.MaxBytes != 1<<30 {
		t.Errorf("status --json: %+v", r)
	}

	stderr.Reset()
	if code := printStatus(config{Root: root}, []string{"--yaml"}, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "--yaml") {
		t.Errorf("status --yaml = %d, %q; want 2 naming the argument", code, stderr.String())
	}
	stderr.Reset()
	none := t.TempDir()
	if code := printStatus(config{Root: none}, nil, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), mountdSocket(config{Root: none})) {
		t.Errorf("status without a mount process = %d, %q; want 1 naming the socket", code, stderr.String())
	}
}

func TestWriteStatus(t *testing.T) {
	d := bootstrap.Sum([]byte("image"))
	r := statusReport{
		Socket: "/s", Version: "v1", PID: 7,
		Mounts: []lazymount.MountInfo{{Bootstrap: d, Mountpoint: "/mnt/a", EROFS: true}, {Bootstrap: d, Mountpoint: "/mnt/b"}},
		Stats: fetch.Stats{
			MemoryHits: 1, CacheHits: 2, FileHits: 3, ZeroChunks: 4, CacheMisses: 5, MissWait: 1500 * time.Millisecond,
			Sources:      []fetch.SourceStats{{Name: "peer", Requests: 9, Errors: 1, Frames: 8, Chunks: 80, Bytes: 3 << 20}},
			Cache:        &cache.Stats{Entries: 12, Bytes: 5 << 30, MaxBytes: 10 << 30, Evictions: 3, Corrupt: 1},
			PendingBytes: 2 << 20,
		},
	}
	var b bytes.Buffer
	writeStatus(&b, r)
	for _, want := range []string{
		"mount process v1 (pid 7) on /s",
		"2 images mounted",
		d.String() + "  erofs      /mnt/a",
		d.String() + "  fuse tree  /mnt/b",
		"1 from memory, 2 from the cache, 3 cache files read by the kernel, 4 all-zero, 5 fetched (waited 1.5s in all)",
		"peer",
		"3.0 MiB",
		"cache: 5.0 GiB of 10 GiB in 12 files; 3 evicted, 1 corrupt files removed; 2.0 MiB in memory waiting to be written",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, b.String())
		}
	}
}

func TestByteSize(t *testing.T) {
	for _, tt := range []struct {
		n    int64
		want string
	}{
		{-1, "0 B"}, {0, "0 B"}, {1023, "1023 B"}, {1024, "1.0 KiB"}, {1536, "1.5 KiB"}, {10 << 30, "10 GiB"}, {1 << 62, "4.0 EiB"},
	} {
		if got := byteSize(tt.n); got != tt.want {
			t.Errorf("byteSize(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
}
