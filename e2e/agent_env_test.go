//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/convert"
	"github.com/skiff-dev/skiff/pkg/image"
	"github.com/skiff-dev/skiff/pkg/store"
	"github.com/skiff-dev/skiff/pkg/store/storeurl"
)

// probeSource is the program the test images run: a static binary, so the
// image needs nothing else to start.
const probeSource = `package main

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	switch os.Args[1] {
	case "cat":
		for _, p := range os.Args[2:] {
			b, err := os.ReadFile(p)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			os.Stdout.Write(b)
		}
	case "sha":
		b, err := os.ReadFile(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Printf("%x\n", sha256.Sum256(b))
	case "sleep":
		// As a pod's pause process too: PID 1 ignores the signals it
		// does not handle, and the CRI stops a sandbox with SIGTERM.
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
		select {
		case <-stop:
		case <-time.After(time.Hour):
		}
	case "list":
		// Reads the files listed in a file, one path per line; a line
		// "-" prints "ready" and the time (the benchmarks time the first
		// output, and count the bytes fetched until the time it gives)
		// and waits a moment, so that the reads after it do not slow the
		// line on its way to the benchmark.
		f, err := os.Open(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		var files, bytes int
		start := time.Now()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if sc.Text() == "-" {
				fmt.Println("ready", time.Now().UnixNano())
				time.Sleep(100 * time.Millisecond)
				continue
			}
			b, err := os.ReadFile(sc.Text())
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			files++
			bytes += len(b)
		}
		fmt.Printf("read %d files, %d bytes in %dms\n", files, bytes, time.Since(start).Milliseconds())
	}
}
`

// binaries builds the probe, skiffctl and skiff-agent once per test run.
type binaries struct{ probe, skiffctl, agent string }

func buildBinaries(t testing.TB) binaries {
	t.Helper()
	dir := t.TempDir()
	root := testenv.RepoRoot()
	src := filepath.Join(dir, "probe")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(probeSource), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module probe\n\ngo 1.22\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	b := binaries{probe: filepath.Join(dir, "probe-bin"), skiffctl: filepath.Join(dir, "skiffctl"), agent: filepath.Join(dir, "skiff-agent")}
	builds := []struct {
		dir, out, pkg string
		env           []string
	}{
		{src, b.probe, ".", []string{"CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=-mod=mod"}},
		{root, b.skiffctl, "./cmd/skiffctl", nil},
		{filepath.Join(root, "node-agent"), b.agent, "./cmd/skiff-agent", nil},
	}
	for _, bd := range builds {
		cmd := exec.Command("go", "build", "-o", bd.out, bd.pkg)
		cmd.Dir = bd.dir
		cmd.Env = append(os.Environ(), bd.env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", bd.pkg, err, out)
		}
	}
	return b
}

// tarLayer builds an uncompressed-on-disk, gzip-served layer of files.
func tarLayer(t testing.TB, files map[string][]byte, modes map[string]int64) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for name := range files {
		for d := filepath.Dir(name); d != "." && d != "/" && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	for d := range dirs {
		if err := tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
			t.Fatal(err)
		}
	}
	for name, data := range files {
		mode := modes[name]
		if mode == 0 {
			mode = 0o644
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(data))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// agentEnv is a node: MinIO, a registry, the agent and containerd.
type agentEnv struct {
	t        testing.TB
	bin      binaries
	reg      testenv.Registry
	minio    testenv.MinIO // the store's server
	storeURL string
	store    store.Store
	ctrd     testenv.Containerd
	root     string // agent state
	socket   string
	agentEnv []string
	agent    *exec.Cmd
	agentLog string
	builds   int       // see anotherBuild
	mountds  []*mountd // started by startMountd
}

// mountd is a mount process the test started.
type mountd struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited and err is set
	err  error
}

func startAgentEnv(t testing.TB, ctrd testenv.ContainerdOptions) *agentEnv {
	t.Helper()
	return startAgentEnvWith(t, ctrd, testenv.RegistryOptions{})
}

