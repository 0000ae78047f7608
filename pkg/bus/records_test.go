package bus

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/pkg/conversion"
)

func TestRecords(t *testing.T) {
	b := startNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := b.Record(ctx, "sha256:aa"); !errors.Is(err, ErrNoRecord) {
		t.Fatalf("missing record: %v, want ErrNoRecord", err)
	}
	if _, err := b.Record(ctx, "not-a-digest"); err == nil {
		t.Fatal("record of a non-digest succeeded")
	}
	kv, err := b.Records(ctx)
	if err != nil {
		t.Fatal(err)
	}
	put := func(r *conversion.Record) {
		t.Helper()
		key, _ := conversion.Key(r.SourceDigest)
		v, _ := r.Marshal()
		if _, err := kv.Put(ctx, key, v); err != nil {
			t.Fatal(err)
		}
	}
	put(&conversion.Record{SourceDigest: "sha256:aa", State: conversion.Running, Seq: 1})
	put(&conversion.Record{SourceDigest: "sha256:bb", State: conversion.Failed, Reason: "boom"})

	recs, err := b.ListRecords(ctx)
	if err != nil || len(recs) != 2 {
		t.Fatalf("ListRecords: %d records, %v", len(recs), err)
	}
	r, err := b.Record(ctx, "sha256:bb")
	if err != nil || r.Reason != "boom" {
		t.Fatalf("Record: %+v, %v", r, err)
	}

	// WatchRecord sees the current state, then the change to done.
	var states []conversion.State
	go func() {
		time.Sleep(200 * time.Millisecond)
		put(&conversion.Record{SourceDigest: "sha256:aa", State: conversion.Done, Seq: 1})
	}()
	err = b.WatchRecord(ctx, "sha256:aa", func(r *conversion.Record) (bool, error) {
		states = append(states, r.State)
		return r.State.Final(), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(states) != 2 || states[0] != conversion.Running || states[1] != conversion.Done {
		t.Errorf("watched states %v, want [running done]", states)
	}
}

// TestRecordsWithoutService: against a NATS server no converter has set
// up, every way of reading records says so with ErrNoService rather than
// with JetStream's "bucket not found".
func TestRecordsWithoutService(t *testing.T) {
	b := freshNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := b.Records(ctx); !errors.Is(err, ErrNoService) {
		t.Errorf("Records: %v, want ErrNoService", err)
	}
	if _, err := b.ListRecords(ctx); !errors.Is(err, ErrNoService) {
		t.Errorf("ListRecords: %v, want ErrNoService", err)
	}
	if _, err := b.Record(ctx, "sha256:aa"); !errors.Is(err, ErrNoService) {
		t.Errorf("Record: %v, want ErrNoService", err)
	}
	err := b.WatchRecord(ctx, "sha256:aa", func(*conversion.Record) (bool, error) { return true, nil })
	if !errors.Is(err, ErrNoService) {
		t.Errorf("WatchRecord: %v, want ErrNoService", err)
	}
}
