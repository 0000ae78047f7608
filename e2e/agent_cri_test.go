//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/convert"
	"github.com/skiff-dev/skiff/pkg/image"
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

// TestAgentCRIContainerd2 does the same on containerd 2.x with
// deploy/containerd/skiff-v3.toml.
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
	pause := pushPause(t, ctx, e)
	app := newCRIApp(t, ctx, e, "app")
	k := newKubelet(t, e, e.ctrd.Address)
	if err := k.pull(ctx, app.ref, nil); err != nil {
		t.Fatalf("CRI pull %s: %v\n%s\n%s", app.ref, err, e.logs(), e.ctrd.Log())
	}
	app.assertLazy(t, ctx, "k8s.io", true)
	app.assertRuns(t, ctx, k, true)
	t.Run("multi-platform image", func(t *testing.T) {
		// An index of this node's platform and another, converted by
		// `skiffctl convert`: the node resolves the ordinary name to its
		// platform's image and finds that image's conversion.
		multi := newCRIMultiApp(t, ctx, e, "multi")
		if err := k.pull(ctx, multi.ref, nil); err != nil {
			t.Fatalf("CRI pull %s: %v\n%s\n%s", multi.ref, err, e.logs(), e.ctrd.Log())
		}
		multi.assertLazy(t, ctx, "k8s.io", true)
		multi.assertRuns(t, ctx, k, true)
	})
	if ctrd.ConfigVersion == 3 {
		t.Run("ctr pull through the transfer service", func(t *testing.T) {
			// ctr 2.x pulls through containerd's transfer service, which
			// the snippet has pass the image's name and layers on.
			cli := newCRIApp(t, ctx, e, "cli")
			if out, err := e.ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", "skiff", cli.ref); err != nil {
				t.Fatalf("ctr image pull: %v\n%s\n%s\n%s", err, out, e.logs(), e.ctrd.Log())
			}
			cli.assertLazy(t, ctx, "default", true)
			out, err := e.run(ctx, cli.ref, "cli", "sha", "/data/big")
			if err != nil {
				t.Fatalf("%v\n%s", err, e.logs())
			}
			if want := fmt.Sprintf("%x\n", sha256.Sum256(cli.big)); out != want {
				t.Fatalf("container printed %q, want %q", out, want)
			}
			if !mounted(t, filepath.Join(e.root, "mnt", cli.res.Bootstrap.Hex())) {
				t.Error("the image was not mounted by the agent")
			}
			// Listing skiff for the transfer service keeps its default:
			// an ordinary pull still unpacks into overlayfs.
			if out, err := e.ctrd.Ctr(ctx, "image", "pull", "--plain-http", pause); err != nil {
				t.Fatalf("ctr image pull: %v\n%s\n%s", err, out, e.ctrd.Log())
			}
			out, err = e.ctrd.Ctr(ctx, "snapshots", "--snapshotter", "overlayfs", "ls")
			if err != nil {
				t.Fatal(err)
			}
			if rows := strings.Count(strings.TrimSpace(out), "\n"); rows == 0 {
				t.Errorf("the pull unpacked nothing into overlayfs:\n%s", out)
			}
		})
	}
}

// TestAgentCRIPrivateRegistry runs pods from a registry that requires an
// account, whose credentials only the kubelet has (imagePullSecrets), on
// a node that gives the agent none of its own. Pulled through containerd's
// CRI directly, the agent cannot look the conversion up and the image is
// unpacked as usual; pulled through the agent's CRI image service
// (SKIFF_AGENT_CRI_SOCKET, the kubelet's --image-service-endpoint), it
// runs lazily.
func TestAgentCRIPrivateRegistry(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const user, password = "skiff", "e2e-secret"
	e := startAgentEnvWith(t, testenv.ContainerdOptions{CRI: &testenv.CRI{}}, testenv.RegistryOptions{User: user, Password: password})
	// The test pushes with credentials of its own; the agent has none.
	e.reg.Login(t)
	criSocket := filepath.Join(filepath.Dir(e.socket), "cri.sock")
	e.stopAll()
	e.agentEnv = append(e.agentEnv, "DOCKER_CONFIG="+t.TempDir(), "SKIFF_AGENT_CRI_SOCKET="+criSocket, "SKIFF_AGENT_CRI_UPSTREAM="+e.ctrd.Address)
	e.startAgent()
	e.waitSnapshotter(ctx)

	auth := &cri.AuthConfig{Username: user, Password: password}
	pause := pushPause(t, ctx, e)
	direct := newCRIApp(t, ctx, e, "direct")
	proxied := newCRIApp(t, ctx, e, "proxied")
	// containerd would pull the pause image without credentials; a
	// node with a private one has it pulled beforehand.
	if err := newKubelet(t, e, e.ctrd.Address).pull(ctx, pause, auth); err != nil {
		t.Fatalf("pull pause image: %v", err)
	}

	t.Run("pulled past the agent", func(t *testing.T) {
		k := newKubelet(t, e, e.ctrd.Address)
		if err := k.pull(ctx, direct.ref, auth); err != nil {
			t.Fatalf("CRI pull %s: %v\n%s\n%s", direct.ref, err, e.logs(), e.ctrd.Log())
		}
		direct.assertLazy(t, ctx, "k8s.io", false)
		direct.assertRuns(t, ctx, k, false)
	})
	t.Run("pulled through the agent's image service", func(t *testing.T) {
		k := newKubelet(t, e, criSocket)
		// Without credentials the registry refuses the pull, and
		// the agent passes the refusal on.
		if err := k.pull(ctx, proxied.ref, nil); err == nil {
			t.Fatalf("CRI pull of %s without credentials succeeded", proxied.ref)
		}
		if err := k.pull(ctx, proxied.ref, auth); err != nil {
			t.Fatalf("CRI pull %s: %v\n%s\n%s", proxied.ref, err, e.logs(), e.ctrd.Log())
		}
		proxied.assertLazy(t, ctx, "k8s.io", true)
		proxied.assertRuns(t, ctx, k, true)
	})
}

