// Command skiff-agent is Skiff's node agent: a containerd snapshotter
// (proxy plugin) that runs Skiff images lazily and ordinary images as
// overlayfs does. It runs in the foreground and is configured from the
// environment; `skiff-agent --help` lists every setting.
//
// The lazy filesystems are served by a companion process, `skiff-agent
// mountd`, which the agent starts when none is running and which outlives
// agent restarts so running containers keep reading. In a pod it runs as
// a container of its own instead (SKIFF_AGENT_MOUNTD=external).
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/caarlos0/env/v11"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/skiff-dev/skiff/node-agent/internal/keychain"
	"github.com/skiff-dev/skiff/node-agent/internal/lazymount"
	"github.com/skiff-dev/skiff/node-agent/internal/referrer"
	"github.com/skiff-dev/skiff/node-agent/internal/snapshot"
	"github.com/skiff-dev/skiff/pkg/atomicfile"
	"github.com/skiff-dev/skiff/pkg/cache"
	"github.com/skiff-dev/skiff/pkg/envdoc"
	"github.com/skiff-dev/skiff/pkg/store/storeurl"
	"github.com/skiff-dev/skiff/pkg/telemetry"
)

// config is every setting, read from SKIFF_AGENT_* variables.
type config struct {
	Root          string        `env:"ROOT" envDefault:"/var/lib/skiff-agent" help:"state directory: snapshots, chunk cache, bootstraps, mountpoints"`
	Socket        string        `env:"SOCKET" envDefault:"/run/skiff-agent/snapshotter.sock" help:"unix socket containerd's proxy plugin connects to"`
	Store         string        `env:"STORE" envDefault:"file:///var/lib/skiff/store" help:"blob store URL: file:///path or s3://bucket?endpoint=host:port[&insecure=true] (credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"`
	CacheSize     int64         `env:"CACHE_SIZE" envDefault:"10737418240" help:"chunk cache size limit in bytes (least recently used chunks are evicted)"`
	RecordWindow  time.Duration `env:"RECORD_WINDOW" envDefault:"30s" help:"how long after an image is mounted the files read are recorded as its startup set (0 disables)"`
	WarmSmall     int64         `env:"WARM_SMALL" envDefault:"268435456" help:"bytes of an image's small files (under 128 KiB) read into the page cache once its containers have read and then paused for a second, waiting whenever they read again, on the first nodes that run it (later nodes prefetch its startup set instead): on demand, a program walking many small files waits for a fetch every few files (0 disables)"`
	PrefetchAll   bool          `env:"PREFETCH_ALL" envDefault:"false" help:"after the startup set, prefetch the rest of each image"`
	PrefetchRate  int64         `env:"PREFETCH_RATE" envDefault:"0" help:"bytes per second (as stored, compressed) PREFETCH_ALL fetches at most, over every image together, so that warming images leaves the node's network and CPU to its containers; WARM_SMALL reads at most as many bytes of images a second (0: unlimited)"`
	Passthrough   bool          `env:"PASSTHROUGH" envDefault:"false" help:"let the kernel read large files that are entirely cached straight from disk (FUSE passthrough, Linux 6.9+); for images of large files read again and again (models, datasets): it costs an open round trip per file, which off is free"`
	EROFS         bool          `env:"EROFS" envDefault:"true" help:"mount images with the kernel's EROFS over one lazily filled image file (Linux 6.12+), so names, attributes and cached pages never reach this process; images are served as FUSE trees where the kernel cannot, and with PASSTHROUGH"`
	Mountd        string        `env:"MOUNTD" envDefault:"spawn" help:"who runs the mount process: spawn (the agent starts it detached, and replaces it when it dies or its build changes) or external (another container of the pod, or another service, runs 'skiff-agent mountd' with the same settings; the agent waits for it, and holds its FUSE connections while it restarts, so either can restart without breaking containers)"`
	LogLevel      string        `env:"LOG_LEVEL" envDefault:"info" help:"debug, info, warn or error"`
	MetricsListen string        `env:"METRICS_LISTEN" help:"address the mount process serves Prometheus metrics on, at /metrics: mounts, chunk reads by where they were found, bytes and errors per source, the disk cache (e.g. :9094; empty: off)"`
	CRISocket     string        `env:"CRI_SOCKET" help:"unix socket to serve the CRI image service on, in front of containerd's, for the kubelet's --image-service-endpoint: the agent then keeps the credentials of each pull (imagePullSecrets) and finds Skiff conversions in registries that require them (empty: off; the host's Docker credentials are used either way)"`
	CRIUpstream   string        `env:"CRI_UPSTREAM" envDefault:"/run/containerd/containerd.sock" help:"containerd's socket, whose CRI image service CRI_SOCKET passes every call on to"`
	// Peer-to-peer distribution, off unless NATS_URL is set.
	NATSURL       string `env:"NATS_URL" help:"NATS server of a skiff-scheduler: when set, chunk data is read from peers and seeders before the store, and this node serves what it holds to them"`
	PeerListen    string `env:"PEER_LISTEN" envDefault:":8094" help:"address this node serves pieces to peers on (with NATS_URL)"`
	PeerAdvertise string `env:"PEER_ADVERTISE" help:"host:port other nodes reach PEER_LISTEN at (default: host name and the listen port)"`
	PeerID        string `env:"PEER_ID" help:"id of this node among peers and in the leases its mount process keeps in the store on the images it has mounted (which garbage collection honours), unique in the cluster (default: host name)"`
	PeerCacheSize int64  `env:"PEER_CACHE_SIZE" envDefault:"10737418240" help:"bytes of pieces (chunk data as stored, for peers) kept besides the chunk cache"`
	PeerUpload    int64  `env:"PEER_UPLOAD_RATE" envDefault:"0" help:"bytes per second this node sends to peers, over all of them, so that serving them leaves the node's network to its containers (0: unlimited)"`
	PeerParallel  int    `env:"PEER_PARALLEL" envDefault:"4" help:"how many peers holding a range it is read from at once, in parts of at least 512 KiB, so that a range arrives at their uplinks' pace together (1: one peer per range)"`
	PeerZone      string `env:"PEER_ZONE" help:"where this node runs (a zone, a rack, e.g. its topology.kubernetes.io/zone label): peers and seeders of the same zone are asked first, so pieces cross zones once rather than once per node (empty: unknown)"`
}

