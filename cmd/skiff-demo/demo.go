package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/cache"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/image"
	"github.com/skiff-dev/skiff/pkg/lazyfs"
	"github.com/skiff-dev/skiff/pkg/store/storeurl"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
)

// stepTimeout bounds every wait, so a broken demo fails instead of hanging.
const stepTimeout = 2 * time.Minute

type demo struct {
	out      io.Writer
	bin      string
	work     string
	nats     *server.Server
	procs    []*exec.Cmd
	registry string // host:port
	convAddr string
	storeURL string
	nc       *nats.Conn
	bus      *bus.Bus
	outcomes <-chan bus.Outcome
	cancel   context.CancelFunc
	keep     bool // leave work behind (SKIFF_DEMO_KEEP)
}

func newDemo(out io.Writer) (*demo, error) {
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	d := &demo{out: out, bin: filepath.Join(root, "bin")}
	for _, tool := range []string{"registry", "skiff-converter"} {
		if _, err := os.Stat(filepath.Join(d.bin, tool)); err != nil {
			return nil, fmt.Errorf("bin/%s is missing: run `make build tools` (make demo does)", tool)
		}
	}
	if d.work, err = os.MkdirTemp("", "skiff-demo-"); err != nil {
		return nil, err
	}
	return d, nil
}

func (d *demo) say(format string, args ...any) { fmt.Fprintf(d.out, format+"\n", args...) }

func (d *demo) run(ctx context.Context) error {
	start := time.Now()
	ctx, d.cancel = context.WithCancel(ctx)
	d.say("== Skiff demo (work directory %s)", d.work)
	if err := d.startServices(ctx); err != nil {
		return err
	}

	// 1. Push: the only thing a user does.
	ref := d.registry + "/demo/app:v1"
	img, want, err := sampleImage(1)
	if err != nil {
		return err
	}
	src, err := d.push(ctx, ref, img)
	if err != nil {
		return err
	}
	d.say("\n== 1. pushed %s@%s (2 layers)", ref, src)
	c, err := d.waitCompleted(ctx, src)
	if err != nil {
		return err
	}
	d.say("   event conversion.completed after attempt %d in %s:", c.GetAttempt(), c.GetDuration().AsDuration().Round(time.Millisecond))
	d.say("     target     %s@%s", c.GetTarget(), c.GetTargetDigest())
	d.say("     bootstrap  %s (%s)", c.GetBootstrapDigest(), size(c.GetBootstrapSize()))
	d.say("     source layers %s -> stored %s, %d files, %d chunks, %s new in the store",
		size(c.GetSourceBytes()), size(c.GetStoredBytes()), c.GetFiles(), c.GetChunks(), size(c.GetNewBytes()))

	// 2. Dedup: the same image under a second tag is tagged, not
	// converted; an image sharing a layer stores only what is new.
	ref2 := d.registry + "/demo/app:v2"
	if _, err := d.push(ctx, ref2, img); err != nil {
		return err
	}
	if err := d.waitTag(ctx, ref2+image.TagSuffix); err != nil {
		return err
	}
	d.say("\n== 2. pushed the same image as %s: %s%s appeared without a second conversion", ref2, ref2, image.TagSuffix)
	img3, _, err := sampleImage(2)
	if err != nil {
		return err
	}
	ref3 := d.registry + "/demo/other:v1"
	src3, err := d.push(ctx, ref3, img3)
	if err != nil {
		return err
	}
	c3, err := d.waitCompleted(ctx, src3)
	if err != nil {
		return err
	}
	d.say("   pushed %s, which shares its base layer: stored %s, only %s new in the store",
		ref3, size(c3.GetStoredBytes()), size(c3.GetNewBytes()))

	// 3. Lazy mount and read back.
	if err := d.mountAndRead(ctx, ref+image.TagSuffix, want); err != nil {
		return err
	}

	// 4. The record of it all.
	recs, err := d.bus.ListRecords(ctx)
	if err != nil {
		return err
	}
	d.say("\n== 4. conversion records (skiffctl status --nats %s):", d.nats.ClientURL())
	for _, r := range recs {
		d.say("   %-7s %s attempts=%d, latest Skiff tag %s", r.State, r.Source, r.Attempts, r.Target)
	}
	if err := d.checkOnce(ctx, 2); err != nil {
		return err
	}
	d.say("\n== demo finished in %s: every image converted exactly once", time.Since(start).Round(time.Millisecond))
	return nil
}

