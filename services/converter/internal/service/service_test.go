package service

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/conversion"
)

// TestPushConvertsOnce pushes an image with crane to a registry whose
// notifications reach the service, and checks the Skiff image appears as
// the -skiff tag and as a referrer, with every chunk in MinIO, exactly once;
// that the service's own pushes do not start conversions; and that the same
// image under a second tag is tagged without converting again.
func TestPushConvertsOnce(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ref := h.ref("demo/app:v1")
	src := h.pushCrane(ref, sampleImage(t, 1))
	o := h.waitOutcome(src, 2*time.Minute)
	if o.Completed == nil {
		t.Fatalf("conversion failed: %s", o.Failed.GetReason())
	}
	target := h.checkConverted(ref, src)
	c := o.Completed
	if c.GetTargetDigest() != target.String() || c.GetTarget() != ref+"-skiff" || c.GetNewBytes() <= 0 || c.GetFiles() < 4 || c.GetAttempt() != 1 {
		t.Errorf("completed event %v", c)
	}
	rec := h.record(src)
	if rec.State != conversion.Done || rec.Attempts != 1 || rec.TargetDigest != target.String() {
		t.Errorf("record %+v", rec)
	}

	// The same digest under another tag: tagged, not converted again.
	ref2 := h.ref("demo/app:v2")
	h.pushCrane(ref2, sampleImage(t, 1))
	deadline := time.Now().Add(time.Minute)
	for !h.skiffTagExists(ref2) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if got := h.checkConverted(ref2, src); got != target {
		t.Errorf("%s-skiff is %s, want the existing conversion %s", ref2, got, target)
	}

	// The service's own pushes (two -skiff tags, their referrer
	// fallback index) went through the webhook too; give them time to
	// be (wrongly) converted before counting.
	time.Sleep(2 * time.Second)
	if n := h.outcomeCount(src); n != 1 {
		t.Errorf("%d outcomes for %s, want exactly 1", n, src)
	}
	recs, err := h.bus.ListRecords(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 {
		t.Errorf("%d conversion records, want 1 (own output converted?):\n%s", len(recs), h.dumpRecords())
	}
}

type conn bool

func (c conn) IsConnected() bool { return bool(c) }

// TestHealth checks that /healthz follows the NATS connection, and that
// the webhook and /metrics are served beside it.
func TestHealth(t *testing.T) {
	tests := []struct {
		name       string
		connected  bool
		method     string
		path       string
		wantStatus int
	}{
		{"connected", true, http.MethodGet, PathHealth, http.StatusOK},
		{"nats down", false, http.MethodGet, PathHealth, http.StatusServiceUnavailable},
		{"metrics", true, http.MethodGet, PathMetrics, http.StatusOK},
		{"metrics with nats down", false, http.MethodGet, PathMetrics, http.StatusOK},
		{"webhook", true, http.MethodGet, "/notify", http.StatusMethodNotAllowed},
		{"unknown path", true, http.MethodGet, "/nothing", http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(Deps{Conn: conn(tt.connected)})
			w := httptest.NewRecorder()
			s.Handler().ServeHTTP(w, httptest.NewRequest(tt.method, tt.path, nil))
			if w.Code != tt.wantStatus {
				t.Errorf("%s %s: %d, want %d", tt.method, tt.path, w.Code, tt.wantStatus)
			}
		})
	}
}

// TestMalformedWebhook checks that a body that is not a notification is
// refused with 400 and publishes nothing.
func TestMalformedWebhook(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	bodies := []string{`not json`, `{"events":[{"action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:nothex","repository":"a","tag":"1"},"request":{"host":"r"}}]}`, `{}`}
	for _, path := range []string{"/notify", "/harbor"} {
		for _, body := range bodies {
			resp, err := http.Post(h.webhook+path, "application/vnd.docker.distribution.events.v1+json", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("POST %s %q: status %d, want 400", path, body, resp.StatusCode)
			}
		}
	}
	s, err := h.bus.JetStream().Stream(context.Background(), bus.StreamPushes)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.LastSeq != 0 {
		t.Errorf("malformed notifications published %d messages", info.State.LastSeq)
	}
}

