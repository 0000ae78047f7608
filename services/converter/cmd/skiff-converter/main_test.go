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
	"github.com/skiff-dev/skiff/services/converter/internal/config"
)

func TestHelpListsEveryVariable(t *testing.T) {
	var stdout strings.Builder
	if code := daemon.Main([]string{"--help"}, &stdout, io.Discard, converter); code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	for _, want := range []string{"SKIFF_NATS_URL", "nats://127.0.0.1:4222", "SKIFF_CONVERTER_CONCURRENCY", "SKIFF_STORE", "SKIFF_CONVERTER_REGISTRY", "conversions run at once", "SKIFF_COMPRESSION", "SKIFF_CHUNK_SIZE"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, stdout.String())
		}
	}
}

// TestBadSettingsExit2 checks that settings every conversion would refuse
// are configuration errors, reported before anything starts.
func TestBadSettingsExit2(t *testing.T) {
	tests := []struct {
		name, key, value string
	}{
		{"compression", "SKIFF_COMPRESSION", "brotli"},
		{"chunk size", "SKIFF_CHUNK_SIZE", "1024"},
		{"registry", "SKIFF_CONVERTER_REGISTRY", "http://registry:5000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Were the setting let through, the service would start:
			// give it a store and a NATS server that is not there.
			t.Setenv("SKIFF_STORE", "file://"+t.TempDir())
			t.Setenv("SKIFF_NATS_URL", "nats://"+testenv.FreeAddr(t))
			t.Setenv("SKIFF_CONVERTER_LISTEN", testenv.FreeAddr(t))
			t.Setenv(tt.key, tt.value)
			var stderr strings.Builder
			code := make(chan int, 1)
			go func() { code <- daemon.Main(nil, io.Discard, &stderr, converter) }()
			select {
			case c := <-code:
				if c != 2 || !strings.Contains(stderr.String(), tt.key) {
					t.Errorf("exit %d, stderr %q; want 2 and a message naming %s", c, stderr.String(), tt.key)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("%s=%s: the service started", tt.key, tt.value)
			}
		})
	}
}

// TestRun runs the converter as main wires it against a real NATS server:
// it serves the webhook, /healthz follows the NATS connection, and it stops
// cleanly when its context ends.
func TestRun(t *testing.T) {
	n := testenv.StartNATS(t, testenv.NATSOptions{})
	t.Setenv("SKIFF_STORE", "file://"+t.TempDir())
	t.Setenv("SKIFF_NATS_URL", n.URL)
	listen := testenv.FreeAddr(t)
	t.Setenv("SKIFF_CONVERTER_LISTEN", listen)
	cfg, err := config.Load()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg) }()
	base := "http://" + listen
	testenv.WaitHTTP(t, base+"/healthz", done)

	resp, err := http.Post(base+"/notify", "application/json", strings.NewReader(`{"events":[]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("POST /notify: %s", resp.Status)
	}

	n.Stop()
	testenv.WaitStatus(t, base+"/healthz", http.StatusServiceUnavailable)
	n.Start()
	testenv.WaitStatus(t, base+"/healthz", http.StatusOK)

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return after its context ended")
	}
}
