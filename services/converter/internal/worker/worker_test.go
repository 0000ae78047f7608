package worker

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

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
	tests := []struct {
		name      string
		existing  *conversion.Record // nil: no record yet
		seq       uint64
		wantErr   error
		wantClaim bool
	}{
		{"first request", nil, 1, nil, true},
		{"redelivery after a crash", &conversion.Record{State: conversion.Running, Seq: 1, Attempts: 1}, 1, nil, true},
		{"retry after a failed attempt", &conversion.Record{State: conversion.Pending, Seq: 1, Attempts: 1, Reason: "500"}, 1, nil, true},
		{"another request converting", &conversion.Record{State: conversion.Running, Seq: 1}, 2, errBusy, false},
		{"another request retrying", &conversion.Record{State: conversion.Pending, Seq: 1}, 2, errBusy, false},
		{"redelivery of a done request", &conversion.Record{State: conversion.Done, Seq: 1, Target: "r/a:1-skiff"}, 1, nil, false},
		{"same tag pushed again", &conversion.Record{State: conversion.Done, Seq: 1, Target: "r/a:1-skiff"}, 2, nil, false},
		{"redelivery of a failed request", &conversion.Record{State: conversion.Failed, Seq: 1}, 1, nil, false},
		{"new request after a failure", &conversion.Record{State: conversion.Failed, Seq: 1, Attempts: 6, Reason: "gave up"}, 2, nil, true},
	}
	w, b := newTestWorker(t)
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
				key: key, seq: tt.seq, attempt: 2, source: "r/a:1", target: "r/a:1-skiff", log: slog.Default(),
			}
			rec, rev, err := w.claim(ctx, j)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("claim: %v, want %v", err, tt.wantErr)
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
			if stored.State != conversion.Running || stored.Seq != tt.seq || stored.Attempts != 2 || stored.Worker != "test" {
				t.Errorf("stored record %+v, want running, owned by seq %d, attempt 2", stored, tt.seq)
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
	w, _ := newTestWorker(t)
	key, _ := conversion.Key(digest)
	const n = 8
	results := make(chan *conversion.Record, n)
	for i := range n {
		go func() {
			j := &job{
				req: &skiffv1.ImagePushed{Registry: "r", Repository: "a", Tag: "1", Digest: digest},
				key: key, seq: uint64(1 + i), attempt: 1, source: "r/a:1", target: "r/a:1-skiff", log: slog.Default(),
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

func newTestWorker(t *testing.T) (*Worker, *bus.Bus) {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("embedded nats-server did not start")
	}
	t.Cleanup(s.Shutdown)
	nc, err := bus.Connect(s.ClientURL(), "worker-test")
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
	return New(b, kv, nil, Options{MaxAttempts: 3, AckWait: 3 * time.Second, Backoff: time.Second, BackoffMax: time.Second, Name: "test"}), b
}
