// Command mc stands in for MinIO's client inside the FROM-scratch MinIO
// image that e2e/compose/standins.sh builds. It knows one command, the
// healthcheck docker-compose.yaml gives the minio service, `mc ready
// local`, and answers it from MinIO's cluster health endpoint as mc does,
// so the stand-in turns healthy and `docker compose up --wait` (and the
// converter's wait for a healthy MinIO) behave as with minio/minio.
package main

import (
	"fmt"
	"net/http"
	"os"
	"time"
)

// healthURL is the health endpoint of the "local" alias, which mc
// predefines as http://localhost:9000.
const healthURL = "http://localhost:9000/minio/health/cluster"

func main() {
	if len(os.Args) != 3 || os.Args[1] != "ready" || os.Args[2] != "local" {
		fmt.Fprintln(os.Stderr, "usage: mc ready local (the only command of this stand-in)")
		os.Exit(2)
	}
	if err := ready(); err != nil {
		fmt.Fprintln(os.Stderr, "mc:", err)
		os.Exit(1)
	}
	fmt.Println("The cluster is ready")
}

func ready() error {
	// Shorter than the healthcheck's own timeout, so a hung MinIO is
	// reported by this process rather than by Docker killing it.
	client := &http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get(healthURL)
	if err != nil {
		return fmt.Errorf("local: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("local is not ready: %s", resp.Status)
	}
	return nil
}
