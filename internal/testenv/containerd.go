package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"text/template"
)

// ContainerdOptions configures StartContainerd.
type ContainerdOptions struct {
	// Binary and Ctr are the containerd and ctr executables; default the
	// ones on PATH (Debian's containerd 1.6). A containerd 2.x build works
	// too.
	Binary, Ctr string
	// SnapshotterSocket is where the "skiff" proxy snapshotter plugin
	// listens. Empty: no proxy plugin.
	SnapshotterSocket string
	// SnapshotterConfig, when set, is written instead of the proxy plugin
	// section for SnapshotterSocket: a deployment's own snippet, which
	// may also set the CRI plugin's snapshotter.
	SnapshotterConfig string
	// CRI, when set, enables containerd's CRI plugin.
	CRI *CRI
	// ConfigVersion is the version of the config file written: 2 (the
	// default), which every release reads, or 3, containerd 2.x's own.
	ConfigVersion int
}

// CRI configures containerd's CRI plugin, for tests that stand in for the
// kubelet. No CNI plugin is installed: pods must use the node's network
// namespace.
type CRI struct {
	// SandboxImage is the image of every pod's sandbox (pause) container.
	SandboxImage string
	// PlainHTTP lists registries (host:port) served over plain HTTP.
	PlainHTTP []string
}

// Containerd is a running containerd with its own root, state directory
// and socket, runc as its runtime, and the CRI plugin disabled unless
// asked for (see CRI), when it serves on Address too.
type Containerd struct {
	Address string // grpc socket
	Root    string
	State   string
	CtrPath string

	proc *process
}

// containerdConfig is a version 2 config, which containerd 1.6, 1.7 and
// 2.x all read, or a version 3 one for 2.x. They differ only in where the
// CRI plugin's settings live.
var containerdConfig = template.Must(template.New("config").Parse(`version = {{.Version}}
root = "{{.Root}}"
state = "{{.State}}"
{{- if not .CRI}}
disabled_plugins = ["io.containerd.grpc.v1.cri"]
{{- end}}

[grpc]
  address = "{{.Address}}"

[ttrpc]
  address = "{{.Address}}.ttrpc"

[debug]
  level = "info"
{{- if and .CRI (eq .Version 3)}}

# Subtables only, so that a snippet may still define the tables above them.
[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "{{.CRI.SandboxImage}}"
[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = "{{.HostsDir}}"
[plugins.'io.containerd.cri.v1.runtime']
  # Test machines may lack CAP_SYS_RESOURCE, without which runc cannot
  # lower the sandbox's OOM score as the CRI asks.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{{.CNIDir}}/bin"]
    conf_dir = "{{.CNIDir}}/conf"
{{- else if .CRI}}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{{.CRI.SandboxImage}}"
  # Test machines may lack CAP_SYS_RESOURCE, without which runc cannot
  # lower the sandbox's OOM score as the CRI asks.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{{.CNIDir}}/bin"
    conf_dir = "{{.CNIDir}}/conf"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{{.HostsDir}}"
{{- end}}
{{- if .SnapshotterConfig}}

{{.SnapshotterConfig}}
{{- else if .SnapshotterSocket}}

[proxy_plugins]
  [proxy_plugins.skiff]
    type = "snapshot"
    address = "{{.SnapshotterSocket}}"
{{- end}}
{{- if .CRI}}
{{- $runc := "plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc"}}
{{- if eq .Version 3}}{{$runc = "plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc"}}{{end}}

# Last, under the tables a snippet may define: pods keep their runc state
# in this containerd's state directory, as ctr's containers do (Command).
[{{$runc}}]
  runtime_type = "io.containerd.runc.v2"
  [{{$runc}}.options]
    Root = "{{.RuncRoot}}"
{{- end}}
`))

