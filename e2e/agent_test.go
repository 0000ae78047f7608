//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"golang.org/x/sys/unix"

	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/image"
	"github.com/skiff-dev/skiff/pkg/store"
)

// TestAgentRunsSkiffImages covers the node agent end to end on a real
// containerd with runc: a Skiff image and an ordinary image name with a
// Skiff referrer run lazily, an ordinary image without one runs through
// the same snapshotter as plain overlayfs, containers keep reading across
// an agent kill and restart, and a corrupted chunk fails the read.
func TestAgentRunsSkiffImages(t *testing.T) {
	testAgent(t, testenv.ContainerdOptions{})
}

// TestAgentContainerd17 runs the same flows on containerd 1.7, which
// unlike 1.6 passes the namespace to proxy plugins, with peer-to-peer
// distribution and metrics on: the mount process then also holds the
// peer and metrics ports, which restarts and upgrades must pass on.
func TestAgentContainerd17(t *testing.T) {
	nats := testenv.StartNATS(t, testenv.NATSOptions{})
	addrs := testenv.FreeAddrs(t, 2)
	testAgent(t, testenv.Containerd17(t),
		"SKIFF_AGENT_NATS_URL="+nats.URL,
		"SKIFF_AGENT_PEER_LISTEN="+addrs[0],
		"SKIFF_AGENT_METRICS_LISTEN="+addrs[1])
}

// TestAgentContainerd2 runs the same flows on containerd 2.x, with FUSE
// passthrough on (it is off by default), so both ways of serving files
// run real containers.
func TestAgentContainerd2(t *testing.T) {
	testAgent(t, testenv.Containerd2(t), "SKIFF_AGENT_PASSTHROUGH=true")
}

