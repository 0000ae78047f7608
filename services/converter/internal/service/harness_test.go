package service

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/conversion"
	"github.com/skiff-dev/skiff/pkg/convert"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/image"
	"github.com/skiff-dev/skiff/pkg/startup"
	"github.com/skiff-dev/skiff/pkg/store"
	"github.com/skiff-dev/skiff/pkg/store/storeurl"
	"github.com/skiff-dev/skiff/services/converter/internal/config"
	"github.com/skiff-dev/skiff/services/converter/internal/worker"
)

// harness runs the converter service in process against real servers:
// nats-server, MinIO and a distribution registry whose notifications go to
// the service's webhook. Requests to the registry made by the service go
// through a proxy that a test can make answer 500.
type harness struct {
	t        *testing.T
	nats     testenv.NATS
	minio    testenv.MinIO
	registry testenv.Registry
	storeURL string
	webhook  string // base URL of the service
	bus      *bus.Bus
	failing  atomic.Bool // the proxy answers 500 while set
	proxied  atomic.Int64

	mu       sync.Mutex
	outcomes map[string][]bus.Outcome // by source digest
}

type harnessOptions struct {
	MaxAttempts int
	Backoff     time.Duration
	BackoffMax  time.Duration
	Concurrency int
}

func newHarness(t *testing.T, opts harnessOptions) *harness {
	t.Helper()
	if opts.MaxAttempts == 0 {
		opts.MaxAttempts = 4
	}
	if opts.Backoff == 0 {
		opts.Backoff, opts.BackoffMax = 200*time.Millisecond, time.Second
	}
	if opts.Concurrency == 0 {
		opts.Concurrency = 2
	}
	h := &harness{t: t, outcomes: map[string][]bus.Outcome{}}
	h.nats = testenv.StartNATS(t, testenv.NATSOptions{})
	h.minio = testenv.StartMinIO(t)
	bucket := h.minio.Bucket(t, "skiff")
	t.Setenv(storeurl.EnvAccessKey, h.minio.AccessKey)
	t.Setenv(storeurl.EnvSecretKey, h.minio.SecretKey)
	h.storeURL = "s3://" + bucket + "?endpoint=" + h.minio.Endpoint + "&insecure=true"

	listen := testenv.FreeAddr(t)
	h.webhook = "http://" + listen
	h.registry = testenv.StartRegistry(t, testenv.RegistryOptions{
		NotifyURL: h.webhook + "/notify", NotifyIgnoredActions: []string{"pull"},
	})
	target, _ := url.Parse("http://" + h.registry.Addr)
	rp := httputil.NewSingleHostReverseProxy(target)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.proxied.Add(1)
		if h.failing.Load() {
			http.Error(w, "injected failure", http.StatusInternalServerError)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)

	cfg := config.Config{
		Listen: listen, NATS: h.nats.URL, Store: h.storeURL, Registry: strings.TrimPrefix(proxy.URL, "http://"),
		Concurrency: opts.Concurrency, MaxAttempts: opts.MaxAttempts, AckWait: 5 * time.Second,
		Backoff: opts.Backoff, BackoffMax: opts.BackoffMax, WorkDir: t.TempDir(), ChunkSize: 64 << 10,
		Compression: "zstd", Worker: "test",
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	done := start(t, cfg)
	testenv.WaitHTTP(t, h.webhook+"/healthz", done)

	nc, err := bus.Connect(h.nats.URL, "harness")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if h.bus, err = bus.New(nc); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	out, err := h.bus.Outcomes(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for o := range out {
			h.mu.Lock()
			h.outcomes[o.SourceDigest()] = append(h.outcomes[o.SourceDigest()], o)
			h.mu.Unlock()
		}
	}()
	return h
}

// start builds the service from cfg as skiff-converter does (without
// telemetry) and runs it until the test ends. The channel reports an early
// stop.
func start(t *testing.T, cfg config.Config) <-chan error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := storeurl.Open(ctx, cfg.Store)
	if err != nil {
		t.Fatal(err)
	}
	convOpts, err := cfg.ConvertOptions()
	if err != nil {
		t.Fatal(err)
	}
	nc, err := bus.Connect(cfg.NATS, "skiff-converter", nats.RetryOnFailedConnect(true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	b, err := bus.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	kv, err := b.Records(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := b.ConverterConsumer(ctx, cfg.AckWait)
	if err != nil {
		t.Fatal(err)
	}
	svc := New(Deps{Bus: b, Conn: nc, Records: kv, Requests: cons, Converter: convert.New(st, convOpts)},
		WithConcurrency(cfg.Concurrency),
		WithWorker(worker.Options{
			MaxAttempts: cfg.MaxAttempts, AckWait: cfg.AckWait, Backoff: cfg.Backoff, BackoffMax: cfg.BackoffMax,
			Registry: cfg.Registry, Name: cfg.Worker,
		}))
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return svc.Serve(gctx, ln) })
	g.Go(func() error { return svc.Convert(gctx) })
	// Closed after the error, so that the cleanup does not wait for
	// an error WaitHTTP took.
	done := make(chan error, 1)
	go func() { done <- g.Wait(); close(done) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("service stopped with: %v", err)
		}
	})
	return done
}

