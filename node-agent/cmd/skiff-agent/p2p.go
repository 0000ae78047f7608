package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/cache"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/peer"
	"github.com/skiff-dev/skiff/pkg/piece"
	"github.com/skiff-dev/skiff/pkg/schedule"
	"github.com/skiff-dev/skiff/pkg/store"
)

// p2p is this node's part in peer-to-peer distribution.
type p2p struct {
	// run serves this node's pieces to other nodes and announces them
	// until ctx ends.
	run func(ctx context.Context) error
	// metrics are the peer source's and the piece server's.
	metrics []prometheus.Collector
}

// newFetcher builds mountd's Fetcher: cache → store, or with P2P on
// (SKIFF_AGENT_NATS_URL set) cache → peers → store, with the node's part
// in P2P, which is nil when P2P is off.
func newFetcher(cfg config, c *cache.Cache, st store.Store, log *slog.Logger) (*fetch.Fetcher, *p2p, error) {
	storeSrc := fetch.NewStoreSource("store", st)
	if cfg.NATSURL == "" {
		return fetch.New(c, []fetch.Source{storeSrc}, fetch.WithLogger(log)), nil, nil
	}
	id, addr, err := peerIdentity(cfg)
	if err != nil {
		return nil, nil, err
	}
	pieces, err := piece.Open(filepath.Join(cfg.Root, "pieces"), cfg.PeerCacheSize, log)
	if err != nil {
		return nil, nil, err
	}
	// The store keeps working without NATS: the peer source fails at
	// once while disconnected, so reads go straight to the store.
	nc, err := bus.Connect(cfg.NATSURL, "skiff-agent "+id, nats.RetryOnFailedConnect(true))
	if err != nil {
		return nil, nil, err
	}
	src := peer.NewSource(nc, id, nil, peer.SourceOptions{Parallel: cfg.PeerParallel, Logger: log})
	f := fetch.New(c, []fetch.Source{src, storeSrc}, fetch.WithFrameSink(pieces), fetch.WithLogger(log))
	server := piece.NewServer(pieces, nil, log, piece.WithUploadRate(cfg.PeerUpload))
	ann := &peer.Announcer{NC: nc, ID: id, Addr: addr, Role: schedule.RolePeer, Store: pieces, Load: server.Load, Zone: cfg.PeerZone, Logger: log}
	run := func(ctx context.Context) error {
		defer nc.Close()
		// Listening starts here, not when the fetcher is made: a mount
		// process taking over from another gets the port once that one
		// has exited.
		ln, err := net.Listen("tcp", cfg.PeerListen)
		if err != nil {
			return fmt.Errorf("listen for peers on %s: %w", cfg.PeerListen, err)
		}
		mux := http.NewServeMux()
		mux.Handle(piece.Path, server)
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		log.Info("skiff-agent mountd: sharing pieces with peers", "id", id, "listen", ln.Addr().String(), "advertise", addr, "nats", cfg.NATSURL)
		g, ctx := errgroup.WithContext(ctx)
		g.Go(func() error { return ann.Run(ctx) })
		g.Go(func() error {
			<-ctx.Done()
			return srv.Close()
		})
		g.Go(func() error {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("piece server: %w", err)
			}
			return nil
		})
		return g.Wait()
	}
	const ns = "skiff_agent_"
	return f, &p2p{run: run, metrics: []prometheus.Collector{peer.NewCollector(ns, src), piece.NewCollector(ns, server)}}, nil
}

// peerID is the id of this node: PEER_ID, or the host name. Peers know
// the node by it, and garbage collection of the store its leases.
func peerID(cfg config) (string, error) {
	if cfg.PeerID != "" {
		return cfg.PeerID, nil
	}
	host, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("host name for %sPEER_ID: %w", envPrefix, err)
	}
	return host, nil
}

// peerIdentity fills in the peer id and advertised address from the host
// name when they are not set.
func peerIdentity(cfg config) (id, addr string, err error) {
	if id, err = peerID(cfg); err != nil {
		return "", "", err
	}
	addr = cfg.PeerAdvertise
	if addr == "" {
		host, err := os.Hostname()
		if err != nil {
			return "", "", fmt.Errorf("host name for %sPEER_ADVERTISE: %w", envPrefix, err)
		}
		h, port, err := net.SplitHostPort(cfg.PeerListen)
		if err != nil {
			return "", "", fmt.Errorf("%sPEER_LISTEN: %w", envPrefix, err)
		}
		if ip := net.ParseIP(h); h == "" || (ip != nil && ip.IsUnspecified()) {
			h = host
		}
		addr = net.JoinHostPort(h, port)
	}
	return id, addr, nil
}