// testAgent runs the flows on containerd ctrd, with extra agent settings.
func testAgent(t *testing.T, ctrd testenv.ContainerdOptions, settings ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	e := startAgentEnv(t, ctrd)
	if len(settings) > 0 {
		e.restartWith(ctx, settings...)
	}
	probe, err := os.ReadFile(e.bin.probe)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("hello from a lazily served image\n")
	later := []byte("read after the agent restarted\n")
	upgraded := []byte("read after the mount process was upgraded\n")
	crashed := []byte("read after the mount process was killed\n")
	afterContainerd := []byte("read after containerd restarted\n")
	big := randomBytes(t, 3<<20)
	base := tarLayer(t, map[string][]byte{"bin/probe": probe}, map[string]int64{"bin/probe": 0o755})
	data := tarLayer(t, map[string][]byte{"data/msg.txt": msg, "data/later.txt": later, "data/upgraded.txt": upgraded, "data/crashed.txt": crashed, "data/containerd.txt": afterContainerd, "data/big": big}, nil)
	ref, res := e.push(ctx, "app", base, data)
	skiffRef := ref + "-skiff"

	t.Run("skiff image", func(t *testing.T) {
		e.pull(ctx, skiffRef)
		out, err := e.run(ctx, skiffRef, "skiff-direct", "cat", "/data/msg.txt")
		if err != nil {
			t.Fatalf("%v\n%s", err, e.logs())
		}
		if out != string(msg) {
			t.Fatalf("container printed %q, want %q", out, msg)
		}
		// EROFS over a FUSE image file unless passthrough asks for trees.
		var sfs unix.Statfs_t
		mp := filepath.Join(e.root, "mnt", res.Bootstrap.Hex())
		wantEROFS := !slices.Contains(settings, "SKIFF_AGENT_PASSTHROUGH=true")
		if err := unix.Statfs(mp, &sfs); err != nil || (sfs.Type == erofsMagic) != wantEROFS {
			t.Fatalf("statfs %s: type %#x, %v; want EROFS: %v", mp, sfs.Type, err, wantEROFS)
		}
	})

	t.Run("ordinary name with skiff referrer", func(t *testing.T) {
		e.pull(ctx, ref)
		out, err := e.run(ctx, ref, "by-referrer", "sha", "/data/big")
		if err != nil {
			t.Fatalf("%v\n%s", err, e.logs())
		}
		if want := fmt.Sprintf("%x\n", sha256.Sum256(big)); out != want {
			t.Fatalf("container printed %q, want %q", out, want)
		}
		// Lazily served means containerd never downloaded the layers.
		content, err := e.ctrd.Ctr(ctx, "content", "ls", "-q")
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range layerDigests(t, base, data) {
			if strings.Contains(content, d) {
				t.Errorf("containerd downloaded layer %s of a lazily served image", d)
			}
		}
	})

	t.Run("ordinary image without conversion", func(t *testing.T) {
		plain := e.reg.Addr + "/plain:v1"
		// Its own copy of the probe: sharing base would make it the
		// next subtest's case.
		own := tarLayer(t, map[string][]byte{"bin/probe": probe, "etc/plain": []byte("plain overlay\n")}, map[string]int64{"bin/probe": 0o755})
		img, err := mutate.AppendLayers(empty.Image, own)
		if err != nil {
			t.Fatal(err)
		}
		if err := image.Write(ctx, plain, img); err != nil {
			t.Fatal(err)
		}
		e.pull(ctx, plain)
		out, err := e.run(ctx, plain, "plain", "cat", "/etc/plain")
		if err != nil {
			t.Fatalf("%v\n%s", err, e.logs())
		}
		if out != "plain overlay\n" {
			t.Fatalf("container printed %q", out)
		}
		if strings.Contains(e.logs(), "materialized lower layer") {
			t.Errorf("a layer of an image without conversion was materialized:\n%s", e.logs())
		}
	})

	t.Run("ordinary image on a lazily served layer", func(t *testing.T) {
		// base is a lazily served snapshot now, without content; an
		// ordinary image adding a layer of its own on top of it needs
		// its files, so the agent downloads and applies it.
		shared := e.pushPlain(ctx, "shared", nil, base, tarLayer(t, map[string][]byte{"etc/shared": []byte("on a shared base\n")}, nil))
		e.pull(ctx, shared)
		out, err := e.run(ctx, shared, "shared", "cat", "/etc/shared")
		if err != nil {
			t.Fatalf("%v\n%s", err, e.logs())
		}
		if out != "on a shared base\n" {
			t.Fatalf("container printed %q", out)
		}
		if !strings.Contains(e.logs(), "materialized lower layer") {
			t.Errorf("the shared layer was not materialized:\n%s", e.logs())
		}
		// The lazily served image is unaffected.
		out, err = e.run(ctx, ref, "by-referrer-again", "sha", "/data/big")
		if err != nil {
			t.Fatalf("%v\n%s", err, e.logs())
		}
		if want := fmt.Sprintf("%x\n", sha256.Sum256(big)); out != want {
			t.Fatalf("container printed %q, want %q", out, want)
		}
	})

	t.Run("agent restart under a running container", func(t *testing.T) {
		if _, err := e.ctrd.Ctr(ctx, "run", "-d", "--snapshotter", "skiff", ref, "long", "/bin/probe", "sleep"); err != nil {
			t.Fatalf("%v\n%s", err, e.logs())
		}
		before, err := e.ctrd.Ctr(ctx, "snapshots", "--snapshotter", "skiff", "ls")
		if err != nil {
			t.Fatal(err)
		}
		e.killAgent()
		e.startAgent()
		e.waitSnapshotter(ctx)
		out, err := e.ctrd.Ctr(ctx, "tasks", "exec", "--exec-id", "after", "long", "/bin/probe", "cat", "/data/later.txt")
		if err != nil {
			t.Fatalf("read in running container after agent restart: %v\n%s", err, e.logs())
		}
		if out != string(later) {
			t.Fatalf("container printed %q, want %q", out, later)
		}
		after, err := e.ctrd.Ctr(ctx, "snapshots", "--snapshotter", "skiff", "ls")
		if err != nil {
			t.Fatal(err)
		}
		if before != after {
			t.Errorf("snapshots changed across the restart:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		out, err = e.run(ctx, ref, "new-after-restart", "cat", "/data/msg.txt")
		if err != nil || out != string(msg) {
			t.Fatalf("new container after restart: %q, %v\n%s", out, err, e.logs())
		}
	})

	t.Run("containerd restart under a running container", func(t *testing.T) {
		// containerd reconnects to the proxy snapshotter, and finds
		// its snapshots and the lazily served layers as it left them.
		e.ctrd.Restart()
		e.waitSnapshotter(ctx)
		out, err := e.ctrd.Ctr(ctx, "tasks", "exec", "--exec-id", "after-containerd", "long", "/bin/probe", "cat", "/data/containerd.txt")
		if err != nil || out != string(afterContainerd) {
			t.Fatalf("read in running container after containerd restarted: %q, %v\n%s\n%s", out, err, e.logs(), e.ctrd.Log())
		}
		out, err = e.run(ctx, ref, "new-after-containerd", "cat", "/data/msg.txt")
		if err != nil || out != string(msg) {
			t.Fatalf("new container after containerd restarted: %q, %v\n%s", out, err, e.logs())
		}
	})

	t.Run("mount process upgrade under a running container", func(t *testing.T) {
		oldPID := e.mountdPID()
		before, err := e.ctrd.Ctr(ctx, "snapshots", "--snapshotter", "skiff", "ls")
		if err != nil {
			t.Fatal(err)
		}
		e.anotherBuild()
		e.killAgent()
		e.startAgent()
		e.waitSnapshotter(ctx)
		newPID := e.mountdPID()
		if newPID == oldPID {
			t.Fatalf("mount process %d was not replaced\n%s", oldPID, e.logs())
		}
		if !exited(oldPID) {
			t.Fatalf("old mount process %d still running after handing over\n%s", oldPID, e.logs())
		}
		out, err := e.ctrd.Ctr(ctx, "tasks", "exec", "--exec-id", "after-upgrade", "long", "/bin/probe", "cat", "/data/upgraded.txt")
		if err != nil || out != string(upgraded) {
			t.Fatalf("read in running container after the mount process upgrade: %q, %v\n%s", out, err, e.logs())
		}
		after, err := e.ctrd.Ctr(ctx, "snapshots", "--snapshotter", "skiff", "ls")
		if err != nil {
			t.Fatal(err)
		}
		if before != after {
			t.Errorf("snapshots changed across the upgrade:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		out, err = e.run(ctx, ref, "new-after-upgrade", "cat", "/data/msg.txt")
		if err != nil || out != string(msg) {
			t.Fatalf("new container after the upgrade: %q, %v\n%s", out, err, e.logs())
		}
	})

	t.Run("agent upgrade overlapping the old agent", func(t *testing.T) {
		// A DaemonSet rolling update with surge: the new agent starts
		// while the old one runs, takes the mount process over, and
		// serves once the old one is stopped.
		old := e.agent
		oldPID := e.mountdPID()
		e.anotherBuild()
		e.startAgent()
		waitFor(t, ctx, func() error {
			if pid := e.mountdPID(); pid == oldPID || !exited(oldPID) {
				return fmt.Errorf("mount process %d not replaced yet", oldPID)
			}
			return nil
		})
		if err := old.Process.Signal(os.Interrupt); err != nil {
			t.Fatal(err)
		}
		if err := old.Wait(); err != nil {
			t.Fatalf("old agent: %v\n%s", err, e.logs())
		}
		e.waitSnapshotter(ctx)
		if _, err := os.Stat(e.socket); err != nil {
			t.Fatalf("the old agent took the new one's socket with it: %v", err)
		}
		out, err := e.ctrd.Ctr(ctx, "tasks", "exec", "--exec-id", "after-overlap", "long", "/bin/probe", "cat", "/data/later.txt")
		if err != nil || out != string(later) {
			t.Fatalf("read in running container after the overlapping upgrade: %q, %v\n%s", out, err, e.logs())
		}
		out, err = e.run(ctx, ref, "new-after-overlap", "cat", "/data/msg.txt")
		if err != nil || out != string(msg) {
			t.Fatalf("new container after the overlapping upgrade: %q, %v\n%s", out, err, e.logs())
		}
	})

	t.Run("mount process killed under a running container", func(t *testing.T) {
		// The agent keeps copies of the FUSE devices, so the connections
		// outlive the mount process, and starts one that takes them over.
		agent := e.agent.Process.Pid
		waitFor(t, ctx, func() error {
			if n := fuseDevices(agent); n == 0 {
				return fmt.Errorf("agent %d holds no FUSE device yet", agent)
			}
			return nil
		})
		oldPID := e.mountdPID()
		if err := syscall.Kill(oldPID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitFor(t, ctx, func() error {
			if pid := e.mountdPID(); pid == oldPID || exited(pid) {
				return fmt.Errorf("no new mount process yet")
			}
			return nil
		})
		out, err := e.ctrd.Ctr(ctx, "tasks", "exec", "--exec-id", "after-crash", "long", "/bin/probe", "cat", "/data/crashed.txt")
		if err != nil || out != string(crashed) {
			t.Fatalf("read in running container after the mount process was killed: %q, %v\n%s", out, err, e.logs())
		}
		out, err = e.run(ctx, ref, "new-after-crash", "cat", "/data/msg.txt")
		if err != nil || out != string(msg) {
			t.Fatalf("new container after the mount process was killed: %q, %v\n%s", out, err, e.logs())
		}
	})

	t.Run("mount process stopped: the agent starts a new one", func(t *testing.T) {
		// Stopped on purpose, it unmounts everything; new containers
		// must still start.
		oldPID := e.mountdPID()
		if err := syscall.Kill(oldPID, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		waitFor(t, ctx, func() error {
			if pid := e.mountdPID(); pid == oldPID || exited(pid) {
				return fmt.Errorf("no new mount process yet")
			}
			return nil
		})
		out, err := e.run(ctx, ref, "new-after-stop", "cat", "/data/msg.txt")
		if err != nil || out != string(msg) {
			t.Fatalf("new container after the mount process was stopped: %q, %v\n%s", out, err, e.logs())
		}
	})

	t.Run("status lists the image", func(t *testing.T) {
		// The mount process the last subtest started may still be
		// taking the mounts over from the agent.
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		waitFor(t, wctx, func() error {
			cmd := exec.CommandContext(ctx, e.bin.agent, "status")
			cmd.Env = append(os.Environ(), e.agentEnv...)
			out, err := cmd.CombinedOutput()
			if err != nil {
				return fmt.Errorf("skiff-agent status: %v\n%s", err, out)
			}
			for _, want := range []string{res.Bootstrap.String(), filepath.Join(e.root, "mnt", res.Bootstrap.Hex()), "store"} {
				if !strings.Contains(string(out), want) {
					return fmt.Errorf("skiff-agent status lacks %q:\n%s", want, out)
				}
			}
			return nil
		})
	})

	t.Run("startup set recorded beside the bootstrap", func(t *testing.T) {
		key := store.BootstrapKey(res.Bootstrap.Hex()) + ".startup"
		waitFor(t, ctx, func() error {
			_, err := e.store.Stat(ctx, key)
			return err
		})
		rc, err := e.store.Get(ctx, key, 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		set, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"\n/bin/probe\n", "\n/data/msg.txt\n"} {
			if !strings.Contains(string(set), want) {
				t.Errorf("startup set lacks %q:\n%s", want, set)
			}
		}
	})

	t.Run("corrupted chunk fails the read", func(t *testing.T) {
		// An image of its own that nothing has read: a mount reads ahead,
		// and records what it read as the next mount's startup set, so a
		// file of a used image may be local already. The file is large
		// enough that reading ahead of the probe binary before it cannot
		// reach its last chunk, which is the one corrupted.
		victim := randomBytes(t, 8<<20)
		ref, res := e.push(ctx, "victim", base, tarLayer(t, map[string][]byte{"data/victim": victim}, nil))
		corruptFile(t, ctx, e.store, res.Bootstrap, "/data/victim")
		e.pull(ctx, ref)
		out, err := e.run(ctx, ref, "corrupt", "cat", "/data/victim")
		if err == nil {
			t.Fatalf("reading a corrupted chunk succeeded")
		}
		if tail := victim[len(victim)-1<<20:]; bytes.Contains([]byte(out), tail[:64]) || bytes.Contains([]byte(out), tail[len(tail)-64:]) {
			t.Fatalf("container saw the corrupted chunk's content")
		}
		if !strings.Contains(out, "input/output error") {
			t.Errorf("want an I/O error, got: %s", out)
		}
	})

	t.Run("store outage fails reads, which recover with it", func(t *testing.T) {
		// As for the corrupted chunk: an image nothing has read, whose
		// file lies beyond what reading ahead of the probe can reach.
		data := randomBytes(t, 8<<20)
		ref, _ := e.push(ctx, "outage", base, tarLayer(t, map[string][]byte{"data/file": data}, nil))
		e.pull(ctx, ref)
		e.minio.Stop()
		out, err := e.run(ctx, ref, "outage", "sha", "/data/file")
		e.minio.Start()
		if err == nil || !strings.Contains(out, "input/output error") {
			t.Fatalf("read while the store was down: %v, want an I/O error:\n%s", err, out)
		}
		// A frame that failed fails at once for a second after its last
		// failure (fetch's failMemo), which a readahead request still
		// in flight may have met while MinIO restarted.
		want := fmt.Sprintf("%x", sha256.Sum256(data))
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		waitFor(t, wctx, func() error {
			out, err := e.run(ctx, ref, "outage-over", "sha", "/data/file")
			if err != nil {
				return fmt.Errorf("read once the store is back: %v\n%s", err, out)
			}
			if !strings.Contains(out, want) {
				t.Fatalf("read once the store is back: %s, want sha256 %s", out, want)
			}
			return nil
		})
	})

	for _, kv := range settings {
		if addr, ok := strings.CutPrefix(kv, "SKIFF_AGENT_METRICS_LISTEN="); ok {
			t.Run("metrics", func(t *testing.T) { checkMetrics(t, ctx, addr) })
		}
	}

	t.Run("removing the image unmounts it", func(t *testing.T) {
		// As the kubelet's image garbage collection would, once no
		// container uses the image: containerd removes its snapshots,
		// and the last one of the image releases its mount.
		if _, err := e.ctrd.Ctr(ctx, "tasks", "kill", "-s", "SIGKILL", "long"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, ctx, func() error {
			_, err := e.ctrd.Ctr(ctx, "tasks", "delete", "long")
			return err
		})
		if _, err := e.ctrd.Ctr(ctx, "containers", "delete", "long"); err != nil {
			t.Fatal(err)
		}
		mp := filepath.Join(e.root, "mnt", res.Bootstrap.Hex())
		if !mounted(t, mp) {
			t.Fatalf("%s is not mounted before the image is removed", mp)
		}
		if _, err := e.ctrd.Ctr(ctx, "images", "rm", "--sync", ref, skiffRef); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		waitFor(t, wctx, func() error {
			if mounted(t, mp) {
				return fmt.Errorf("%s still mounted", mp)
			}
			return nil
		})
		// Nor does the node keep the image's bootstrap or mount
		// directories, which would pile up over every image it ran.
		for _, p := range []string{mp, filepath.Join(e.root, "bootstraps", res.Bootstrap.Hex())} {
			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s after the image was removed: %v, want it gone", p, err)
			}
		}
		snaps, err := e.ctrd.Ctr(ctx, "snapshots", "--snapshotter", "skiff", "ls")
		if err != nil {
			t.Fatal(err)
		}
		// Only the ordinary images' layers are left.
		for _, d := range layerDigests(t, data) {
			if strings.Contains(snaps, d) {
				t.Errorf("snapshot of removed layer %s left:\n%s", d, snaps)
			}
		}
	})
}

// checkMetrics reads the mount process' metrics at addr, after the flows
// above: the upgraded process holds the port now.
func checkMetrics(t *testing.T, ctx context.Context, addr string) {
	t.Helper()
	text := checkMinimums(t, ctx, addr, map[string]float64{
		"skiff_agent_mounts":                             1,
		`skiff_agent_source_bytes_total{source="store"}`: 1,
		`skiff_agent_chunk_reads_total{result="miss"}`:   1,
		// The corrupted chunk.
		`skiff_agent_source_errors_total{source="store"}`: 1,
		"skiff_agent_cache_max_bytes":                     1,
	})
	if !strings.Contains(text, "skiff_agent_build_info{version=") {
		t.Errorf("no skiff_agent_build_info in:\n%s", text)
	}
}

// checkMinimums scrapes the metrics at addr and checks that each metric
// (name and labels, as printed) is at least its minimum; it returns what
// it scraped.
func checkMinimums(t *testing.T, ctx context.Context, addr string, minimums map[string]float64) string {
	t.Helper()
	var text string
	waitFor(t, ctx, func() error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /metrics: %s", resp.Status)
		}
		text = string(body)
		return nil
	})
	for metric, min := range minimums {
		v, ok := metricValue(text, metric)
		if !ok || v < min {
			t.Errorf("metric %s = %v (present: %v), want at least %v", metric, v, ok, min)
		}
	}
	return text
}

// metricValue finds the sample of metric (name and labels, as printed)
// in Prometheus' text format.
func metricValue(text, metric string) (float64, bool) {
	for line := range strings.Lines(text) {
		rest, ok := strings.CutPrefix(line, metric+" ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		return v, err == nil
	}
	return 0, false
}

// erofsMagic is EROFS' statfs f_type.
const erofsMagic = 0xE0F5E1E2

// corruptFile flips one byte of the stored frame holding the last chunk
// of path.
func corruptFile(t *testing.T, ctx context.Context, st store.Store, d bootstrap.Digest, path string) {
	t.Helper()
	rc, err := st.Get(ctx, store.BootstrapKey(d.Hex()), 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	b, err := bootstrap.Decode(blob)
	if err != nil {
		t.Fatal(err)
	}
	ino, ok := b.LookupPath(path)
	if !ok {
		t.Fatalf("%s not in image", path)
	}
	chunks := b.FileChunks(ino)
	c := b.Chunks[chunks[len(chunks)-1]]
	f := b.Frames[c.Frame]
	key := store.BlobKey(b.Blobs[f.Blob].Hex())
	rc, err = st.Get(ctx, key, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	data[f.Offset+int64(f.CompressedSize)/2] ^= 0xff
	if err := st.Put(ctx, key, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
}

func layerDigests(t *testing.T, layers ...v1.Layer) []string {
	t.Helper()
	var ds []string
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d.String())
	}
	return ds
}

// waitFor polls fn until it succeeds, failing the test when ctx ends.
func waitFor(t testing.TB, ctx context.Context, fn func() error) {
	t.Helper()
	for {
		err := fn()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("gave up waiting: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
