package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/conversion"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
)

func TestBackoff(t *testing.T) {
	w := New(nil, nil, nil, Options{Backoff: time.Second, BackoffMax: 10 * time.Second})
	for attempt, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 5: 10 * time.Second, 50: 10 * time.Second} {
		if got := w.backoff(attempt); got != want {
			t.Errorf("backoff(%d) = %s, want %s", attempt, got, want)
		}
	}
}

// TestClaim drives the claim decision against a real KV bucket (embedded
// NATS): which delivery converts, which waits and which only acks.
func TestClaim(t *testing.T) {
	const digest = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b"
	// The Skiff tag r/a:1-skiff (in a registry of the test's) names the
	// earlier conversion, converted, or another image, other.
	host := emptyRegistry(t)
	images := map[string]v1.Hash{}
	for _, content := range []string{"converted", "other"} {
		l, err := fixture.Layer(fixture.Gzip, []fixture.Entry{fixture.File("f", 0o644, content)})
		if err != nil {
			t.Fatal(err)
		}
		img, err := fixture.Image(l)
		if err != nil {
			t.Fatal(err)
		}
		ref, _ := name.NewTag(host + "/r/a:" + content)
		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
		images[content], _ = img.Digest()
	}
	// The worker names repositories as pushed: "r/a" ("r" is no host).
	skiffTag, _ := name.NewTag(host + "/r/a:1-skiff")
	converted := images["converted"].String()
	tests := []struct {
		name         string
		existing     *conversion.Record // nil: no record yet
		seq          uint64
		tagged       string // what the Skiff tag names before the claim
		wantErr      error
		wantClaim    bool
		wantAttempts int    // counted in the claimed record
		wantTagged   string // what the Skiff tag names after it, if set
	}{
		{"first request", nil, 1, "", nil, true, 1, ""},
		{"redelivery after a crash", &conversion.Record{State: conversion.Running, Seq: 1, Attempts: 1}, 1, "", nil, true, 2, ""},
		{"retry after a failed attempt", &conversion.Record{State: conversion.Pending, Seq: 1, Attempts: 1, Reason: "500"}, 1, "", nil, true, 2, ""},
		{"another request converting", &conversion.Record{State: conversion.Running, Seq: 1}, 2, "", errBusy, false, 0, ""},
		{"another request retrying", &conversion.Record{State: conversion.Pending, Seq: 1}, 2, "", errBusy, false, 0, ""},
		{"redelivery of a done request", &conversion.Record{State: conversion.Done, Seq: 1, Target: "r/a:1-skiff", TargetDigest: converted}, 1, "other", nil, false, 0, "other"},
		{"same tag pushed again", &conversion.Record{State: conversion.Done, Seq: 1, Target: "r/a:1-skiff", TargetDigest: converted}, 2, "converted", nil, false, 0, "converted"},
		// a:1 pushed, then other content as a:1, then the first again.
		{"same tag pushed again after a rollback", &conversion.Record{State: conversion.Done, Seq: 1, Target: "r/a:1-skiff", TargetDigest: converted}, 2, "other", nil, false, 0, "converted"},
		{"redelivery of a failed request", &conversion.Record{State: conversion.Failed, Seq: 1}, 1, "", nil, false, 0, ""},
		{"new request after a failure", &conversion.Record{State: conversion.Failed, Seq: 1, Attempts: 6, Reason: "gave up"}, 2, "", nil, true, 1, ""},
	}
	w, b, _ := newTestWorker(t, host)
	ctx := context.Background()
	kv, err := b.Records(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, _ := conversion.Key(digest)
			if err := kv.Delete(ctx, key); err != nil {
				t.Fatal(err)
			}
			if tt.existing != nil {
				tt.existing.SourceDigest, tt.existing.Source = digest, "r/a:1"
				if tt.existing.Target == "" {
					tt.existing.Target = "r/a:1-skiff"
				}
				v, _ := tt.existing.Marshal()
				if _, err := kv.Put(ctx, key, v); err != nil {
					t.Fatal(err)
				}
			}
			j := &job{
				req: &skiffv1.ImagePushed{Registry: "r", Repository: "a", Tag: "1", Digest: digest},
				key: key, seq: tt.seq, source: "r/a:1", target: "r/a:1-skiff", log: slog.Default(),
			}
			if tt.tagged != "" {
				img, err := remote.Image(skiffTag.Context().Digest(images[tt.tagged].String()))
				if err != nil {
					t.Fatal(err)
				}
				if err := remote.Write(skiffTag, img); err != nil {
					t.Fatal(err)
				}
			}
			rec, rev, err := w.claim(ctx, j)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("claim: %v, want %v", err, tt.wantErr)
			}
			if tt.wantTagged != "" {
				if desc, err := remote.Head(skiffTag); err != nil || desc.Digest != images[tt.wantTagged] {
					t.Fatalf("the Skiff tag names %v (%v), want the %s image", desc, err, tt.wantTagged)
				}
			}
			if (rec != nil) != tt.wantClaim {
				t.Fatalf("claimed %v, want %v", rec != nil, tt.wantClaim)
			}
			if rec == nil {
				return
			}
			stored, err := b.Record(ctx, digest)
			if err != nil {
				t.Fatal(err)
			}
			if stored.State != conversion.Running || stored.Seq != tt.seq || stored.Attempts != tt.wantAttempts || stored.Worker != "test" {
				t.Errorf("stored record %+v, want running, owned by seq %d, attempt %d", stored, tt.seq, tt.wantAttempts)
			}
			if tt.existing != nil && tt.existing.State == conversion.Failed && stored.Reason != "" {
				t.Errorf("a new request kept the old failure reason %q", stored.Reason)
			}
			// The claim's revision must be the current one, or the
			// worker could not record the outcome.
			if e, err := kv.Get(ctx, key); err != nil || e.Revision() != rev {
				t.Errorf("claim revision %d, bucket has %v (%v)", rev, e, err)
			}
		})
	}
}