// sampleImage is a two-layer image whose content depends on seed: a few
// files, one large enough to span chunks, one shadowed by the upper layer.
func sampleImage(t testing.TB, seed uint64) v1.Image {
	t.Helper()
	l1, err := fixture.Layer(fixture.Gzip, []fixture.Entry{
		fixture.Dir("etc", 0o755),
		fixture.File("etc/motd", 0o644, fmt.Sprintf("image %d\n", seed)),
		fixture.Dir("data", 0o755),
		{Header: fixture.File("data/blob", 0o644, "").Header, Data: fixture.Random(seed, 200<<10)},
		{Header: fixture.File("data/text", 0o644, "").Header, Data: fixture.Text(seed, 100<<10)},
	})
	if err != nil {
		t.Fatal(err)
	}
	l2, err := fixture.Layer(fixture.Zstd, []fixture.Entry{
		fixture.File("etc/motd", 0o644, fmt.Sprintf("image %d, upper layer\n", seed)),
		fixture.Symlink("data/link", "blob"),
	})
	if err != nil {
		t.Fatal(err)
	}
	img, err := fixture.Image(l1, l2)
	if err != nil {
		t.Fatal(err)
	}
	// The author names the files to prefetch (checkConverted).
	if img, err = fixture.WithLabels(img, map[string]string{convert.PrefetchLabel: "/data/text,/etc"}); err != nil {
		t.Fatal(err)
	}
	return img
}

// ref names repo:tag on the registry.
func (h *harness) ref(repoTag string) string { return h.registry.Addr + "/" + repoTag }

// pushCrane pushes img with the crane CLI, as a user would.
func (h *harness) pushCrane(ref string, img v1.Image) v1.Hash {
	h.t.Helper()
	tag, err := name.NewTag(ref)
	if err != nil {
		h.t.Fatal(err)
	}
	path := filepath.Join(h.t.TempDir(), "image.tar")
	if err := tarball.WriteToFile(path, tag, img); err != nil {
		h.t.Fatal(err)
	}
	cmd := exec.Command(testenv.Tool(h.t, "crane"), "push", "--insecure", path, ref)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		h.t.Fatalf("crane push %s: %v\n%s", ref, err, stderr.String())
	}
	// crane prints what it pushed, REPO@DIGEST: a tarball is pushed with
	// its own (Docker) manifest, so img.Digest() is not the pushed one.
	_, digest, ok := strings.Cut(strings.TrimSpace(string(out)), "@")
	if !ok {
		h.t.Fatalf("crane push printed %q, want REPO@DIGEST", out)
	}
	d, err := v1.NewHash(digest)
	if err != nil {
		h.t.Fatal(err)
	}
	return d
}

// push pushes img with go-containerregistry, for tests pushing many.
func (h *harness) push(ref string, img v1.Image) v1.Hash {
	h.t.Helper()
	tag, err := name.NewTag(ref)
	if err != nil {
		h.t.Error(err)
		return v1.Hash{}
	}
	if err := remote.Write(tag, img); err != nil {
		h.t.Errorf("push %s: %v", ref, err)
	}
	d, _ := img.Digest()
	return d
}

// putManifest pushes img's manifest to ref again, as docker push does
// (go-containerregistry skips a tag that already has it), so the registry
// notifies the push again.
func (h *harness) putManifest(ref string, img v1.Image) {
	h.t.Helper()
	tag, err := name.NewTag(ref)
	if err != nil {
		h.t.Fatal(err)
	}
	raw, err := img.RawManifest()
	if err != nil {
		h.t.Fatal(err)
	}
	mt, err := img.MediaType()
	if err != nil {
		h.t.Fatal(err)
	}
	u := fmt.Sprintf("http://%s/v2/%s/manifests/%s", h.registry.Addr, tag.RepositoryStr(), tag.TagStr())
	req, err := http.NewRequest(http.MethodPut, u, bytes.NewReader(raw))
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Content-Type", string(mt))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		h.t.Fatalf("PUT %s: %s", u, resp.Status)
	}
}

