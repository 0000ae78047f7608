package service

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/convert"
	dirstore "github.com/skiff-dev/skiff/pkg/store/dir"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
	"github.com/skiff-dev/skiff/services/converter/internal/webhook"
	"github.com/skiff-dev/skiff/services/converter/internal/worker"
)

type fixedCounters Stats

func (f fixedCounters) stats() Stats { return Stats(f) }

func TestCollector(t *testing.T) {
	tests := []struct {
		name  string
		c     fixedCounters
		names []string
		want  string
	}{
		{
			name:  "conversions",
			names: []string{"skiff_converter_requests_total", "skiff_converter_conversion_duration_seconds", "skiff_converter_notification_events_total"},
			c: fixedCounters{
				Webhook: webhook.Stats{OK: 4, Published: 3, Duplicates: 1, Ignored: 2},
				Worker: worker.Stats{
					Completed: 2, Failed: 1, Retagged: 1, Duplicates: 3, Invalid: 1,
					Durations: worker.Histogram{Count: 2, Sum: 7500 * time.Millisecond, Buckets: map[float64]uint64{1: 0, 2.5: 1, 5: 1, 10: 2}},
				},
			},
			want: `
# HELP skiff_converter_conversion_duration_seconds Time from the start of the attempt that converted an image to its completed event: pull, convert, upload, push.
# TYPE skiff_converter_conversion_duration_seconds histogram
skiff_converter_conversion_duration_seconds_bucket{le="1"} 0
skiff_converter_conversion_duration_seconds_bucket{le="2.5"} 1
skiff_converter_conversion_duration_seconds_bucket{le="5"} 1
skiff_converter_conversion_duration_seconds_bucket{le="10"} 2
skiff_converter_conversion_duration_seconds_bucket{le="+Inf"} 2
skiff_converter_conversion_duration_seconds_sum 7.5
skiff_converter_conversion_duration_seconds_count 2
# HELP skiff_converter_notification_events_total Events of notifications, by what became of them: published (a new conversion request), duplicate (a request JetStream had already, as from a registry's retry) or ignored (no push of a convertible tag: pulls, blobs, Skiff's own tags).
# TYPE skiff_converter_notification_events_total counter
skiff_converter_notification_events_total{result="duplicate"} 1
skiff_converter_notification_events_total{result="ignored"} 2
skiff_converter_notification_events_total{result="published"} 3
# HELP skiff_converter_requests_total Conversion requests settled for good, by outcome: completed (converted, completed event published), failed (failed event published after the last attempt), retagged (digest converted before: its Skiff image tagged for the request), duplicate (a delivery of a request answered already: only acked), skiff_source (a Skiff image under a plain tag: not converted) or invalid (undecodable: dropped).
# TYPE skiff_converter_requests_total counter
skiff_converter_requests_total{outcome="completed"} 2
skiff_converter_requests_total{outcome="duplicate"} 3
skiff_converter_requests_total{outcome="failed"} 1
skiff_converter_requests_total{outcome="invalid"} 1
skiff_converter_requests_total{outcome="retagged"} 1
skiff_converter_requests_total{outcome="skiff_source"} 0
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := testutil.CollectAndCompare(newCollector(tt.c), strings.NewReader(tt.want), tt.names...); err != nil {
				t.Fatal(err)
			}
			if problems, err := testutil.CollectAndLint(newCollector(tt.c)); err != nil || len(problems) > 0 {
				t.Fatalf("lint: %v %v", problems, err)
			}
		})
	}
}

// TestMetrics runs the service in process (embedded NATS, a directory
// store, an in-process registry) through a conversion, a retag, a
// request that fails, an undecodable request and notifications of every
// kind, and checks what GET /metrics reports.
func TestMetrics(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	nc, err := bus.Connect(testenv.StartEmbeddedNATS(t, true), "skiff-converter")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
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
	cons, err := b.ConverterConsumer(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	outcomes, err := b.Outcomes(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	st, err := dirstore.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")

	svc := New(Deps{Bus: b, Conn: nc, Records: kv, Requests: cons, Converter: convert.New(st, convert.Options{ChunkSize: 64 << 10, WorkDir: t.TempDir()})},
		WithLogger(slog.New(slog.DiscardHandler)),
		WithWorker(worker.Options{MaxAttempts: 2, AckWait: 5 * time.Second, Backoff: 50 * time.Millisecond, BackoffMax: 100 * time.Millisecond, Name: "test"}))
	srv := httptest.NewServer(svc.Handler())
	defer srv.Close()
	converted := make(chan error, 1)
	go func() { converted <- svc.Convert(ctx) }()
	defer func() {
		cancel()
		if err := <-converted; err != nil {
			t.Errorf("Convert: %v", err)
		}
	}()

	tag, err := name.NewTag(host + "/demo/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	img := sampleImage(t, 1)
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
	digest, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	missing := "sha256:" + strings.Repeat("1", 64)
	event := func(action, repo, tag, digest string) string {
		return fmt.Sprintf(`{"action":%q,"target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"repository":%q,"tag":%q},"request":{"host":%q}}`, action, digest, repo, tag, host)
	}
	notify := func(events ...string) string { return `{"events":[` + strings.Join(events, ",") + `]}` }
	next := func() bus.Outcome {
		t.Helper()
		select {
		case o := <-outcomes:
			return o
		case <-time.After(time.Minute):
			t.Fatal("no conversion outcome within a minute")
		}
		return bus.Outcome{}
	}
	var completed *skiffv1.ConversionCompleted
	steps := []struct {
		name       string
		body       string
		wantStatus int
		then       func(t *testing.T) // waits for what the notification started
	}{
		{"push", notify(event("push", "demo/app", "v1", digest.String())), http.StatusOK, func(t *testing.T) {
			if o := next(); o.Completed == nil {
				t.Fatalf("conversion failed: %s", o.Failed.GetReason())
			} else {
				completed = o.Completed
			}
		}},
		// The registry's retry of the same notification.
		{"push again", notify(event("push", "demo/app", "v1", digest.String())), http.StatusOK, nil},
		{"another tag", notify(event("push", "demo/app", "v2", digest.String())), http.StatusOK, func(t *testing.T) {
			eventually(t, "the image is tagged v2-skiff", func() bool { return svc.stats().Worker.Retagged == 1 })
		}},
		{"pull and own output", notify(event("pull", "demo/app", "v1", digest.String()), event("push", "demo/app", "v1-skiff", digest.String())), http.StatusOK, nil},
		{"malformed", `{"events":[{"action":"push"`, http.StatusBadRequest, nil},
		// Not in the registry: both attempts fail.
		{"push of a missing image", notify(event("push", "demo/missing", "v1", missing)), http.StatusOK, func(t *testing.T) {
			if o := next(); o.Failed == nil {
				t.Fatalf("conversion of a missing image: %v", o.Completed)
			}
		}},
	}
	for _, s := range steps {
		resp, err := http.Post(srv.URL+webhook.PathDistribution, "application/json", strings.NewReader(s.body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != s.wantStatus {
			t.Fatalf("%s: POST %s: %s, want %d", s.name, webhook.PathDistribution, resp.Status, s.wantStatus)
		}
		if s.then != nil {
			s.then(t)
		}
	}
	// A request the webhook would not have published: no tag.
	if _, err := b.Publish(ctx, bus.SubjectImagePushed, "untagged", &skiffv1.ImagePushed{Registry: host, Repository: "demo/app", Digest: digest.String()}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the untagged request is dropped", func() bool { return svc.stats().Worker.Invalid == 1 })

	got := scrape(t, srv.URL+PathMetrics)
	for _, m := range []struct {
		metric string
		want   float64
	}{
		{`skiff_converter_notifications_total{result="ok"}`, 5},
		{`skiff_converter_notifications_total{result="malformed"}`, 1},
		{`skiff_converter_notifications_total{result="unavailable"}`, 0},
		{`skiff_converter_notification_events_total{result="published"}`, 3},
		{`skiff_converter_notification_events_total{result="duplicate"}`, 1},
		{`skiff_converter_notification_events_total{result="ignored"}`, 2},
		{`skiff_converter_requests_total{outcome="completed"}`, 1},
		{`skiff_converter_requests_total{outcome="retagged"}`, 1},
		{`skiff_converter_requests_total{outcome="failed"}`, 1},
		{`skiff_converter_requests_total{outcome="invalid"}`, 1},
		{`skiff_converter_requests_total{outcome="duplicate"}`, 0},
		{`skiff_converter_requests_total{outcome="skiff_source"}`, 0},
		{`skiff_converter_attempts_total`, 3},
		{`skiff_converter_attempt_errors_total`, 2},
		{`skiff_converter_conversions_in_progress`, 0},
		{`skiff_converter_waits_total`, 0},
		{`skiff_converter_claim_errors_total`, 0},
		{`skiff_converter_conversion_duration_seconds_count`, 1},
		{`skiff_converter_source_bytes_total`, float64(completed.GetSourceBytes())},
		{`skiff_converter_stored_bytes_total`, float64(completed.GetStoredBytes())},
		{`skiff_converter_new_bytes_total`, float64(completed.GetNewBytes())},
		{`skiff_converter_build_info{version="dev"}`, 1},
	} {
		if v, ok := got[m.metric]; !ok || v != m.want {
			t.Errorf("%s = %v (present: %v), want %v", m.metric, v, ok, m.want)
		}
	}
	if completed.GetNewBytes() <= 0 || completed.GetSourceBytes() <= 0 {
		t.Errorf("completed event reports no bytes: %v", completed)
	}
	if sum := got["skiff_converter_conversion_duration_seconds_sum"]; sum <= 0 || sum > completed.GetDuration().AsDuration().Seconds() {
		t.Errorf("conversion durations sum to %vs, want (0, %s]", sum, completed.GetDuration().AsDuration())
	}
	for _, name := range []string{"go_goroutines", "process_start_time_seconds"} {
		if _, ok := got[name]; !ok {
			t.Errorf("GET /metrics lacks %s", name)
		}
	}
}

// scrape gets url and returns its samples by name and labels, as in
// `name{label="value"}`; a histogram gives its _count and _sum.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	out := map[string]float64{}
	for name, f := range families {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			sort.Strings(labels)
			key := name
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			case dto.MetricType_UNTYPED:
				out[key] = m.GetUntyped().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[name+"_count"] = float64(m.GetHistogram().GetSampleCount())
				out[name+"_sum"] = m.GetHistogram().GetSampleSum()
			}
		}
	}
	return out
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}
