// Package webhook receives registry push notifications over HTTP and turns
// each manifest push into a conversion request on the bus. It understands
// the Docker distribution notification envelope and Harbor's push webhook.
// A body is validated whole before anything is published, so a malformed
// notification is refused with 400 and leaves no trace; a bus failure is
// answered with 503 so the registry retries, and message ids make the
// retry harmless.
package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/conversion"
	"github.com/skiff-dev/skiff/pkg/image"
	"github.com/skiff-dev/skiff/pkg/telemetry"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
)

// Bus is the part of pkg/bus the handler needs: it publishes requests,
// and reads the conversion record of a pushed digest to tell a push made
// after a failed conversion from a repeated notification.
type Bus interface {
	Publish(ctx context.Context, subject, msgID string, m proto.Message) (*jetstream.PubAck, error)
	Record(ctx context.Context, digest string) (*conversion.Record, error)
}

// maxBody bounds a notification body; distribution batches a handful of
// events per request, far below this.
const maxBody = 4 << 20

// Paths the handler serves.
const (
	PathDistribution = "/notify"
	PathHarbor       = "/harbor"
)

// Handler serves the webhook endpoints.
type Handler struct {
	bus Bus
	log *slog.Logger
	mux *http.ServeMux

	ok, malformed, unavailable     atomic.Int64
	published, duplicates, ignored atomic.Int64
}

// Stats counts the notifications a Handler answered and what became of
// their events.
type Stats struct {
	OK          int64 // notifications answered 200
	Malformed   int64 // answered 400: nothing published
	Unavailable int64 // answered 503: the bus failed, the registry retries
	Published   int64 // conversion requests JetStream stored
	Duplicates  int64 // requests JetStream had already (a registry's retry), not stored again
	Ignored     int64 // events that were no push of a convertible tag
}

// Stats returns current counters.
func (h *Handler) Stats() Stats {
	return Stats{
		OK: h.ok.Load(), Malformed: h.malformed.Load(), Unavailable: h.unavailable.Load(),
		Published: h.published.Load(), Duplicates: h.duplicates.Load(), Ignored: h.ignored.Load(),
	}
}

// New returns a handler publishing to b.
func New(b Bus, log *slog.Logger) *Handler {
	h := &Handler{bus: b, log: log, mux: http.NewServeMux()}
	h.mux.HandleFunc("POST "+PathDistribution, h.serve(parseDistribution))
	h.mux.HandleFunc("POST "+PathHarbor, h.serve(parseHarbor))
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// Response is the JSON body of every webhook answer.
type Response struct {
	Published int    `json:"published"`
	Ignored   int    `json:"ignored"`
	Error     string `json:"error,omitempty"`
}

type parser func(body []byte) (requests []*skiffv1.ImagePushed, ignored int, err error)

func (h *Handler) serve(parse parser) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx := telemetry.ExtractHTTP(r.Context(), r.Header)
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			h.malformed.Add(1)
			reply(w, http.StatusBadRequest, Response{Error: "read body: " + err.Error()})
			return
		}
		reqs, ignored, err := parse(body)
		if err != nil {
			h.log.Warn("refused malformed notification", "path", r.URL.Path, "err", err)
			h.malformed.Add(1)
			reply(w, http.StatusBadRequest, Response{Error: err.Error()})
			return
		}
		h.ignored.Add(int64(ignored))
		for i, req := range reqs {
			id, err := h.msgID(ctx, req)
			if err != nil {
				h.log.Error("read conversion record", "image", Source(req), "err", err)
				h.unavailable.Add(1)
				reply(w, http.StatusServiceUnavailable, Response{Published: i, Ignored: ignored, Error: err.Error()})
				return
			}
			ack, err := h.bus.Publish(ctx, bus.SubjectImagePushed, id, req)
			if err != nil {
				h.log.Error("publish conversion request", "image", Source(req), "err", err)
				h.unavailable.Add(1)
				reply(w, http.StatusServiceUnavailable, Response{Published: i, Ignored: ignored, Error: err.Error()})
				return
			}
			if ack.Duplicate {
				h.duplicates.Add(1)
			} else {
				h.published.Add(1)
			}
			h.log.Info("conversion requested", "image", Source(req), "digest", req.GetDigest(), "origin", req.GetOrigin(), "duplicate", ack.Duplicate)
		}
		h.ok.Add(1)
		reply(w, http.StatusOK, Response{Published: len(reqs), Ignored: ignored})
	}
}

