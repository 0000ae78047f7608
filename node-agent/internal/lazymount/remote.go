package lazymount

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/skiff-dev/skiff/node-agent/internal/snapshot"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/fetch"
)

// The mounts live in their own long-running process (skiff-agent mountd)
// so that restarting the snapshotter, which containerd talks to, never
// takes the FUSE connections of running containers with it: the
// snapshotter is a client of the mount process over a unix socket.

// HandlerOptions tune Handler.
type HandlerOptions struct {
	// Version identifies this process' build (see Client.Version).
	Version string
	// HandedOver, if set, lets a successor take the mounts over (see
	// TakeOver); it is called with the connection once the successor
	// serves them, and must end this process without unmounting them,
	// keeping the connection open until it exits.
	HandedOver func(net.Conn)
}

// Handler serves m over HTTP.
func Handler(m *Manager, opts HandlerOptions) http.Handler {
	mux := http.NewServeMux()
	with := func(fn func(ctx context.Context, d bootstrap.Digest) (any, error)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			d, err := bootstrap.ParseDigest(r.URL.Query().Get("bootstrap"))
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			v, err := fn(r.Context(), d)
			if errors.Is(err, errHandingOver) {
				replacing(w)
				return
			}
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(v)
		}
	}
	mux.HandleFunc("POST /fetch", with(func(ctx context.Context, d bootstrap.Digest) (any, error) {
		return struct{}{}, m.Fetch(ctx, d)
	}))
	mux.HandleFunc("POST /mount", with(func(ctx context.Context, d bootstrap.Digest) (any, error) {
		mp, err := m.Mount(ctx, d)
		return mountReply{Mountpoint: mp}, err
	}))
	mux.HandleFunc("POST /unmount", with(func(ctx context.Context, d bootstrap.Digest) (any, error) {
		return struct{}{}, m.Unmount(ctx, d)
	}))
	mux.HandleFunc("POST /release", with(func(ctx context.Context, d bootstrap.Digest) (any, error) {
		return struct{}{}, m.Release(ctx, d)
	}))
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(m.Stats())
	})
	mux.HandleFunc("GET /mounts", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(m.Mounts())
	})
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(versionReply{Version: opts.Version, PID: os.Getpid(), Instance: instance, Generation: m.Generation()})
	})
	mux.Handle("POST /handover", serveHandover(func() mountSource { return m }, m.log, opts.HandedOver))
	mux.Handle("POST /devices", serveHandover(func() mountSource { return &copies{m: m} }, m.log, func(conn net.Conn) { conn.Close() }))
	return mux
}

type versionReply struct {
	Version  string `json:"version"`
	PID      int    `json:"pid"`
	Instance string `json:"instance"`
	// Generation changes whenever the set of mounts does.
	Generation uint64 `json:"generation"`
}

// instance tells this process from every other mount process, where
// process IDs do not: in a pod's container, each new mount process is
// PID 1 again.
var instance = func() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}()

type mountReply struct {
	Mountpoint string `json:"mountpoint"`
}

// Client talks to a mount process on a unix socket.
type Client struct {
	http   *http.Client
	socket string
}

var _ snapshot.Mounter = (*Client)(nil)

// NewClient returns a client of the mount process listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		// Every request dials the socket afresh: a successor taking the
		// mounts over, or the agent standing in for a dead process,
		// replaces the socket, and a kept-alive connection would go on
		// talking to whoever listened before.
		DisableKeepAlives: true,
	}
	return &Client{http: &http.Client{Transport: tr}, socket: socket}
}

// Ping reports whether the mount process answers.
func (c *Client) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := c.Stats(ctx)
	return err
}

// Status is what a mount process says about itself.
type Status struct {
	// Version identifies its build; empty for builds before versions.
	Version string
	PID     int
	// Instance identifies the process; empty for builds before it.
	Instance string
	// Generation changes whenever the set of mounts does.
	Generation uint64
}

// Status asks the mount process about itself.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var v versionReply
	err := c.do(ctx, http.MethodGet, "version", &v)
	if errors.Is(err, errNotServed) {
		// Mount processes from before versions were reported.
		return Status{}, nil
	}
	return Status(v), err
}

// Stats returns the mount process' chunk read, source and cache counters.
func (c *Client) Stats(ctx context.Context) (fetch.Stats, error) {
	var s fetch.Stats
	return s, c.do(ctx, http.MethodGet, "stats", &s)
}

// Mounts describes the images the mount process has mounted.
func (c *Client) Mounts(ctx context.Context) ([]MountInfo, error) {
	var ms []MountInfo
	return ms, c.do(ctx, http.MethodGet, "mounts", &ms)
}

// restartWait is how long a call waits for a mount process to answer on
// its socket again.
const restartWait = 15 * time.Second

// call asks the mount process to do op on image d. A mount process that
// is being replaced (restarted by the kubelet, taken over by a successor,
// stood in for by the agent) does not answer for a moment: the call waits
// for it rather than fail a container's creation. Ping and Status, which
// tell a dead process, do not wait.
func (c *Client) call(ctx context.Context, op string, d bootstrap.Digest, out any) error {
	delay := 50 * time.Millisecond
	deadline := time.Now().Add(restartWait)
	for {
		err := c.do(ctx, http.MethodPost, op+"?bootstrap="+d.String(), out)
		if err == nil || !(notListening(err) || errors.Is(err, errReplacing)) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
		delay = min(2*delay, 500*time.Millisecond)
	}
}

// notListening reports whether err is a dial that found no mount process
// on the socket: none there, or one no longer accepting.
func notListening(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT)
}

// do sends a request for path and decodes the JSON reply into out. A
// path the mount process does not serve (an older build) is errNotServed.
func (c *Client) do(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://mountd/"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s: mount process: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("%s: mount process: %w", path, err)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed:
		return fmt.Errorf("%s: %w", path, errNotServed)
	case resp.StatusCode == http.StatusServiceUnavailable:
		return fmt.Errorf("%s: %w: %s", path, errReplacing, strings.TrimSpace(string(body)))
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("%s: %w", path, errors.New(strings.TrimSpace(string(body))))
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("%s: mount process: %w", path, err)
	}
	return nil
}

// Fetch implements snapshot.Mounter.
func (c *Client) Fetch(ctx context.Context, d bootstrap.Digest) error {
	return c.call(ctx, "fetch", d, &struct{}{})
}

// Mount implements snapshot.Mounter.
func (c *Client) Mount(ctx context.Context, d bootstrap.Digest) (string, error) {
	var r mountReply
	if err := c.call(ctx, "mount", d, &r); err != nil {
		return "", err
	}
	return r.Mountpoint, nil
}

// Release implements snapshot.Mounter. A mount process from before
// releases were served is asked to unmount instead.
func (c *Client) Release(ctx context.Context, d bootstrap.Digest) error {
	err := c.call(ctx, "release", d, &struct{}{})
	if errors.Is(err, errNotServed) {
		err = c.call(ctx, "unmount", d, &struct{}{})
	}
	return err
}

// errNotServed is a request the mount process does not know.
var errNotServed = errors.New("not served by this mount process")

// errReplacing is the answer of a mount process handing its mounts over,
// or of the agent standing in for a dead one (503): a moment later the
// next one answers.
var errReplacing = errors.New("the mount process is being replaced")

// replacing answers a request for the mounts while they change hands.
func replacing(w http.ResponseWriter) {
	w.Header().Set("Retry-After", "1")
	http.Error(w, errReplacing.Error(), http.StatusServiceUnavailable)
}
