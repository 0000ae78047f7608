package lazymount

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
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
