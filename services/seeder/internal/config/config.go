// Package config is the seeder service's configuration: one struct read
// from the environment, with its documented defaults.
package config

import (
	"fmt"
	"net"
	"os"
	"time"

	"github.com/caarlos0/env/v11"
)

// Config configures skiff-seeder. Each field's help tag is what --help
// prints next to the variable and its default.
type Config struct {
	NATS      string `env:"SKIFF_NATS_URL" envDefault:"nats://127.0.0.1:4222" help:"NATS server with JetStream"`
	Store     string `env:"SKIFF_STORE" envDefault:"file:///var/lib/skiff/store" help:"blob store URL: file:///abs/path or s3://bucket?endpoint=host:port[&insecure=true] (S3 credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"`
	Dir       string `env:"SKIFF_SEEDER_DIR" envDefault:"/var/lib/skiff-seeder/pieces" help:"directory of the pieces this seeder holds"`
	CacheSize int64  `env:"SKIFF_SEEDER_CACHE_SIZE" envDefault:"53687091200" help:"bytes of pieces kept; the oldest are dropped beyond it (0: no limit)"`
	Listen    string `env:"SKIFF_SEEDER_LISTEN" envDefault:":8092" help:"address of the piece server (GET /pieces/<blob>), /healthz, /stats and /metrics (Prometheus)"`
	// Advertise is what peers dial; a wildcard listen address cannot be.
	Advertise   string        `env:"SKIFF_SEEDER_ADVERTISE" help:"host:port peers reach the piece server at (default: host name and the listen port)"`
	ID          string        `env:"SKIFF_SEEDER_ID" help:"id of this seeder in the cluster, unique (default: host name)"`
	Concurrency int           `env:"SKIFF_SEEDER_PREHEAT_CONCURRENCY" envDefault:"2" help:"images preheated at once from conversion events, and as many again on request (skiffctl preheat)"`
	Interval    time.Duration `env:"SKIFF_SEEDER_ANNOUNCE_INTERVAL" envDefault:"10s" help:"how often holdings are announced to the schedulers (also within a second of a change)"`
	AckWait     time.Duration `env:"SKIFF_SEEDER_ACK_WAIT" envDefault:"1m" help:"time after which a preheat held by a silent (dead) seeder goes to another"`
	UploadRate  int64         `env:"SKIFF_SEEDER_UPLOAD_RATE" envDefault:"0" help:"bytes per second the piece server sends, over all peers together (0: unlimited)"`
	Zone        string        `env:"SKIFF_SEEDER_ZONE" help:"where this seeder runs (a zone, a rack): nodes of the same zone are sent to it before holders elsewhere (empty: unknown)"`
	Debug       bool          `env:"SKIFF_DEBUG" help:"log at debug level"`
}

// Load reads the configuration from the environment, fills in the
// defaults that depend on the host, and checks it.
func Load() (Config, error) {
	c, err := env.ParseAs[Config]()
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	if err := c.Complete(); err != nil {
		return c, err
	}
	return c, c.Validate()
}

// Complete fills in the id and advertised address from the host name.
func (c *Config) Complete() error {
	if c.ID != "" && c.Advertise != "" {
		return nil
	}
	host, err := os.Hostname()
	if err != nil {
		return fmt.Errorf("config: host name for SKIFF_SEEDER_ID/ADVERTISE: %w", err)
	}
	if c.ID == "" {
		c.ID = host
	}
	if c.Advertise == "" {
		h, port, err := net.SplitHostPort(c.Listen)
		if err != nil {
			return fmt.Errorf("config: SKIFF_SEEDER_LISTEN: %w", err)
		}
		if ip := net.ParseIP(h); h == "" || (ip != nil && ip.IsUnspecified()) {
			h = host
		}
		c.Advertise = net.JoinHostPort(h, port)
	}
	return nil
}

// Validate rejects settings the service cannot run with.
func (c Config) Validate() error {
	switch {
	case c.Concurrency < 1:
		return fmt.Errorf("config: SKIFF_SEEDER_PREHEAT_CONCURRENCY must be at least 1, got %d", c.Concurrency)
	case c.CacheSize < 0:
		return fmt.Errorf("config: SKIFF_SEEDER_CACHE_SIZE must not be negative, got %d", c.CacheSize)
	case c.UploadRate < 0:
		return fmt.Errorf("config: SKIFF_SEEDER_UPLOAD_RATE must not be negative, got %d", c.UploadRate)
	case c.Interval < 100*time.Millisecond:
		return fmt.Errorf("config: SKIFF_SEEDER_ANNOUNCE_INTERVAL must be at least 100ms, got %s", c.Interval)
	case c.AckWait < time.Second:
		return fmt.Errorf("config: SKIFF_SEEDER_ACK_WAIT must be at least 1s, got %s", c.AckWait)
	case c.NATS == "" || c.Store == "" || c.Dir == "" || c.Listen == "":
		return fmt.Errorf("config: SKIFF_NATS_URL, SKIFF_STORE, SKIFF_SEEDER_DIR and SKIFF_SEEDER_LISTEN must not be empty")
	}
	if _, _, err := net.SplitHostPort(c.Advertise); err != nil {
		return fmt.Errorf("config: SKIFF_SEEDER_ADVERTISE: %w", err)
	}
	return nil
}