// StartContainerd starts containerd and stops it when the test ends. It
// skips the test when not running as root, which containerd requires.
func StartContainerd(t testing.TB, opts ContainerdOptions) Containerd {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("testenv: containerd needs root")
	}
	if opts.Binary == "" {
		opts.Binary = "containerd"
	}
	if opts.Ctr == "" {
		opts.Ctr = "ctr"
	}
	bin, err := exec.LookPath(opts.Binary)
	if err != nil {
		t.Skipf("testenv: containerd not installed (make deps): %v", err)
	}
	ctr, err := exec.LookPath(opts.Ctr)
	if err != nil {
		t.Skipf("testenv: ctr not installed (make deps): %v", err)
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skipf("testenv: runc not installed (make deps): %v", err)
	}
	// Unix socket paths are limited to 108 bytes; t.TempDir() can be
	// longer, so sockets live in a short directory of their own.
	sockDir, err := os.MkdirTemp("", "ctrd")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	base := t.TempDir()
	c := Containerd{
		Address: filepath.Join(sockDir, "containerd.sock"),
		Root:    filepath.Join(base, "root"),
		State:   filepath.Join(sockDir, "state"),
		CtrPath: ctr,
	}
	hosts := filepath.Join(base, "certs.d")
	if opts.CRI != nil {
		for _, h := range opts.CRI.PlainHTTP {
			writeHostsFile(t, hosts, h)
		}
	}
	var b strings.Builder
	if err := containerdConfig.Execute(&b, struct {
		Containerd
		ContainerdOptions
		Version          int
		CNIDir, HostsDir string
	}{c, opts, max(opts.ConfigVersion, 2), filepath.Join(base, "cni"), hosts}); err != nil {
		t.Fatalf("testenv: containerd config: %v", err)
	}
	config := filepath.Join(base, "config.toml")
	if err := os.WriteFile(config, []byte(b.String()), 0o644); err != nil {
		t.Fatalf("testenv: write containerd config: %v", err)
	}
	// The shim is looked up on PATH: a containerd built elsewhere runs
	// with the shim built beside it.
	env := []string{"PATH=" + filepath.Dir(bin) + ":" + os.Getenv("PATH")}
	p := newProcess(t, "containerd", bin, []string{"--config", config}, env)
	p.ready = func(ctx context.Context) error {
		out, err := exec.CommandContext(ctx, ctr, "--address", c.Address, "version").CombinedOutput()
		if err != nil {
			return fmt.Errorf("ctr version: %v: %s", err, out)
		}
		return nil
	}
	p.start()
	c.proc = p
	t.Cleanup(func() {
		c.cleanupTasks()
		p.stop()
		// Mounts left under root (rootfs of killed tasks) would make the
		// temp dir removal fail.
		_ = exec.Command("umount", "-R", "-l", c.Root).Run()
		_ = os.RemoveAll(sockDir)
	})
	return c
}