const envPrefix = "SKIFF_AGENT_"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	mode := ""
	if len(args) > 0 {
		mode = args[0]
	}
	switch mode {
	case "-h", "--help", "help":
		usage(stdout)
		return 0
	case parkedMode:
		return park(stderr)
	case "", "mountd", "check", "status":
	default:
		fmt.Fprintf(stderr, "skiff-agent: unknown argument %q\n", mode)
		usage(stderr)
		return 2
	}
	var cfg config
	if err := env.ParseWithOptions(&cfg, env.Options{Prefix: envPrefix}); err != nil {
		fmt.Fprintf(stderr, "skiff-agent: %v\n", err)
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		fmt.Fprintf(stderr, "skiff-agent: %sLOG_LEVEL: %v\n", envPrefix, err)
		return 2
	}
	if cfg.Mountd != mountdSpawn && cfg.Mountd != mountdExternal {
		fmt.Fprintf(stderr, "skiff-agent: %sMOUNTD: %q is neither %q nor %q\n", envPrefix, cfg.Mountd, mountdSpawn, mountdExternal)
		return 2
	}
	if cfg.PeerParallel < 1 {
		fmt.Fprintf(stderr, "skiff-agent: %sPEER_PARALLEL: %d, want 1 or more\n", envPrefix, cfg.PeerParallel)
		return 2
	}
	switch mode {
	case "check":
		return check(cfg, stdout, stderr)
	case "status":
		return printStatus(cfg, args[1:], stdout, stderr)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	service := "skiff-agent"
	if mode == "mountd" {
		service = "skiff-agent-mountd"
	}
	// The build identifies itself to tracing as to the agent (see
	// ensureMountd).
	self, err := os.Executable()
	if err != nil {
		log.Error("skiff-agent: exiting", "err", err)
		return 1
	}
	version, err := buildVersion(self)
	if err != nil {
		log.Error("skiff-agent: exiting", "err", err)
		return 1
	}
	shutdown, err := telemetry.Setup(ctx, service, version)
	if err != nil {
		log.Error("skiff-agent: tracing", "err", err)
		return 1
	}
	defer shutdown(context.WithoutCancel(ctx))
	if mode == "mountd" {
		err = runMountd(ctx, cfg, version, log)
	} else {
		err = runAgent(ctx, cfg, log)
	}
	if err != nil {
		log.Error("skiff-agent: exiting", "err", err)
		return 1
	}
	return 0
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: skiff-agent          run the snapshotter (foreground)")
	fmt.Fprintln(w, "       skiff-agent mountd   run the lazy mount process (the agent starts it when needed, unless")
	fmt.Fprintln(w, "                            SKIFF_AGENT_MOUNTD=external);")
	fmt.Fprintln(w, "                            one already running hands its mounts over to it and exits")
	fmt.Fprintln(w, "       skiff-agent check    exit 0 if the snapshotter answers on SKIFF_AGENT_SOCKET (a liveness probe)")
	fmt.Fprintln(w, "       skiff-agent status [--json]")
	fmt.Fprintln(w, "                            the mount process' images, chunk reads, sources and cache")
	fmt.Fprintln(w, "       skiff-agent parked   what a mount process becomes after handing its mounts over with")
	fmt.Fprintln(w, "                            SKIFF_AGENT_MOUNTD=external: it holds nothing and waits to be stopped")
	fmt.Fprintln(w, "\nsettings (environment):")
	if err := envdoc.Write[config](w, env.Options{Prefix: envPrefix}); err != nil {
		fmt.Fprintln(w, err)
	}
}