// TestClaimIsExclusive races claims of one request by several workers:
// exactly one wins the compare-and-swap on a fresh record.
func TestClaimIsExclusive(t *testing.T) {
	const digest = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	w, _, _ := newTestWorker(t, "")
	key, _ := conversion.Key(digest)
	const n = 8
	results := make(chan *conversion.Record, n)
	for i := range n {
		go func() {
			j := &job{
				req: &skiffv1.ImagePushed{Registry: "r", Repository: "a", Tag: "1", Digest: digest},
				key: key, seq: uint64(1 + i), source: "r/a:1", target: "r/a:1-skiff", log: slog.Default(),
			}
			rec, _, _ := w.claim(context.Background(), j)
			results <- rec
		}()
	}
	won := 0
	for range n {
		if <-results != nil {
			won++
		}
	}
	if won != 1 {
		t.Errorf("%d of %d concurrent requests claimed the conversion, want 1", won, n)
	}
}

// testMaxAttempts is the workers' MaxAttempts in these tests.
const testMaxAttempts = 3

// TestHandleCountsAttempts handles one delivery of request 2 against each
// state of the record: only conversion attempts count towards
// MaxAttempts, however often JetStream delivered the request before (its
// deliveries while request 1 converted the same digest only waited). The
// registry holds no image, so every attempt fails.
func TestHandleCountsAttempts(t *testing.T) {
	tests := []struct {
		name         string
		existing     *conversion.Record // nil: no record yet
		delivered    uint64
		wantSettle   string
		wantState    conversion.State
		wantSeq      uint64
		wantAttempts int
		wantReason   string // in the failed event, "" for none
	}{
		{"first delivery", nil, 1, "nak 1s", conversion.Pending, 2, 1, ""},
		{"waits for another request", &conversion.Record{State: conversion.Running, Seq: 1, Attempts: 1}, 9, "nak 1s", conversion.Running, 1, 1, ""},
		{"first attempt after another request failed", &conversion.Record{State: conversion.Failed, Seq: 1, Attempts: 3}, 9, "nak 1s", conversion.Pending, 2, 1, ""},
		{"second attempt", &conversion.Record{State: conversion.Pending, Seq: 2, Attempts: 1}, 12, "nak 2s", conversion.Pending, 2, 2, ""},
		{"last attempt", &conversion.Record{State: conversion.Pending, Seq: 2, Attempts: 2}, 13, "ack", conversion.Failed, 2, 3, "gave up after 3 attempts: load "},
		{"worker died in the last attempt", &conversion.Record{State: conversion.Running, Seq: 2, Attempts: 3}, 1, "ack", conversion.Failed, 2, 3,
			"gave up after 3 attempts: worker stopped during the last attempt"},
	}
	w, b, pub := newTestWorker(t, emptyRegistry(t))
	ctx := context.Background()
	kv, err := b.Records(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			digest := putRecord(t, kv, tt.existing)
			pub.reset()
			msg := newMsg(t, 2, tt.delivered, &skiffv1.ImagePushed{Registry: "r.example", Repository: "a", Tag: "2", Digest: digest})
			w.Handle(ctx, msg)
			if msg.settled != tt.wantSettle {
				t.Errorf("settled %q, want %q", msg.settled, tt.wantSettle)
			}
			rec, err := b.Record(ctx, digest)
			if err != nil {
				t.Fatal(err)
			}
			if rec.State != tt.wantState || rec.Seq != tt.wantSeq || rec.Attempts != tt.wantAttempts {
				t.Errorf("record %s, seq %d, %d attempts (%q), want %s, seq %d, %d attempts",
					rec.State, rec.Seq, rec.Attempts, rec.Reason, tt.wantState, tt.wantSeq, tt.wantAttempts)
			}
			failed := pub.failed()
			switch {
			case tt.wantReason == "" && len(failed) != 0:
				t.Errorf("published %v, want no failure yet", failed)
			case tt.wantReason != "" && (len(failed) != 1 || !strings.HasPrefix(failed[0].GetReason(), tt.wantReason) || failed[0].GetAttempts() != 3):
				t.Errorf("published %v, want one failure after 3 attempts: %q...", failed, tt.wantReason)
			}
		})
	}
}

