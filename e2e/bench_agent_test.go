//go:build e2e

package e2e

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/convert"
	"github.com/skiff-dev/skiff/pkg/image"
	"github.com/skiff-dev/skiff/pkg/store"
)

// Host trees the large benchmark image is built from (no image can be
// pulled here): a Go toolchain and the machine's shared libraries, each
// its own layer under the same path as on the host.
var largeImageTrees = []string{"/usr/local/go", "/usr/lib/x86_64-linux-gnu"}

// BenchmarkAgentLazyStart runs a large image (the Go toolchain and the
// shared libraries: ≥ 400 MB, ≥ 15k files, a layer ≥ 80 MB) on a real
// containerd, once lazily through the agent and once as a plain OCI image
// pulled and unpacked by containerd, both from a loopback registry (and
// MinIO for Skiff), and reports in one run:
//
//   - lazy-first-output/oci-pull-run: from `skiffctl pull` to the first
//     output of a command that reads under 10% of the image, against
//     `ctr image pull` plus `ctr run` of the original;
//   - fetched-before-first-output/compressed-size: every byte the node
//     received from the registry and the store until then, against the
//     image's compressed layers;
//   - small-files-after-lazy-start/oci: a command reading ~50 MB over 5k
//     small files run right after the lazy start, against the same
//     command on the fully pulled image;
//   - second-node-first-output/oci-pull-run and
//     second-node-small-files/oci: the same on a second node, which
//     prefetches the startup set the first node recorded;
//   - small-files-after-pause/oci: the small-files command on a third
//     node with the startup set removed, a first node again, run once
//     the first command's container has stopped reading for a while and
//     the agent has warmed the image's small files (SKIFF_AGENT_WARM_SMALL).
func BenchmarkAgentLazyStart(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	e := startAgentEnv(b, testenv.ContainerdOptions{})
	for _, dir := range largeImageTrees {
		if _, err := os.Stat(dir); err != nil {
			b.Skipf("the large image is built from %s: %v", dir, err)
		}
	}
	work := b.TempDir()
	first, small := benchLists(b)
	probe, err := os.ReadFile(e.bin.probe)
	if err != nil {
		b.Fatal(err)
	}
	layers := []v1.Layer{tarLayer(b, map[string][]byte{
		"bin/probe":        probe,
		"bench/first.list": []byte(first),
		"bench/small.list": []byte(small),
	}, map[string]int64{"bin/probe": 0o755})}
	var compressed, unpacked int64
	for i, dir := range largeImageTrees {
		l, n := hostLayer(b, filepath.Join(work, fmt.Sprintf("layer%d.tar.gz", i)), dir)
		size, err := l.Size()
		if err != nil {
			b.Fatal(err)
		}
		compressed += size
		unpacked += n
		layers = append(layers, l)
	}
	img, err := fixture.Image(layers...)
	if err != nil {
		b.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		b.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", runtime.GOARCH
	cfg.Config.Entrypoint = []string{"/bin/probe"}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		b.Fatal(err)
	}
	direct := e.reg.Addr + "/large:v1"
	if err := image.Write(ctx, direct, img); err != nil {
		b.Fatal(err)
	}
	src, err := image.Load(ctx, direct)
	if err != nil {
		b.Fatal(err)
	}
	res, err := convert.New(e.store, convert.Options{Compression: bootstrap.Zstd}).Convert(ctx, src)
	if err != nil {
		b.Fatal(err)
	}
	skiffRef, err := image.SkiffTag(direct)
	if err != nil {
		b.Fatal(err)
	}
	if err := image.Write(ctx, skiffRef, res.Image); err != nil {
		b.Fatal(err)
	}
	b.Logf("image: %d layers, %d B compressed, %d B unpacked, %d files; bootstrap %d B; converted in %s",
		len(layers), compressed, unpacked, res.Stats.Files, res.BootstrapSize, res.Duration.Round(time.Millisecond))

	// Everything the node receives passes a counting proxy: the registry
	// for containerd and the agent's referrer lookups, MinIO for the
	// mount process (bootstrap and chunks).
	reg := startCountingProxy(b, e.reg.Addr)
	storeURL, err := url.Parse(e.storeURL)
	if err != nil {
		b.Fatal(err)
	}
	s3 := startCountingProxy(b, storeURL.Query().Get("endpoint"))
	// SKIFF_BENCH_AGENT_ENV adds settings to both nodes' agents (space
	// separated), to measure them against the defaults.
	e.restartWith(ctx, append([]string{"SKIFF_AGENT_STORE=" + strings.Replace(e.storeURL, s3.target, s3.addr, 1)},
		strings.Fields(os.Getenv("SKIFF_BENCH_AGENT_ENV"))...)...)
	ref := reg.addr + "/large:v1"

	// The setup wrote gigabytes (the binaries built, the image pushed and
	// converted): written back while the commands run, they would slow
	// whichever ran then.
	unix.Sync()
	b.ResetTimer()
	// Skiff: pull, then the command; timed to its first output.
	reg.reset()
	s3.reset()
	start := time.Now()
	e.pull(ctx, ref)
	pulled := time.Since(start)
	out, firstAt := runTimed(b, ctx, e, "--snapshotter", "skiff", ref, "lazy-first", "/bin/probe", "list", "/bench/first.list")
	printed := printedAt(b, out)
	regBytes, storeBytes := reg.bytesBefore(printed), s3.bytesBefore(printed)
	lazyFirst := firstAt.Sub(start)
	fetched := regBytes + storeBytes
	b.Logf("skiff: pulled in %s, first output after %s, %d B fetched by then (registry %d, store %d); %s",
		pulled.Round(time.Millisecond), lazyFirst.Round(time.Millisecond), fetched, regBytes, storeBytes, strings.TrimSpace(out))
	s3.reset()
	start = time.Now()
	out, _ = runTimed(b, ctx, e, "--snapshotter", "skiff", ref, "lazy-small", "/bin/probe", "list", "/bench/small.list")
	lazySmall := time.Since(start)
	b.Logf("skiff: small files in %s, %d B from the store: %s", lazySmall.Round(time.Millisecond), s3.bytes(), strings.TrimSpace(out))
	// The same again, every chunk local now: what is left is the cost of
	// the mount itself, apart from fetching.
	start = time.Now()
	runTimed(b, ctx, e, "--snapshotter", "skiff", ref, "lazy-small-warm", "/bin/probe", "list", "/bench/small.list")
	b.Logf("skiff: small files again, all local, in %s", time.Since(start).Round(time.Millisecond))
	// Once more with the kernel's caches dropped and the chunks on local
	// disk: the mount's own cost on a cold kernel, apart from fetching.
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err == nil {
		start = time.Now()
		runTimed(b, ctx, e, "--snapshotter", "skiff", ref, "lazy-small-disk", "/bin/probe", "list", "/bench/small.list")
		b.Logf("skiff: small files from the local disk cache, kernel caches dropped, in %s", time.Since(start).Round(time.Millisecond))
	}

	// The first node warms the image's small files once its containers
	// have paused, which must not overlap the OCI baseline.
	waitWarmed(b, ctx, e)

	// OCI: plain pull and unpack into overlayfs, then the same commands.
	start = time.Now()
	if out, err := e.ctrd.Ctr(ctx, "image", "pull", "--plain-http", "--snapshotter", "overlayfs", ref); err != nil {
		b.Fatalf("%v\n%s", err, out)
	}
	pulled = time.Since(start)
	out, firstAt = runTimed(b, ctx, e, "--snapshotter", "overlayfs", ref, "oci-first", "/bin/probe", "list", "/bench/first.list")
	ociFirst := firstAt.Sub(start)
	b.Logf("oci: pulled in %s, first output after %s; %s", pulled.Round(time.Millisecond), ociFirst.Round(time.Millisecond), strings.TrimSpace(out))
	start = time.Now()
	out, _ = runTimed(b, ctx, e, "--snapshotter", "overlayfs", ref, "oci-small", "/bin/probe", "list", "/bench/small.list")
	ociSmall := time.Since(start)
	b.Logf("oci: small files in %s: %s", ociSmall.Round(time.Millisecond), strings.TrimSpace(out))

	// A second node, with an agent, cache and containerd of its own on the
	// same registry and store, pulls and runs the same two commands. The
	// first node recorded what its containers read in their first seconds
	// (both commands here) beside the bootstrap as the image's startup
	// set, which the second prefetches as it mounts.
	startupKey := store.StartupKey(res.Bootstrap.Hex())
	waitFor(b, ctx, func() error { _, err := e.store.Stat(ctx, startupKey); return err })
	second := e.node(testenv.ContainerdOptions{})
	s3.reset()
	start = time.Now()
	second.pull(ctx, ref)
	out, firstAt = runTimed(b, ctx, second, "--snapshotter", "skiff", ref, "second-first", "/bin/probe", "list", "/bench/first.list")
	storeBytes = s3.bytesBefore(printedAt(b, out))
	secondFirst := firstAt.Sub(start)
	b.Logf("second node: first output after %s, %d B from the store by then; %s", secondFirst.Round(time.Millisecond), storeBytes, strings.TrimSpace(out))
	start = time.Now()
	out, _ = runTimed(b, ctx, second, "--snapshotter", "skiff", ref, "second-small", "/bin/probe", "list", "/bench/small.list")
	secondSmall := time.Since(start)
	b.Logf("second node: small files in %s: %s", secondSmall.Round(time.Millisecond), strings.TrimSpace(out))
	if log, err := os.ReadFile(filepath.Join(second.root, "mountd.log")); err == nil {
		for _, line := range strings.Split(string(log), "\n") {
			if strings.Contains(line, "startup set") {
				b.Logf("second node: %s", line)
			}
		}
	}

	// A third node finds no startup set: the first node of the image
	// again. Its small-files command comes after a pause, in which the
	// agent warms the image's small files.
	if err := e.store.Delete(ctx, startupKey); err != nil {
		b.Fatal(err)
	}
	third := e.node(testenv.ContainerdOptions{})
	third.pull(ctx, ref)
	runTimed(b, ctx, third, "--snapshotter", "skiff", ref, "third-first", "/bin/probe", "list", "/bench/first.list")
	warmed := waitWarmed(b, ctx, third)
	start = time.Now()
	out, _ = runTimed(b, ctx, third, "--snapshotter", "skiff", ref, "third-small", "/bin/probe", "list", "/bench/small.list")
	pausedSmall := time.Since(start)
	b.Logf("third node: small files after a pause in %s: %s; %s", pausedSmall.Round(time.Millisecond), strings.TrimSpace(out), warmed)
	b.StopTimer()

	b.ReportMetric(float64(lazyFirst)/float64(ociFirst), "lazy-first-output/oci-pull-run")
	b.ReportMetric(float64(fetched)/float64(compressed), "fetched-before-first-output/compressed-size")
	b.ReportMetric(float64(lazySmall)/float64(ociSmall), "small-files-after-lazy-start/oci")
	b.ReportMetric(float64(secondFirst)/float64(ociFirst), "second-node-first-output/oci-pull-run")
	b.ReportMetric(float64(secondSmall)/float64(ociSmall), "second-node-small-files/oci")
	b.ReportMetric(float64(pausedSmall)/float64(ociSmall), "small-files-after-pause/oci")
	if stats, err := exec.CommandContext(ctx, "curl", "-s", "--unix-socket", filepath.Join(e.root, "mountd.sock"), "http://mountd/stats").Output(); err == nil {
		b.Logf("mount process fetch stats: %s", stats)
	}
}