// pushPause pushes the pause image CRI nodes are configured with (see
// startNode), sharing no layer with other images, as on real nodes.
func pushPause(t *testing.T, ctx context.Context, e *agentEnv) string {
	t.Helper()
	probe, err := os.ReadFile(e.bin.probe)
	if err != nil {
		t.Fatal(err)
	}
	return e.pushPlain(ctx, pauseName, []string{"sleep"}, tarLayer(t, map[string][]byte{"bin/probe": probe, "etc/pause": nil}, map[string]int64{"bin/probe": 0o755}))
}

// criApp is a converted image for CRI tests.
type criApp struct {
	e      *agentEnv
	ref    string
	res    *convert.Result
	layers []v1.Layer
	big    []byte
}

// newCRIApp pushes and converts an image name:v1 with data/big, sharing
// no layer with other images.
func newCRIApp(t *testing.T, ctx context.Context, e *agentEnv, name string) *criApp {
	t.Helper()
	a := criAppLayers(t, e, name)
	a.ref, a.res = e.push(ctx, name, a.layers...)
	return a
}

// criAppLayers makes the layers of a CRI test image: the probe, and
// data/big.
func criAppLayers(t *testing.T, e *agentEnv, name string) *criApp {
	t.Helper()
	probe, err := os.ReadFile(e.bin.probe)
	if err != nil {
		t.Fatal(err)
	}
	a := &criApp{e: e, big: randomBytes(t, 3<<20)}
	a.layers = []v1.Layer{
		tarLayer(t, map[string][]byte{"bin/probe": probe, "etc/" + name: nil}, map[string]int64{"bin/probe": 0o755}),
		tarLayer(t, map[string][]byte{"data/big": a.big}, nil),
	}
	return a
}

// newCRIMultiApp pushes name:v1 as a multi-platform index of an image
// like newCRIApp's, for this machine's platform, and a small one for
// another, and converts it with `skiffctl convert`, as a user would.
func newCRIMultiApp(t *testing.T, ctx context.Context, e *agentEnv, name string) *criApp {
	t.Helper()
	a := criAppLayers(t, e, name)
	here := e.pushPlain(ctx, name+"-here", nil, a.layers...)
	other := "arm64"
	if runtime.GOARCH == other {
		other = "amd64"
	}
	foreign, err := fixture.OneLayer([]fixture.Entry{fixture.File("etc/"+other, 0o644, other)})
	if err != nil {
		t.Fatal(err)
	}
	img, err := image.Load(ctx, here)
	if err != nil {
		t.Fatal(err)
	}
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: foreign, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: other}}},
		mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}}})
	a.ref = e.reg.Addr + "/" + name + ":v1"
	if err := image.WriteIndex(ctx, a.ref, idx); err != nil {
		t.Fatal(err)
	}
	out, err := e.skiffctl(ctx, "convert", "--store", e.storeURL, a.ref)
	if err != nil || !strings.Contains(out, "(2 platforms)") {
		t.Fatalf("skiffctl convert %s: %v\n%s", a.ref, err, out)
	}
	// The bootstrap of this platform's image is what the agent mounts.
	skiff, err := image.Load(ctx, a.ref+image.TagSuffix)
	if err != nil {
		t.Fatal(err)
	}
	_, d, err := image.ImageBootstrap(skiff)
	if err != nil {
		t.Fatal(err)
	}
	a.res = &convert.Result{Bootstrap: d}
	return a
}

// assertLazy checks that containerd downloaded none of the image's
// layers into namespace ns if lazy, and all of them if not.
func (a *criApp) assertLazy(t *testing.T, ctx context.Context, ns string, lazy bool) {
	t.Helper()
	content, err := a.e.ctrd.Ctr(ctx, "-n", ns, "content", "ls", "-q")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range layerDigests(t, a.layers...) {
		if got := strings.Contains(content, d); got == lazy {
			t.Errorf("layer %s downloaded by containerd: %v, want %v\n%s", d, got, !lazy, a.e.logs())
		}
	}
}