func (d *demo) startServices(ctx context.Context) error {
	var err error
	d.nats, err = server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: filepath.Join(d.work, "jetstream"), NoLog: true, NoSigs: true,
	})
	if err != nil {
		return fmt.Errorf("nats: %w", err)
	}
	go d.nats.Start()
	if !d.nats.ReadyForConnections(30 * time.Second) {
		return errors.New("embedded nats did not start")
	}
	d.say("   embedded NATS JetStream  %s", d.nats.ClientURL())

	if d.convAddr, err = freeAddr(); err != nil {
		return err
	}
	if d.registry, err = freeAddr(); err != nil {
		return err
	}
	config := filepath.Join(d.work, "registry.yml")
	if err := os.WriteFile(config, []byte(registryConfig(d.registry, filepath.Join(d.work, "registry"), "http://"+d.convAddr+"/notify")), 0o644); err != nil {
		return err
	}
	if err := d.spawn("registry", []string{"serve", config}, []string{"OTEL_TRACES_EXPORTER=none"}); err != nil {
		return err
	}
	if err := waitHTTP(ctx, "http://"+d.registry+"/v2/"); err != nil {
		return fmt.Errorf("registry: %w (log: %s)", err, d.logPath("registry"))
	}
	d.say("   registry (distribution)  %s, notifications -> http://%s/notify", d.registry, d.convAddr)

	d.storeURL = "file://" + filepath.Join(d.work, "store")
	if err := d.spawn("skiff-converter", nil, []string{
		"SKIFF_CONVERTER_LISTEN=" + d.convAddr, "SKIFF_NATS_URL=" + d.nats.ClientURL(), "SKIFF_STORE=" + d.storeURL,
		"SKIFF_CONVERTER_WORK_DIR=" + d.work, "SKIFF_CONVERTER_NAME=demo-converter",
	}); err != nil {
		return err
	}
	if err := waitHTTP(ctx, "http://"+d.convAddr+"/healthz"); err != nil {
		return fmt.Errorf("skiff-converter: %w (log: %s)", err, d.logPath("skiff-converter"))
	}
	d.say("   skiff-converter          %s, store %s", d.convAddr, d.storeURL)

	if d.nc, err = bus.Connect(d.nats.ClientURL(), "skiff-demo"); err != nil {
		return err
	}
	if d.bus, err = bus.New(d.nc); err != nil {
		return err
	}
	d.outcomes, err = d.bus.Outcomes(ctx, true)
	return err
}

func (d *demo) logPath(name string) string { return filepath.Join(d.work, name+".log") }

// spawn starts bin/name with its output in a log file. The child gets
// SIGKILL if this process dies, so nothing outlives the demo.
func (d *demo) spawn(name string, args, env []string) error {
	log, err := os.Create(d.logPath(name))
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(d.bin, name), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	log.Close()
	d.procs = append(d.procs, cmd)
	return nil
}

func (d *demo) push(ctx context.Context, ref string, img v1.Image) (v1.Hash, error) {
	if err := image.Write(ctx, ref, img); err != nil {
		return v1.Hash{}, err
	}
	return img.Digest()
}

func (d *demo) waitCompleted(ctx context.Context, src v1.Hash) (*skiffv1.ConversionCompleted, error) {
	ctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no conversion of %s within %s (converter log: %s)", src, stepTimeout, d.logPath("skiff-converter"))
		case o, ok := <-d.outcomes:
			if !ok {
				return nil, errors.New("event stream closed")
			}
			if o.Err != nil {
				return nil, o.Err
			}
			if o.SourceDigest() != src.String() {
				continue
			}
			if o.Failed != nil {
				return nil, fmt.Errorf("conversion of %s failed: %s", src, o.Failed.GetReason())
			}
			return o.Completed, nil
		}
	}
}

