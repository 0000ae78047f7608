// Package s3 implements store.Store on an S3-compatible object store (MinIO,
// AWS S3, Ceph RGW, ...) through minio-go. Keys map to objects under an
// optional prefix in one bucket; ranged reads become ranged GETs, so a lazy
// reader fetches exactly the frames it needs.
package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"

	"github.com/skiff-dev/skiff/pkg/store"
)

// Config says where the store lives and how to authenticate.
type Config struct {
	// Endpoint is host[:port] of the S3 service, without a scheme.
	Endpoint string
	Bucket   string
	// Prefix, if set, is prepended (with a "/") to every key, so several
	// stores can share a bucket.
	Prefix string
	// AccessKey and SecretKey are static credentials; both empty means
	// anonymous access.
	AccessKey string
	SecretKey string
	// Secure selects HTTPS.
	Secure bool
	// Region is the bucket's region; empty lets the client discover it.
	Region string
	// Existing has New fail, with store.ErrNotFound, when the bucket does
	// not exist, rather than create it: a command that only reads or
	// deletes must not leave an empty bucket behind a mistyped name.
	Existing bool
}

// Client tuning. The library defaults (10 retries, 30 s dial timeout, one
// minute for response headers) turn an S3 outage into minutes of silence;
// these make a dead endpoint fail within seconds and a hung one within about
// a minute and a half, while still riding out a restart or a dropped
// keep-alive connection.
const (
	maxRetries            = 3
	dialTimeout           = 5 * time.Second
	responseHeaderTimeout = 30 * time.Second
	// unknownSizePartSize is the part size for Puts of unknown size. Left
	// to the library, it would be sized for a 5 TiB object and buffer
	// hundreds of MiB per Put; 16 MiB parts bound objects of unknown size
	// to 160 GB (10,000 parts), far beyond any chunk blob.
	unknownSizePartSize = 16 << 20
)

// S3 is a store in one bucket of an S3-compatible service. It is safe for
// concurrent use and survives outages of the service: each call makes fresh
// requests, so once the service is back the same S3 value works again.
type S3 struct {
	client   *minio.Client
	core     minio.Core
	bucket   string
	prefix   string // "" or ends with "/"
	endpoint string
}

var _ store.Store = (*S3)(nil)

// New connects to the service and creates the bucket if it does not exist
// and the credentials allow it.
func New(ctx context.Context, cfg Config) (*S3, error) {
	if cfg.Endpoint == "" {
		return nil, errors.New("s3 store: no endpoint")
	}
	if strings.Contains(cfg.Endpoint, "://") || strings.Contains(cfg.Endpoint, "/") {
		return nil, fmt.Errorf("s3 store: endpoint %q must be host[:port] without a scheme or path (HTTPS is chosen with Secure)", cfg.Endpoint)
	}
	if err := s3utils.CheckValidBucketNameStrict(cfg.Bucket); err != nil {
		return nil, fmt.Errorf("s3 store: bucket %q: %w", cfg.Bucket, err)
	}
	prefix := strings.Trim(cfg.Prefix, "/")
	if prefix != "" {
		if err := store.CheckKey(prefix); err != nil {
			return nil, fmt.Errorf("s3 store: prefix: %w", err)
		}
		prefix += "/"
	}
	tr, err := minio.DefaultTransport(cfg.Secure)
	if err != nil {
		return nil, fmt.Errorf("s3 store: transport: %w", err)
	}
	tr.DialContext = (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext
	tr.ResponseHeaderTimeout = responseHeaderTimeout
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
		Secure: cfg.Secure,
		Region: cfg.Region,
		// Each request is a client span, its trace context in the
		// request's headers, under whatever span asked for the blob.
		Transport:  otelhttp.NewTransport(tr),
		MaxRetries: maxRetries,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 store: client for %s: %w", cfg.Endpoint, err)
	}
	s := &S3{client: client, core: minio.Core{Client: client}, bucket: cfg.Bucket, prefix: prefix, endpoint: cfg.Endpoint}
	if err := s.ensureBucket(ctx, cfg.Region, cfg.Existing); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *S3) ensureBucket(ctx context.Context, region string, existing bool) error {
	exists, err := s.client.BucketExists(ctx, s.bucket)
	if err != nil {
		// Credentials scoped to objects may not check buckets; the
		// bucket then has to exist already and the first object
		// operation will say so if it does not.
		if minio.ToErrorResponse(err).Code == "AccessDenied" {
			return nil
		}
		return fmt.Errorf("s3 store: check bucket %s at %s: %w", s.bucket, s.endpoint, err)
	}
	if exists {
		return nil
	}
	if existing {
		return fmt.Errorf("s3 store: bucket %s at %s: %w", s.bucket, s.endpoint, store.ErrNotFound)
	}
	err = s.client.MakeBucket(ctx, s.bucket, minio.MakeBucketOptions{Region: region})
	if err != nil {
		switch minio.ToErrorResponse(err).Code {
		case "BucketAlreadyOwnedByYou", "BucketAlreadyExists":
			return nil // created concurrently
		}
		return fmt.Errorf("s3 store: create bucket %s at %s: %w", s.bucket, s.endpoint, err)
	}
	return nil
}

