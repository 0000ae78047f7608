// Command skiff-scheduler is the scheduler of Skiff's peer-to-peer
// distribution: it keeps track of which node agents and seeders hold which
// pieces of chunk data and tells a node where to read a piece from, so
// each piece leaves the blob store about once per cluster. Configuration
// comes from the environment; run with --help to list it.
package main

import (
	"os"

	"github.com/skiff-dev/skiff/pkg/daemon"
	"github.com/skiff-dev/skiff/services/scheduler/internal/config"
	"github.com/skiff-dev/skiff/services/scheduler/internal/service"
)

func main() {
	os.Exit(daemon.Main(os.Args[1:], os.Stdout, os.Stderr, daemon.Service[config.Config]{
		Name:    "skiff-scheduler",
		Summary: "Tells Skiff node agents which peers or seeders to read pieces of chunk data\nfrom. Run one or more next to NATS; they share the work.",
		Load:    config.Load,
		Debug:   func(c config.Config) bool { return c.Debug },
		Run:     service.Run,
	}))
}
