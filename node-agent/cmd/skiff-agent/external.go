package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/skiff-dev/skiff/node-agent/internal/lazymount"
)

// Who runs the mount process (SKIFF_AGENT_MOUNTD). In a pod, every
// process of a container dies when the container restarts, so a mount
// process the agent started would die with the agent and take every
// FUSE connection with it; run as a container of its own, it outlives
// the agent's restarts, and the agent holds its connections through its
// own.
const (
	mountdSpawn    = "spawn"
	mountdExternal = "external"
)

// awaitMountd waits until a mount process, not the agent's stand-in for
// a dead one, answers on the socket: with an external mount process,
// starting one is someone else's job. standingIn says the agent stands in
// for a dead one meanwhile, holding its mounts: then it fails if the socket
// dies again, since a successor that took the mounts over and died at once
// (the kubelet restarting a crashing container) left them with nobody, and
// the agent must stand in anew for the next one, which waits for that (see
// awaitStandIn).
func awaitMountd(ctx context.Context, cfg config, c *lazymount.Client, log *slog.Logger, standingIn bool) error {
	sock := mountdSocket(cfg)
	var waiting time.Time
	for {
		// Only a mount process reports its build: not the stand-in.
		if st, err := c.Status(ctx); err == nil && st.Version != "" {
			log.Info("skiff-agent: mount process is running", "socket", sock, "pid", st.PID, "version", st.Version)
			return nil
		}
		if standingIn && mountdState(sock) == mountdDied {
			return errors.New("the mount process that took the mounts over died")
		}
		if time.Since(waiting) > awaitLogEvery {
			log.Info("skiff-agent: waiting for a mount process (`skiff-agent mountd`) on its socket", "socket", sock, "holding mounts", standingIn)
			waiting = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(awaitPoll):
		}
	}
}

const (
	awaitPoll     = 100 * time.Millisecond
	awaitLogEvery = 30 * time.Second
)

// parkedMode is what an external mount process becomes once it has
// handed its mounts over (see parkAfterHandover).
const parkedMode = "parked"

// parkAfterHandover replaces this process, which has handed its mounts
// over, by one that holds nothing and waits to be stopped. An external
// mount process runs under a supervisor that restarts what exits (the
// kubelet, during a rolling update that starts the new pod before
// stopping the old one): exiting would bring back a mount process of the
// old build, which would take the mounts back from its successor.
// Executing ends every thread and closes every descriptor (all are
// close-on-exec), which is how the successor learns, from the handover
// connection closing, that this process no longer reads the FUSE
// devices. It returns only if it cannot execute.
func parkAfterHandover(log *slog.Logger) {
	self, err := os.Executable()
	if err == nil {
		log.Info("skiff-agent mountd: handed the mounts over; waiting to be stopped")
		err = syscall.Exec(self, []string{os.Args[0], parkedMode}, os.Environ())
	}
	log.Error("skiff-agent mountd: could not wait to be stopped; exiting", "err", err)
}

// park waits for SIGTERM or SIGINT and exits 0.
func park(stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	fmt.Fprintln(stderr, "skiff-agent: stopped after handing the mounts over")
	return 0
}

// checkTimeout bounds a liveness check.
const checkTimeout = 5 * time.Second

// check asks the snapshotter on cfg.Socket about a snapshot that does not
// exist: answering at all, with "not found", proves the gRPC server and
// its metadata store work.
func check(cfg config, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+cfg.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintf(stderr, "skiff-agent check: %v\n", err)
		return 1
	}
	defer conn.Close()
	_, err = snapshotsapi.NewSnapshotsClient(conn).Stat(ctx, &snapshotsapi.StatSnapshotRequest{Snapshotter: "skiff", Key: "skiff-agent-check"})
	if err != nil && status.Code(err) != codes.NotFound {
		fmt.Fprintf(stderr, "skiff-agent check: snapshotter on %s: %v\n", cfg.Socket, err)
		return 1
	}
	fmt.Fprintf(stdout, "snapshotter on %s answers\n", cfg.Socket)
	return 0
}
