package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/conversion"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
)

// recorder fakes the bus, the one seam of these tests; the converter's
// integration tests publish to a real NATS server.
type recorder struct {
	ids     []string
	reqs    []*skiffv1.ImagePushed
	err     error
	records map[string]*conversion.Record // by digest
	recErr  error
}

func (r *recorder) Record(_ context.Context, digest string) (*conversion.Record, error) {
	if r.recErr != nil {
		return nil, r.recErr
	}
	if rec, ok := r.records[digest]; ok {
		return rec, nil
	}
	return nil, fmt.Errorf("%s: %w", digest, bus.ErrNoRecord)
}

func (r *recorder) Publish(_ context.Context, subject, msgID string, m proto.Message) (*jetstream.PubAck, error) {
	if r.err != nil {
		return nil, r.err
	}
	if subject != bus.SubjectImagePushed {
		return nil, fmt.Errorf("unexpected subject %s", subject)
	}
	r.ids = append(r.ids, msgID)
	r.reqs = append(r.reqs, m.(*skiffv1.ImagePushed))
	return &jetstream.PubAck{}, nil
}

const (
	dgst  = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b"
	dgst2 = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
)

func event(action, mediaType, repo, tag, digest string) string {
	return fmt.Sprintf(`{"id":"e","timestamp":"2025-01-02T03:04:05Z","action":%q,
		"target":{"mediaType":%q,"size":528,"digest":%q,"length":528,"repository":%q,
		"url":"http://127.0.0.1:5000/v2/%s/manifests/%s","tag":%q},
		"request":{"id":"r","addr":"127.0.0.1:40000","host":"127.0.0.1:5000","method":"PUT","useragent":"crane"},
		"actor":{},"source":{"addr":"host:5000","instanceID":"i"}}`, action, mediaType, digest, repo, repo, digest, tag)
}

func notification(events ...string) string { return `{"events":[` + strings.Join(events, ",") + `]}` }

const ociManifest = "application/vnd.oci.image.manifest.v1+json"

func TestDistribution(t *testing.T) {
	tests := []struct {
		name          string
		body          string
		wantStatus    int
		wantPublished []string // sources
		wantIgnored   int
	}{
		{"manifest push", notification(event("push", ociManifest, "demo/app", "v1", dgst)), 200, []string{"127.0.0.1:5000/demo/app:v1"}, 0},
		{"docker manifest and index", notification(
			event("push", "application/vnd.docker.distribution.manifest.v2+json", "a", "1", dgst),
			event("push", "application/vnd.oci.image.index.v1+json", "b", "2", dgst2)), 200,
			[]string{"127.0.0.1:5000/a:1", "127.0.0.1:5000/b:2"}, 0},
		{"blob push and pull ignored", notification(
			event("push", "application/vnd.oci.image.layer.v1.tar+gzip", "a", "", dgst),
			event("pull", ociManifest, "a", "1", dgst)), 200, nil, 2},
		{"own output ignored", notification(
			event("push", ociManifest, "a", "v1-skiff", dgst),
			event("push", "application/vnd.oci.image.index.v1+json", "a", strings.Replace(dgst2, ":", "-", 1), dgst2),
			event("push", ociManifest, "a", "", dgst)), 200, nil, 3},
		{"empty events", `{"events":[]}`, 200, nil, 0},
		{"not json", `{"events":[`, 400, nil, 0},
		{"trailing data", notification(event("push", ociManifest, "a", "1", dgst)) + `{}`, 400, nil, 0},
		{"no events array", `{"something":"else"}`, 400, nil, 0},
		{"wrong shape", `{"events":{"action":"push"}}`, 400, nil, 0},
		{"event without action", `{"events":[{}]}`, 400, nil, 0},
		// One bad event refuses the whole body, so the good one before
		// it is not published either.
		{"bad digest", notification(event("push", ociManifest, "a", "1", dgst), event("push", ociManifest, "a", "2", "sha256:zz")), 400, nil, 0},
		{"bad repository", notification(event("push", ociManifest, "A//B", "1", dgst)), 400, nil, 0},
		{"bad tag", notification(event("push", ociManifest, "a", "no spaces", dgst)), 400, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			h := New(rec, slog.Default())
			resp := post(t, h, PathDistribution, tt.body)
			if resp.code != tt.wantStatus {
				t.Fatalf("status %d (%s), want %d", resp.code, resp.body.Error, tt.wantStatus)
			}
			rec.check(t, tt.wantPublished)
			if tt.wantStatus == 200 && (resp.body.Published != len(tt.wantPublished) || resp.body.Ignored != tt.wantIgnored) {
				t.Errorf("response %+v, want %d published %d ignored", resp.body, len(tt.wantPublished), tt.wantIgnored)
			}
			if tt.wantStatus != 200 && resp.body.Error == "" {
				t.Error("error response without a reason")
			}
			want := Stats{Malformed: 1}
			if tt.wantStatus == 200 {
				want = Stats{OK: 1, Published: int64(len(tt.wantPublished)), Ignored: int64(tt.wantIgnored)}
			}
			if got := h.Stats(); got != want {
				t.Errorf("counted %+v, want %+v", got, want)
			}
		})
	}
}

func TestDistributionRequestFields(t *testing.T) {
	rec := &recorder{}
	post(t, New(rec, slog.Default()), PathDistribution, notification(event("push", ociManifest, "demo/app", "v1", dgst)))
	if len(rec.reqs) != 1 {
		t.Fatalf("published %d requests", len(rec.reqs))
	}
	r := rec.reqs[0]
	if r.GetRegistry() != "127.0.0.1:5000" || r.GetRepository() != "demo/app" || r.GetTag() != "v1" || r.GetDigest() != dgst ||
		r.GetOrigin() != "distribution" || r.GetSize() != 528 || r.GetPushedAt().AsTime().Year() != 2025 {
		t.Errorf("request %v", r)
	}
	if rec.ids[0] != dgst+"@127.0.0.1:5000/demo/app:v1" {
		t.Errorf("message id %q", rec.ids[0])
	}
}

