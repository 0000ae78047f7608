// Package config is the scheduler service's configuration: one struct
// read from the environment, with its documented defaults.
package config

import (
	"fmt"
	"time"

	"github.com/caarlos0/env/v11"
)

// Config configures skiff-scheduler. Each field's help tag is what --help
// prints next to the variable and its default.
type Config struct {
	NATS       string        `env:"SKIFF_NATS_URL" envDefault:"nats://127.0.0.1:4222" help:"NATS server"`
	Listen     string        `env:"SKIFF_SCHEDULER_LISTEN" envDefault:"127.0.0.1:8093" help:"address of /healthz, /stats and /metrics (Prometheus)"`
	TTL        time.Duration `env:"SKIFF_SCHEDULER_PEER_TTL" envDefault:"30s" help:"a peer not heard from for this long is forgotten (peers announce every 10s by default)"`
	Quarantine time.Duration `env:"SKIFF_SCHEDULER_QUARANTINE" envDefault:"5m" help:"how long a peer reported for sending bad data is not offered as a parent"`
	MaxParents int           `env:"SKIFF_SCHEDULER_MAX_PARENTS" envDefault:"4" help:"holders offered for one piece (the seeder for the blob comes on top)"`
	// Nodes asking for one range at once form a tree (see schedule.Table).
	MaxChildren int           `env:"SKIFF_SCHEDULER_MAX_CHILDREN" envDefault:"4" help:"askers of one range sent first to one parent while the range is in flight, before peers fetching it themselves are offered"`
	InFlight    time.Duration `env:"SKIFF_SCHEDULER_IN_FLIGHT" envDefault:"10s" help:"how long after asking for a range a peer is offered to others asking for it, as fetching it"`
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
	case c.TTL < time.Second:
		return fmt.Errorf("config: SKIFF_SCHEDULER_PEER_TTL must be at least 1s, got %s", c.TTL)
	case c.Quarantine < 0:
		return fmt.Errorf("config: SKIFF_SCHEDULER_QUARANTINE must not be negative, got %s", c.Quarantine)
	case c.MaxParents < 1:
		return fmt.Errorf("config: SKIFF_SCHEDULER_MAX_PARENTS must be at least 1, got %d", c.MaxParents)
	case c.MaxChildren < 1:
		return fmt.Errorf("config: SKIFF_SCHEDULER_MAX_CHILDREN must be at least 1, got %d", c.MaxChildren)
	case c.InFlight < time.Second:
		return fmt.Errorf("config: SKIFF_SCHEDULER_IN_FLIGHT must be at least 1s, got %s", c.InFlight)
	case c.NATS == "" || c.Listen == "":
		return fmt.Errorf("config: SKIFF_NATS_URL and SKIFF_SCHEDULER_LISTEN must not be empty")
	}
	return nil
}
