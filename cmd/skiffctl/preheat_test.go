package main

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/image"
	"github.com/skiff-dev/skiff/pkg/schedule"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
)

// standInSeeder answers SeedRequests on NATS as seeder id does, with
// reply, recording the bootstrap digests it is asked for.
type standInSeeder struct {
	mu    sync.Mutex
	asked []string
}

func startStandInSeeder(t *testing.T, nc *nats.Conn, id string, reply *skiffv1.SeedReply) *standInSeeder {
	t.Helper()
	s := &standInSeeder{}
	sub, err := nc.Subscribe(bus.SubjectSeed(id), func(m *nats.Msg) {
		var req skiffv1.SeedRequest
		ctx, err := bus.DecodeMsg(context.Background(), m, &req)
		if err != nil {
			t.Errorf("%s: %v", id, err)
			return
		}
		s.mu.Lock()
		s.asked = append(s.asked, req.GetBootstrapDigest())
		s.mu.Unlock()
		if err := bus.Respond(ctx, m, reply); err != nil {
			t.Errorf("%s: %v", id, err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	return s
}

func (s *standInSeeder) requests() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.asked, " ")
}

// TestPreheat runs `skiffctl preheat` against an embedded nats-server, a
// scheduler as skiff-scheduler runs it and two stand-ins for seeders (the
// seeder's own tests check what a real one does with the request).
func TestPreheat(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	layout := "oci:" + filepath.Join(dir, "layout")
	l, err := fixture.Layer(fixture.Gzip, []fixture.Entry{
		fixture.Dir("data", 0o755),
		{Header: fixture.File("data/blob", 0o644, "").Header, Data: fixture.Random(1, 300<<10)},
	})
	if err != nil {
		t.Fatal(err)
	}
	img, err := fixture.Image(l)
	if err != nil {
		t.Fatal(err)
	}
	if err := image.Write(ctx, layout+":app", img); err != nil {
		t.Fatal(err)
	}
	ref := layout + ":app-skiff"
	runCLI(t, ctx, "convert", "--store", "file://"+filepath.Join(dir, "store"), layout+":app", ref)
	b, digest, err := image.LoadBootstrap(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}

	natsURL := testenv.StartEmbeddedNATS(t, false)
	nc, err := bus.Connect(natsURL, "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	table := schedule.NewTable(schedule.Options{})
	sched := schedule.NewServer(nc, table, nil)
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- sched.Run(sctx, time.Second) }()
	t.Cleanup(func() {
		stop()
		<-done
	})
	seeders := map[string]*standInSeeder{}
	for _, id := range []string{"seeder-a", "seeder-b", "seeder-c"} {
		seeders[id] = startStandInSeeder(t, nc, id, &skiffv1.SeedReply{Frames: 7, Bytes: 3 << 20})
	}
	// Not announced: only asked by name.
	failing := startStandInSeeder(t, nc, "seeder-full", &skiffv1.SeedReply{Error: "no space left on device"})
	deadline := time.Now().Add(10 * time.Second)
	for table.Stats(time.Now()).Seeders != len(seeders) {
		if time.Now().After(deadline) {
			t.Fatal("the scheduler did not learn of the seeders")
		}
		// Until the scheduler has subscribed.
		for id := range seeders {
			if err := bus.Send(ctx, nc, bus.SubjectPeerAnnounce, schedule.AnnounceMessage(schedule.Peer{ID: id, Addr: id + ":8092", Role: schedule.RoleSeeder}, nil, false)); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	fr, _ := largestBlobFrame(b)
	responsible, ok := table.Seeder(b.Blobs[fr.Blob], time.Now())
	if !ok {
		t.Fatal("no seeder for the image")
	}

	tests := []struct {
		name   string
		args   []string
		code   int
		asked  string // the seeder that must have been asked
		stdout string
		stderr string
	}{
		{name: "the scheduler names the seeder", args: []string{ref}, asked: responsible.ID,
			stdout: ref + " preheated on seeder " + responsible.ID + ": 7 frames, 3.0 MiB read from the store"},
		{name: "a named seeder", args: []string{"--seeder", "seeder-c", ref}, asked: "seeder-c", stdout: "on seeder seeder-c"},
		{name: "the seeder fails", args: []string{"--seeder", "seeder-full", ref}, code: 1, stderr: "no space left on device"},
		{name: "no such seeder", args: []string{"--seeder", "seeder-z", ref}, code: 1, stderr: `no seeder "seeder-z"`},
		{name: "no image", args: []string{layout + ":nothing"}, code: 1, stderr: "nothing"},
		{name: "no argument", code: 2, stderr: "usage: skiffctl preheat"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := map[string]string{}
			for id, s := range seeders {
				before[id] = s.requests()
			}
			var stdout, stderr bytes.Buffer
			code := run(ctx, append([]string{"preheat", "--nats", natsURL}, tt.args...), &stdout, &stderr)
			if code != tt.code || !strings.Contains(stdout.String(), tt.stdout) || !strings.Contains(stderr.String(), tt.stderr) {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.code, &stdout, &stderr)
			}
			for id, s := range seeders {
				want := before[id]
				if id == tt.asked {
					want = strings.TrimSpace(want + " " + digest.String())
				}
				if got := s.requests(); got != want {
					t.Errorf("%s was asked for %q, want %q", id, got, want)
				}
			}
		})
	}
	if got := failing.requests(); got != digest.String() {
		t.Errorf("failing seeder was asked for %q", got)
	}

	t.Run("every platform of a multi-platform image", func(t *testing.T) {
		src, err := fixture.PlatformIndex([]fixture.Entry{fixture.File("shared", 0o644, "shared")}, "linux/amd64", "linux/arm64")
		if err != nil {
			t.Fatal(err)
		}
		if err := image.WriteIndex(ctx, layout+":multi", src); err != nil {
			t.Fatal(err)
		}
		runCLI(t, ctx, "convert", "--store", "file://"+filepath.Join(dir, "store"), layout+":multi", layout+":multi-skiff")
		images, err := image.LoadBootstraps(ctx, layout+":multi-skiff")
		if err != nil || len(images) != 2 {
			t.Fatalf("%d bootstraps, %v", len(images), err)
		}
		out := runCLI(t, ctx, "preheat", "--nats", natsURL, "--seeder", "seeder-b", layout+":multi-skiff")
		for _, p := range images {
			if !strings.Contains(out, "("+p.Platform.String()+") preheated on seeder seeder-b") {
				t.Errorf("output does not report %s:\n%s", p.Platform, out)
			}
		}
		if got, want := seeders["seeder-b"].requests(), images[0].Digest.String()+" "+images[1].Digest.String(); !strings.HasSuffix(got, want) {
			t.Errorf("seeder-b was asked for %q, want both platforms' bootstraps %q last", got, want)
		}
	})
}

// TestPreheatWithoutScheduler checks that preheat says what is missing
// when no scheduler answers.
func TestPreheatWithoutScheduler(t *testing.T) {
	ctx := context.Background()
	layout := "oci:" + filepath.Join(t.TempDir(), "layout")
	l, err := fixture.Layer(fixture.Gzip, []fixture.Entry{fixture.File("f", 0o644, "some data")})
	if err != nil {
		t.Fatal(err)
	}
	img, err := fixture.Image(l)
	if err != nil {
		t.Fatal(err)
	}
	if err := image.Write(ctx, layout+":app", img); err != nil {
		t.Fatal(err)
	}
	runCLI(t, ctx, "convert", "--store", "file://"+filepath.Join(t.TempDir(), "store"), layout+":app", layout+":app-skiff")
	var stdout, stderr bytes.Buffer
	if code := run(ctx, []string{"preheat", "--nats", testenv.StartEmbeddedNATS(t, false), layout + ":app-skiff"}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "no scheduler") {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, &stdout, &stderr)
	}
}

func TestLargestBlobFrame(t *testing.T) {
	blobs := []bootstrap.Digest{bootstrap.Sum([]byte("a")), bootstrap.Sum([]byte("b")), bootstrap.Sum([]byte("c"))}
	tests := []struct {
		name   string
		frames []bootstrap.Frame
		want   string // Blob/Offset of the frame, or "none"
	}{
		{"none", nil, "none"},
		{"one blob", []bootstrap.Frame{{Blob: 0, Offset: 0, CompressedSize: 10}, {Blob: 0, Offset: 10, CompressedSize: 10}}, "0/0"},
		{"most bytes, not most frames", []bootstrap.Frame{
			{Blob: 0, Offset: 0, CompressedSize: 10}, {Blob: 0, Offset: 10, CompressedSize: 10}, {Blob: 0, Offset: 20, CompressedSize: 10},
			{Blob: 2, Offset: 100, CompressedSize: 50}, {Blob: 2, Offset: 0, CompressedSize: 50},
		}, "2/100"},
		{"a blob without frames", []bootstrap.Frame{{Blob: 1, Offset: 5, CompressedSize: 1}}, "1/5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fr, ok := largestBlobFrame(&bootstrap.Bootstrap{Blobs: blobs, Frames: tt.frames})
			got := "none"
			if ok {
				got = fmt.Sprintf("%d/%d", fr.Blob, fr.Offset)
			}
			if got != tt.want {
				t.Errorf("largestBlobFrame = %s, want %s", got, tt.want)
			}
		})
	}
}
