// Package testenv starts real servers (MinIO, a distribution registry, NATS
// with JetStream) on loopback for integration tests. Each server runs as a
// child process built from a pinned version into the repository's bin/
// directory, listens on a free 127.0.0.1 port, is ready when its Start
// function returns, and is stopped by the test's cleanup. Servers can be
// stopped and started again on the same port and data directory so tests can
// exercise outages and recovery.
package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startTimeout bounds how long a server may take to become ready. MinIO
// on a loaded 2-core machine needs a few seconds; anything beyond this is a
// broken server, not a slow one.
const startTimeout = 60 * time.Second

// stopTimeout is how long a server gets to exit after SIGTERM before it is
// killed.
const stopTimeout = 10 * time.Second

var (
	rootOnce sync.Once
	root     string
	rootErr  error
)

// RepoRoot returns the directory holding go.work, found by walking up from
// the working directory (go test runs each package in its own directory,
// which may be inside any module of the workspace).
func RepoRoot() string {
	rootOnce.Do(func() {
		dir, err := os.Getwd()
		if err != nil {
			rootErr = fmt.Errorf("testenv: working directory: %w", err)
			return
		}
		for {
			if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
				root = dir
				return
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				rootErr = errors.New("testenv: no go.work found above the working directory")
				return
			}
			dir = parent
		}
	})
	if rootErr != nil {
		panic(rootErr)
	}
	return root
}

// toolMu serialises builds inside one test binary; the flock in Tool covers
// test binaries of other packages running in parallel.
var toolMu sync.Mutex

// Tool returns the path of bin/<name> in the repository, building it with
// "make bin/<name>" first when it is missing. The Makefile pins the version.
func Tool(t testing.TB, name string) string {
	t.Helper()
	bin := filepath.Join(RepoRoot(), "bin")
	path := filepath.Join(bin, name)
	if isExecutable(path) {
		return path
	}
	toolMu.Lock()
	defer toolMu.Unlock()
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatalf("testenv: create %s: %v", bin, err)
	}
	lock, err := os.OpenFile(filepath.Join(bin, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatalf("testenv: open tool lock: %v", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatalf("testenv: lock %s: %v", lock.Name(), err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	// Another test binary may have built it while we waited for the lock.
	if isExecutable(path) {
		return path
	}
	t.Logf("testenv: building bin/%s (once per machine; this can take minutes)", name)
	cmd := exec.Command("make", "-C", RepoRoot(), "bin/"+name)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("testenv: make bin/%s failed: %v\n%s", name, err, out)
	}
	if !isExecutable(path) {
		t.Fatalf("testenv: make bin/%s succeeded but %s is missing\n%s", name, path, out)
	}
	return path
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// freePort returns a loopback TCP port that was free a moment ago. Servers
// are told the number rather than binding :0 themselves because they must
// come back on the same port after a restart.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func hostPort(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// process is one server child process that can be stopped and started again
// with the same command line.
type process struct {
	t     testing.TB
	name  string
	path  string
	args  []string
	env   []string
	log   string // file collecting the server's stdout and stderr
	ready func(ctx context.Context) error

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// newProcess prepares a server; nothing runs until start.
func newProcess(t testing.TB, name, path string, args, env []string) *process {
	return &process{
		t:    t,
		name: name,
		path: path,
		args: args,
		env:  env,
		log:  filepath.Join(t.TempDir(), name+".log"),
	}
}

// start runs the server and waits until ready succeeds, failing the test
// with the server's log if it exits or does not become ready in time.
func (p *process) start() {
	p.t.Helper()
	if err := p.tryStart(); err != nil {
		p.t.Fatalf("testenv: %v", err)
	}
}

func (p *process) tryStart() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("%s: start: already running", p.name)
	}
	logf, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("%s: open log: %w", p.name, err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "--- testenv: starting %s %q\n", p.path, p.args)
	cmd := exec.Command(p.path, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// A crashed test binary must not leave servers holding ports and
	// temp dirs behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: start %s: %w", p.name, p.path, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	p.cmd, p.done = cmd, done

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	var last error
	for {
		select {
		case <-done:
			p.cmd, p.done = nil, nil
			return fmt.Errorf("%s exited during startup (%v); log:\n%s", p.name, cmd.ProcessState, p.tail())
		default:
		}
		if last = p.ready(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			p.killLocked()
			return fmt.Errorf("%s not ready after %v: %v; log:\n%s", p.name, startTimeout, last, p.tail())
		case <-done:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop terminates the server and waits for it to exit; stopping a stopped
// server does nothing.
func (p *process) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	p.cmd, p.done = nil, nil
}

func (p *process) killLocked() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	p.cmd, p.done = nil, nil
}

// tail returns the end of the server's log for failure messages.
func (p *process) tail() string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	const max = 4000
	if len(b) > max {
		b = b[len(b)-max:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}

// launch starts a server on freshly chosen ports, retrying with new ports
// when another process grabbed one between freePort and the server's bind.
// build returns the process for the given ports.
func launch(t testing.TB, nports int, build func(ports []int) *process) *process {
	t.Helper()
	var errs []error
	for attempt := 0; attempt < 3; attempt++ {
		ports := make([]int, nports)
		for i := range ports {
			ports[i] = freePort(t)
		}
		p := build(ports)
		if err := p.tryStart(); err != nil {
			errs = append(errs, err)
			continue
		}
		t.Cleanup(p.stop)
		return p
	}
	t.Fatalf("testenv: %v", errors.Join(errs...))
	return nil
}

// httpReady returns a readiness probe that wants one of the statuses want
// from url, 200 if none is given.
func httpReady(url string, want ...int) func(ctx context.Context) error {
	if len(want) == 0 {
		want = []int{http.StatusOK}
	}
	client := &http.Client{Timeout: 2 * time.Second}
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if !slices.Contains(want, resp.StatusCode) {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return nil
	}
}

// FreeAddr returns a loopback host:port that was free a moment ago, for a
// server under test to listen on.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return hostPort(freePort(t))
}

// FreeAddrs returns n distinct loopback host:ports that were free a moment
// ago. Each is held until all are chosen: ports found one after another
// may repeat, since a port is free again once found.
func FreeAddrs(t testing.TB, n int) []string {
	t.Helper()
	addrs := make([]string, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("testenv: find a free port: %v", err)
		}
		defer l.Close()
		addrs = append(addrs, l.Addr().String())
	}
	return addrs
}

// WaitHTTP waits up to a minute for GET url to answer 200, failing the test
// otherwise, or at once if the server reports on died (which may be nil)
// that it exited.
func WaitHTTP(t testing.TB, url string, died <-chan error) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		select {
		case err := <-died:
			t.Fatalf("%s: server exited before serving: %v", url, err)
		default:
		}
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s did not answer within a minute", url)
}

// WaitStatus waits up to 30 s for GET url to answer with status want, as a
// health check does after what it reports on changed.
func WaitStatus(t testing.TB, url string, want int) {
	t.Helper()
	got := 0
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get(url)
		if err != nil {
			continue
		}
		resp.Body.Close()
		if got = resp.StatusCode; got == want {
			return
		}
	}
	t.Fatalf("GET %s: %d, want %d", url, got, want)
}