// benchLists chooses what the two benchmark commands read, from the
// image's Go toolchain. first: a few small sources, then the first output,
// then the compiler and linker (together under 10% of the image). small:
// files of 1 to 64 KiB in walk order, 5000 of them, about 50 MB.
func benchLists(b *testing.B) (first, small string) {
	goroot := largeImageTrees[0]
	var startup []string
	for _, name := range []string{"VERSION", "go.env", "src/fmt/print.go", "src/fmt/format.go", "src/os/file.go"} {
		startup = append(startup, filepath.Join(goroot, name))
	}
	rest := []string{filepath.Join(goroot, "pkg/tool/linux_amd64/compile"), filepath.Join(goroot, "pkg/tool/linux_amd64/link")}
	first = strings.Join(startup, "\n") + "\n-\n" + strings.Join(rest, "\n") + "\n"
	var files []string
	var total int64
	err := filepath.WalkDir(goroot, func(p string, d fs.DirEntry, err error) error {
		if err != nil || len(files) == 5000 {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if info.Size() >= 1<<10 && info.Size() <= 64<<10 {
			files = append(files, p)
			total += info.Size()
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("small-files command reads %d files, %d B", len(files), total)
	return first, strings.Join(files, "\n") + "\n"
}

// hostLayer writes the tree at dir as a gzip layer file and returns the
// layer and the bytes of file content in it.
func hostLayer(b *testing.B, path, dir string) (v1.Layer, int64) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	zw, err := gzip.NewWriterLevel(f, gzip.DefaultCompression)
	if err != nil {
		b.Fatal(err)
	}
	tw := tar.NewWriter(zw)
	var n int64
	count := func(rel string, hdr *tar.Header, data []byte) []byte {
		n += int64(len(data))
		return data
	}
	if err := fixture.TarTree(tw, dir, strings.TrimPrefix(dir, "/"), count); err != nil {
		b.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		b.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		b.Fatal(err)
	}
	l, err := tarball.LayerFromFile(path, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		b.Fatal(err)
	}
	return l, n
}

// runTimed runs a container with ctr run --rm and returns its output and
// when its first output arrived.
func runTimed(b *testing.B, ctx context.Context, e *agentEnv, args ...string) (string, time.Time) {
	b.Helper()
	cmd := e.ctrd.Command(ctx, append([]string{"run", "--rm"}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	r := bufio.NewReader(stdout)
	var firstAt time.Time
	var out strings.Builder
	if _, err := r.Peek(1); err == nil {
		firstAt = time.Now()
	}
	_, _ = io.Copy(&out, r)
	if err := cmd.Wait(); err != nil || firstAt.IsZero() {
		b.Fatalf("ctr run %s: %v\n%s%s\n%s", strings.Join(args, " "), err, out.String(), stderr.String(), e.logs())
	}
	return out.String(), firstAt
}

// printedAt returns the time the probe gave with its first output,
// "ready" and the time in nanoseconds: the bytes fetched until the first
// output are those that arrived before it, not before the line reached
// the benchmark, which can take longer than the probe's pause after it.
func printedAt(b *testing.B, out string) time.Time {
	b.Helper()
	line, _, _ := strings.Cut(out, "\n")
	ns, err := strconv.ParseInt(strings.TrimPrefix(line, "ready "), 10, 64)
	if err != nil {
		b.Fatalf("first output %q: want \"ready\" and a time: %v", line, err)
	}
	return time.Unix(0, ns)
}

// countingProxy forwards TCP connections to target and counts the bytes
// target sends back: the responses as they cross the wire, headers
// included. It copies bytes and parses nothing: the node's reads pass it
// while the OCI image's, from local disk, do not, so it must cost them as
// little as it can (an HTTP reverse proxy parsed every response again
// and, keeping two idle connections per host, dialled MinIO anew whenever
// more of the mount's requests had run at once).
type countingProxy struct {
	addr, target string
	mu           sync.Mutex
	conns        map[net.Conn]struct{}
	// arrivals lists, in order, when bytes arrived and how many had
	// arrived by then since the last reset.
	arrivals []arrival
}

type arrival struct {
	at time.Time
	n  int64
}

func startCountingProxy(b testing.TB, target string) *countingProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	p := &countingProxy{addr: l.Addr().String(), target: target, conns: map[net.Conn]struct{}{}}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { p.serve(c) })
		}
	})
	b.Cleanup(func() {
		l.Close()
		p.mu.Lock()
		for c := range p.conns {
			c.Close()
		}
		p.conns = nil
		p.mu.Unlock()
		wg.Wait()
	})
	return p
}

