package testenv

import (
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// NATSOptions configures StartNATS.
type NATSOptions struct {
	// Args are extra nats-server flags, e.g. {"--max_payload", "8MB"}.
	Args []string
}

// NATS is a running nats-server with JetStream enabled.
type NATS struct {
	URL      string // "nats://127.0.0.1:port"
	StoreDir string // JetStream storage, kept across Stop and Start

	proc *process
}

// StartNATS starts nats-server with JetStream and an empty store directory
// and stops it when the test ends.
func StartNATS(t testing.TB, opts NATSOptions) NATS {
	t.Helper()
	path := Tool(t, "nats-server")
	n := NATS{StoreDir: filepath.Join(t.TempDir(), "jetstream")}
	n.proc = launch(t, 2, func(ports []int) *process {
		n.URL = "nats://" + hostPort(ports[0])
		args := []string{
			"--jetstream",
			"--addr", "127.0.0.1",
			"--port", strconv.Itoa(ports[0]),
			"--http_port", strconv.Itoa(ports[1]),
			"--store_dir", n.StoreDir,
		}
		p := newProcess(t, "nats-server", path, append(args, opts.Args...), nil)
		// /healthz reports 200 only once JetStream has recovered its
		// streams, which matters after a restart.
		p.ready = httpReady("http://" + hostPort(ports[1]) + "/healthz")
		return p
	})
	return n
}

// Stop shuts the server down, keeping its port and JetStream store. Call it
// from the test goroutine.
func (n NATS) Stop() { n.proc.stop() }

// Start brings a stopped server back on the same port and store and waits
// until JetStream is healthy. Call it from the test goroutine.
func (n NATS) Start() {
	n.proc.t.Helper()
	n.proc.start()
}

// StartEmbeddedNATS runs nats-server inside the test process, with
// JetStream in a temporary directory when jetStream is set, and returns
// its client URL. It serves tests of NATS logic; StartNATS runs the
// released binary, which integration tests stop and restart.
func StartEmbeddedNATS(t testing.TB, jetStream bool) string {
	t.Helper()
	opts := &server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true}
	if jetStream {
		opts.JetStream, opts.StoreDir = true, t.TempDir()
	}
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("testenv: embedded nats-server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("testenv: embedded nats-server did not start")
	}
	t.Cleanup(s.Shutdown)
	return s.ClientURL()
}
