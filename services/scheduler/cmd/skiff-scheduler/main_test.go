package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/daemon"
	"github.com/skiff-dev/skiff/services/scheduler/internal/config"
)

// TestRun runs skiff-scheduler as main does against a real nats-server:
// /healthz follows the NATS connection, and a stop is clean.
func TestRun(t *testing.T) {
	n := testenv.StartNATS(t, testenv.NATSOptions{})
	cfg := config.Config{NATS: n.URL, Listen: testenv.FreeAddr(t), TTL: time.Second, Quarantine: time.Minute, MaxParents: 4, MaxChildren: 4, InFlight: 10 * time.Second}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg) }()
	url := "http://" + cfg.Listen + "/healthz"
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

// TestHelp checks that --help lists every variable with its default.
func TestHelp(t *testing.T) {
	var stdout strings.Builder
	if code := daemon.Main([]string{"--help"}, &stdout, io.Discard, scheduler); code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	for _, want := range []string{"SKIFF_NATS_URL", "SKIFF_SCHEDULER_LISTEN", "127.0.0.1:8093", "SKIFF_SCHEDULER_PEER_TTL", "30s", "SKIFF_SCHEDULER_QUARANTINE", "SKIFF_SCHEDULER_MAX_PARENTS", "SKIFF_DEBUG"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, &stdout)
		}
	}
}
