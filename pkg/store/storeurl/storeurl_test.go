package storeurl

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/store"
	"github.com/skiff-dev/skiff/pkg/store/dir"
	"github.com/skiff-dev/skiff/pkg/store/s3"
)

func TestParse(t *testing.T) {
	creds := map[string]string{EnvAccessKey: "AK", EnvSecretKey: "SK"}
	tests := []struct {
		name string
		url  string
		env  map[string]string
		want target
		err  string // substring of the error; "" means success
	}{
		{"file", "file:///var/lib/skiff", nil, target{dir: "/var/lib/skiff"}, ""},
		{"file localhost", "file://localhost/srv/store/", nil, target{dir: "/srv/store"}, ""},
		{"file cleaned", "file:///a/b/../c", nil, target{dir: "/a/c"}, ""},
		{"file escaped", "file:///a%20b", nil, target{dir: "/a b"}, ""},
		{"file relative host", "file://relative/path", nil, target{}, "three slashes"},
		{"file opaque", "file:relative", nil, target{}, "three slashes"},
		{"file no path", "file://", nil, target{}, "absolute"},
		{"file query", "file:///x?mode=1", nil, target{}, "no query"},
		{"file user", "file://me@/x", nil, target{}, "no user"},
		{"s3 minimal", "s3://bucket?endpoint=127.0.0.1:9000", creds,
			target{s3: &s3.Config{Endpoint: "127.0.0.1:9000", Bucket: "bucket", Secure: true, AccessKey: "AK", SecretKey: "SK"}}, ""},
		{"s3 full", "s3://bkt/some/prefix/?endpoint=minio.local:9000&insecure=true&region=eu-west-1", creds,
			target{s3: &s3.Config{Endpoint: "minio.local:9000", Bucket: "bkt", Prefix: "some/prefix", Region: "eu-west-1", AccessKey: "AK", SecretKey: "SK"}}, ""},
		{"s3 insecure false", "s3://bkt?endpoint=h:1&insecure=false", nil,
			target{s3: &s3.Config{Endpoint: "h:1", Bucket: "bkt", Secure: true}}, ""},
		{"s3 anonymous", "s3://bkt?endpoint=h:1", nil,
			target{s3: &s3.Config{Endpoint: "h:1", Bucket: "bkt", Secure: true}}, ""},
		{"s3 aws default", "s3://bkt/p", creds,
			target{s3: &s3.Config{Endpoint: "s3.amazonaws.com", Bucket: "bkt", Prefix: "p", Secure: true, AccessKey: "AK", SecretKey: "SK"}}, ""},
		{"s3 no bucket", "s3:///prefix?endpoint=h:1", nil, target{}, "s3://bucket"},
		{"s3 port on bucket", "s3://127.0.0.1:9000/bkt", nil, target{}, "?endpoint=host:port"},
		{"s3 user", "s3://ak:secret@bkt?endpoint=h:1", nil, target{}, "AWS_ACCESS_KEY_ID"},
		{"s3 unknown param", "s3://bkt?endpoint=h:1&secure=true", nil, target{}, `unknown parameter "secure"`},
		{"s3 repeated param", "s3://bkt?endpoint=h:1&endpoint=h:2", nil, target{}, "2 times"},
		{"s3 empty endpoint", "s3://bkt?endpoint=", nil, target{}, "empty endpoint"},
		{"s3 bad insecure", "s3://bkt?endpoint=h:1&insecure=maybe", nil, target{}, "want true or false"},
		{"s3 bad prefix", "s3://bkt/a/../b?endpoint=h:1", nil, target{}, "prefix"},
		{"s3 bad prefix empty element", "s3://bkt/a//b?endpoint=h:1", nil, target{}, "prefix"},
		{"s3 fragment", "s3://bkt?endpoint=h:1#x", nil, target{}, "fragment"},
		{"s3 half credentials", "s3://bkt?endpoint=h:1", map[string]string{EnvAccessKey: "AK"}, target{}, "set both"},
		{"no scheme", "/var/lib/skiff", nil, target{}, "no scheme"},
		{"unknown scheme", "gs://bucket", nil, target{}, `unsupported scheme "gs"`},
		{"unparsable", "s3://bkt?endpoint=h:1%zz", nil, target{}, "query"},
		{"bad escape", "file:///a%zz", nil, target{}, "store URL"},
		{"empty", "", nil, target{}, "no scheme"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parse(tc.url, func(k string) string { return tc.env[k] })
			if tc.err != "" {
				if err == nil {
					t.Fatalf("parse(%q) = %+v, want an error mentioning %q", tc.url, got, tc.err)
				}
				if !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("parse(%q) error %q does not mention %q", tc.url, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parse(%q): %v", tc.url, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("parse(%q) = %+v (s3 %+v), want %+v (s3 %+v)", tc.url, got, got.s3, tc.want, tc.want.s3)
			}
		})
	}
}

