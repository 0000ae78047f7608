//go:build e2e

package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/schedule"
)

// TestAgentsSharePieces runs peer-to-peer distribution end to end on two
// nodes, each with its own agent and containerd running real containers:
// skiff-scheduler and skiff-seeder as built, NATS, and MinIO behind a
// proxy that counts what it serves. The first node's container reads a
// file through the seeder, which takes it from the store once. The seeder
// then stops, and the second node's container reads the same file from
// the first node alone, the store serving none of it.
func TestAgentsSharePieces(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	e := startAgentEnv(t, testenv.ContainerdOptions{})
	nats := testenv.StartNATS(t, testenv.NATSOptions{})
	proxy := startCountingProxy(t, e.minio.Endpoint)
	storeURL := strings.Replace(e.storeURL, e.minio.Endpoint, proxy.addr, 1)
	dir := t.TempDir()

	schedAddr := testenv.FreeAddr(t)
	sched := startService(t, "skiff-scheduler", buildService(t, dir, "./services/scheduler/cmd/skiff-scheduler"),
		"SKIFF_NATS_URL="+nats.URL, "SKIFF_SCHEDULER_LISTEN="+schedAddr, "SKIFF_SCHEDULER_PEER_TTL=5s")
	seederAddr := testenv.FreeAddr(t)
	seeder := startService(t, "skiff-seeder", buildService(t, dir, "./services/seeder/cmd/skiff-seeder"),
		"SKIFF_NATS_URL="+nats.URL, "SKIFF_STORE="+storeURL, "SKIFF_SEEDER_LISTEN="+seederAddr,
		"SKIFF_SEEDER_ADVERTISE="+seederAddr, "SKIFF_SEEDER_ID=seeder-1", "SKIFF_SEEDER_DIR="+filepath.Join(dir, "seeder"))
	table := func() schedule.Stats {
		var s schedule.ServerStats
		resp, err := http.Get("http://" + schedAddr + "/stats")
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&s)
			resp.Body.Close()
		}
		if err != nil {
			t.Logf("scheduler stats: %v\n%s", err, sched.logs())
		}
		return s.Table
	}
	waitFor(t, ctx, func() error {
		if s := table(); s.Seeders != 1 {
			return fmt.Errorf("the scheduler knows %d seeders, want 1", s.Seeders)
		}
		return nil
	})

	peerAddrs, metricsAddrs := testenv.FreeAddrs(t, 2), testenv.FreeAddrs(t, 2)
	p2p := func(i int) []string {
		id, addr := fmt.Sprintf("node-%d", i+1), peerAddrs[i]
		return []string{"SKIFF_AGENT_STORE=" + storeURL, "SKIFF_AGENT_NATS_URL=" + nats.URL, "SKIFF_AGENT_METRICS_LISTEN=" + metricsAddrs[i],
			"SKIFF_AGENT_PEER_ID=" + id, "SKIFF_AGENT_PEER_LISTEN=" + addr, "SKIFF_AGENT_PEER_ADVERTISE=" + addr}
	}
	e.restartWith(ctx, p2p(0)...)

	probe, err := os.ReadFile(e.bin.probe)
	if err != nil {
		t.Fatal(err)
	}
	big := randomBytes(t, 8<<20)
	want := fmt.Sprintf("%x\n", sha256.Sum256(big))
	ref, _ := e.push(ctx, "p2p",
		tarLayer(t, map[string][]byte{"bin/probe": probe}, map[string]int64{"bin/probe": 0o755}),
		tarLayer(t, map[string][]byte{"data/big": big}, nil))
	skiffRef := ref + "-skiff"

	proxy.reset()
	e.pull(ctx, skiffRef)
	if out, err := e.run(ctx, skiffRef, "p2p-first", "sha", "/data/big"); err != nil || out != want {
		t.Fatalf("first node: %q, %v, want %q\n%s", out, err, want, e.logs())
	}
	first := proxy.bytes()
	if first < int64(len(big)) || first > int64(len(big))*3/2 {
		t.Errorf("the store served %d bytes for the first node, want the file's %d about once", first, len(big))
	}
	if s := sourceBytes(t, ctx, e); s["peer"] < int64(len(big)) || s["store"] != 0 {
		t.Errorf("first node read %v by source, want the file through the seeder, none from the store", s)
	}
	// Both the seeder and the first node announce what they hold.
	waitFor(t, ctx, func() error {
		if s := table(); s.Peers != 1 || s.HeldBytes < 2*int64(len(big)) {
			return fmt.Errorf("scheduler table %+v, want the first node and the seeder holding the file", s)
		}
		return nil
	})
	seeder.stop()
	waitFor(t, ctx, func() error {
		if s := table(); s.Seeders != 0 {
			return fmt.Errorf("the scheduler still knows %d seeders", s.Seeders)
		}
		return nil
	})

	proxy.reset()
	second := e.node(testenv.ContainerdOptions{}, p2p(1)...)
	second.pull(ctx, skiffRef)
	if out, err := second.run(ctx, skiffRef, "p2p-second", "sha", "/data/big"); err != nil || out != want {
		t.Fatalf("second node: %q, %v, want %q\n%s", out, err, want, second.logs())
	}
	n := proxy.bytes()
	if n > int64(len(big))/10 {
		t.Errorf("the store served %d bytes for the second node, want none of the file's %d", n, len(big))
	}
	s := sourceBytes(t, ctx, second)
	if s["peer"] < int64(len(big)) || s["store"] != 0 {
		t.Errorf("second node read %v by source, want the file from the first node, none from the store", s)
	}
	t.Logf("the store served %d bytes for the first node, %d for the second; the second read %v by source", first, n, s)
	// Their metrics say so: the first node served pieces, the second
	// received them from a peer.
	checkMinimums(t, ctx, metricsAddrs[0], map[string]float64{
		`skiff_agent_piece_requests_total{result="served"}`: 1,
		"skiff_agent_piece_sent_bytes_total":                float64(len(big)),
		"skiff_agent_held_bytes":                            float64(len(big)),
		`skiff_agent_peer_ranges_total{parent="seeder"}`:    1,
	})
	checkMinimums(t, ctx, metricsAddrs[1], map[string]float64{
		`skiff_agent_peer_ranges_total{parent="peer"}`: 1,
		"skiff_agent_peer_requests_total":              1,
	})
}

