package main

import (
	"strings"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/pkg/conversion"
)

func TestFilterRecords(t *testing.T) {
	recs := []*conversion.Record{
		{Source: "127.0.0.1:5000/demo/app:v1", Target: "127.0.0.1:5000/demo/app:v1-skiff", SourceDigest: "sha256:aa", TargetDigest: "sha256:bb"},
		{Source: "127.0.0.1:5000/demo/app:v2", Target: "127.0.0.1:5000/demo/app:v2-skiff", SourceDigest: "sha256:cc"},
		{Source: "127.0.0.1:5000/other:v1", Target: "127.0.0.1:5000/other:v1-skiff", SourceDigest: "sha256:dd"},
	}
	tests := []struct {
		img  string
		want int
	}{
		{"127.0.0.1:5000/demo/app:v1", 1},
		{"127.0.0.1:5000/demo/app:v1-skiff", 1},
		{"127.0.0.1:5000/demo/app", 2},
		{"sha256:aa", 1},
		{"sha256:bb", 1},
		{"127.0.0.1:5000", 0},
		{"127.0.0.1:5000/demo", 0},
		{"nothing", 0},
	}
	for _, tt := range tests {
		if got := filterRecords(recs, tt.img); len(got) != tt.want {
			t.Errorf("filterRecords(%q) kept %d, want %d", tt.img, len(got), tt.want)
		}
	}
}

func TestWriteRecords(t *testing.T) {
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	recs := []*conversion.Record{
		{State: conversion.Done, Source: "r/a:1", Target: "r/a:1-skiff", SourceDigest: "sha256:0123456789abcdef0123", TargetDigest: "sha256:fedcba9876543210fedc", Attempts: 1, NewBytes: 2048, Updated: now.Add(-time.Minute)},
		{State: conversion.Failed, Source: "r/b:1", SourceDigest: "sha256:11", Attempts: 5, Reason: "gave up after 5 attempts: 500", Updated: now},
		{State: conversion.Running, Source: "r/c:1", SourceDigest: "sha256:22", Attempts: 2, Worker: "host/42", Updated: now},
	}
	var b strings.Builder
	writeRecords(&b, recs, now)
	out := b.String()
	for _, want := range []string{"STATE", "done", "r/a:1-skiff@sha256:fedcba987654,", "1m0s ago", "failed", "gave up after 5 attempts: 500", "running", "on host/42", "sha256:0123456789ab "} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if lines := strings.Count(out, "\n"); lines != 4 {
		t.Errorf("%d lines, want header and 3 records:\n%s", lines, out)
	}
}

func TestCutTag(t *testing.T) {
	tests := []struct{ ref, repo, tag string }{
		{"127.0.0.1:5000/a/b:v1", "127.0.0.1:5000/a/b", "v1"},
		{"127.0.0.1:5000/a/b", "127.0.0.1:5000/a/b", ""},
		{"a/b:v1", "a/b", "v1"},
	}
	for _, tt := range tests {
		repo, tag, _ := cutTag(tt.ref)
		if repo != tt.repo || tag != tt.tag {
			t.Errorf("cutTag(%q) = %q, %q", tt.ref, repo, tag)
		}
	}
}
