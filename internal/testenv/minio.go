package testenv

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// MinIO is a running single-drive MinIO server.
type MinIO struct {
	Endpoint  string // "127.0.0.1:port", plain HTTP
	AccessKey string
	SecretKey string
	Dir       string // data directory, kept across Stop and Start

	proc *process
}

// StartMinIO starts MinIO with a fresh data directory and stops it when the
// test ends.
func StartMinIO(t testing.TB) MinIO {
	t.Helper()
	path := Tool(t, "minio")
	dir := filepath.Join(t.TempDir(), "data")
	m := MinIO{AccessKey: "skiffaccess", SecretKey: "skiffsecret", Dir: dir}
	m.proc = launch(t, 1, func(ports []int) *process {
		m.Endpoint = hostPort(ports[0])
		p := newProcess(t, "minio", path,
			[]string{"server", "--quiet", "--address", m.Endpoint, dir},
			[]string{
				"MINIO_ROOT_USER=" + m.AccessKey,
				"MINIO_ROOT_PASSWORD=" + m.SecretKey,
				// No web console (it would need a second port), no
				// update checks, and no refusal to use the root disk.
				"MINIO_BROWSER=off",
				"MINIO_UPDATE=off",
				"MINIO_CI_CD=1",
			})
		// /minio/health/cluster answers 200 only once the object layer
		// can serve writes; /live is up before buckets can be made.
		p.ready = httpReady("http://" + m.Endpoint + "/minio/health/cluster")
		return p
	})
	return m
}

// Stop shuts the server down, keeping its port and data directory, so a test
// can observe S3 being unavailable. Call it from the test goroutine.
func (m MinIO) Stop() { m.proc.stop() }

// Start brings a stopped server back on the same port and data directory and
// waits until it serves requests. Call it from the test goroutine.
func (m MinIO) Start() {
	m.proc.t.Helper()
	m.proc.start()
}

// Client returns a minio-go client for the server.
func (m MinIO) Client(t testing.TB) *minio.Client {
	t.Helper()
	c, err := minio.New(m.Endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(m.AccessKey, m.SecretKey, ""),
		Secure: false,
	})
	if err != nil {
		t.Fatalf("testenv: minio client for %s: %v", m.Endpoint, err)
	}
	return c
}

// Bucket creates bucket name if it does not exist yet and returns name.
func (m MinIO) Bucket(t testing.TB, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := m.Client(t)
	if err := c.MakeBucket(ctx, name, minio.MakeBucketOptions{}); err != nil {
		exists, errExists := c.BucketExists(ctx, name)
		if errExists != nil || !exists {
			t.Fatalf("testenv: make bucket %q on %s: %v", name, m.Endpoint, err)
		}
	}
	return name
}