// startAgentEnvWith is startAgentEnv with a registry configured by reg.
func startAgentEnvWith(t testing.TB, ctrd testenv.ContainerdOptions, reg testenv.RegistryOptions) *agentEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the agent mounts FUSE and containerd needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no FUSE: %v", err)
	}
	e := &agentEnv{t: t, bin: buildBinaries(t)}
	m := testenv.StartMinIO(t)
	e.minio = m
	bucket := m.Bucket(t, "skiff")
	e.reg = testenv.StartRegistry(t, reg)
	t.Setenv(storeurl.EnvAccessKey, m.AccessKey)
	t.Setenv(storeurl.EnvSecretKey, m.SecretKey)
	e.storeURL = "s3://" + bucket + "?endpoint=" + m.Endpoint + "&insecure=true"
	st, err := storeurl.Open(context.Background(), e.storeURL)
	if err != nil {
		t.Fatal(err)
	}
	e.store = st
	e.agentEnv = []string{
		"SKIFF_AGENT_STORE=" + e.storeURL,
		"SKIFF_AGENT_RECORD_WINDOW=10s",
		"SKIFF_AGENT_LOG_LEVEL=debug",
	}
	e.startNode(ctrd)
	return e
}

// node starts another node on the same registry and store: an agent with
// state of its own, and its own containerd. Its agent has this one's
// settings, with settings (VAR=value) in place of those of the same name.
func (e *agentEnv) node(ctrd testenv.ContainerdOptions, settings ...string) *agentEnv {
	e.t.Helper()
	n := &agentEnv{t: e.t, bin: e.bin, reg: e.reg, storeURL: e.storeURL, store: e.store, agentEnv: withSettings(e.agentEnv, settings...)}
	n.startNode(ctrd)
	return n
}

// restartWith restarts the node's agent with settings (VAR=value) in
// place of those of the same name, and waits until containerd reaches it.
func (e *agentEnv) restartWith(ctx context.Context, settings ...string) {
	e.t.Helper()
	e.stopAll()
	e.agentEnv = withSettings(e.agentEnv, settings...)
	e.startAgent()
	e.waitSnapshotter(ctx)
}

// withSettings returns env with settings (VAR=value) in place of those of
// the same name.
func withSettings(env []string, settings ...string) []string {
	out := slices.DeleteFunc(slices.Clone(env), func(kv string) bool {
		name, _, _ := strings.Cut(kv, "=")
		return slices.ContainsFunc(settings, func(s string) bool { return strings.HasPrefix(s, name+"=") })
	})
	return append(out, settings...)
}

// startNode starts the agent, with a new state directory and socket, and
// a containerd using it.
func (e *agentEnv) startNode(ctrd testenv.ContainerdOptions) {
	t := e.t
	t.Helper()
	sockDir, err := os.MkdirTemp("", "skiff")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	e.root = t.TempDir()
	e.socket = filepath.Join(sockDir, "agent.sock")
	e.agentLog = filepath.Join(t.TempDir(), "agent.log")
	e.agentEnv = slices.DeleteFunc(e.agentEnv, func(kv string) bool {
		return strings.HasPrefix(kv, "SKIFF_AGENT_ROOT=") || strings.HasPrefix(kv, "SKIFF_AGENT_SOCKET=")
	})
	e.agentEnv = append(e.agentEnv, "SKIFF_AGENT_ROOT="+e.root, "SKIFF_AGENT_SOCKET="+e.socket)
	e.startAgent()
	t.Cleanup(e.stopAll)
	ctrd.SnapshotterSocket = e.socket
	if ctrd.CRI != nil {
		// A Kubernetes node: containerd configured with the snippet
		// users add (socket path aside), pulling from the loopback
		// registry, its pause image there too.
		name := "skiff.toml"
		if ctrd.ConfigVersion == 3 {
			name = "skiff-v3.toml"
		}
		snippet, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "deploy", "containerd", name))
		if err != nil {
			t.Fatal(err)
		}
		ctrd.SnapshotterConfig = strings.ReplaceAll(string(snippet), deploySocket, e.socket)
		cri := *ctrd.CRI
		cri.PlainHTTP = append(slices.Clone(cri.PlainHTTP), e.reg.Addr)
		if cri.SandboxImage == "" {
			cri.SandboxImage = e.reg.Addr + "/" + pauseName + ":v1"
		}
		ctrd.CRI = &cri
	}
	e.ctrd = testenv.StartContainerd(t, ctrd)
}