// Errors never repeat a password given in the URL.
func TestErrorsRedactPasswords(t *testing.T) {
	for _, u := range []string{"s3://ak:hunter2@bkt?endpoint=h:1", "s3://ak:hunter2@bkt?endpoint=%zz"} {
		_, err := parse(u, func(string) string { return "" })
		if err == nil {
			t.Fatalf("parse(%q) succeeded", u)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Fatalf("parse(%q) error leaks the password: %v", u, err)
		}
	}
}

func TestOpenFile(t *testing.T) {
	root := filepath.Join(t.TempDir(), "store")
	st, err := Open(context.Background(), "file://"+root)
	if err != nil {
		t.Fatal(err)
	}
	d, ok := st.(*dir.Dir)
	if !ok || d.Root() != root {
		t.Fatalf("Open(file://%s) = %T %v, want a dir store at that root", root, st, st)
	}
	roundTrip(t, st)
}

// OpenExisting opens only what is there: a missing directory or bucket is
// store.ErrNotFound, and stays missing.
func TestOpenExisting(t *testing.T) {
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "store")
	if _, err := OpenExisting(ctx, "file://"+root); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("OpenExisting of a missing directory: %v, want store.ErrNotFound", err)
	}
	if _, err := os.Stat(root); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("OpenExisting created %s: %v", root, err)
	}
	if _, err := Open(ctx, "file://"+root); err != nil {
		t.Fatal(err)
	}
	st, err := OpenExisting(ctx, "file://"+root)
	if err != nil {
		t.Fatalf("OpenExisting of an existing directory: %v", err)
	}
	roundTrip(t, st)

	m := testenv.StartMinIO(t)
	t.Setenv(EnvAccessKey, m.AccessKey)
	t.Setenv(EnvSecretKey, m.SecretKey)
	url := "s3://skiff-missing?insecure=true&endpoint=" + m.Endpoint
	if _, err := OpenExisting(ctx, url); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("OpenExisting of a missing bucket: %v, want store.ErrNotFound", err)
	}
	if ok, err := m.Client(t).BucketExists(ctx, "skiff-missing"); err != nil || ok {
		t.Fatalf("bucket after OpenExisting: exists %v, %v", ok, err)
	}
}

func TestOpenS3(t *testing.T) {
	m := testenv.StartMinIO(t)
	t.Setenv(EnvAccessKey, m.AccessKey)
	t.Setenv(EnvSecretKey, m.SecretKey)
	st, err := Open(context.Background(), "s3://skiff-url/a/b?insecure=true&endpoint="+m.Endpoint)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	roundTrip(t, st)
	// The prefix from the URL path is where the objects went.
	info, err := m.Client(t).StatObject(context.Background(), "skiff-url", "a/b/k", minio.StatObjectOptions{})
	if err != nil || info.Size != 5 {
		t.Fatalf("object a/b/k in bucket skiff-url: %+v, %v", info, err)
	}

	t.Setenv(EnvSecretKey, "wrong")
	if _, err := Open(context.Background(), "s3://skiff-url?insecure=true&endpoint="+m.Endpoint); err == nil {
		t.Fatal("Open with a wrong secret key succeeded")
	}
}

func roundTrip(t *testing.T, st store.Store) {
	t.Helper()
	ctx := context.Background()
	if err := st.Put(ctx, "k", bytes.NewReader([]byte("hello")), 5); err != nil {
		t.Fatalf("Put: %v", err)
	}
	rc, err := st.Get(ctx, "k", 1, 3)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil || string(got) != "ell" {
		t.Fatalf("Get(k, 1, 3) = %q, %v; want %q", got, err, "ell")
	}
}
