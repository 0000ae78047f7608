package lazymount

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// TestClientWaitsForARestartingMountProcess: a mount asked for while no
// mount process answers on the socket (one is restarting) waits for the
// next one; asking whether one runs does not wait.
func TestClientWaitsForARestartingMountProcess(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "mountd.sock")
	c := NewClient(sock)
	start := time.Now()
	if _, err := c.Status(context.Background()); err == nil {
		t.Fatal("status answered with no mount process")
	}
	if time.Since(start) > time.Second {
		t.Fatal("status waited for a mount process")
	}
	go func() {
		time.Sleep(300 * time.Millisecond)
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Error(err)
			return
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte(`{"mountpoint":"/mnt/image"}`))
		})}
		t.Cleanup(func() { srv.Close() })
		srv.Serve(l)
	}()
	mp, err := c.Mount(context.Background(), bootstrap.Digest{1})
	if err != nil || mp != "/mnt/image" {
		t.Fatalf("mount while the mount process restarted: %q, %v", mp, err)
	}
}

// TestClientWaitsOutAStandIn: while the agent stands in for a dead mount
// process (or one hands its mounts over), requests for the mounts are
// answered "being replaced", and the client asks again until the next
// mount process answers.
func TestClientWaitsOutAStandIn(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "mountd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var asked atomic.Int32
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if asked.Add(1) <= 3 {
			replacing(w)
			return
		}
		w.Write([]byte(`{"mountpoint":"/mnt/image"}`))
	})}
	go srv.Serve(l)
	defer srv.Close()
	mp, err := NewClient(sock).Mount(context.Background(), bootstrap.Digest{1})
	if err != nil || mp != "/mnt/image" || asked.Load() != 4 {
		t.Fatalf("mount through a stand-in: %q, %v after %d requests", mp, err, asked.Load())
	}
}