// object maps a key to its object name.
func (s *S3) object(op, key string) (string, error) {
	if err := store.CheckKey(key); err != nil {
		return "", fmt.Errorf("s3 store: %s: %w", op, err)
	}
	return s.prefix + key, nil
}

// fail wraps err with the operation and key. When the context ended, the
// context's error is wrapped too, so callers can tell cancellation from
// failure whatever form the client gave the error.
func (s *S3) fail(ctx context.Context, op, key string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
		return fmt.Errorf("s3 store: %s %s: %w: %w", op, key, ctxErr, err)
	}
	return fmt.Errorf("s3 store: %s %s: %w", op, key, err)
}

// notFound reports whether err is S3's "no such object".
func notFound(err error) bool {
	return minio.ToErrorResponse(err).Code == "NoSuchKey"
}

// Put uploads r. Objects of known size up to 16 MiB go up in one request,
// larger ones and those of unknown size as multipart uploads; either way the
// object appears only when complete.
func (s *S3) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	name, err := s.object("put", key)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return s.fail(ctx, "put", key, err)
	}
	opts := minio.PutObjectOptions{ContentType: "application/octet-stream"}
	if size < 0 {
		opts.PartSize = unknownSizePartSize
	}
	info, err := s.client.PutObject(ctx, s.bucket, name, r, size, opts)
	if err != nil {
		return s.fail(ctx, "put", key, err)
	}
	if size >= 0 && info.Size != size {
		return fmt.Errorf("s3 store: put %s: stored %d bytes, want %d", key, info.Size, size)
	}
	return nil
}

