package main

import (
	"context"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/daemon"
	"github.com/skiff-dev/skiff/services/seeder/internal/config"
)

// TestRun runs skiff-seeder as main does against a real nats-server and a
// directory store: /healthz follows the NATS connection, as the
// scheduler's does, and a stop is clean.
func TestRun(t *testing.T) {
	n := testenv.StartNATS(t, testenv.NATSOptions{})
	dir := t.TempDir()
	listen := testenv.FreeAddr(t)
	cfg := config.Config{
		NATS: n.URL, Store: "file://" + filepath.Join(dir, "store"), Dir: filepath.Join(dir, "pieces"), Listen: listen, Advertise: listen,
		ID: "seeder-1", Concurrency: 1, Interval: 300 * time.Millisecond, AckWait: 10 * time.Second,
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg) }()
	url := "http://" + listen + "/healthz"
	testenv.WaitHTTP(t, url, done)

	n.Stop()
	testenv.WaitStatus(t, url, http.StatusServiceUnavailable)
	n.Start()
	testenv.WaitStatus(t, url, http.StatusOK)

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run after a stop: %v", err)
	}
}

// TestHelp checks what --help says of each variable.
func TestHelp(t *testing.T) {
	var stdout strings.Builder
	if code := daemon.Main([]string{"--help"}, &stdout, io.Discard, seeder); code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	lines := map[string]string{}
	for _, l := range strings.Split(stdout.String(), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			lines[f[0]] = l
		}
	}
	tests := []struct {
		variable string
		want     []string
	}{
		{"SKIFF_NATS_URL", []string{"nats://127.0.0.1:4222"}},
		{"SKIFF_STORE", nil},
		{"SKIFF_SEEDER_DIR", nil},
		{"SKIFF_SEEDER_CACHE_SIZE", []string{"53687091200", "0: no limit"}},
		{"SKIFF_SEEDER_LISTEN", []string{":8092"}},
		{"SKIFF_SEEDER_ADVERTISE", nil},
		{"SKIFF_SEEDER_ID", nil},
		{"SKIFF_SEEDER_PREHEAT_CONCURRENCY", []string{"2"}},
		{"SKIFF_SEEDER_ANNOUNCE_INTERVAL", []string{"10s"}},
		{"SKIFF_SEEDER_ACK_WAIT", []string{"1m"}},
		{"SKIFF_DEBUG", nil},
	}
	for _, tt := range tests {
		line, ok := lines[tt.variable]
		if !ok {
			t.Errorf("help lacks %s:\n%s", tt.variable, &stdout)
			continue
		}
		for _, want := range tt.want {
			if !strings.Contains(line, want) {
				t.Errorf("help of %s lacks %q: %s", tt.variable, want, line)
			}
		}
	}
}