// TestClaimFailuresEnd delivers request 2 again and again while its
// record cannot be claimed: after MaxAttempts failures in a row it is
// reported failed, acked, and its record says so, so whoever follows the
// record learns it.
func TestClaimFailuresEnd(t *testing.T) {
	tests := []struct {
		name       string
		existing   *conversion.Record // nil: put garbage
		wantReason string
	}{
		// The digest was converted for request 1, but its Skiff image
		// is gone, so it cannot be tagged for request 2.
		{"earlier conversion gone", &conversion.Record{State: conversion.Done, Seq: 1, Attempts: 1,
			TargetDigest: "sha256:2222222222222222222222222222222222222222222222222222222222222222"}, "retag: copy "},
		{"record unreadable", nil, "conversion: decode record"},
	}
	w, b, pub := newTestWorker(t, emptyRegistry(t))
	ctx := context.Background()
	kv, err := b.Records(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var digest string
			if tt.existing != nil {
				digest = putRecord(t, kv, tt.existing)
			} else {
				digest = testDigest
				key, _ := conversion.Key(digest)
				if _, err := kv.Put(ctx, key, []byte("{")); err != nil {
					t.Fatal(err)
				}
			}
			pub.reset()
			msg := newMsg(t, 2, 0, &skiffv1.ImagePushed{Registry: "r.example", Repository: "a", Tag: "2", Digest: digest})
			for n := 1; n <= testMaxAttempts; n++ {
				msg.delivered++
				w.Handle(ctx, msg)
				if n < testMaxAttempts {
					if want := fmt.Sprintf("nak %s", w.backoff(n)); msg.settled != want || len(pub.failed()) != 0 {
						t.Fatalf("failure %d: settled %q with %d failures published, want %q and none", n, msg.settled, len(pub.failed()), want)
					}
				}
			}
			failed := pub.failed()
			if msg.settled != "ack" || len(failed) != 1 || failed[0].GetAttempts() != testMaxAttempts ||
				!strings.HasPrefix(failed[0].GetReason(), "gave up after 3 attempts: "+tt.wantReason) {
				t.Fatalf("after %d failed claims: settled %q, published %v; want ack and one failure", testMaxAttempts, msg.settled, failed)
			}
			rec, err := b.Record(ctx, digest)
			if err != nil {
				t.Fatal(err)
			}
			if rec.State != conversion.Failed || rec.Seq != 2 || rec.Target != "r.example/a:2-skiff" || rec.Reason != failed[0].GetReason() {
				t.Errorf("record %+v, want failed by request 2 with the event's reason", rec)
			}
		})
	}
}