// Get issues a GET for exactly [off, off+length) and checks that the
// service returned all of it: S3 silently truncates a range that runs past
// the end of the object.
func (s *S3) Get(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	name, err := s.object("get", key)
	if err != nil {
		return nil, err
	}
	if err := store.CheckRange(off, length, math.MaxInt64); err != nil {
		return nil, fmt.Errorf("s3 store: get %s: %w", key, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, s.fail(ctx, "get", key, err)
	}
	if length == 0 {
		// No request can ask for zero bytes; the range is valid if the
		// object exists and is long enough.
		return s.emptyAt(ctx, key, off, 0)
	}
	var opts minio.GetObjectOptions
	switch {
	case length > 0:
		err = opts.SetRange(off, off+length-1)
	case off > 0:
		err = opts.SetRange(off, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("s3 store: get %s: %w", key, err)
	}
	body, info, hdr, err := s.core.GetObject(ctx, s.bucket, name, opts)
	if err != nil {
		switch {
		case notFound(err):
			return nil, fmt.Errorf("s3 store: get %s: %w", key, store.ErrNotFound)
		case minio.ToErrorResponse(err).Code == "InvalidRange":
			// The offset is at or past the end; at the end, an
			// open-ended range is simply empty.
			return s.emptyAt(ctx, key, off, length)
		}
		return nil, s.fail(ctx, "get", key, err)
	}
	if length > 0 && info.Size != length {
		body.Close()
		total := objectSize(hdr.Get("Content-Range"), off+info.Size)
		return nil, fmt.Errorf("s3 store: get %s: %w", key, store.CheckRange(off, length, total))
	}
	return &ctxBody{ctx: ctx, ReadCloser: body}, nil
}

// ctxBody ends a Get's stream as soon as its context does. The HTTP
// transport notices a cancellation asynchronously and may still hand out
// bytes it had buffered; a caller that gave up must not be fed more.
type ctxBody struct {
	ctx context.Context
	io.ReadCloser
}

func (b *ctxBody) Read(p []byte) (int, error) {
	if err := b.ctx.Err(); err != nil {
		return 0, err
	}
	return b.ReadCloser.Read(p)
}

// emptyAt returns an empty reader if [off, off+length) is a valid range of
// key, and the reason otherwise.
func (s *S3) emptyAt(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	info, err := s.Stat(ctx, key)
	if err != nil {
		return nil, err
	}
	if err := store.CheckRange(off, length, info.Size); err != nil {
		return nil, fmt.Errorf("s3 store: get %s: %w", key, err)
	}
	if length < 0 {
		length = info.Size - off
	}
	if length != 0 {
		// The object grew between the GET and the Stat; the caller
		// has to retry rather than get bytes of a newer version.
		return nil, fmt.Errorf("s3 store: get %s: object replaced while reading", key)
	}
	return io.NopCloser(bytes.NewReader(nil)), nil
}

// objectSize parses the total size from a Content-Range header
// ("bytes 0-9/1234"), returning fallback if there is none.
func objectSize(contentRange string, fallback int64) int64 {
	_, total, ok := strings.Cut(contentRange, "/")
	if !ok {
		return fallback
	}
	n, err := strconv.ParseInt(total, 10, 64)
	if err != nil {
		return fallback
	}
	return n
}

// Stat returns the object's size and modification time.
func (s *S3) Stat(ctx context.Context, key string) (store.Info, error) {
	name, err := s.object("stat", key)
	if err != nil {
		return store.Info{}, err
	}
	if err := ctx.Err(); err != nil {
		return store.Info{}, s.fail(ctx, "stat", key, err)
	}
	info, err := s.client.StatObject(ctx, s.bucket, name, minio.StatObjectOptions{})
	if err != nil {
		if notFound(err) {
			return store.Info{}, fmt.Errorf("s3 store: stat %s: %w", key, store.ErrNotFound)
		}
		return store.Info{}, s.fail(ctx, "stat", key, err)
	}
	return store.Info{Key: key, Size: info.Size, ModTime: info.LastModified}, nil
}

// List lists objects under the store's prefix. S3 returns keys in UTF-8
// binary order, which is the lexical order the interface promises. Objects
// whose names are not valid keys (written to the bucket by something else)
// are skipped, since no other method would accept their keys.
func (s *S3) List(ctx context.Context, prefix string, fn func(store.Info) error) error {
	if err := ctx.Err(); err != nil {
		return s.fail(ctx, "list", strconv.Quote(prefix), err)
	}
	if !store.ValidKey(prefix + "x") {
		// No valid key starts with prefix (it has a ".." element, say),
		// and services reject some such prefixes outright.
		return nil
	}
	// Stop the listing goroutine when fn fails or we return early.
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for obj := range s.client.ListObjects(lctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix + prefix, Recursive: true}) {
		if obj.Err != nil {
			return s.fail(ctx, "list", strconv.Quote(prefix), obj.Err)
		}
		key, ok := strings.CutPrefix(obj.Key, s.prefix)
		if !ok || !store.ValidKey(key) {
			continue
		}
		if err := fn(store.Info{Key: key, Size: obj.Size, ModTime: obj.LastModified}); err != nil {
			return fmt.Errorf("s3 store: list %q: %w", prefix, err)
		}
	}
	// A cancelled listing may end the channel without an error item.
	if err := ctx.Err(); err != nil {
		return s.fail(ctx, "list", strconv.Quote(prefix), err)
	}
	return nil
}

// Delete removes the object; S3 already treats a missing object as deleted.
func (s *S3) Delete(ctx context.Context, key string) error {
	name, err := s.object("delete", key)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return s.fail(ctx, "delete", key, err)
	}
	if err := s.client.RemoveObject(ctx, s.bucket, name, minio.RemoveObjectOptions{}); err != nil {
		if notFound(err) {
			return nil
		}
		return s.fail(ctx, "delete", key, err)
	}
	return nil
}