func reply(w http.ResponseWriter, status int, r Response) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(r)
}

// MsgID is the JetStream message id of a request: the same push reported
// twice (a registry retry) is stored once, while the same digest pushed
// under another tag is a new request.
func MsgID(p *skiffv1.ImagePushed) string {
	return p.GetDigest() + "@" + Source(p)
}

// msgID is the message id of req as published now. MsgID alone makes a
// push within bus.DuplicateWindow of an earlier push of the same tag and
// digest a duplicate, which is right unless the earlier request's
// conversion failed: then nothing would convert the new push. So after a
// failure the id also names the failed request. Every notification of the
// new push finds the same failed record (until a worker claims the new
// request), so they still make one request.
func (h *Handler) msgID(ctx context.Context, req *skiffv1.ImagePushed) (string, error) {
	id := MsgID(req)
	rec, err := h.bus.Record(ctx, req.GetDigest())
	switch {
	case errors.Is(err, bus.ErrNoRecord), errors.Is(err, bus.ErrNoService):
		return id, nil
	case err != nil:
		return "", err
	case rec.State == conversion.Failed:
		return id + "#retry-" + strconv.FormatUint(rec.Seq, 10), nil
	}
	return id, nil
}

// Source is the reference a request names, "<registry>/<repository>:<tag>".
func Source(p *skiffv1.ImagePushed) string {
	return p.GetRegistry() + "/" + p.GetRepository() + ":" + p.GetTag()
}

// Validate checks that a request names a convertible tag and digest, and is
// not a push of Skiff's own output: a "-skiff" tag, or the "sha256-<hex>"
// tag under which the referrers fallback index is kept.
func Validate(p *skiffv1.ImagePushed) (convert bool, err error) {
	if _, err := v1.NewHash(p.GetDigest()); err != nil {
		return false, fmt.Errorf("digest %q: %w", p.GetDigest(), err)
	}
	if p.GetRegistry() == "" || p.GetRepository() == "" {
		return false, fmt.Errorf("push of %s names no registry or repository", p.GetDigest())
	}
	if p.GetTag() == "" {
		return false, nil
	}
	if _, err := name.NewTag(Source(p)); err != nil {
		return false, fmt.Errorf("reference %q: %w", Source(p), err)
	}
	if strings.HasSuffix(p.GetTag(), image.TagSuffix) || isFallbackTag(p.GetTag()) {
		return false, nil
	}
	return true, nil
}

func isFallbackTag(tag string) bool {
	alg, hex, ok := strings.Cut(tag, "-")
	if !ok || alg != "sha256" || len(hex) != 64 {
		return false
	}
	_, err := v1.NewHash(alg + ":" + hex)
	return err == nil
}

// manifestTypes are the media types of pushes worth converting; pushes of
// blobs and of anything else are reported too and ignored.
var manifestTypes = map[types.MediaType]bool{
	types.OCIManifestSchema1:    true,
	types.DockerManifestSchema2: true,
	types.OCIImageIndex:         true,
	types.DockerManifestList:    true,
}

// distribution's notification envelope, the fields Skiff reads.
type envelope struct {
	Events *[]struct {
		Action    string    `json:"action"`
		Timestamp time.Time `json:"timestamp"`
		Target    struct {
			MediaType  string `json:"mediaType"`
			Size       int64  `json:"size"`
			Digest     string `json:"digest"`
			Repository string `json:"repository"`
			URL        string `json:"url"`
			Tag        string `json:"tag"`
		} `json:"target"`
		Request struct {
			Host string `json:"host"`
		} `json:"request"`
	} `json:"events"`
}

