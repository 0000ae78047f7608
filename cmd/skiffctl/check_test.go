package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/fetch/fetchtest"
	"github.com/skiff-dev/skiff/pkg/store/dir"
)

func TestCheck(t *testing.T) {
	ctx := context.Background()
	tmp := t.TempDir()
	storeURL, ref, b := convertRich(t, tmp)
	out := runCLI(t, ctx, "check", "--store", storeURL, ref)
	if !strings.Contains(out, "result:    ok") {
		t.Fatalf("clean image not reported ok:\n%s", out)
	}

	// Damage the frame of one file's first stored chunk.
	var victim string
	b.Walk(func(p string, ino uint32) error {
		if victim == "" && b.Inodes[ino].Type() == bootstrap.ModeRegular && b.Inodes[ino].Size > 0 {
			victim = p
		}
		return nil
	})
	st, err := dir.New(filepath.Join(tmp, "store"))
	if err != nil {
		t.Fatal(err)
	}
	digest, err := fetchtest.CorruptFile(ctx, st, b, victim)
	if err != nil {
		t.Fatal(err)
	}

	var stdout, stderr bytes.Buffer
	code := run(ctx, []string{"check", "--store", storeURL, ref}, &stdout, &stderr)
	if code == 0 {
		t.Fatalf("check of a corrupt image exited 0:\n%s", stdout.String())
	}
	for _, want := range []string{digest.String(), victim} {
		if !strings.Contains(stdout.String(), want) || !strings.Contains(stderr.String(), want) {
			t.Errorf("check output does not name %s:\nstdout:\n%s\nstderr:\n%s", want, stdout.String(), stderr.String())
		}
	}
	// Not a terminal: no progress noise.
	if strings.Contains(stderr.String(), "\r") {
		t.Errorf("progress drawn on a non-terminal: %q", stderr.String())
	}
}

func TestCheckErrors(t *testing.T) {
	tmp := t.TempDir()
	for _, args := range [][]string{
		{"check"},
		{"check", "a", "b"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), args, &stdout, &stderr); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"check", "--store", "file://" + tmp, "oci:" + tmp + "/missing:x"}, &stdout, &stderr); code != 1 || stderr.Len() == 0 {
		t.Errorf("missing image: exit %d, stderr %q", code, stderr.String())
	}
}