// writeHostsFile has containerd's CRI plugin reach registry host over
// plain HTTP (a hosts.toml in its registry config directory).
func writeHostsFile(t testing.TB, dir, host string) {
	t.Helper()
	hostDir := filepath.Join(dir, host)
	if err := os.MkdirAll(hostDir, 0o755); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	conf := fmt.Sprintf("server = %[1]q\n\n[host.%[1]q]\n  capabilities = [\"pull\", \"resolve\"]\n", "http://"+host)
	if err := os.WriteFile(filepath.Join(hostDir, "hosts.toml"), []byte(conf), 0o644); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// Restart stops containerd and starts it again on the same root, state
// and socket, as an upgrade of a node's containerd does: the shims, and
// the containers they run, carry on meanwhile. Call it from the test
// goroutine.
func (c Containerd) Restart() {
	c.proc.stop()
	c.proc.start()
}

// Ctr runs ctr against this containerd and returns its combined output.
func (c Containerd) Ctr(ctx context.Context, args ...string) (string, error) {
	out, err := c.Command(ctx, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Command returns ctr with args against this containerd. A container
// started with `ctr run` keeps its runc state in this containerd's state
// directory (RuncRoot): runc's default is one directory per machine, in
// which two tests running at once, or two runs of the suite, would find
// each other's containers of the same name.
func (c Containerd) Command(ctx context.Context, args ...string) *exec.Cmd {
	if len(args) > 0 && args[0] == "run" {
		args = append([]string{"run", "--runc-root", c.RuncRoot()}, args[1:]...)
	}
	return exec.CommandContext(ctx, c.CtrPath, append([]string{"--address", c.Address}, args...)...)
}

// RuncRoot is where runc keeps the state of this containerd's containers.
func (c Containerd) RuncRoot() string { return filepath.Join(c.State, "runc") }

// cleanupTasks kills and deletes every task and container of every
// namespace so that shims do not outlive the test.
func (c Containerd) cleanupTasks() {
	ctx := context.Background()
	nsOut, err := c.list(ctx, "namespaces", "ls", "-q")
	if err != nil {
		return
	}
	for _, ns := range strings.Fields(nsOut) {
		tasks, _ := c.list(ctx, "-n", ns, "tasks", "ls", "-q")
		for _, id := range strings.Fields(tasks) {
			_, _ = c.Ctr(ctx, "-n", ns, "tasks", "kill", "-s", "SIGKILL", id)
			_, _ = c.Ctr(ctx, "-n", ns, "tasks", "delete", "-f", id)
		}
		ctrs, _ := c.list(ctx, "-n", ns, "containers", "ls", "-q")
		for _, id := range strings.Fields(ctrs) {
			_, _ = c.Ctr(ctx, "-n", ns, "containers", "delete", id)
		}
	}
}

// list runs a listing ctr command and returns its standard output alone:
// ctr 2.x also prints the server's deprecation warnings, on stderr.
func (c Containerd) list(ctx context.Context, args ...string) (string, error) {
	out, err := c.Command(ctx, args...).Output()
	if err != nil {
		return "", fmt.Errorf("ctr %s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}

// Log returns the end of containerd's log, for failure messages.
func (c Containerd) Log() string { return c.proc.tail() }

// The containerd releases built for the e2e suite, beside the 1.6 of the
// Debian package.
const (
	Containerd17Version = "v1.7.35"
	Containerd2Version  = "v2.1.4"
)

// Containerd17 returns ContainerdOptions for containerd 1.7; see
// ContainerdRelease.
func Containerd17(t testing.TB) ContainerdOptions {
	return ContainerdRelease(t, Containerd17Version)
}

// Containerd2 returns ContainerdOptions for containerd 2.x; see
// ContainerdRelease.
func Containerd2(t testing.TB) ContainerdOptions {
	return ContainerdRelease(t, Containerd2Version)
}

// ContainerdRelease returns ContainerdOptions for containerd release
// version (v1.x or v2.x), building containerd, ctr and the runc shim into
// bin/containerd-VERSION/ once per machine. `go install` refuses
// containerd 2.x for the exclude directives in its go.mod, so the module
// is downloaded and built in place.
func ContainerdRelease(t testing.TB, version string) ContainerdOptions {
	t.Helper()
	dir := filepath.Join(RepoRoot(), "bin", "containerd-"+strings.TrimPrefix(version, "v"))
	opts := ContainerdOptions{Binary: filepath.Join(dir, "containerd"), Ctr: filepath.Join(dir, "ctr")}
	module := "github.com/containerd/containerd"
	if major, _, _ := strings.Cut(version, "."); major != "v1" && major != "v0" {
		module += "/" + major
		opts.ConfigVersion = 3
	}
	if isExecutable(opts.Binary) && isExecutable(opts.Ctr) && isExecutable(filepath.Join(dir, "containerd-shim-runc-v2")) {
		return opts
	}
	toolMu.Lock()
	defer toolMu.Unlock()
	t.Logf("testenv: building containerd %s into %s (once per machine; this takes minutes)", version, dir)
	dl := exec.Command("go", "mod", "download", "-json", module+"@"+version)
	dl.Env = append(os.Environ(), "GOFLAGS=", "GOWORK=off")
	out, err := dl.Output()
	if err != nil {
		t.Fatalf("testenv: download containerd %s: %v", version, err)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		t.Fatalf("testenv: download containerd %s: %v: %s", version, err, out)
	}
	build := exec.Command("go", "build", "-o", dir+"/", "./cmd/containerd", "./cmd/ctr", "./cmd/containerd-shim-runc-v2")
	build.Dir = mod.Dir
	build.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("testenv: build containerd %s: %v\n%s", version, err, out)
	}
	return opts
}