func parseDistribution(body []byte) ([]*skiffv1.ImagePushed, int, error) {
	var env envelope
	if err := strictUnmarshal(body, &env); err != nil {
		return nil, 0, fmt.Errorf("distribution notification: %w", err)
	}
	if env.Events == nil {
		return nil, 0, errors.New("distribution notification: no events array")
	}
	var b batch
	for i, e := range *env.Events {
		if e.Action == "" {
			return nil, 0, fmt.Errorf("distribution notification: event %d has no action", i)
		}
		if e.Action != "push" || !manifestTypes[types.MediaType(e.Target.MediaType)] {
			b.ignored++
			continue
		}
		host := e.Request.Host
		if host == "" {
			host = hostOf(e.Target.URL)
		}
		p := &skiffv1.ImagePushed{
			Registry: host, Repository: e.Target.Repository, Tag: e.Target.Tag, Digest: e.Target.Digest,
			MediaType: e.Target.MediaType, Size: e.Target.Size, Origin: "distribution", PushedAt: timestamp(e.Timestamp),
		}
		if err := b.add(p); err != nil {
			return nil, 0, fmt.Errorf("distribution notification: event %d: %w", i, err)
		}
	}
	return b.reqs, b.ignored, nil
}

// batch collects the requests of one notification.
type batch struct {
	reqs    []*skiffv1.ImagePushed
	ignored int
}

// add validates p and keeps it if it is worth converting.
func (b *batch) add(p *skiffv1.ImagePushed) error {
	ok, err := Validate(p)
	if err != nil {
		return err
	}
	if ok {
		b.reqs = append(b.reqs, p)
	} else {
		b.ignored++
	}
	return nil
}

// Harbor's webhook payload, the fields Skiff reads.
type harborPayload struct {
	Type      string `json:"type"`
	OccurAt   int64  `json:"occur_at"`
	EventData *struct {
		Resources []struct {
			Digest      string `json:"digest"`
			Tag         string `json:"tag"`
			ResourceURL string `json:"resource_url"`
		} `json:"resources"`
		Repository struct {
			RepoFullName string `json:"repo_full_name"`
		} `json:"repository"`
	} `json:"event_data"`
}

func parseHarbor(body []byte) ([]*skiffv1.ImagePushed, int, error) {
	var p harborPayload
	if err := strictUnmarshal(body, &p); err != nil {
		return nil, 0, fmt.Errorf("harbor webhook: %w", err)
	}
	if p.Type == "" || p.EventData == nil {
		return nil, 0, errors.New("harbor webhook: no type or event_data")
	}
	if p.Type != "PUSH_ARTIFACT" && p.Type != "pushImage" {
		return nil, len(p.EventData.Resources), nil
	}
	repo := p.EventData.Repository.RepoFullName
	if repo == "" {
		return nil, 0, errors.New("harbor webhook: no repository.repo_full_name")
	}
	var b batch
	for i, r := range p.EventData.Resources {
		host, _, _ := strings.Cut(r.ResourceURL, "/")
		req := &skiffv1.ImagePushed{
			Registry: host, Repository: repo, Tag: r.Tag, Digest: r.Digest,
			Origin: "harbor", PushedAt: timestamp(time.Unix(p.OccurAt, 0)),
		}
		if err := b.add(req); err != nil {
			return nil, 0, fmt.Errorf("harbor webhook: resource %d: %w", i, err)
		}
	}
	return b.reqs, b.ignored, nil
}

// strictUnmarshal decodes one JSON value and refuses trailing data.
func strictUnmarshal(body []byte, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(body)))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after JSON value")
	}
	return nil
}

func hostOf(url string) string {
	_, rest, ok := strings.Cut(url, "://")
	if !ok {
		return ""
	}
	host, _, _ := strings.Cut(rest, "/")
	return host
}

func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
