// Command skiff-seeder is the seeder of Skiff's peer-to-peer distribution:
// it preheats every converted image from the blob store into its piece
// store, serves pieces to node agents over HTTP, fetches pieces nobody
// holds from the store when the scheduler sends a peer its way, and
// announces what it holds. Configuration comes from the environment; run
// with --help to list it.
package main

import (
	"os"

	"github.com/skiff-dev/skiff/pkg/daemon"
	"github.com/skiff-dev/skiff/services/seeder/internal/config"
	"github.com/skiff-dev/skiff/services/seeder/internal/service"
)

func main() {
	os.Exit(daemon.Main(os.Args[1:], os.Stdout, os.Stderr, daemon.Service[config.Config]{
		Name:    "skiff-seeder",
		Summary: "Preheats converted images from the blob store and serves their pieces to\nSkiff node agents; run skiff-scheduler next to it.",
		Load:    config.Load,
		Debug:   func(c config.Config) bool { return c.Debug },
		Run:     service.Run,
	}))
}
