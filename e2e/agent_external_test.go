//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/internal/testenv"
)

// TestAgentExternalMountd runs the mount process as its own process the
// agent did not start, as the second container of the agent's pod does
// (SKIFF_AGENT_MOUNTD=external, deploy/kubernetes/agent.yaml): a
// container restarts alone, and every process in it dies. A running
// container of a Skiff image must keep reading when the agent is killed
// and restarted, when the mount process is killed and its supervisor
// starts a new one, and when a new build takes over, whose predecessor
// must then stay, holding nothing, until it is stopped: exiting would
// have its supervisor start it again.
func TestAgentExternalMountd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	e := startAgentEnv(t, testenv.ContainerdOptions{})
	e.stopAll()
	e.agentEnv = append(e.agentEnv, "SKIFF_AGENT_MOUNTD=external")
	// The pod's containers start in any order: the agent waits for the
	// mount process, and serves only once it answers.
	e.launchAgent()
	time.Sleep(2 * time.Second)
	if c, err := net.Dial("unix", e.socket); err == nil {
		c.Close()
		t.Fatalf("the agent serves with no mount process\n%s", e.logs())
	}
	if pid, err := os.ReadFile(filepath.Join(e.root, "mountd.pid")); err == nil && !exited(atoi(t, string(pid))) {
		t.Fatalf("the agent started a mount process itself (%s)", pid)
	}
	first := e.startMountd()
	e.waitAgent()
	e.waitSnapshotter(ctx)

	ref, files := e.pushReadable(ctx, "external", "msg", "agent", "crash", "upgrade", "stopped")
	skiffRef := ref + "-skiff"
	read := func(t *testing.T, name string) {
		t.Helper()
		out, err := e.ctrd.Ctr(ctx, "tasks", "exec", "--exec-id", "read-"+name, "long", "/bin/probe", "cat", "/data/"+name)
		if want := string(files["data/"+name]); err != nil || out != want {
			t.Fatalf("read /data/%s in the running container: %q, %v; want %q\n%s", name, out, err, want, e.logs())
		}
	}
	waitMountd := func(t *testing.T, m *mountd) {
		t.Helper()
		waitFor(t, ctx, func() error {
			if pid := e.mountdPID(); pid != m.cmd.Process.Pid {
				return fmt.Errorf("mount process %d serves, not %d", pid, m.cmd.Process.Pid)
			}
			return nil
		})
	}

	t.Run("runs a skiff image with the mount process it was given", func(t *testing.T) {
		e.pull(ctx, skiffRef)
		if _, err := e.ctrd.Ctr(ctx, "run", "-d", "--snapshotter", "skiff", skiffRef, "long", "/bin/probe", "sleep"); err != nil {
			t.Fatalf("%v\n%s", err, e.logs())
		}
		read(t, "msg")
		if pid := e.mountdPID(); pid != first.cmd.Process.Pid {
			t.Fatalf("mount process %d serves, not the one started for the agent (%d)", pid, first.cmd.Process.Pid)
		}
	})

	t.Run("agent killed and restarted; check tells", func(t *testing.T) {
		if out, err := e.check(ctx); err != nil || !strings.Contains(out, "answers") {
			t.Fatalf("skiff-agent check with the agent up: %q, %v", out, err)
		}
		e.killAgent()
		if out, err := e.check(ctx); err == nil {
			t.Fatalf("skiff-agent check succeeded with the agent down: %q", out)
		}
		e.startAgent()
		e.waitSnapshotter(ctx)
		read(t, "agent")
		if pid := e.mountdPID(); pid != first.cmd.Process.Pid {
			t.Fatalf("the restarted agent replaced the mount process %d by %d", first.cmd.Process.Pid, pid)
		}
	})

	t.Run("mount process killed, its supervisor starts another", func(t *testing.T) {
		agent := e.agent.Process.Pid
		waitFor(t, ctx, func() error {
			if n := fuseDevices(agent); n == 0 {
				return fmt.Errorf("agent %d holds no FUSE device yet", agent)
			}
			return nil
		})
		if err := first.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		<-first.done
		// The agent holds the connections and waits: starting a mount
		// process is the supervisor's job, not the agent's.
		time.Sleep(3 * time.Second)
		if pid := e.mountdPID(); pid != first.cmd.Process.Pid {
			t.Fatalf("the agent started mount process %d itself", pid)
		}
		second := e.startMountd()
		waitMountd(t, second)
		read(t, "crash")
	})

	t.Run("new build takes over; the old one stays until stopped", func(t *testing.T) {
		old := e.mountds[len(e.mountds)-1]
		e.anotherBuild()
		next := e.startMountd()
		waitMountd(t, next)
		waitFor(t, ctx, func() error {
			if n := fuseDevices(old.cmd.Process.Pid); n != 0 {
				return fmt.Errorf("old mount process still holds %d FUSE devices", n)
			}
			return nil
		})
		read(t, "upgrade")
		select {
		case <-old.done:
			t.Fatalf("the old mount process exited after handing over (%v): its supervisor would start it again", old.err)
		case <-time.After(time.Second):
		}
		if err := old.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-old.done:
			if old.err != nil {
				t.Fatalf("the old mount process, stopped: %v", old.err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the old mount process did not stop on SIGTERM")
		}
		read(t, "stopped")
		out, err := e.run(ctx, skiffRef, "new-after-handover", "cat", "/data/msg")
		if err != nil || out != string(files["data/msg"]) {
			t.Fatalf("new container after the handover: %q, %v\n%s", out, err, e.logs())
		}
	})
}

// check runs `skiff-agent check` against the agent's socket.
func (e *agentEnv) check(ctx context.Context) (string, error) {
	cmd := exec.CommandContext(ctx, e.bin.agent, "check")
	cmd.Env = append(os.Environ(), e.agentEnv...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		t.Fatal(err)
	}
	return n
}
