package main

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestPeerIdentity(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Skip(err)
	}
	tests := []struct {
		name             string
		cfg              config
		wantID, wantAddr string
		wantErr          bool
	}{
		{"explicit", config{PeerID: "n1", PeerAdvertise: "10.0.0.1:9", PeerListen: ":8094"}, "n1", "10.0.0.1:9", false},
		{"wildcard listen", config{PeerListen: ":8094"}, host, host + ":8094", false},
		{"unspecified ip", config{PeerListen: "0.0.0.0:7"}, host, host + ":7", false},
		{"specific ip", config{PeerID: "n2", PeerListen: "10.1.1.1:7"}, "n2", "10.1.1.1:7", false},
		{"bad listen", config{PeerListen: "nohostport"}, "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, addr, err := peerIdentity(tt.cfg)
			if (err != nil) != tt.wantErr || id != tt.wantID || addr != tt.wantAddr {
				t.Errorf("peerIdentity = %q, %q, %v; want %q, %q, error %v", id, addr, err, tt.wantID, tt.wantAddr, tt.wantErr)
			}
		})
	}
}

func TestNewFetcherP2PSwitch(t *testing.T) {
	log := slog.Default()
	// Off by default: today's fetch path, nothing to run.
	f, node, err := newFetcher(config{Root: t.TempDir()}, nil, nil, log)
	if err != nil || node != nil || len(f.Stats().Sources) != 1 {
		t.Fatalf("P2P off: P2P %v, err %v, sources %+v", node != nil, err, f.Stats().Sources)
	}
	// On, with NATS not (yet) reachable: the agent still starts, reads
	// would go to the store, and the piece server stops with ctx.
	cfg := config{Root: t.TempDir(), NATSURL: "nats://127.0.0.1:1", PeerListen: "127.0.0.1:0", PeerID: "n1", PeerAdvertise: "127.0.0.1:1"}
	f, node, err = newFetcher(cfg, nil, nil, log)
	if err != nil || node == nil {
		t.Fatalf("P2P on: %v", err)
	}
	// Its metrics: the peer source's and the piece server's.
	if err := testutil.CollectAndCompare(node.metrics[0], strings.NewReader(`
# HELP skiff_agent_peer_ranges_assembled_total Ranges read in parts from several parents at once (SKIFF_AGENT_PEER_PARALLEL).
# TYPE skiff_agent_peer_ranges_assembled_total counter
skiff_agent_peer_ranges_assembled_total 0
`), "skiff_agent_peer_ranges_assembled_total"); err != nil {
		t.Error(err)
	}
	if err := testutil.CollectAndCompare(node.metrics[1], strings.NewReader(`
# HELP skiff_agent_held_bytes Bytes of pieces held for peers; the piece store's size limit bounds them.
# TYPE skiff_agent_held_bytes gauge
skiff_agent_held_bytes 0
`), "skiff_agent_held_bytes"); err != nil {
		t.Error(err)
	}
	if s := f.Stats().Sources; len(s) != 2 || s[0].Name != "peer" || s[1].Name != "store" {
		t.Fatalf("sources %+v, want peer then store", s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- node.run(ctx) }()
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("P2P did not stop")
	}
}