func TestTally(t *testing.T) {
	tl := tally{ttl: time.Minute}
	now := time.Now()
	for want := 1; want <= 3; want++ {
		if n := tl.add(7, now); n != want {
			t.Fatalf("add: %d failures, want %d", n, want)
		}
	}
	if n := tl.add(8, now); n != 1 {
		t.Errorf("another request starts at %d", n)
	}
	tl.forget(7)
	if n := tl.add(7, now); n != 1 {
		t.Errorf("after forget: %d failures, want 1", n)
	}
	// A request not seen for longer than ttl (settled by another
	// process) is dropped.
	tl.add(9, now.Add(-2*time.Minute))
	tl.add(7, now)
	if _, ok := tl.m[9]; ok || len(tl.m) != 2 {
		t.Errorf("stale entries kept: %v", tl.m)
	}
}

const testDigest = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b"

// putRecord replaces the record of testDigest with rec (none if nil) as
// request 1 of r.example/a:1 left it, and returns the digest.
func putRecord(t *testing.T, kv jetstream.KeyValue, rec *conversion.Record) string {
	t.Helper()
	ctx := context.Background()
	key, _ := conversion.Key(testDigest)
	if err := kv.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	if rec == nil {
		return testDigest
	}
	rec.SourceDigest, rec.Source, rec.Target = testDigest, "r.example/a:1", "r.example/a:1-skiff"
	if rec.Seq == 2 {
		rec.Source, rec.Target = "r.example/a:2", "r.example/a:2-skiff"
	}
	v, err := rec.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, key, v); err != nil {
		t.Fatal(err)
	}
	return testDigest
}

// emptyRegistry serves a registry that holds nothing, so every pull fails
// at once, and returns its host.
func emptyRegistry(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// fakeMsg is one delivery of a request, recording how it was settled.
type fakeMsg struct {
	seq, delivered uint64
	data           []byte
	settled        string
}

func newMsg(t *testing.T, seq, delivered uint64, req *skiffv1.ImagePushed) *fakeMsg {
	t.Helper()
	data, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeMsg{seq: seq, delivered: delivered, data: data}
}

func (m *fakeMsg) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: m.seq}, NumDelivered: m.delivered}, nil
}
func (m *fakeMsg) Data() []byte { return m.data }
func (m *fakeMsg) Headers() nats.Header {
	return nats.Header{bus.HeaderType: {string((&skiffv1.ImagePushed{}).ProtoReflect().Descriptor().FullName())}}
}
func (m *fakeMsg) Subject() string                    { return bus.SubjectImagePushed }
func (m *fakeMsg) Reply() string                      { return "" }
func (m *fakeMsg) Ack() error                         { m.settled = "ack"; return nil }
func (m *fakeMsg) DoubleAck(context.Context) error    { m.settled = "ack"; return nil }
func (m *fakeMsg) Nak() error                         { m.settled = "nak"; return nil }
func (m *fakeMsg) NakWithDelay(d time.Duration) error { m.settled = "nak " + d.String(); return nil }
func (m *fakeMsg) InProgress() error                  { return nil }
func (m *fakeMsg) Term() error                        { m.settled = "term"; return nil }
func (m *fakeMsg) TermWithReason(string) error        { m.settled = "term"; return nil }

// fakePub records the outcomes a worker publishes.
type fakePub struct {
	mu  sync.Mutex
	evs []proto.Message
}

func (p *fakePub) Publish(_ context.Context, _, _ string, m proto.Message) (*jetstream.PubAck, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.evs = append(p.evs, m)
	return &jetstream.PubAck{}, nil
}

func (p *fakePub) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.evs = nil
}

func (p *fakePub) failed() []*skiffv1.ConversionFailed {
	p.mu.Lock()
	defer p.mu.Unlock()
	var f []*skiffv1.ConversionFailed
	for _, m := range p.evs {
		if e, ok := m.(*skiffv1.ConversionFailed); ok {
			f = append(f, e)
		}
	}
	return f
}

// newTestWorker returns a worker keeping records in an embedded NATS
// server and pulling from and pushing to registryHost, and what it
// publishes.
func newTestWorker(t *testing.T, registryHost string) (*Worker, *bus.Bus, *fakePub) {
	t.Helper()
	nc, err := bus.Connect(testenv.StartEmbeddedNATS(t, true), "worker-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	b, err := bus.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	kv, err := b.Records(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	pub := &fakePub{}
	w := New(pub, kv, nil, Options{
		MaxAttempts: testMaxAttempts, AckWait: 3 * time.Second, Backoff: time.Second, BackoffMax: 4 * time.Second,
		Registry: registryHost, Name: "test",
	})
	return w, b, pub
}
