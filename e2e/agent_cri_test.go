//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/skiff-dev/skiff/internal/testenv"
)

// deploySocket is the snapshotter socket deploy/containerd/skiff.toml
// names; tests put their own agent's socket in its place.
const deploySocket = "/run/skiff-agent/snapshotter.sock"

// pauseName is the repository of the pause image CRI nodes pull from the
// test registry: no image can be pulled from outside here.
const pauseName = "pause"

// TestAgentCRI runs a pod as the kubelet does, through containerd's CRI
// plugin configured with deploy/containerd/skiff.toml on containerd 1.6.
func TestAgentCRI(t *testing.T) {
	testAgentCRI(t, testenv.ContainerdOptions{})
}

// TestAgentCRIContainerd2 does the same on containerd 2.x, which reads
// the snippet's version 2 settings through its config migration.
func TestAgentCRIContainerd2(t *testing.T) {
	testAgentCRI(t, testenv.Containerd2(t))
}

// testAgentCRI pulls an ordinary image name whose Skiff conversion is a
// referrer through the CRI, which must unpack nothing, then runs it in a
// pod whose container reads the image lazily. The pod's pause image has no
// conversion and is unpacked by the same snapshotter, as on a node where
// most images are ordinary ones.
func testAgentCRI(t *testing.T, ctrd testenv.ContainerdOptions) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ctrd.CRI = &testenv.CRI{}
	e := startAgentEnv(t, ctrd)
	probe, err := os.ReadFile(e.bin.probe)
	if err != nil {
		t.Fatal(err)
	}
	base := tarLayer(t, map[string][]byte{"bin/probe": probe}, map[string]int64{"bin/probe": 0o755})
	big := randomBytes(t, 3<<20)
	data := tarLayer(t, map[string][]byte{"data/big": big}, nil)
	// A pause image sharing no layer with the app, as on real nodes.
	pause := tarLayer(t, map[string][]byte{"bin/probe": probe, "etc/pause": nil}, map[string]int64{"bin/probe": 0o755})
	e.pushPlain(ctx, pauseName, []string{"sleep"}, pause)
	ref, res := e.push(ctx, "app", base, data)

	conn, err := grpc.NewClient("unix://"+e.ctrd.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	images, runtime := cri.NewImageServiceClient(conn), cri.NewRuntimeServiceClient(conn)

	logDir := t.TempDir()
	node := &cri.NamespaceOption{Network: cri.NamespaceMode_NODE}
	pod := &cri.PodSandboxConfig{
		Metadata:     &cri.PodSandboxMetadata{Name: "lazy", Uid: "e2e-lazy", Namespace: "default"},
		LogDirectory: logDir,
		Linux: &cri.LinuxPodSandboxConfig{
			// The kubelet always gives one; without it runc would
			// make a cgroup at the hierarchy's root.
			CgroupParent:    "/skiff-e2e-" + pauseName,
			SecurityContext: &cri.LinuxSandboxSecurityContext{NamespaceOptions: node},
		},
	}
	start := time.Now()
	pulled, err := images.PullImage(ctx, &cri.PullImageRequest{Image: &cri.ImageSpec{Image: ref}, SandboxConfig: pod})
	if err != nil {
		t.Fatalf("CRI pull %s: %v\n%s\n%s", ref, err, e.logs(), e.ctrd.Log())
	}
	t.Logf("CRI pulled %s as %s in %s", ref, pulled.ImageRef, time.Since(start).Round(time.Millisecond))

	// Lazily served means containerd downloaded none of the image's
	// layers, and the image is mounted by the agent.
	content, err := e.ctrd.Ctr(ctx, "-n", "k8s.io", "content", "ls", "-q")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range layerDigests(t, base, data) {
		if strings.Contains(content, d) {
			t.Errorf("containerd downloaded layer %s of a lazily served image", d)
		}
	}

	sandbox, err := runtime.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: pod})
	if err != nil {
		t.Fatalf("run pod sandbox: %v\n%s\n%s", err, e.logs(), e.ctrd.Log())
	}
	t.Cleanup(func() {
		ctx := context.Background()
		if _, err := runtime.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: sandbox.PodSandboxId}); err != nil {
			t.Errorf("stop pod sandbox: %v", err)
		}
		if _, err := runtime.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: sandbox.PodSandboxId}); err != nil {
			t.Errorf("remove pod sandbox: %v", err)
		}
	})
	created, err := runtime.CreateContainer(ctx, &cri.CreateContainerRequest{
		PodSandboxId: sandbox.PodSandboxId,
		Config: &cri.ContainerConfig{
			Metadata: &cri.ContainerMetadata{Name: "probe"},
			Image:    &cri.ImageSpec{Image: ref},
			Args:     []string{"sha", "/data/big"},
			LogPath:  "probe.log",
			Linux: &cri.LinuxContainerConfig{
				SecurityContext: &cri.LinuxContainerSecurityContext{NamespaceOptions: node},
			},
		},
		SandboxConfig: pod,
	})
	if err != nil {
		t.Fatalf("create container: %v\n%s\n%s", err, e.logs(), e.ctrd.Log())
	}
	if _, err := runtime.StartContainer(ctx, &cri.StartContainerRequest{ContainerId: created.ContainerId}); err != nil {
		t.Fatalf("start container: %v\n%s\n%s", err, e.logs(), e.ctrd.Log())
	}
	var status *cri.ContainerStatus
	waitFor(t, ctx, func() error {
		st, err := runtime.ContainerStatus(ctx, &cri.ContainerStatusRequest{ContainerId: created.ContainerId})
		if err != nil {
			return err
		}
		if status = st.Status; status.State != cri.ContainerState_CONTAINER_EXITED {
			return fmt.Errorf("container is %s", status.State)
		}
		return nil
	})
	out := criStdout(t, filepath.Join(logDir, "probe.log"))
	if status.ExitCode != 0 {
		t.Fatalf("container exited %d (%s): %s\n%s", status.ExitCode, status.Reason, out, e.logs())
	}
	if want := fmt.Sprintf("%x\n", sha256.Sum256(big)); out != want {
		t.Fatalf("container printed %q, want %q", out, want)
	}
	t.Logf("pod ran in %s", time.Since(start).Round(time.Millisecond))
	if !mounted(t, filepath.Join(e.root, "mnt", res.Bootstrap.Hex())) {
		t.Errorf("the image is not mounted by the agent")
	}
}

// criStdout returns what a container wrote to its standard output, from
// its CRI log file: lines of "TIME STREAM TAG MESSAGE", where tag P marks
// a line continued in the next entry.
func criStdout(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.SplitN(sc.Text(), " ", 4)
		if len(fields) < 4 || fields[1] != "stdout" {
			continue
		}
		b.WriteString(fields[3])
		if fields[2] != "P" {
			b.WriteByte('\n')
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// mounted reports whether dir is a mount point.
func mounted(t *testing.T, dir string) bool {
	t.Helper()
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(info)) {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}
