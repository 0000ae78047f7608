//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/conversion"
	"github.com/skiff-dev/skiff/pkg/image"
)

// convEnv is the event-driven pipeline with the converter as a real
// process: NATS, MinIO, and a registry reached through a proxy that can
// throttle blob downloads, so a conversion can be caught and killed
// midway.
type convEnv struct {
	t        *testing.T
	nats     testenv.NATS
	registry testenv.Registry
	proxy    string // host:port clients push through; notifications name it
	slow     atomic.Bool
	blobGets atomic.Int64
	storeURL string
	listen   string
	env      []string // settings, on top of the test's environment
	bin      struct{ converter, skiffctl string }
	proc     *service // the running converter
	bus      *bus.Bus
	outcomes chan bus.Outcome
}

func startConvEnv(t *testing.T) *convEnv {
	t.Helper()
	e := &convEnv{t: t, outcomes: make(chan bus.Outcome, 100)}
	dir := t.TempDir()
	e.bin.converter = filepath.Join(dir, "skiff-converter")
	e.bin.skiffctl = filepath.Join(dir, "skiffctl")
	for path, pkg := range map[string]string{e.bin.converter: "./services/converter/cmd/skiff-converter", e.bin.skiffctl: "./cmd/skiffctl"} {
		cmd := exec.Command("go", "build", "-o", path, pkg)
		cmd.Dir = testenv.RepoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	e.nats = testenv.StartNATS(t, testenv.NATSOptions{})
	minio := testenv.StartMinIO(t)
	bucket := minio.Bucket(t, "skiff")
	e.storeURL = "s3://" + bucket + "?endpoint=" + minio.Endpoint + "&insecure=true"
	e.listen = testenv.FreeAddr(t)
	e.registry = testenv.StartRegistry(t, testenv.RegistryOptions{NotifyURL: "http://" + e.listen + "/notify", NotifyIgnoredActions: []string{"pull"}})

	// The proxy keeps the client's Host header, so the registry names the
	// proxy in notifications and the converter pulls through it.
	target, _ := url.Parse("http://" + e.registry.Addr)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method == http.MethodGet && strings.Contains(resp.Request.URL.Path, "/blobs/") {
			e.blobGets.Add(1)
			if e.slow.Load() {
				resp.Body = &throttled{r: resp.Body, slow: &e.slow}
			}
		}
		return nil
	}
	srv := httptest.NewServer(rp)
	t.Cleanup(srv.Close)
	e.proxy = strings.TrimPrefix(srv.URL, "http://")

	e.env = append([]string{},
		"SKIFF_CONVERTER_LISTEN="+e.listen, "SKIFF_NATS_URL="+e.nats.URL, "SKIFF_STORE="+e.storeURL,
		"AWS_ACCESS_KEY_ID="+minio.AccessKey, "AWS_SECRET_ACCESS_KEY="+minio.SecretKey,
		"SKIFF_CONVERTER_ACK_WAIT=3s", "SKIFF_CONVERTER_BACKOFF=200ms", "SKIFF_CONVERTER_BACKOFF_MAX=1s",
		"SKIFF_CONVERTER_MAX_ATTEMPTS=5", "SKIFF_CHUNK_SIZE=65536", "SKIFF_CONVERTER_WORK_DIR="+dir,
	)
	return e
}

// throttled passes 16 KiB every 100 ms while slow is set.
type throttled struct {
	r    io.ReadCloser
	slow *atomic.Bool
}

func (t *throttled) Read(p []byte) (int, error) {
	if t.slow.Load() {
		time.Sleep(100 * time.Millisecond)
		p = p[:min(len(p), 16<<10)]
	}
	return t.r.Read(p)
}

func (t *throttled) Close() error { return t.r.Close() }