func (d *demo) waitTag(ctx context.Context, ref string) error {
	ctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	for {
		if _, err := image.Load(ctx, ref); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not appear within %s", ref, stepTimeout)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// mountAndRead mounts the Skiff image with FUSE and reads every file back
// through the kernel; where FUSE is unavailable (no /dev/fuse, no
// privilege) it reads through the same lazy fetch path without the kernel
// and says so.
func (d *demo) mountAndRead(ctx context.Context, ref string, want map[string][]byte) error {
	b, bd, err := image.LoadBootstrap(ctx, ref)
	if err != nil {
		return err
	}
	st, err := storeurl.Open(ctx, d.storeURL)
	if err != nil {
		return err
	}
	c, err := cache.Open(filepath.Join(d.work, "cache"), 256<<20)
	if err != nil {
		return err
	}
	f := fetch.New(c, []fetch.Source{fetch.NewStoreSource("store", st)})
	defer f.Flush()
	s := b.Stats()
	d.say("\n== 3. lazy mount of %s (bootstrap %s: %d files, %s of content)", ref, bd, s.Files, size(s.LogicalBytes))
	mnt := filepath.Join(d.work, "mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return err
	}
	read := func(p string) ([]byte, error) { return os.ReadFile(filepath.Join(mnt, p)) }
	srv, err := lazyfs.Mount(ctx, mnt, b, f, lazyfs.Options{})
	if err != nil {
		d.say("   FUSE unavailable (%v): reading through the lazy fetch path without the kernel", err)
		read = func(p string) ([]byte, error) { return readFile(ctx, b, f, p) }
	} else {
		defer srv.Unmount()
		d.say("   mounted at %s", mnt)
	}
	d.say("   right after mounting, %s fetched from the store", size(fetched(f.Stats())))
	for _, p := range []string{"etc/motd", "data/text"} {
		got, err := read(p)
		if err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		if !bytes.Equal(got, want[p]) {
			return fmt.Errorf("read %s: %d bytes differ from the pushed content", p, len(got))
		}
		d.say("   read /%s: %s, identical to the pushed file; fetched so far %s", p, size(int64(len(got))), size(fetched(f.Stats())))
	}
	st2 := f.Stats()
	d.say("   untouched files were never fetched: %s of %s stored bytes read (%d chunk reads from the store)",
		size(fetched(st2)), size(s.StoredBytes), st2.CacheMisses)
	return nil
}

// readFile reads a regular file of b chunk by chunk.
func readFile(ctx context.Context, b *bootstrap.Bootstrap, f *fetch.Fetcher, p string) ([]byte, error) {
	ino, ok := b.LookupPath(p)
	if !ok {
		return nil, fmt.Errorf("%s: not in the image", p)
	}
	var out []byte
	for _, idx := range b.FileChunks(ino) {
		data, err := f.ReadChunk(ctx, b, idx)
		if err != nil {
			return nil, err
		}
		out = append(out, data...)
	}
	return out, nil
}

func fetched(s fetch.Stats) int64 {
	var n int64
	for _, src := range s.Sources {
		n += src.Bytes
	}
	return n
}

// checkOnce asserts the event stream holds exactly one outcome per
// converted source.
func (d *demo) checkOnce(ctx context.Context, want int) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	all, err := d.bus.Outcomes(ctx, true)
	if err != nil {
		return err
	}
	seen := map[string]int{}
	total := 0
	for total < want {
		select {
		case o, ok := <-all:
			if !ok {
				return fmt.Errorf("event stream closed after %d conversion events, want %d", total, want)
			}
			if o.Err != nil {
				return o.Err
			}
			seen[o.SourceDigest()]++
			total++
		case <-ctx.Done():
			return fmt.Errorf("%d conversion events, want %d", total, want)
		}
	}
	// Anything beyond want within a second is a duplicate.
	select {
	case o, ok := <-all:
		if ok && o.Err == nil {
			return fmt.Errorf("unexpected extra conversion event for %s", o.SourceDigest())
		}
	case <-time.After(time.Second):
	}
	d.say("   events on %s: %d conversion.completed, one per image, none for the -skiff pushes", bus.StreamConversions, total)
	return nil
}

func (d *demo) close() {
	if d.cancel != nil {
		d.cancel()
	}
	for _, p := range d.procs {
		p.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			p.Process.Kill()
			<-done
		}
	}
	if d.nc != nil {
		d.nc.Close()
	}
	if d.nats != nil {
		d.nats.Shutdown()
	}
	if !d.keep {
		os.RemoveAll(d.work)
	} else {
		fmt.Fprintf(d.out, "kept %s (SKIFF_DEMO_KEEP)\n", d.work)
	}
}

// sampleImage builds a two-layer image: a base layer shared by every
// seed, and an application layer that depends on it. It returns the
// content of the files the demo reads back.
func sampleImage(seed uint64) (v1.Image, map[string][]byte, error) {
	text := fixture.Text(7, 512<<10)
	base, err := fixture.Layer(fixture.Gzip, []fixture.Entry{
		fixture.Dir("etc", 0o755),
		fixture.File("etc/motd", 0o644, "base layer\n"),
		fixture.Dir("data", 0o755),
		{Header: fixture.File("data/text", 0o644, "").Header, Data: text},
		{Header: fixture.File("data/random", 0o644, "").Header, Data: fixture.Random(7, 2<<20)},
	})
	if err != nil {
		return nil, nil, err
	}
	motd := fmt.Sprintf("hello from Skiff sample image %d\n", seed)
	app, err := fixture.Layer(fixture.Zstd, []fixture.Entry{
		fixture.File("etc/motd", 0o644, motd),
		fixture.Dir("app", 0o755),
		{Header: fixture.File("app/binary", 0o755, "").Header, Data: fixture.Random(seed, 1<<20)},
		fixture.Symlink("app/data", "../data"),
	})
	if err != nil {
		return nil, nil, err
	}
	img, err := fixture.Image(base, app)
	if err != nil {
		return nil, nil, err
	}
	return img, map[string][]byte{"etc/motd": []byte(motd), "data/text": text, "data/random": nil, "app/binary": nil}, nil
}

func registryConfig(addr, dir, notify string) string {
	return strings.Join([]string{
		"version: 0.1",
		"log:",
		"  level: warn",
		"  accesslog:",
		"    disabled: true",
		"storage:",
		"  filesystem:",
		"    rootdirectory: " + dir,
		"http:",
		"  addr: " + addr,
		"  secret: skiff-demo",
		"notifications:",
		"  endpoints:",
		"    - name: skiff",
		"      url: " + notify,
		"      timeout: 5s",
		"      threshold: 3",
		"      backoff: 500ms",
		"      ignore:",
		"        actions: [pull]",
		"",
	}, "\n")
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func waitHTTP(ctx context.Context, u string) error {
	ctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not answer: %w", u, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run skiff-demo inside the Skiff repository (no go.work found)")
		}
		dir = parent
	}
}

func size(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