func (p *countingProxy) reset() {
	p.mu.Lock()
	p.arrivals = nil
	p.mu.Unlock()
}

// bytes returns how many bytes have arrived since the last reset.
func (p *countingProxy) bytes() int64 { return p.bytesBefore(time.Now()) }

// bytesBefore returns how many bytes arrived after the last reset and
// before t.
func (p *countingProxy) bytesBefore(t time.Time) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := sort.Search(len(p.arrivals), func(i int) bool { return !p.arrivals[i].at.Before(t) })
	if i == 0 {
		return 0
	}
	return p.arrivals[i-1].n
}

// count records that n bytes arrived.
func (p *countingProxy) count(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	total := int64(n)
	if k := len(p.arrivals); k > 0 {
		total += p.arrivals[k-1].n
	}
	p.arrivals = append(p.arrivals, arrival{time.Now(), total})
}

// serve forwards c to a new connection to target until either side
// closes.
func (p *countingProxy) serve(c net.Conn) {
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	if !p.track(c, up) {
		return
	}
	defer p.untrack(c, up)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(up, c)
		up.(*net.TCPConn).CloseWrite()
	}()
	buf := make([]byte, 256<<10)
	for {
		n, err := up.Read(buf)
		if n > 0 {
			p.count(n)
			if _, werr := c.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	c.Close()
	<-done
}

// track records c and up for the cleanup to close; after it, they are
// closed at once.
func (p *countingProxy) track(c, up net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		c.Close()
		up.Close()
		return false
	}
	p.conns[c], p.conns[up] = struct{}{}, struct{}{}
	return true
}

func (p *countingProxy) untrack(c, up net.Conn) {
	p.mu.Lock()
	if p.conns != nil {
		delete(p.conns, c)
		delete(p.conns, up)
	}
	p.mu.Unlock()
	c.Close()
	up.Close()
}

// waitWarmed waits until node's agent has warmed the small files of the
// image it runs, and returns its log line saying so.
func waitWarmed(b *testing.B, ctx context.Context, node *agentEnv) string {
	b.Helper()
	var line string
	waitFor(b, ctx, func() error {
		log, err := os.ReadFile(filepath.Join(node.root, "mountd.log"))
		if err != nil {
			return err
		}
		for l := range strings.Lines(string(log)) {
			if strings.Contains(l, "small files in the page cache") || strings.Contains(l, "warm small files") {
				line = strings.TrimSpace(l)
				return nil
			}
		}
		return errors.New("the agent has not warmed the image's small files")
	})
	return line
}