// assertRuns runs the image in a pod and checks what it read, and that it
// read it through the agent's mount exactly when served lazily.
func (a *criApp) assertRuns(t *testing.T, ctx context.Context, k *kubelet, lazy bool) {
	t.Helper()
	start := time.Now()
	out := k.run(ctx, a.ref, "sha", "/data/big")
	t.Logf("pod ran in %s", time.Since(start).Round(time.Millisecond))
	if want := fmt.Sprintf("%x\n", sha256.Sum256(a.big)); out != want {
		t.Fatalf("container printed %q, want %q", out, want)
	}
	if got := mounted(t, filepath.Join(a.e.root, "mnt", a.res.Bootstrap.Hex())); got != lazy {
		t.Errorf("image mounted by the agent: %v, want %v", got, lazy)
	}
}

// kubelet stands in for the kubelet: the CRI runtime service of
// containerd, and the image service at imageEndpoint (containerd's, or
// the agent's in front of it).
type kubelet struct {
	t       *testing.T
	e       *agentEnv
	images  cri.ImageServiceClient
	runtime cri.RuntimeServiceClient
	logDir  string
}

func newKubelet(t *testing.T, e *agentEnv, imageEndpoint string) *kubelet {
	t.Helper()
	dial := func(addr string) *grpc.ClientConn {
		conn, err := grpc.NewClient("unix://"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	return &kubelet{
		t: t, e: e, logDir: t.TempDir(),
		runtime: cri.NewRuntimeServiceClient(dial(e.ctrd.Address)),
		images:  cri.NewImageServiceClient(dial(imageEndpoint)),
	}
}

func (k *kubelet) pull(ctx context.Context, ref string, auth *cri.AuthConfig) error {
	start := time.Now()
	resp, err := k.images.PullImage(ctx, &cri.PullImageRequest{Image: &cri.ImageSpec{Image: ref}, Auth: auth})
	if err != nil {
		return err
	}
	k.t.Logf("CRI pulled %s as %s in %s", ref, resp.ImageRef, time.Since(start).Round(time.Millisecond))
	return nil
}

// run runs a pod with one container of image ref with args, waits for
// it to exit, and returns its standard output.
func (k *kubelet) run(ctx context.Context, ref string, args ...string) string {
	t, e := k.t, k.e
	t.Helper()
	node := &cri.NamespaceOption{Network: cri.NamespaceMode_NODE}
	name := strings.NewReplacer("/", "-", ":", "-", ".", "-").Replace(ref)
	pod := &cri.PodSandboxConfig{
		Metadata:     &cri.PodSandboxMetadata{Name: name, Uid: "e2e-" + name, Namespace: "default"},
		LogDirectory: k.logDir,
		Linux: &cri.LinuxPodSandboxConfig{
			// The kubelet always gives one; without it runc would
			// make a cgroup at the hierarchy's root.
			CgroupParent:    "/skiff-e2e-" + name,
			SecurityContext: &cri.LinuxSandboxSecurityContext{NamespaceOptions: node},
		},
	}
	sandbox, err := k.runtime.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: pod})
	if err != nil {
		t.Fatalf("run pod sandbox: %v\n%s\n%s", err, e.logs(), e.ctrd.Log())
	}
	t.Cleanup(func() {
		ctx := context.Background()
		if _, err := k.runtime.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: sandbox.PodSandboxId}); err != nil {
			t.Errorf("stop pod sandbox: %v", err)
		}
		if _, err := k.runtime.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: sandbox.PodSandboxId}); err != nil {
			t.Errorf("remove pod sandbox: %v", err)
		}
	})
	created, err := k.runtime.CreateContainer(ctx, &cri.CreateContainerRequest{
		PodSandboxId: sandbox.PodSandboxId,
		Config: &cri.ContainerConfig{
			Metadata: &cri.ContainerMetadata{Name: "probe"},
			Image:    &cri.ImageSpec{Image: ref},
			Args:     args,
			LogPath:  name + ".log",
			Linux: &cri.LinuxContainerConfig{
				SecurityContext: &cri.LinuxContainerSecurityContext{NamespaceOptions: node},
			},
		},
		SandboxConfig: pod,
	})
	if err != nil {
		t.Fatalf("create container: %v\n%s\n%s", err, e.logs(), e.ctrd.Log())
	}
	if _, err := k.runtime.StartContainer(ctx, &cri.StartContainerRequest{ContainerId: created.ContainerId}); err != nil {
		t.Fatalf("start container: %v\n%s\n%s", err, e.logs(), e.ctrd.Log())
	}
	var status *cri.ContainerStatus
	waitFor(t, ctx, func() error {
		st, err := k.runtime.ContainerStatus(ctx, &cri.ContainerStatusRequest{ContainerId: created.ContainerId})
		if err != nil {
			return err
		}
		if status = st.Status; status.State != cri.ContainerState_CONTAINER_EXITED {
			return fmt.Errorf("container is %s", status.State)
		}
		return nil
	})
	out := criStdout(t, filepath.Join(k.logDir, name+".log"))
	if status.ExitCode != 0 {
		t.Fatalf("container exited %d (%s): %s\n%s", status.ExitCode, status.Reason, out, e.logs())
	}
	return out
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