func mountdSocket(cfg config) string { return filepath.Join(cfg.Root, "mountd.sock") }

// runAgent serves the snapshots API on cfg.Socket.
func runAgent(ctx context.Context, cfg config, log *slog.Logger) error {
	mounts := lazymount.NewClient(mountdSocket(cfg))
	if err := ensureMountd(ctx, cfg, mounts, log); err != nil {
		return err
	}
	base, err := overlay.NewSnapshotter(filepath.Join(cfg.Root, "snapshotter"))
	if err != nil {
		return fmt.Errorf("open snapshotter: %w", err)
	}
	keys := keychain.New()
	res := referrer.New(authn.NewMultiKeychain(keys, authn.DefaultKeychain), log)
	sn := snapshot.New(base, res, mounts, res, log)
	defer sn.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, ctx := errgroup.WithContext(ctx)
	// A setup step failing after the snapshotter serves stops it first:
	// its metadata closes (sn.Close) only once nothing serves from it.
	fail := func(err error) error {
		cancel()
		g.Wait()
		return err
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	if err := serve(ctx, g, srv, cfg.Socket); err != nil {
		return err
	}
	if cfg.CRISocket != "" {
		conn, err := grpc.NewClient("unix://"+cfg.CRIUpstream,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(criMaxMessage), grpc.MaxCallSendMsgSize(criMaxMessage)))
		if err != nil {
			return fail(fmt.Errorf("CRI upstream %s: %w", cfg.CRIUpstream, err))
		}
		defer conn.Close()
		criSrv := grpc.NewServer(grpc.MaxRecvMsgSize(criMaxMessage), grpc.MaxSendMsgSize(criMaxMessage))
		cri.RegisterImageServiceServer(criSrv, keychain.NewProxy(cri.NewImageServiceClient(conn), keys, log))
		if err := serve(ctx, g, criSrv, cfg.CRISocket); err != nil {
			return fail(err)
		}
		log.Info("skiff-agent: serving the CRI image service", "socket", cfg.CRISocket, "upstream", cfg.CRIUpstream)
	}
	g.Go(func() error { return superviseMountd(ctx, cfg, mounts, log) })
	log.Info("skiff-agent: serving snapshotter", "socket", cfg.Socket, "root", cfg.Root)
	return g.Wait()
}

