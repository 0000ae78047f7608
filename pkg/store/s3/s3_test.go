package s3_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/store"
	"github.com/skiff-dev/skiff/pkg/store/s3"
	"github.com/skiff-dev/skiff/pkg/store/storetest"
)

var buckets atomic.Int64

func newS3(t testing.TB, m testenv.MinIO, prefix string) *s3.S3 {
	t.Helper()
	return newS3In(t, m, fmt.Sprintf("skiff-test-%d", buckets.Add(1)), prefix)
}

func newS3In(t testing.TB, m testenv.MinIO, bucket, prefix string) *s3.S3 {
	t.Helper()
	cfg := s3.Config{
		Endpoint:  m.Endpoint,
		Bucket:    bucket,
		Prefix:    prefix,
		AccessKey: m.AccessKey,
		SecretKey: m.SecretKey,
	}
	st, err := s3.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("s3.New(%+v): %v", cfg, err)
	}
	return st
}

func TestConformance(t *testing.T) {
	m := testenv.StartMinIO(t)
	t.Run("NoPrefix", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) store.Store { return newS3(t, m, "") })
	})
	t.Run("Prefix", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) store.Store { return newS3(t, m, "/tenant/skiff/") })
	})
}

// Stores with different prefixes share a bucket without seeing each other,
// and objects that are not valid keys are not listed.
func TestPrefixIsolation(t *testing.T) {
	m := testenv.StartMinIO(t)
	ctx := context.Background()
	bucket := m.Bucket(t, "shared")
	open := func(prefix string) *s3.S3 {
		st, err := s3.New(ctx, s3.Config{Endpoint: m.Endpoint, Bucket: bucket, Prefix: prefix, AccessKey: m.AccessKey, SecretKey: m.SecretKey})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	a, b := open("a"), open("ab")
	if err := a.Put(ctx, "k", strings.NewReader("from a"), 6); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, "k", strings.NewReader("from ab"), 7); err != nil {
		t.Fatal(err)
	}
	// Written around the store: a "folder" marker is no valid key.
	if _, err := m.Client(t).PutObject(ctx, bucket, "a/x/", strings.NewReader(""), 0, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if keys := storetest.Keys(t, a, ""); !slices.Equal(keys, []string{"k"}) {
		t.Fatalf("List of prefix a = %q, want [k]", keys)
	}
	rc, err := a.Get(ctx, "k", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || string(got) != "from a" {
		t.Fatalf("Get(k) via prefix a = %q, %v; want %q", got, err, "from a")
	}
	if err := b.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Stat(ctx, "k"); err != nil {
		t.Fatalf("deleting k under prefix ab removed it under prefix a: %v", err)
	}
}

func TestNewErrors(t *testing.T) {
	dead := deadEndpoint(t)
	tests := []struct {
		name string
		cfg  s3.Config
		want string
	}{
		{"no endpoint", s3.Config{Bucket: "b-ok"}, "no endpoint"},
		{"scheme", s3.Config{Endpoint: "http://127.0.0.1:9000", Bucket: "b-ok"}, "without a scheme"},
		{"path", s3.Config{Endpoint: "127.0.0.1:9000/x", Bucket: "b-ok"}, "without a scheme or path"},
		{"bad bucket", s3.Config{Endpoint: "127.0.0.1:9000", Bucket: "Bad_Bucket"}, "bucket"},
		{"empty bucket", s3.Config{Endpoint: "127.0.0.1:9000"}, "bucket"},
		{"bad prefix", s3.Config{Endpoint: "127.0.0.1:9000", Bucket: "b-ok", Prefix: "a/../b"}, "invalid key"},
		{"dead endpoint", s3.Config{Endpoint: dead, Bucket: "b-ok"}, dead},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// The deadline only guards against a hang; the store must
			// give up on its own long before it.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			_, err := s3.New(ctx, tc.cfg)
			if err == nil {
				t.Fatal("New succeeded")
			}
			if errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("New hung until the test deadline: %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New error %q does not mention %q", err, tc.want)
			}
		})
	}
}