func (e *agentEnv) startAgent() {
	e.t.Helper()
	e.launchAgent()
	e.waitAgent()
}

// launchAgent starts the agent without waiting for it to serve.
func (e *agentEnv) launchAgent() {
	e.t.Helper()
	logf, err := os.OpenFile(e.agentLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(e.bin.agent)
	cmd.Env = append(os.Environ(), e.agentEnv...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.agent = cmd
}

// waitAgent waits until the agent listens on its snapshotter socket.
func (e *agentEnv) waitAgent() {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("unix", e.socket)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("agent did not listen on %s:\n%s", e.socket, e.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitSnapshotter waits until containerd reaches the agent again after a
// restart: containerd redials a proxy plugin with a backoff of up to a few
// seconds and fails calls meanwhile. Listing snapshots is no test of that,
// since containerd answers it from its own metadata; preparing one is.
func (e *agentEnv) waitSnapshotter(ctx context.Context) {
	e.t.Helper()
	key := fmt.Sprintf("skiff-e2e-probe-%d", time.Now().UnixNano())
	waitFor(e.t, ctx, func() error {
		_, err := e.ctrd.Ctr(ctx, "snapshots", "--snapshotter", "skiff", "prepare", key)
		return err
	})
	if out, err := e.ctrd.Ctr(ctx, "snapshots", "--snapshotter", "skiff", "rm", key); err != nil {
		e.t.Fatalf("remove probe snapshot: %v\n%s", err, out)
	}
}

// killAgent kills the snapshotter process without warning.
func (e *agentEnv) killAgent() {
	if e.agent == nil {
		return
	}
	_ = e.agent.Process.Kill()
	_ = e.agent.Wait()
	e.agent = nil
}

// startMountd starts a mount process of its own, as the second container
// of a pod does with SKIFF_AGENT_MOUNTD=external.
func (e *agentEnv) startMountd() *mountd {
	e.t.Helper()
	logf, err := os.OpenFile(filepath.Join(e.root, "mountd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(e.bin.agent, "mountd")
	cmd.Env = append(os.Environ(), e.agentEnv...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	m := &mountd{cmd: cmd, done: make(chan struct{})}
	go func() {
		m.err = cmd.Wait()
		close(m.done)
	}()
	e.mountds = append(e.mountds, m)
	return m
}

// stopAll stops the agent and its mount process; runs before the temp
// directories holding their state are removed.
func (e *agentEnv) stopAll() {
	e.killAgent()
	for _, m := range e.mountds {
		_ = m.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-m.done:
		case <-time.After(5 * time.Second):
		}
	}
	if pid, err := os.ReadFile(filepath.Join(e.root, "mountd.pid")); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(pid))); err == nil {
			_ = syscall.Kill(n, syscall.SIGTERM)
			for i := 0; i < 100 && syscall.Kill(n, 0) == nil; i++ {
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	_ = exec.Command("umount", "-R", "-l", filepath.Join(e.root, "mnt")).Run()
}

// anotherBuild has the agent started from now on be another build: the
// same program with bytes appended, which the agent tells from the
// running mount process by content, and so replaces it.
func (e *agentEnv) anotherBuild() {
	e.t.Helper()
	prog, err := os.ReadFile(e.bin.agent)
	if err != nil {
		e.t.Fatal(err)
	}
	e.builds++
	e.bin.agent = filepath.Join(e.t.TempDir(), "skiff-agent")
	if err := os.WriteFile(e.bin.agent, append(prog, fmt.Sprintf("build %d", e.builds)...), 0o755); err != nil {
		e.t.Fatal(err)
	}
}

// mountdPID is the process ID of the mount process, from its pid file.
func (e *agentEnv) mountdPID() int {
	e.t.Helper()
	data, err := os.ReadFile(filepath.Join(e.root, "mountd.pid"))
	if err != nil {
		e.t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		e.t.Fatalf("mountd.pid: %v", err)
	}
	return pid
}

// exited reports whether process pid has ended: it is gone, or a zombie
// nobody reaped (the agent that started it was killed).
func exited(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the command name, which is in parentheses.
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z'
}

// fuseDevices counts the FUSE devices process pid holds open.
func fuseDevices(pid int) int {
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	n := 0
	for _, fd := range fds {
		if target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && target == "/dev/fuse" {
			n++
		}
	}
	return n
}

func (e *agentEnv) logs() string {
	a, _ := os.ReadFile(e.agentLog)
	m, _ := os.ReadFile(filepath.Join(e.root, "mountd.log"))
	return "--- agent:\n" + tailString(string(a)) + "\n--- mountd:\n" + tailString(string(m))
}

func tailString(s string) string {
	if len(s) > 6000 {
		return s[len(s)-6000:]
	}
	return s
}

// push writes an image of the given layers, running the probe, to the
// registry and converts it, publishing the Skiff image as TAG-skiff and
// as a referrer of the original. It returns the source reference.
func (e *agentEnv) push(ctx context.Context, name string, layers ...v1.Layer) (string, *convert.Result) {
	e.t.Helper()
	ref := e.pushPlain(ctx, name, nil, layers...)
	src, err := image.Load(ctx, ref)
	if err != nil {
		e.t.Fatal(err)
	}
	res, err := convert.New(e.store, convert.Options{Compression: bootstrap.None, BatchSize: 64 << 10}).Convert(ctx, src)
	if err != nil {
		e.t.Fatal(err)
	}
	skiffRef, err := image.SkiffTag(ref)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := image.Write(ctx, skiffRef, res.Image); err != nil {
		e.t.Fatal(err)
	}
	return ref, res
}

// pushReadable pushes and converts an image of the probe and, for each
// name, a file data/NAME holding "read NAME\n", for tests that read them
// one by one in a running container; it returns the image and its files.
func (e *agentEnv) pushReadable(ctx context.Context, repo string, names ...string) (string, map[string][]byte) {
	e.t.Helper()
	probe, err := os.ReadFile(e.bin.probe)
	if err != nil {
		e.t.Fatal(err)
	}
	files := map[string][]byte{}
	for _, name := range names {
		files["data/"+name] = []byte("read " + name + "\n")
	}
	ref, _ := e.push(ctx, repo, tarLayer(e.t, map[string][]byte{"bin/probe": probe}, map[string]int64{"bin/probe": 0o755}), tarLayer(e.t, files, nil))
	return ref, files
}

// pushPlain pushes an image of layers running /bin/probe with cmd as
// name:v1, without converting it, and returns its reference.
func (e *agentEnv) pushPlain(ctx context.Context, name string, cmd []string, layers ...v1.Layer) string {
	e.t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		e.t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		e.t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", runtime.GOARCH
	cfg.Config.Entrypoint = []string{"/bin/probe"}
	cfg.Config.Cmd = cmd
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		e.t.Fatal(err)
	}
	ref := e.reg.Addr + "/" + name + ":v1"
	if err := image.Write(ctx, ref, img); err != nil {
		e.t.Fatal(err)
	}
	return ref
}

// skiffctl runs skiffctl against the test's containerd.
func (e *agentEnv) skiffctl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, e.bin.skiffctl, args...)
	cmd.Env = append(os.Environ(), "CONTAINERD_ADDRESS="+e.ctrd.Address)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// pull runs `skiffctl pull` and fails the test if it does.
func (e *agentEnv) pull(ctx context.Context, ref string) {
	e.t.Helper()
	if out, err := e.skiffctl(ctx, "pull", "--address", e.ctrd.Address, ref); err != nil {
		e.t.Fatalf("skiffctl pull %s: %v\n%s\n%s", ref, err, out, e.logs())
	}
}

// run runs the probe in a new container of ref and returns its output.
func (e *agentEnv) run(ctx context.Context, ref, id string, args ...string) (string, error) {
	return e.ctrd.Ctr(ctx, append([]string{"run", "--rm", "--snapshotter", "skiff", ref, id, "/bin/probe"}, args...)...)
}

// mounted reports whether dir is a mount point.
func mounted(t testing.TB, dir string) bool {
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
