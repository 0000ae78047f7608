// Command skiff-converter is the event-driven conversion service: it takes
// registry push notifications over HTTP, queues them on NATS JetStream and
// converts each pushed image into a Skiff image exactly once. Configuration
// comes from the environment; run with --help to list it.
package main

import (
	"os"

	"github.com/skiff-dev/skiff/pkg/daemon"
	"github.com/skiff-dev/skiff/services/converter/internal/config"
	"github.com/skiff-dev/skiff/services/converter/internal/service"
)

func main() {
	os.Exit(daemon.Main(os.Args[1:], os.Stdout, os.Stderr, daemon.Service[config.Config]{
		Name:    "skiff-converter",
		Summary: "Converts images pushed to a registry into Skiff images. Point the registry's\nnotifications at http://LISTEN/notify (distribution) or http://LISTEN/harbor.",
		Load:    config.Load,
		Debug:   func(c config.Config) bool { return c.Debug },
		Run:     service.Run,
	}))
}