// startConverter runs a converter process named name.
func (e *convEnv) startConverter(name string) {
	e.t.Helper()
	e.proc = startService(e.t, name, e.bin.converter, append(e.env, "SKIFF_CONVERTER_NAME="+name)...)
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if resp, err := http.Get("http://" + e.listen + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				e.connect()
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.t.Fatalf("converter %s did not become ready", name)
}

// kill SIGKILLs the running converter: no cleanup, no nak.
func (e *convEnv) kill() {
	e.t.Helper()
	e.proc.kill()
	e.proc = nil
}

func (e *convEnv) connect() {
	if e.bus != nil {
		return
	}
	nc, err := bus.Connect(e.nats.URL, "e2e")
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(nc.Close)
	if e.bus, err = bus.New(nc); err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.t.Cleanup(cancel)
	out, err := e.bus.Outcomes(ctx, true)
	if err != nil {
		e.t.Fatal(err)
	}
	go func() {
		for o := range out {
			if o.Err != nil {
				e.t.Errorf("conversion events: %v", o.Err)
				return
			}
			e.outcomes <- o
		}
	}()
}

// record returns the conversion record of digest, nil if there is none.
func (e *convEnv) record(digest v1.Hash) *conversion.Record {
	r, _ := e.bus.Record(context.Background(), digest.String())
	return r
}

// doneRecord waits up to 30 s for digest's record to say done and returns
// it as it last read it. The completed event goes out before the record
// says done (a crash between them then republishes rather than loses the
// event), so one who saw the event may still read the running record.
func (e *convEnv) doneRecord(digest v1.Hash) *conversion.Record {
	r := e.record(digest)
	for deadline := time.Now().Add(30 * time.Second); (r == nil || r.State != conversion.Done) && time.Now().Before(deadline); r = e.record(digest) {
		time.Sleep(20 * time.Millisecond)
	}
	return r
}

func (e *convEnv) skiffctl(args ...string) (string, error) {
	cmd := exec.Command(e.bin.skiffctl, args...)
	cmd.Env = append(append(os.Environ(), e.env...), "SKIFF_STORE="+e.storeURL)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func convImage(t *testing.T, seed uint64, mib int) v1.Image {
	t.Helper()
	l1, err := fixture.Layer(fixture.Gzip, []fixture.Entry{
		fixture.Dir("data", 0o755),
		{Header: fixture.File("data/big", 0o644, "").Header, Data: fixture.Random(seed, mib<<20)},
	})
	if err != nil {
		t.Fatal(err)
	}
	l2, err := fixture.Layer(fixture.Gzip, []fixture.Entry{fixture.File("hello", 0o644, fmt.Sprintf("hello %d\n", seed))})
	if err != nil {
		t.Fatal(err)
	}
	img, err := fixture.Image(l1, l2)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func pushImage(t *testing.T, ref string, img v1.Image) v1.Hash {
	t.Helper()
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func hasTag(ref string) bool {
	r, err := name.ParseReference(ref)
	if err != nil {
		return false
	}
	_, err = remote.Head(r)
	return err == nil
}

// TestConverterKilledMidConversion kills the converter process while it
// downloads a layer, checks nothing was pushed, starts another process,
// and checks the redelivered request finishes the conversion exactly once,
// that `skiffctl check` passes on the result and that `skiffctl status`
// and `skiffctl convert --remote` report it.
func TestConverterKilledMidConversion(t *testing.T) {
	e := startConvEnv(t)
	e.startConverter("converter-a")
	e.slow.Store(true)
	ref := e.proxy + "/killed/app:v1"
	src := pushImage(t, ref, convImage(t, 1, 4))

	// Wait until converter-a holds the request and is reading a layer.
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if r := e.record(src); r != nil && r.State == conversion.Running && r.Worker == "converter-a" && e.blobGets.Load() > 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r := e.record(src); r == nil || r.State != conversion.Running || e.blobGets.Load() == 0 {
		t.Fatalf("conversion never started on converter-a: record %+v, %d blob downloads", r, e.blobGets.Load())
	}
	e.kill()
	if hasTag(ref + image.TagSuffix) {
		t.Fatal("a -skiff manifest exists although the converter was killed mid-conversion")
	}
	e.slow.Store(false)
	e.startConverter("converter-b")

	var o bus.Outcome
	select {
	case o = <-e.outcomes:
	case <-time.After(3 * time.Minute):
		t.Fatalf("no outcome after the restart; record %+v", e.record(src))
	}
	if o.Completed == nil || o.SourceDigest() != src.String() {
		t.Fatalf("outcome %+v, want completion of %s", o, src)
	}
	if o.Completed.GetAttempt() < 2 {
		t.Errorf("completed on attempt %d, want a redelivery", o.Completed.GetAttempt())
	}
	r := e.doneRecord(src)
	if r == nil || r.State != conversion.Done || r.Worker != "converter-b" {
		t.Fatalf("record %+v, want done by converter-b", r)
	}
	select {
	case extra := <-e.outcomes:
		t.Errorf("second outcome %+v: converted twice", extra)
	case <-time.After(3 * time.Second):
	}

	direct := e.registry.Addr + "/killed/app:v1"
	out, err := e.skiffctl("check", direct+image.TagSuffix)
	if err != nil {
		t.Fatalf("skiffctl check: %v\n%s", err, out)
	}
	out, err = e.skiffctl("status", "--nats", e.nats.URL, ref)
	if err != nil || !strings.Contains(out, "done") || !strings.Contains(out, ref) {
		t.Errorf("skiffctl status: %v\n%s", err, out)
	}
	out, err = e.skiffctl("status", "--nats", e.nats.URL, e.proxy+"/no/such:image")
	if err == nil {
		t.Errorf("skiffctl status of an unknown image succeeded:\n%s", out)
	}

	// Asking again is answered from the record.
	out, err = e.skiffctl("convert", "--remote", "--nats", e.nats.URL, ref)
	if err != nil || !strings.Contains(out, r.TargetDigest) || !strings.Contains(out, "already converted") {
		t.Errorf("skiffctl convert --remote of a converted image: %v\n%s", err, out)
	}
}

// TestConvertRemote asks the service to convert an image from a registry
// that sends no notifications.
func TestConvertRemote(t *testing.T) {
	e := startConvEnv(t)
	e.startConverter("converter")
	quiet := testenv.StartRegistry(t, testenv.RegistryOptions{})
	ref := quiet.Addr + "/remote/app:v1"
	src := pushImage(t, ref, convImage(t, 2, 1))
	out, err := e.skiffctl("convert", "--remote", "--nats", e.nats.URL, ref)
	if err != nil {
		t.Fatalf("skiffctl convert --remote: %v\n%s", err, out)
	}
	r := e.doneRecord(src)
	if r == nil || r.State != conversion.Done || !strings.Contains(out, r.TargetDigest) {
		t.Fatalf("record %+v after:\n%s", r, out)
	}
	if out, err := e.skiffctl("check", ref+image.TagSuffix); err != nil {
		t.Fatalf("skiffctl check: %v\n%s", err, out)
	}
	if out, err := e.skiffctl("convert", "--remote", "--nats", e.nats.URL, ref+image.TagSuffix); err == nil {
		t.Errorf("converting a -skiff tag remotely succeeded:\n%s", out)
	}
}

// TestCranePushConverted is the user's view: `crane push` to a registry
// with notifications, then the -skiff tag and the referrer appear and
// `skiffctl check` passes against MinIO.
func TestCranePushConverted(t *testing.T) {
	e := startConvEnv(t)
	e.startConverter("converter")
	ref := e.registry.Addr + "/crane/app:v1"
	tarPath := filepath.Join(t.TempDir(), "image.tar")
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(tarPath, tag, convImage(t, 3, 1)); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(testenv.Tool(t, "crane"), "push", "--insecure", tarPath, ref).Output()
	if err != nil {
		t.Fatalf("crane push: %v", err)
	}
	_, digest, _ := strings.Cut(strings.TrimSpace(string(out)), "@")
	src, err := v1.NewHash(digest)
	if err != nil {
		t.Fatalf("crane push printed %q: %v", out, err)
	}
	var o bus.Outcome
	select {
	case o = <-e.outcomes:
	case <-time.After(3 * time.Minute):
		t.Fatalf("no conversion outcome; record %+v", e.record(src))
	}
	if o.Completed == nil || o.SourceDigest() != src.String() {
		t.Fatalf("outcome %+v, want completion of %s", o, src)
	}
	idx, err := remote.Referrers(tag.Context().Digest(src.String()))
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Digest.String() != o.Completed.GetTargetDigest() {
		t.Errorf("referrers of %s: %+v, want the Skiff manifest %s", src, im.Manifests, o.Completed.GetTargetDigest())
	}
	if out, err := e.skiffctl("check", ref+image.TagSuffix); err != nil {
		t.Fatalf("skiffctl check: %v\n%s", err, out)
	}
}