// waitOutcome waits for the first outcome of digest.
func (h *harness) waitOutcome(digest v1.Hash, timeout time.Duration) bus.Outcome {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		h.mu.Lock()
		os := h.outcomes[digest.String()]
		h.mu.Unlock()
		if len(os) > 0 {
			return os[0]
		}
		time.Sleep(100 * time.Millisecond)
	}
	h.t.Fatalf("no conversion outcome for %s within %s; records:\n%s", digest, timeout, h.dumpRecords())
	return bus.Outcome{}
}

func (h *harness) outcomeCount(digest v1.Hash) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.outcomes[digest.String()])
}

func (h *harness) dumpRecords() string {
	recs, err := h.bus.ListRecords(context.Background())
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, r := range recs {
		fmt.Fprintf(&b, "  %s %s attempts=%d seq=%d reason=%q\n", r.State, r.Source, r.Attempts, r.Seq, r.Reason)
	}
	return b.String()
}

// record returns digest's record once it is settled (done or failed),
// waiting up to 30 s: outcome events go out before the record changes, so
// a crash between the two republishes the event rather than loses it.
func (h *harness) record(digest v1.Hash) *conversion.Record {
	h.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, err := h.bus.Record(context.Background(), digest.String())
		if err != nil {
			h.t.Fatal(err)
		}
		if r.State == conversion.Done || r.State == conversion.Failed || time.Now().After(deadline) {
			return r
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkConverted verifies what a completed conversion of ref promises: the
// -skiff tag holds a Skiff manifest whose subject is the source, the
// registry lists it as a referrer of the source, and every chunk its
// bootstrap names is in the store and matches its digest.
func (h *harness) checkConverted(ref string, src v1.Hash) v1.Hash {
	h.t.Helper()
	ctx := context.Background()
	target := ref + image.TagSuffix
	tag, err := name.NewTag(target)
	if err != nil {
		h.t.Fatal(err)
	}
	desc, err := remote.Get(tag)
	if err != nil {
		h.t.Fatalf("get %s: %v", target, err)
	}
	img, err := desc.Image()
	if err != nil {
		h.t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		h.t.Fatal(err)
	}
	if !image.IsSkiff(m) || m.Subject == nil || m.Subject.Digest != src {
		h.t.Fatalf("%s: not a Skiff manifest with subject %s: %+v", target, src, m)
	}
	idx, err := remote.Referrers(tag.Context().Digest(src.String()))
	if err != nil {
		h.t.Fatalf("referrers of %s: %v", src, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		h.t.Fatal(err)
	}
	found := false
	for _, d := range im.Manifests {
		found = found || d.Digest == desc.Digest
	}
	if !found {
		h.t.Errorf("referrers of %s do not list %s: %+v", src, desc.Digest, im.Manifests)
	}
	b, bd, err := image.LoadBootstrap(ctx, target)
	if err != nil {
		h.t.Fatal(err)
	}
	st, err := storeurl.Open(ctx, h.storeURL)
	if err != nil {
		h.t.Fatal(err)
	}
	set, err := store.ReadAll(ctx, st, store.StartupKey(bd.Hex()), startup.MaxSize)
	if want := startup.Header + "\n/data/text\n/etc/motd\n"; err != nil || string(set) != want {
		h.t.Errorf("startup set from the image's %s label: %q (%v), want %q", convert.PrefetchLabel, set, err, want)
	}
	rep, err := fetch.Verify(ctx, b, fetch.NewStoreSource("s3", st), fetch.VerifyOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	if len(rep.Bad) != 0 || rep.Chunks == 0 {
		h.t.Errorf("store check of %s: %d chunks, bad %v", target, rep.Chunks, rep.Bad)
	}
	return desc.Digest
}

// skiffTagExists reports whether ref-skiff is in the registry.
func (h *harness) skiffTagExists(ref string) bool {
	r, err := name.ParseReference(ref + image.TagSuffix)
	if err != nil {
		h.t.Fatal(err)
	}
	_, err = remote.Head(r)
	return err == nil
}

func init() {
	if os.Getenv("SKIFF_DEBUG") == "" {
		slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	}
}