// TestRegistryErrors makes the registry answer 500 to the service: a
// conversion retries until the registry recovers and then completes once;
// one that never recovers ends in a single failed event with the reason,
// and no -skiff tag.
func TestRegistryErrors(t *testing.T) {
	h := newHarness(t, harnessOptions{MaxAttempts: 4, Backoff: 300 * time.Millisecond, BackoffMax: time.Second})

	h.failing.Store(true)
	ref := h.ref("flaky/app:v1")
	src := h.push(ref, sampleImage(t, 2))
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if r := h.recordOrNil(src); r != nil && r.Attempts >= 2 && strings.Contains(r.Reason, "500") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if r := h.recordOrNil(src); r == nil || r.Attempts < 2 || r.State.Final() {
		t.Fatalf("while the registry fails: record %+v, want a pending retry", r)
	}
	h.failing.Store(false)
	o := h.waitOutcome(src, 2*time.Minute)
	if o.Completed == nil {
		t.Fatalf("conversion failed after the registry recovered: %s", o.Failed.GetReason())
	}
	if o.Completed.GetAttempt() < 2 {
		t.Errorf("completed on attempt %d, want a retry", o.Completed.GetAttempt())
	}
	h.checkConverted(ref, src)

	h.failing.Store(true)
	ref = h.ref("broken/app:v1")
	img := sampleImage(t, 3)
	src = h.push(ref, img)
	o = h.waitOutcome(src, 2*time.Minute)
	h.failing.Store(false)
	if o.Failed == nil {
		t.Fatalf("conversion against a failing registry completed: %v", o.Completed)
	}
	if o.Failed.GetAttempts() != 4 || !strings.Contains(o.Failed.GetReason(), "500") {
		t.Errorf("failed event %v, want 4 attempts and the 500 in the reason", o.Failed)
	}
	time.Sleep(2 * time.Second)
	if h.skiffTagExists(ref) {
		t.Error("a -skiff tag exists for the failed conversion")
	}
	if n := h.outcomeCount(src); n != 1 {
		t.Errorf("%d outcomes for the failed conversion, want 1", n)
	}
	if r := h.record(src); r.State != conversion.Failed || r.Reason == "" {
		t.Errorf("record %+v", r)
	}

	// Pushed again, within the notifications' duplicate window, the tag
	// is converted: its notification names the digest and tag of the
	// failed request, but is not a duplicate of it.
	h.putManifest(ref, img)
	deadline = time.Now().Add(2 * time.Minute)
	for h.outcomeCount(src) < 2 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	h.mu.Lock()
	outs := h.outcomes[src.String()]
	h.mu.Unlock()
	if len(outs) != 2 || outs[1].Completed == nil {
		t.Fatalf("outcomes after pushing %s again: %+v; records:\n%s", ref, outs, h.dumpRecords())
	}
	h.checkConverted(ref, src)
}

// TestFiftyPushes pushes 50 images at once; each is converted exactly once.
func TestFiftyPushes(t *testing.T) {
	h := newHarness(t, harnessOptions{Concurrency: 4})
	const n = 50
	digests := make([]v1.Hash, n)
	refs := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		refs[i] = h.ref("many/app:" + string(rune('a'+i%26)) + string(rune('a'+i/26)))
		wg.Go(func() { digests[i] = h.push(refs[i], sampleImage(t, uint64(100+i))) })
	}
	wg.Wait()
	for i, d := range digests {
		if o := h.waitOutcome(d, 5*time.Minute); o.Completed == nil {
			t.Errorf("%s failed: %s", refs[i], o.Failed.GetReason())
		}
	}
	time.Sleep(2 * time.Second)
	for i, d := range digests {
		if c := h.outcomeCount(d); c != 1 {
			t.Errorf("%s: %d outcomes, want 1", refs[i], c)
		}
		if !h.skiffTagExists(refs[i]) {
			t.Errorf("%s-skiff missing", refs[i])
		}
	}
	h.checkConverted(refs[0], digests[0])
	h.checkConverted(refs[n-1], digests[n-1])
}

// TestMinIODown converts an image pushed while the store is down for 30 s.
func TestMinIODown(t *testing.T) {
	if testing.Short() {
		t.Skip("takes over 30 s")
	}
	h := newHarness(t, harnessOptions{MaxAttempts: 30, Backoff: time.Second, BackoffMax: 4 * time.Second})
	h.minio.Stop()
	ref := h.ref("outage/app:v1")
	src := h.push(ref, sampleImage(t, 4))
	time.Sleep(30 * time.Second)
	if r := h.recordOrNil(src); r == nil || r.State.Final() {
		t.Fatalf("with MinIO down: record %+v, want a pending conversion", r)
	}
	h.minio.Start()
	o := h.waitOutcome(src, 3*time.Minute)
	if o.Completed == nil {
		t.Fatalf("conversion failed: %s", o.Failed.GetReason())
	}
	h.checkConverted(ref, src)
	time.Sleep(time.Second)
	if n := h.outcomeCount(src); n != 1 {
		t.Errorf("%d outcomes, want 1", n)
	}
}

// TestNATSRestart restarts NATS between two pushes, the second one made
// while NATS is down: the registry's retried notification, the durable
// consumer and the records survive, and each image is converted once.
func TestNATSRestart(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	ref1 := h.ref("restart/app:v1")
	src1 := h.push(ref1, sampleImage(t, 5))
	if o := h.waitOutcome(src1, 2*time.Minute); o.Completed == nil {
		t.Fatalf("first conversion failed: %s", o.Failed.GetReason())
	}
	h.nats.Stop()
	ref2 := h.ref("restart/app:v2")
	src2 := h.push(ref2, sampleImage(t, 6))
	time.Sleep(3 * time.Second)
	if code := h.health(); code != http.StatusServiceUnavailable {
		t.Errorf("with NATS down: GET /healthz %d, want 503", code)
	}
	h.nats.Start()
	if o := h.waitOutcome(src2, 3*time.Minute); o.Completed == nil {
		t.Fatalf("conversion after the restart failed: %s", o.Failed.GetReason())
	}
	h.checkConverted(ref2, src2)
	time.Sleep(2 * time.Second)
	for _, d := range []v1.Hash{src1, src2} {
		if n := h.outcomeCount(d); n != 1 {
			t.Errorf("%s: %d outcomes, want 1", d, n)
		}
	}
	if r := h.record(src1); r.State != conversion.Done {
		t.Errorf("record of the first image after the restart: %+v", r)
	}
}

func (h *harness) health() int {
	h.t.Helper()
	resp, err := http.Get(h.webhook + PathHealth)
	if err != nil {
		h.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func (h *harness) recordOrNil(digest v1.Hash) *conversion.Record {
	r, _ := h.bus.Record(context.Background(), digest.String())
	return r
}