// criMaxMessage is the kubelet's limit on CRI messages: image lists of
// busy nodes pass gRPC's 4 MiB default.
const criMaxMessage = 16 << 20

// serve has srv answer on a unix socket at path until ctx ends. A new
// agent may start before the old one stops (a rolling update with surge):
// it takes the socket over, and the old one leaves it.
func serve(ctx context.Context, g *errgroup.Group, srv *grpc.Server, path string) error {
	l, remove, err := listenUnix(path)
	if err != nil {
		return err
	}
	g.Go(func() error {
		defer remove()
		return srv.Serve(l)
	})
	g.Go(func() error {
		<-ctx.Done()
		srv.GracefulStop()
		return nil
	})
	return nil
}

// ensureMountd connects to the mount process, starting one when none
// answers, or when the one answering is another build of skiff-agent:
// the new one takes the mounts over from it (an upgrade that leaves
// running containers reading). It is started in its own session so that
// it survives the agent. An external mount process is only waited for.
func ensureMountd(ctx context.Context, cfg config, c *lazymount.Client, log *slog.Logger) error {
	if cfg.Mountd == mountdExternal {
		return awaitMountd(ctx, cfg, c, log, false)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("start mount process: %w", err)
	}
	// Hashed at each call, not once: the mount process started below is
	// the binary on disk now, which an upgrade may have replaced since
	// this agent started, and it reports that binary's version.
	version, err := buildVersion(self)
	if err != nil {
		return fmt.Errorf("start mount process: %w", err)
	}
	running := c.Ping(ctx) == nil
	if running {
		st, err := c.Status(ctx)
		if err == nil && st.Version == version {
			log.Info("skiff-agent: reusing running mount process", "socket", mountdSocket(cfg), "pid", st.PID)
			return nil
		}
		log.Info("skiff-agent: replacing the running mount process", "pid", st.PID, "version", st.Version, "by", version)
	}
	if err := os.MkdirAll(cfg.Root, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	logf, err := os.OpenFile(filepath.Join(cfg.Root, "mountd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("start mount process: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(self, "mountd")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start mount process: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	for {
		if st, err := c.Status(ctx); err == nil && st.Version == version {
			log.Info("skiff-agent: started mount process", "pid", cmd.Process.Pid, "log", logf.Name())
			return nil
		}
		select {
		case err := <-exited:
			if running && c.Ping(ctx) == nil {
				log.Warn("skiff-agent: the new mount process did not take over; keeping the running one", "exit", err, "log", logf.Name())
				return nil
			}
			return fmt.Errorf("mount process exited at startup (%v); see %s", err, logf.Name())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// superviseMountd keeps copies of the mount process' FUSE devices, so
// that its connections outlive it, and replaces it when it dies: the new
// mount process takes the connections over from the copies, and the
// kernel resends what the dead one read and never answered. Without the
// copies, a dead mount process would take every mount with it (ENOTCONN
// for every container of a Skiff image on the node).
func superviseMountd(ctx context.Context, cfg config, c *lazymount.Client, log *slog.Logger) error {
	var (
		held []lazymount.HandedMount
		id   string // the mount process the devices were copied from
		pid  int
		gen  uint64
	)
	release := func() {
		for _, h := range held {
			h.Dev.Close()
		}
		held, id, pid = nil, "", 0
	}
	defer release()
	tick := time.NewTicker(superviseEvery)
	defer tick.Stop()
	// The first check is at once: until it copies the devices, a mount
	// process dying takes the mounts with it.
	for first := true; ; first = false {
		if !first {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
			}
		}
		st, err := c.Status(ctx)
		if err == nil {
			if processID(st) == id && st.Generation == gen {
				continue
			}
			hs, err := c.Devices(ctx)
			if err != nil {
				log.Warn("skiff-agent: copy the mount process' FUSE devices", "err", err)
				continue
			}
			release()
			held, id, pid, gen = hs, processID(st), st.PID, st.Generation
			continue
		}
		state := mountdState(mountdSocket(cfg))
		if state == mountdAlive {
			continue
		}
		if state == mountdStopped {
			// It unmounted everything and removed its socket, as asked:
			// the devices kept are of connections that are gone.
			release()
		}
		if len(held) == 0 {
			log.Warn("skiff-agent: no mount process; starting one", "stopped", state == mountdStopped)
			if err := ensureMountd(ctx, cfg, c, log); err != nil {
				log.Error("skiff-agent: start the mount process", "err", err)
			}
			continue
		}
		log.Error("skiff-agent: the mount process died; starting one that takes its mounts over", "pid", pid, "mounts", len(held))
		if err := replaceDeadMountd(ctx, cfg, c, held, log); err != nil {
			log.Error("skiff-agent: replace the mount process", "err", err)
			continue
		}
		// The copies held are of the connections the new process took
		// over: kept until copies from it replace them at the next
		// check, they let the agent stand in again should it die
		// before then.
		id = ""
	}
}

// processID identifies the mount process that reported st: its instance,
// or for builds before instances its PID.
func processID(st lazymount.Status) string {
	if st.Instance != "" {
		return st.Instance
	}
	return strconv.Itoa(st.PID)
}

// fuseMounted reports whether a FUSE file system is mounted under dir:
// after a reboot, a dead mount process' socket is left with nothing to
// hand over.
func fuseMounted(dir string) bool {
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return true // cannot tell: wait for a stand-in, which costs a few seconds at most
	}
	return fuseIn(string(info), dir)
}

// fuseIn reports whether mountinfo lists a FUSE mount under dir.
func fuseIn(mountinfo, dir string) bool {
	for line := range strings.Lines(mountinfo) {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		fields := strings.Fields(line)
		sep := slices.Index(fields, "-")
		if len(fields) < 5 || sep < 0 || sep+1 >= len(fields) {
			continue
		}
		if strings.HasPrefix(fields[4], dir+"/") && strings.HasPrefix(fields[sep+1], "fuse") {
			return true
		}
	}
	return false
}

// standInWait bounds how long a mount process starting where another died
// waits for the agent to stand in: many of the agent's checks.
const standInWait = 5 * time.Second

// awaitStandIn waits until something answers on the mount process'
// socket again, and reports whether it did within standInWait.
func awaitStandIn(ctx context.Context, sock string) bool {
	c := lazymount.NewClient(sock)
	deadline := time.Now().Add(standInWait)
	for time.Now().Before(deadline) {
		if c.Ping(ctx) == nil {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
	return false
}

// superviseEvery is how often the agent checks on the mount process: how
// long a new mount may go without its device copied, and a dead process
// without a stand-in. A check is one request on a unix socket.
const superviseEvery = 250 * time.Millisecond

// replaceDeadMountd stands in for a dead mount process on its socket with
// the devices held, and starts a new one, which takes them over from
// there as from a live one.
func replaceDeadMountd(ctx context.Context, cfg config, c *lazymount.Client, held []lazymount.HandedMount, log *slog.Logger) error {
	l, remove, err := listenUnix(mountdSocket(cfg))
	if err != nil {
		return err
	}
	defer remove()
	defer l.Close()
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go lazymount.ServeHeld(hctx, l, held, log)
	if cfg.Mountd == mountdExternal {
		if err := awaitMountd(ctx, cfg, c, log, true); err != nil {
			return err
		}
	} else if err := ensureMountd(ctx, cfg, c, log); err != nil {
		return err
	}
	// Only a mount process reports its build: not the stand-in.
	if st, err := c.Status(ctx); err != nil || st.Version == "" {
		return fmt.Errorf("no mount process took the mounts over (%v)", err)
	}
	return nil
}

// What the mount process' socket says about the process.
const (
	mountdAlive   = iota // something accepts connections, maybe slowly
	mountdDied           // the socket is there and nothing listens: it ended without cleaning up
	mountdStopped        // the socket is gone: it was stopped and unmounted everything
)

// mountdState tells from the mount process' socket whether the process
// is there: the kernel refuses connections to a unix socket whose
// listener has closed, which happens when its process ends however it
// ends, while a process that is alive but slow has them queued. Process
// IDs would not do: in a pod, the mount process may be another pod's.
func mountdState(sock string) int {
	c, err := net.DialTimeout("unix", sock, time.Second)
	switch {
	case err == nil:
		c.Close()
		return mountdAlive
	case errors.Is(err, syscall.ECONNREFUSED):
		return mountdDied
	case errors.Is(err, os.ErrNotExist):
		return mountdStopped
	}
	return mountdAlive
}

// buildVersion identifies the build of the executable at path by its
// content, so that a replaced binary is told from the running one.
func buildVersion(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("build version: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("build version: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// handoverGrace is how long a mount process that handed its mounts over
// has to exit before its successor kills it.
const handoverGrace = 10 * time.Second

// runMountd serves the lazy mounts until stopped, then unmounts them. If a
// mount process is running already, it takes that one's mounts over
// first; when a successor takes them from this one, it exits and leaves
// them mounted.
func runMountd(ctx context.Context, cfg config, version string, log *slog.Logger) error {
	tuneGC(os.Getenv)
	st, err := storeurl.Open(ctx, cfg.Store)
	if err != nil {
		return err
	}
	c, err := cache.Open(filepath.Join(cfg.Root, "cache"), cfg.CacheSize)
	if err != nil {
		return err
	}
	f, node2p, err := newFetcher(cfg, c, st, log)
	if err != nil {
		return err
	}
	// The mounts' leases, which keep garbage collection off their images'
	// data, are under the node's peer id.
	node, err := peerID(cfg)
	if err != nil {
		log.Error("skiff-agent mountd: no leases on the mounted images: garbage collection of the store may take the data of running containers", "err", err)
	}
	m, err := lazymount.New(cfg.Root, st, f, lazymount.Options{RecordWindow: cfg.RecordWindow, WarmSmallFiles: cfg.WarmSmall, PrefetchAll: cfg.PrefetchAll, PrefetchRate: cfg.PrefetchRate, Passthrough: cfg.Passthrough, EROFS: cfg.EROFS, Node: node, Logger: log})
	if err != nil {
		return err
	}
	sock := mountdSocket(cfg)
	takeover, err := takeOver(ctx, cfg, sock, m, log)
	if err != nil {
		m.Close()
		return err
	}
	// The agent finds this process on the socket the moment the old one
	// stops answering; the old one, exiting, leaves it.
	restoreOld, dropOld := func() error { return nil }, func() {}
	if takeover != nil {
		if restoreOld, dropOld, err = keepSocket(sock); err != nil {
			takeover.Abort()
			m.DropResumed()
			m.Close()
			return err
		}
	}
	l, removeSock, err := listenUnix(sock)
	if err != nil {
		if takeover != nil {
			takeover.Abort()
			m.DropResumed()
			restoreOld()
		}
		m.Close()
		return err
	}
	if takeover != nil {
		err := takeover.Commit(ctx, handoverGrace)
		if errors.Is(err, lazymount.ErrNotCommitted) {
			// Two processes reading one FUSE device would each answer
			// requests the other read; the old one keeps them all, and
			// its socket.
			// The old socket comes back before this one closes: the
			// agent, finding neither answering, would take the old
			// process for dead and hand its devices on.
			m.DropResumed()
			if rerr := restoreOld(); rerr != nil {
				err = errors.Join(err, rerr)
				removeSock()
			}
			l.Close()
			m.Close()
			return fmt.Errorf("take over the mounts: %w", err)
		}
		dropOld()
		if err != nil {
			log.Error("skiff-agent mountd: the old mount process did not confirm its exit", "err", err)
		}
		if err := m.StartResumed(); err != nil {
			log.Warn("skiff-agent mountd: requests the old mount process read and did not answer stay unanswered", "err", err)
		}
		log.Info("skiff-agent mountd: took over the mounts", "mounts", len(takeover.Mounts))
	}
	if err := atomicfile.WriteFile(filepath.Join(cfg.Root, "mountd.pid"), []byte(fmt.Sprint(os.Getpid())), 0o600); err != nil {
		log.Warn("skiff-agent mountd: write pid file", "err", err)
	}
	handedOver := make(chan net.Conn, 1)
	srv := &http.Server{Handler: lazymount.Handler(m, lazymount.HandlerOptions{
		Version:    version,
		HandedOver: func(conn net.Conn) { handedOver <- conn },
	})}
	g, gctx := errgroup.WithContext(ctx)
	gctx, stopServing := context.WithCancel(gctx)
	defer stopServing()
	g.Go(func() error {
		if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	var successor net.Conn
	g.Go(func() error {
		select {
		case <-gctx.Done():
			// Stopped: unmount everything while still answering, and
			// remove the socket before it stops answering. The agent
			// tells a stop from a death by the socket: found with
			// nothing listening, it takes this process for dead and has
			// a new one take over the devices it copied, which are of
			// mounts gone by then (a new container's root would be
			// empty).
			if err := m.Close(); err != nil {
				log.Warn("skiff-agent mountd: unmount", "err", err)
			}
			removeSock()
		case successor = <-handedOver:
			// The successor serves the mounts now, and takes the
			// peer and metrics ports once this process has exited.
			stopServing()
		}
		return srv.Shutdown(context.Background())
	})
	// Ports are listened on only now: a mount process taking over from
	// another gets them once that one has exited.
	var p2pMetrics []prometheus.Collector
	if node2p != nil {
		g.Go(func() error { return node2p.run(gctx) })
		p2pMetrics = node2p.metrics
	}
	if cfg.MetricsListen != "" {
		g.Go(func() error { return serveMetrics(gctx, cfg.MetricsListen, m, version, log, p2pMetrics...) })
	}
	log.Info("skiff-agent mountd: serving lazy mounts", "socket", sock, "store", cfg.Store, "version", version)
	err = g.Wait()
	removeSock()
	if cerr := m.Close(); err == nil {
		err = cerr
	}
	if successor != nil {
		// The successor learns that this process has stopped reading the
		// FUSE devices when the connection closes, which must be when the
		// process ends, not before.
		if cfg.Mountd == mountdExternal {
			parkAfterHandover(log)
		}
		log.Info("skiff-agent mountd: exiting after handing the mounts over")
		os.Exit(0)
	}
	return err
}

// takeOver takes the mounts of the mount process answering on sock, if
// there is one, into m; nil if there is none.
func takeOver(ctx context.Context, cfg config, sock string, m *lazymount.Manager, log *slog.Logger) (*lazymount.Takeover, error) {
	if lazymount.NewClient(sock).Ping(ctx) != nil {
		if cfg.Mountd != mountdExternal || mountdState(sock) != mountdDied || !fuseMounted(cfg.Root) {
			return nil, nil
		}
		// A mount process died here, and the kubelet restarted its
		// container at once. The agent holds the dead one's FUSE
		// connections and stands in on the socket once it notices
		// (superviseMountd); starting without them would fail every
		// read of the containers running on those mounts.
		log.Info("skiff-agent mountd: the previous mount process died; waiting for the agent to hand its mounts over", "socket", sock, "wait", standInWait)
		if !awaitStandIn(ctx, sock) {
			log.Warn("skiff-agent mountd: nothing handed the previous mount process' mounts over; starting without them")
			return nil, nil
		}
	}
	t, err := lazymount.TakeOver(ctx, sock)
	if err != nil {
		return nil, fmt.Errorf("a mount process is running on %s: %w", sock, err)
	}
	for _, h := range t.Mounts {
		if err := m.Resume(ctx, h); err != nil {
			// All or nothing: the old process keeps every mount.
			t.Abort()
			m.DropResumed()
			return nil, fmt.Errorf("take over %s: %w", h.Mountpoint, err)
		}
	}
	log.Info("skiff-agent mountd: taking over the mounts of the running mount process", "mounts", len(t.Mounts))
	return t, nil
}