// sourceBytes returns the bytes node's mount process received from each
// source, as `skiff-agent status --json` reports them.
func sourceBytes(t *testing.T, ctx context.Context, node *agentEnv) map[string]int64 {
	t.Helper()
	cmd := exec.CommandContext(ctx, node.bin.agent, "status", "--json")
	cmd.Env = append(os.Environ(), node.agentEnv...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("skiff-agent status --json: %v\n%s", err, out)
	}
	var report struct {
		Stats fetch.Stats `json:"stats"`
	}
	if err := json.Unmarshal(out, &report); err != nil {
		t.Fatalf("skiff-agent status --json: %v\n%s", err, out)
	}
	got := map[string]int64{}
	for _, s := range report.Stats.Sources {
		got[s.Name] = s.Bytes
	}
	return got
}

// buildService builds the main package pkg (relative to the repository)
// into dir and returns the binary's path.
func buildService(t *testing.T, dir, pkg string) string {
	t.Helper()
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = testenv.RepoRoot()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// service is a Skiff service the test runs as a process of its own.
type service struct {
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

// startService runs bin with env added to the test's environment until
// stop, kill or the end of the test; its output goes to a log, named
// name, that the test prints when it fails.
func startService(t *testing.T, name, bin string, env ...string) *service {
	t.Helper()
	s := &service{done: make(chan struct{}), log: filepath.Join(t.TempDir(), name+".log")}
	f, err := os.Create(s.log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s.cmd = exec.Command(bin)
	s.cmd.Env = append(os.Environ(), env...)
	s.cmd.Stdout, s.cmd.Stderr = f, f
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("%s:\n%s", s.log, s.logs())
		}
	})
	return s
}

// stop stops the service as its supervisor would, with SIGTERM, and waits
// for it to exit.
func (s *service) stop() {
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

// kill SIGKILLs the service: no cleanup, no goodbye.
func (s *service) kill() {
	s.cmd.Process.Kill()
	<-s.done
}

func (s *service) logs() string {
	b, _ := os.ReadFile(s.log)
	return tailString(string(b))
}