// With Existing, New refuses a missing bucket with store.ErrNotFound and
// leaves it missing; a bucket that exists opens as usual.
func TestExistingBucket(t *testing.T) {
	m := testenv.StartMinIO(t)
	ctx := context.Background()
	cfg := s3.Config{Endpoint: m.Endpoint, Bucket: "skiff-existing", AccessKey: m.AccessKey, SecretKey: m.SecretKey, Existing: true}
	if _, err := s3.New(ctx, cfg); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("New of a missing bucket with Existing: %v, want store.ErrNotFound", err)
	}
	if ok, err := m.Client(t).BucketExists(ctx, cfg.Bucket); err != nil || ok {
		t.Fatalf("bucket %s after New with Existing: exists %v, %v", cfg.Bucket, ok, err)
	}
	m.Bucket(t, cfg.Bucket)
	st, err := s3.New(ctx, cfg)
	if err != nil {
		t.Fatalf("New of an existing bucket with Existing: %v", err)
	}
	if err := st.Put(ctx, "k", strings.NewReader("v"), 1); err != nil {
		t.Fatal(err)
	}
}

// deadEndpoint returns a loopback address nothing listens on.
func deadEndpoint(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// While MinIO is down every operation fails with an error naming the
// operation and key instead of hanging; once MinIO is back the same store
// works again and nothing written before the outage is lost.
func TestOutage(t *testing.T) {
	m := testenv.StartMinIO(t)
	st := newS3(t, m, "")
	data := storetest.Data(100<<10, 1)
	if err := st.Put(context.Background(), "before", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}

	m.Stop()
	// The deadline only guards against a hang; see TestNewErrors.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ops := []struct {
		name string
		do   func() error
	}{
		{"put", func() error { return st.Put(ctx, "during", bytes.NewReader(data), int64(len(data))) }},
		{"put unknown size", func() error { return st.Put(ctx, "during", io.MultiReader(bytes.NewReader(data)), -1) }},
		{"get", func() error {
			rc, err := st.Get(ctx, "before", 10, 100)
			if err == nil {
				rc.Close()
			}
			return err
		}},
		{"stat", func() error { _, err := st.Stat(ctx, "before"); return err }},
		{"list", func() error { return st.List(ctx, "", func(store.Info) error { return nil }) }},
		{"delete", func() error { return st.Delete(ctx, "before") }},
	}
	for _, op := range ops {
		err := op.do()
		if err == nil {
			t.Fatalf("%s succeeded while MinIO is down", op.name)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s hung until the test deadline: %v", op.name, err)
		}
		if errors.Is(err, store.ErrNotFound) {
			t.Fatalf("%s reported a missing object during an outage: %v", op.name, err)
		}
		verb, _, _ := strings.Cut(op.name, " ")
		if !strings.Contains(err.Error(), "s3 store: "+verb) {
			t.Fatalf("%s error %q does not say which operation failed", op.name, err)
		}
		t.Logf("%s while down: %v", op.name, err)
	}

	m.Start()
	rc, err := st.Get(context.Background(), "before", 0, -1)
	if err != nil {
		t.Fatalf("Get after MinIO came back: %v", err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("object written before the outage: %d bytes, %v; want %d bytes intact", len(got), err, len(data))
	}
	if err := st.Put(context.Background(), "after", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("Put after MinIO came back: %v", err)
	}
	if _, err := st.Stat(context.Background(), "during"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Stat of the key whose put failed during the outage = %v, want store.ErrNotFound", err)
	}
}

// BenchmarkRangedGet measures Get against a plain HTTP range request for
// the same bytes on a presigned URL: the least any S3 client sends.
func BenchmarkRangedGet(b *testing.B) {
	m := testenv.StartMinIO(b)
	const bucket = "skiff-bench"
	st := newS3In(b, m, bucket, "")
	client := m.Client(b)
	urls := map[string]string{}
	storetest.BenchmarkRangedGet(b, st, storetest.Baseline{
		Name: "http-range",
		Read: func(ctx context.Context, key string, off int64, buf []byte) error {
			u, ok := urls[key]
			if !ok {
				pu, err := client.PresignedGetObject(ctx, bucket, key, time.Hour, nil)
				if err != nil {
					return err
				}
				u = pu.String()
				urls[key] = u
			}
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
			if err != nil {
				return err
			}
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+int64(len(buf))-1))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusPartialContent {
				return fmt.Errorf("GET %s: %s", key, resp.Status)
			}
			_, err = io.ReadFull(resp.Body, buf)
			return err
		},
	})
}
