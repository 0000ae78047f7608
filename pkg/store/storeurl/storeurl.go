// Package storeurl opens a store.Store from a URL, the single string with
// which commands and services are told where blobs live:
//
//	file:///var/lib/skiff/store
//	s3://bucket[/prefix]?endpoint=host:port[&insecure=true][&region=name]
//
// S3 credentials never appear in the URL (it ends up in logs and process
// listings); they are read from the standard AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY environment variables, and both unset means
// anonymous access. Without insecure=true the endpoint is reached over
// HTTPS; without endpoint, AWS S3 itself.
package storeurl

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/skiff-dev/skiff/pkg/store"
	"github.com/skiff-dev/skiff/pkg/store/dir"
	"github.com/skiff-dev/skiff/pkg/store/s3"
)

// Environment variables holding S3 credentials.
const (
	EnvAccessKey = "AWS_ACCESS_KEY_ID"
	EnvSecretKey = "AWS_SECRET_ACCESS_KEY"
)

// defaultEndpoint is used for s3:// URLs without an endpoint parameter.
const defaultEndpoint = "s3.amazonaws.com"

// s3Params are the query parameters an s3:// URL may carry.
var s3Params = []string{"endpoint", "insecure", "region"}

// Open parses rawURL and opens the store it names. For S3 that connects to
// the service and creates the bucket if it is missing; a directory is
// created likewise.
func Open(ctx context.Context, rawURL string) (store.Store, error) {
	return open(ctx, rawURL, false)
}

// OpenExisting is Open for commands that only read or delete: a missing
// bucket or directory is an error (store.ErrNotFound), never created.
func OpenExisting(ctx context.Context, rawURL string) (store.Store, error) {
	return open(ctx, rawURL, true)
}

func open(ctx context.Context, rawURL string, existing bool) (store.Store, error) {
	t, err := parse(rawURL, os.Getenv)
	if err != nil {
		return nil, err
	}
	var st store.Store
	if t.s3 != nil {
		cfg := *t.s3
		cfg.Existing = existing
		st, err = s3.New(ctx, cfg)
	} else if existing {
		st, err = dir.Open(t.dir)
	} else {
		st, err = dir.New(t.dir)
	}
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", redact(rawURL), err)
	}
	return st, nil
}

// target is a parsed store URL: a directory or an S3 configuration.
type target struct {
	dir string
	s3  *s3.Config
}

func parse(rawURL string, getenv func(string) string) (target, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// The inner error only: url.Error repeats the URL, which may
		// hold a password.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return target{}, fmt.Errorf("store URL: %w", err)
	}
	bad := func(format string, args ...any) (target, error) {
		return target{}, fmt.Errorf("store URL %q: %s", redact(rawURL), fmt.Sprintf(format, args...))
	}
	switch u.Scheme {
	case "file":
		switch {
		case u.Opaque != "" || (u.Host != "" && u.Host != "localhost"):
			return bad("want file:///absolute/path (three slashes)")
		case u.User != nil:
			return bad("a file URL takes no user")
		case u.Path == "" || !filepath.IsAbs(u.Path):
			return bad("want file:///absolute/path")
		case u.RawQuery != "" || u.Fragment != "":
			return bad("a file URL takes no query or fragment")
		}
		return target{dir: filepath.Clean(u.Path)}, nil
	case "s3":
		if u.Opaque != "" || u.Host == "" {
			return bad("want s3://bucket[/prefix]?endpoint=host:port")
		}
		if u.User != nil {
			return bad("credentials do not go in the URL; set %s and %s", EnvAccessKey, EnvSecretKey)
		}
		if u.Port() != "" {
			return bad("the host part is the bucket name; give the service as ?endpoint=host:port")
		}
		if u.Fragment != "" {
			return bad("an s3 URL takes no fragment")
		}
		q, err := url.ParseQuery(u.RawQuery)
		if err != nil {
			return bad("query: %v", err)
		}
		for k, v := range q {
			if !slices.Contains(s3Params, k) {
				return bad("unknown parameter %q (known: %s)", k, strings.Join(s3Params, ", "))
			}
			if len(v) != 1 {
				return bad("parameter %q given %d times", k, len(v))
			}
		}
		cfg := s3.Config{
			Endpoint:  q.Get("endpoint"),
			Bucket:    u.Host,
			Prefix:    strings.Trim(u.Path, "/"),
			Region:    q.Get("region"),
			Secure:    true,
			AccessKey: getenv(EnvAccessKey),
			SecretKey: getenv(EnvSecretKey),
		}
		if !q.Has("endpoint") {
			cfg.Endpoint = defaultEndpoint
		} else if cfg.Endpoint == "" {
			return bad("empty endpoint")
		}
		if s := q.Get("insecure"); s != "" {
			insecure, err := strconv.ParseBool(s)
			if err != nil {
				return bad("insecure=%q: want true or false", s)
			}
			cfg.Secure = !insecure
		}
		if cfg.Prefix != "" && !store.ValidKey(cfg.Prefix) {
			return bad("prefix %q: want slash-separated names without empty, \".\" or \"..\" elements", cfg.Prefix)
		}
		if (cfg.AccessKey == "") != (cfg.SecretKey == "") {
			return bad("set both %s and %s, or neither for anonymous access", EnvAccessKey, EnvSecretKey)
		}
		return target{s3: &cfg}, nil
	case "":
		return bad("no scheme; want file:///absolute/path or s3://bucket?endpoint=host:port")
	default:
		return bad("unsupported scheme %q; want file or s3", u.Scheme)
	}
}

// redact drops any user information from a URL before it goes into an
// error message.
func redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.User == nil {
		return rawURL
	}
	return u.Redacted()
}