func harbor(typ, repo string, resources ...string) string {
	return fmt.Sprintf(`{"type":%q,"occur_at":1586922308,"operator":"admin","event_data":{"resources":[%s],
		"repository":{"date_created":1586922308,"name":"app","namespace":"library","repo_full_name":%q,"repo_type":"private"}}}`,
		typ, strings.Join(resources, ","), repo)
}

func resource(tag, digest string) string {
	return fmt.Sprintf(`{"digest":%q,"tag":%q,"resource_url":"harbor.example.com/library/app:%s"}`, digest, tag, tag)
}

func TestHarbor(t *testing.T) {
	tests := []struct {
		name          string
		body          string
		wantStatus    int
		wantPublished []string
	}{
		{"push", harbor("PUSH_ARTIFACT", "library/app", resource("v1", dgst)), 200, []string{"harbor.example.com/library/app:v1"}},
		{"legacy push", harbor("pushImage", "library/app", resource("v1", dgst), resource("v1-skiff", dgst2)), 200, []string{"harbor.example.com/library/app:v1"}},
		{"other event", harbor("DELETE_ARTIFACT", "library/app", resource("v1", dgst)), 200, nil},
		{"no repository", harbor("PUSH_ARTIFACT", "", resource("v1", dgst)), 400, nil},
		{"bad digest", harbor("PUSH_ARTIFACT", "library/app", resource("v1", "md5:x")), 400, nil},
		{"no event data", `{"type":"PUSH_ARTIFACT"}`, 400, nil},
		{"garbage", `hello`, 400, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			resp := post(t, New(rec, slog.Default()), PathHarbor, tt.body)
			if resp.code != tt.wantStatus {
				t.Fatalf("status %d (%s), want %d", resp.code, resp.body.Error, tt.wantStatus)
			}
			rec.check(t, tt.wantPublished)
		})
	}
}

func TestBusDownIsRetryable(t *testing.T) {
	rec := &recorder{err: errors.New("nats: no responders")}
	h := New(rec, slog.Default())
	resp := post(t, h, PathDistribution, notification(event("push", ociManifest, "a", "1", dgst)))
	if resp.code != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503 so the registry retries", resp.code)
	}
	if got := h.Stats(); got != (Stats{Unavailable: 1}) {
		t.Errorf("counted %+v, want one unavailable", got)
	}
}

// TestMessageIDs checks which notifications JetStream stores once: a push
// after a failed conversion of its digest is a new request, while repeated
// notifications of any one push share an id.
func TestMessageIDs(t *testing.T) {
	const plain = dgst + "@127.0.0.1:5000/a:1"
	tests := []struct {
		name   string
		record *conversion.Record // nil: none yet
		want   string
	}{
		{"first push", nil, plain},
		{"converting", &conversion.Record{State: conversion.Running, Seq: 3}, plain},
		{"retrying", &conversion.Record{State: conversion.Pending, Seq: 3}, plain},
		{"converted", &conversion.Record{State: conversion.Done, Seq: 3}, plain},
		{"after a failure", &conversion.Record{State: conversion.Failed, Seq: 3}, plain + "#retry-3"},
		{"after another failure", &conversion.Record{State: conversion.Failed, Seq: 9}, plain + "#retry-9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{records: map[string]*conversion.Record{}}
			if tt.record != nil {
				rec.records[dgst] = tt.record
			}
			h := New(rec, slog.Default())
			// The registry reports the push twice (a retried
			// notification): both must carry the same id.
			for range 2 {
				if resp := post(t, h, PathDistribution, notification(event("push", ociManifest, "a", "1", dgst))); resp.code != http.StatusOK {
					t.Fatalf("status %d (%s)", resp.code, resp.body.Error)
				}
			}
			if len(rec.ids) != 2 || rec.ids[0] != tt.want || rec.ids[1] != tt.want {
				t.Errorf("message ids %q, want %q twice", rec.ids, tt.want)
			}
		})
	}
}

func TestRecordUnreadableIsRetryable(t *testing.T) {
	rec := &recorder{recErr: errors.New("nats: timeout")}
	resp := post(t, New(rec, slog.Default()), PathDistribution, notification(event("push", ociManifest, "a", "1", dgst)))
	if resp.code != http.StatusServiceUnavailable || len(rec.ids) != 0 {
		t.Fatalf("status %d with %d published, want 503 and none, so the registry retries", resp.code, len(rec.ids))
	}
}

func TestMethods(t *testing.T) {
	h := New(&recorder{}, slog.Default())
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, PathDistribution, nil))
	if w.Code != http.StatusMethodNotAllowed {
		t.Errorf("GET %s: %d", PathDistribution, w.Code)
	}
}

// check compares the sources published with want.
func (r *recorder) check(t *testing.T, want []string) {
	t.Helper()
	var got []string
	for _, p := range r.reqs {
		got = append(got, Source(p))
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("published %v, want %v", got, want)
	}
}

type response struct {
	code int
	body Response
}

func post(t *testing.T, h http.Handler, path, body string) response {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/vnd.docker.distribution.events.v1+json")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	var r Response
	if err := json.Unmarshal(w.Body.Bytes(), &r); err != nil {
		t.Fatalf("response body %q: %v", w.Body.String(), err)
	}
	return response{w.Code, r}
}
