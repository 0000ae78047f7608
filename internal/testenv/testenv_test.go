package testenv

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestRepoRoot(t *testing.T) {
	root := RepoRoot()
	if _, err := os.Stat(filepath.Join(root, "go.work")); err != nil {
		t.Fatalf("RepoRoot() = %q has no go.work: %v", root, err)
	}
	if _, err := os.Stat(filepath.Join(root, "internal", "testenv")); err != nil {
		t.Fatalf("RepoRoot() = %q does not contain internal/testenv: %v", root, err)
	}
}

func TestProcessExitDuringStartup(t *testing.T) {
	p := newProcess(t, "false", "/bin/sh", []string{"-c", "echo broken config >&2; exit 3"}, nil)
	p.ready = httpReady("http://" + hostPort(freePort(t)) + "/")
	err := p.tryStart()
	if err == nil {
		t.Fatal("tryStart of a server that exits succeeded")
	}
	for _, want := range []string{"exited during startup", "broken config"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestMinIO(t *testing.T) {
	m := StartMinIO(t)
	bucket := m.Bucket(t, "skiff-test")
	// Creating an existing bucket is allowed so tests can share helpers.
	m.Bucket(t, bucket)

	ctx := context.Background()
	c := m.Client(t)
	data := []byte("chunk data that must survive a restart")
	if _, err := c.PutObject(ctx, bucket, "blobs/sha256/abc", bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
		t.Fatalf("put: %v", err)
	}
	if got := getObject(t, c, bucket, "blobs/sha256/abc"); !bytes.Equal(got, data) {
		t.Fatalf("get = %q, want %q", got, data)
	}

	m.Stop()
	down, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := c.StatObject(down, bucket, "blobs/sha256/abc", minio.StatObjectOptions{}); err == nil {
		t.Fatal("stat succeeded while MinIO was stopped")
	}

	m.Start()
	if got := getObject(t, c, bucket, "blobs/sha256/abc"); !bytes.Equal(got, data) {
		t.Fatalf("get after restart = %q, want %q", got, data)
	}
}

func getObject(t *testing.T, c *minio.Client, bucket, key string) []byte {
	t.Helper()
	obj, err := c.GetObject(context.Background(), bucket, key, minio.GetObjectOptions{})
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	defer obj.Close()
	b, err := io.ReadAll(obj)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return b
}

// notifications starts a webhook receiver and returns its URL and the
// actions of the events it receives.
func notifications(t *testing.T) (string, <-chan string) {
	events := make(chan string, 16)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var env struct {
			Events []struct {
				Action string `json:"action"`
			} `json:"events"`
		}
		if err := json.NewDecoder(r.Body).Decode(&env); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		for _, e := range env.Events {
			events <- e.Action
		}
	}))
	t.Cleanup(hook.Close)
	return hook.URL, events
}

func nextEvent(t *testing.T, events <-chan string) string {
	t.Helper()
	select {
	case a := <-events:
		return a
	case <-time.After(30 * time.Second):
		t.Fatal("no notification within 30s")
		return ""
	}
}

func TestRegistry(t *testing.T) {
	url, events := notifications(t)
	r := StartRegistry(t, RegistryOptions{NotifyURL: url})
	if status := get(t, "http://"+r.Addr+"/v2/"); status != http.StatusOK {
		t.Fatalf("GET /v2/ = %d, want 200", status)
	}

	// Pushing a blob makes the registry notify the hook.
	blob := []byte("layer")
	digest := "sha256:" + sha256hex(blob)
	push(t, r.Addr, "skiff/test", digest, blob)
	if a := nextEvent(t, events); a != "push" {
		t.Fatalf("first event action = %q, want push", a)
	}

	r.Stop()
	if _, err := http.Get("http://" + r.Addr + "/v2/"); err == nil {
		t.Fatal("GET /v2/ succeeded while the registry was stopped")
	}
	r.Start()
	if status := get(t, "http://"+r.Addr+"/v2/skiff/test/blobs/"+digest); status != http.StatusOK {
		t.Fatalf("blob after restart: status %d, want 200", status)
	}
}

func TestRegistryIgnoredActions(t *testing.T) {
	url, events := notifications(t)
	r := StartRegistry(t, RegistryOptions{NotifyURL: url, NotifyIgnoredActions: []string{"push"}})
	blob := []byte("ignored push")
	digest := "sha256:" + sha256hex(blob)
	push(t, r.Addr, "skiff/test", digest, blob)
	if status := get(t, "http://"+r.Addr+"/v2/skiff/test/blobs/"+digest); status != http.StatusOK {
		t.Fatalf("pull blob: status %d, want 200", status)
	}
	// Events are delivered in order, so a push event would come first.
	if a := nextEvent(t, events); a != "pull" {
		t.Fatalf("first event action = %q, want pull (push is ignored)", a)
	}
}

func get(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// push uploads blob with the monolithic POST-then-PUT flow of the
// distribution API.
func push(t *testing.T, addr, repo, digest string, blob []byte) {
	t.Helper()
	resp, err := http.Post("http://"+addr+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatalf("start upload: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start upload: %s", resp.Status)
	}
	loc, err := resp.Location()
	if err != nil {
		t.Fatalf("upload location: %v", err)
	}
	q := loc.Query()
	q.Set("digest", digest)
	loc.RawQuery = q.Encode()
	req, err := http.NewRequest(http.MethodPut, loc.String(), bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("finish upload: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("finish upload: %s", resp.Status)
	}
}

func TestNATS(t *testing.T) {
	n := StartNATS(t, NATSOptions{})
	ctx := context.Background()

	nc, err := nats.Connect(n.URL, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatalf("connect %s: %v", n.URL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	info, err := js.AccountInfo(ctx)
	if err != nil {
		t.Fatalf("JetStream account info: %v", err)
	}
	if info.Streams != 0 {
		t.Fatalf("fresh server has %d streams", info.Streams)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "JOBS", Subjects: []string{"jobs.>"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatalf("create stream: %v", err)
	}
	if _, err := js.Publish(ctx, "jobs.convert", []byte("busybox")); err != nil {
		t.Fatalf("publish: %v", err)
	}

	// The stream and its message survive a restart on the same store.
	n.Stop()
	n.Start()
	restarted, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	s, err := js.Stream(restarted, "JOBS")
	if err != nil {
		t.Fatalf("stream after restart: %v", err)
	}
	msg, err := s.GetLastMsgForSubject(restarted, "jobs.convert")
	if err != nil {
		t.Fatalf("message after restart: %v", err)
	}
	if string(msg.Data) != "busybox" {
		t.Fatalf("message after restart = %q, want busybox", msg.Data)
	}
}

func sha256hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func TestFreeAddrsDistinct(t *testing.T) {
	addrs := FreeAddrs(t, 50)
	seen := map[string]bool{}
	for _, a := range addrs {
		if seen[a] {
			t.Fatalf("%s returned twice in %v", a, addrs)
		}
		seen[a] = true
		l, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatalf("%s is not free: %v", a, err)
		}
		l.Close()
	}
}
