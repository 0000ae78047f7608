package main

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// statServer answers Stat with err, as a snapshotter does for a key it
// does not have (NotFound) or when it is broken.
type statServer struct {
	snapshotsapi.UnimplementedSnapshotsServer
	err error
}

func (s statServer) Stat(context.Context, *snapshotsapi.StatSnapshotRequest) (*snapshotsapi.StatSnapshotResponse, error) {
	return nil, s.err
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name   string
		server *statServer // nil: nothing listens
		want   int
	}{
		{"answers not found", &statServer{err: status.Error(codes.NotFound, "no such snapshot")}, 0},
		{"answers found", &statServer{}, 0},
		{"broken", &statServer{err: status.Error(codes.Internal, "metadata store")}, 1},
		{"down", nil, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "s.sock")
			if tt.server != nil {
				l, err := net.Listen("unix", sock)
				if err != nil {
					t.Fatal(err)
				}
				srv := grpc.NewServer()
				snapshotsapi.RegisterSnapshotsServer(srv, tt.server)
				go srv.Serve(l)
				defer srv.Stop()
			}
			var stdout, stderr bytes.Buffer
			if got := check(config{Socket: sock}, &stdout, &stderr); got != tt.want {
				t.Fatalf("check = %d, want %d; stdout %q, stderr %q", got, tt.want, stdout.String(), stderr.String())
			}
			if tt.want != 0 && !strings.Contains(stderr.String(), sock) && tt.server != nil {
				t.Errorf("failure does not name the socket: %q", stderr.String())
			}
		})
	}
}

// TestRunRejectsBadSettings: a setting out of range stops the agent
// before it starts anything, with an error naming the setting and value.
func TestRunRejectsBadSettings(t *testing.T) {
	for _, tt := range []struct{ name, value, want string }{
		{"SKIFF_AGENT_MOUNTD", "sidecar", `"sidecar"`},
		{"SKIFF_AGENT_PEER_PARALLEL", "0", "0, want 1 or more"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(tt.name, tt.value)
			var stdout, stderr bytes.Buffer
			if got := run(nil, &stdout, &stderr); got != 2 {
				t.Fatalf("run = %d, want 2; stderr %q", got, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.name) || !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("error does not name the setting and value: %q", stderr.String())
			}
		})
	}
}

func TestHelpNamesModes(t *testing.T) {
	var stdout bytes.Buffer
	if got := run([]string{"--help"}, &stdout, &stdout); got != 0 {
		t.Fatalf("--help = %d", got)
	}
	for _, want := range []string{"skiff-agent check", "skiff-agent status", "skiff-agent parked", "SKIFF_AGENT_MOUNTD", "spawn", "skiff-agent mountd"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}

func TestFuseIn(t *testing.T) {
	const info = `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
100 22 0:50 / /var/lib/skiff-agent/mnt/ab.image rw,nosuid,nodev,relatime shared:60 - fuse.skiff skiff rw,user_id=0,group_id=0
101 22 7:0 / /var/lib/skiff-agent/mnt/ab ro,relatime shared:61 - erofs /var/lib/skiff-agent/mnt/ab.image/image ro
102 22 0:51 / /var/lib/skiff-agent-other/mnt/cd rw - fuse.skiff skiff rw
103 22 0:52 / /var/lib/docker/overlay2/x/merged rw - overlay overlay rw
`
	tests := []struct {
		dir  string
		want bool
	}{
		{"/var/lib/skiff-agent", true},
		{"/var/lib/skiff-agent-other", true},
		{"/var/lib/skiff", false}, // a prefix of the path, not a parent
		{"/var/lib/docker", false},
		{"/srv", false},
	}
	for _, tt := range tests {
		if got := fuseIn(info, tt.dir); got != tt.want {
			t.Errorf("fuseIn(%s) = %v, want %v", tt.dir, got, tt.want)
		}
	}
	if fuseIn("garbage\n\n- \n", "/") {
		t.Error("fuseIn found a mount in garbage")
	}
}

// TestMountdStopNeverLooksDead: a mount process that is stopped unmounts
// and removes its socket before it stops answering on it. The agent,
// checking meanwhile, sees it alive and then stopped, never dead (its
// socket refusing connections), which would have it hand the devices of
// the unmounted mounts to a new mount process.
func TestMountdStopNeverLooksDead(t *testing.T) {
	cfg := config{Root: t.TempDir(), Store: "file://" + t.TempDir()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- runMountd(ctx, cfg, "v-test", slog.New(slog.DiscardHandler)) }()
	sock := mountdSocket(cfg)
	deadline := time.Now().Add(20 * time.Second)
	for mountdState(sock) != mountdAlive {
		select {
		case err := <-done:
			t.Fatalf("the mount process ended at start: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the mount process never answered")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	checks := 0
	for state := mountdAlive; state != mountdStopped; checks++ {
		if state = mountdState(sock); state == mountdDied {
			t.Fatalf("after %d checks, the stopping mount process' socket refused connections: the agent would take it for dead", checks)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("the mount process ended with %v", err)
	}
}
