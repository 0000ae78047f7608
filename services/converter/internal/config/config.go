// Package config is the converter service's configuration: one struct read
// from the environment, with its documented defaults (which --help lists,
// see pkg/daemon).
package config

import (
	"fmt"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/convert"
)

// Config configures skiff-converter. Each field's help tag is what --help
// prints next to the variable and its default.
type Config struct {
	Listen string `env:"SKIFF_CONVERTER_LISTEN" envDefault:"127.0.0.1:8090" help:"address of the webhook endpoint (POST /notify for distribution, POST /harbor for Harbor), /healthz and /metrics (Prometheus)"`
	NATS   string `env:"SKIFF_NATS_URL" envDefault:"nats://127.0.0.1:4222" help:"NATS server with JetStream"`
	Store  string `env:"SKIFF_STORE" envDefault:"file:///var/lib/skiff/store" help:"blob store URL: file:///abs/path or s3://bucket?endpoint=host:port[&insecure=true] (S3 credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"`
	// Registry overrides the registry host taken from notifications,
	// for when the name a registry advertises is not the one this
	// service reaches it by.
	Registry    string        `env:"SKIFF_CONVERTER_REGISTRY" help:"registry host:port to pull from and push to instead of the one named in notifications"`
	Concurrency int           `env:"SKIFF_CONVERTER_CONCURRENCY" envDefault:"2" help:"conversions run at once by this process"`
	MaxAttempts int           `env:"SKIFF_CONVERTER_MAX_ATTEMPTS" envDefault:"6" help:"conversion attempts of a request before it is reported failed"`
	AckWait     time.Duration `env:"SKIFF_CONVERTER_ACK_WAIT" envDefault:"30s" help:"time after which a request held by a silent (dead) worker is redelivered"`
	Backoff     time.Duration `env:"SKIFF_CONVERTER_BACKOFF" envDefault:"2s" help:"delay before the first retry; doubles on every retry"`
	BackoffMax  time.Duration `env:"SKIFF_CONVERTER_BACKOFF_MAX" envDefault:"1m" help:"longest delay between retries"`
	WorkDir     string        `env:"SKIFF_CONVERTER_WORK_DIR" help:"directory for blob files before upload (default: the system temp dir)"`
	ChunkSize   int           `env:"SKIFF_CHUNK_SIZE" envDefault:"1048576" help:"chunk size in bytes"`
	Compression string        `env:"SKIFF_COMPRESSION" envDefault:"zstd" help:"frame compression: zstd, lz4 or none"`
	Worker      string        `env:"SKIFF_CONVERTER_NAME" help:"name of this process in conversion records (default: host name and pid)"`
	Debug       bool          `env:"SKIFF_DEBUG" help:"log at debug level"`
}

// Load reads the configuration from the environment and checks it.
func Load() (Config, error) {
	c, err := env.ParseAs[Config]()
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	return c, c.Validate()
}

// Validate rejects settings the service cannot run with.
func (c Config) Validate() error {
	switch {
	case c.Concurrency < 1:
		return fmt.Errorf("config: SKIFF_CONVERTER_CONCURRENCY must be at least 1, got %d", c.Concurrency)
	case c.MaxAttempts < 1:
		return fmt.Errorf("config: SKIFF_CONVERTER_MAX_ATTEMPTS must be at least 1, got %d", c.MaxAttempts)
	case c.AckWait < time.Second:
		return fmt.Errorf("config: SKIFF_CONVERTER_ACK_WAIT must be at least 1s, got %s", c.AckWait)
	case c.Backoff <= 0 || c.BackoffMax < c.Backoff:
		return fmt.Errorf("config: need 0 < SKIFF_CONVERTER_BACKOFF (%s) <= SKIFF_CONVERTER_BACKOFF_MAX (%s)", c.Backoff, c.BackoffMax)
	case c.Listen == "" || c.NATS == "" || c.Store == "":
		return fmt.Errorf("config: SKIFF_CONVERTER_LISTEN, SKIFF_NATS_URL and SKIFF_STORE must not be empty")
	}
	if c.Registry != "" {
		if _, err := name.NewRegistry(c.Registry, name.StrictValidation); err != nil {
			return fmt.Errorf("config: SKIFF_CONVERTER_REGISTRY: %w", err)
		}
	}
	_, err := c.ConvertOptions()
	return err
}

// minChunkSize is the smallest chunk pkg/convert accepts; it does not
// export its bound.
const minChunkSize = 4096

// ConvertOptions returns the conversion settings. Validate checks them, so
// that a setting every conversion would refuse stops the service at start
// instead of failing each request after its retries.
func (c Config) ConvertOptions() (convert.Options, error) {
	if c.ChunkSize < minChunkSize || c.ChunkSize > bootstrap.MaxChunkSize {
		return convert.Options{}, fmt.Errorf("config: SKIFF_CHUNK_SIZE must be in %d..%d, got %d", minChunkSize, bootstrap.MaxChunkSize, c.ChunkSize)
	}
	comp, err := bootstrap.ParseCompression(c.Compression)
	if err != nil {
		return convert.Options{}, fmt.Errorf("config: SKIFF_COMPRESSION: %w", err)
	}
	return convert.Options{ChunkSize: c.ChunkSize, Compression: comp, WorkDir: c.WorkDir}, nil
}
