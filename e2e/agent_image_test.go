//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/store/storeurl"
)

// TestAgentImage runs the agent as deploy/kubernetes/agent.yaml does: the
// skiff/agent image as two containers, the agent and mountd
// (SKIFF_AGENT_MOUNTD=external), sharing the state directory with the host
// at the same path with mounts propagating both ways, and the snapshotter
// socket. The host's containerd runs a Skiff image through them, and a
// running container keeps reading while each container is restarted
// alone, as the kubelet restarts a pod's containers: a new process, in a
// new PID namespace where mountd is PID 1 again.
//
// The containers get CAP_SYS_ADMIN, /dev/fuse and no seccomp or AppArmor
// profile instead of the manifest's privileged: this test machine's root
// lacks CAP_SYS_RESOURCE, and Docker refuses privileged containers
// without every capability.
func TestAgentImage(t *testing.T) {
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Skipf("no Docker engine to run the agent image on: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	root := testenv.RepoRoot()
	mustRun(t, root, "make", "-s", "images")
	e := startAgentEnv(t, testenv.ContainerdOptions{})
	e.stopAll()

	// The state directory is a shared mount, so that mounts made in
	// mountd's container reach the host, where containerd uses them.
	mustRun(t, "/", "mount", "--bind", e.root, e.root)
	mustRun(t, "/", "mount", "--make-rshared", e.root)
	t.Cleanup(func() { _ = exec.Command("umount", "-R", "-l", e.root).Run() })

	c := &agentContainers{t: t, e: e, prefix: fmt.Sprintf("skiff-e2e-agent-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)}
	t.Cleanup(c.remove)
	common := []string{
		"--network", "host",
		"--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
		"-v", e.root + ":" + e.root + ":rshared",
		"-e", "SKIFF_AGENT_ROOT=" + e.root,
		"-e", "SKIFF_AGENT_MOUNTD=external",
		"-e", "SKIFF_AGENT_LOG_LEVEL=debug",
	}
	c.run("agent", append(common,
		"-v", filepath.Dir(e.socket)+":"+filepath.Dir(e.socket),
		"-e", "SKIFF_AGENT_SOCKET="+e.socket))
	c.run("mountd", append(common,
		"--device", "/dev/fuse",
		"-e", "SKIFF_AGENT_STORE="+e.storeURL,
		"-e", storeurl.EnvAccessKey+"="+os.Getenv(storeurl.EnvAccessKey),
		"-e", storeurl.EnvSecretKey+"="+os.Getenv(storeurl.EnvSecretKey)),
		"mountd")
	e.waitAgent()
	e.waitSnapshotter(ctx)

	ref, files := e.pushReadable(ctx, "inimage", "msg", "agent", "mountd", "again")
	e.pull(ctx, ref)
	if out, err := e.run(ctx, ref, "first", "cat", "/data/msg"); err != nil || out != string(files["data/msg"]) {
		c.fatalf(t, "container printed %q, %v", out, err)
	}
	if _, err := e.ctrd.Ctr(ctx, "run", "-d", "--snapshotter", "skiff", ref, "long", "/bin/probe", "sleep"); err != nil {
		c.fatalf(t, "ctr run -d: %v", err)
	}
	read := func(t *testing.T, name string) {
		t.Helper()
		out, err := e.ctrd.Ctr(ctx, "tasks", "exec", "--exec-id", "read-"+name, "long", "/bin/probe", "cat", "/data/"+name)
		if err != nil || out != string(files["data/"+name]) {
			c.fatalf(t, "read /data/%s in the running container: %q, %v", name, out, err)
		}
	}
	// The liveness probe of agent.yaml.
	probeAgent := func() error {
		out, err := exec.CommandContext(ctx, "docker", "exec", c.name("agent"), "/usr/local/bin/skiff-agent", "check").CombinedOutput()
		if err != nil {
			return fmt.Errorf("skiff-agent check: %v: %s", err, out)
		}
		return nil
	}
	waitFor(t, ctx, probeAgent)

	t.Run("agent container restarted", func(t *testing.T) {
		c.docker("restart", "--time", "1", c.name("agent"))
		e.waitAgent()
		e.waitSnapshotter(ctx)
		waitFor(t, ctx, probeAgent)
		read(t, "agent")
	})

	t.Run("mountd container killed and restarted", func(t *testing.T) {
		c.docker("kill", c.name("mountd"))
		c.docker("start", c.name("mountd"))
		read(t, "mountd")
		// Again at once: a crashing container is restarted right away,
		// and the agent must stand in anew for the next mount process
		// while it still waits for the last one to answer.
		c.docker("kill", c.name("mountd"))
		c.docker("start", c.name("mountd"))
		read(t, "again")
		if out, err := e.run(ctx, ref, "after-restarts", "cat", "/data/msg"); err != nil || out != string(files["data/msg"]) {
			c.fatalf(t, "new container after the restarts: %q, %v", out, err)
		}
	})
}

// agentContainers are the agent's containers of one test.
type agentContainers struct {
	t      *testing.T
	e      *agentEnv
	prefix string
	logged bool // fatalf has shown the logs
}

func (c *agentContainers) name(role string) string { return c.prefix + "-" + role }

// run starts container role of the agent image with docker run options
// opts and the image's arguments args.
func (c *agentContainers) run(role string, opts []string, args ...string) {
	c.t.Helper()
	full := append([]string{"run", "-d", "--name", c.name(role)}, opts...)
	c.docker(append(append(full, "skiff/agent:dev"), args...)...)
}

func (c *agentContainers) docker(args ...string) string {
	c.t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		c.fatalf(c.t, "docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// fatalf fails t with the containers' logs before the message: a CI log
// cut to its end still shows what failed.
func (c *agentContainers) fatalf(t *testing.T, format string, args ...any) {
	t.Helper()
	c.logged = true
	t.Log(c.logs())
	t.Fatalf(format, args...)
}

// logs returns the end of both containers' logs, mountd's first: its
// debug lines are many, and the agent's few tell what it did.
func (c *agentContainers) logs() string {
	var b strings.Builder
	for _, role := range []string{"mountd", "agent"} {
		out, _ := exec.Command("docker", "logs", "--timestamps", "--tail", "60", c.name(role)).CombinedOutput()
		fmt.Fprintf(&b, "--- %s container:\n%s\n", role, out)
	}
	return b.String()
}

// remove stops both containers, mountd last, and forgets the pid file its
// process wrote: a PID in the container's namespace, which the test's
// cleanup must not signal on the host.
func (c *agentContainers) remove() {
	if c.t.Failed() && !c.logged {
		c.t.Log(c.logs())
	}
	_ = exec.Command("docker", "rm", "-f", c.name("agent")).Run()
	_ = exec.Command("docker", "stop", "--time", "10", c.name("mountd")).Run()
	_ = exec.Command("docker", "rm", "-f", c.name("mountd")).Run()
	_ = os.Remove(filepath.Join(c.e.root, "mountd.pid"))
}
