package service

import (
	"context"
	"fmt"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/convert"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/schedule"
)

// Dragonfly's own benchmark: many nodes fetch one image at once, through
// the P2P network and, as the baseline, each from the origin itself. Here
// the nodes are agents made of skiff-agent mountd's parts, the origin is
// MinIO, paced to clusterStoreRate for the whole cluster (a cluster's
// uplink to its object store, which is what P2P distribution saves), and
// nobody has preheated the image: every node asks for every piece at
// about the same moment, the case where a scheduler that only looks at
// current holders sends the whole cluster to the store.
const (
	clusterNodes     = 8
	clusterStoreRate = 200 << 20 // bytes per second, for the whole cluster
)

// BenchmarkClusterStart reports, for clusterNodes nodes starting one
// image at once, the image preheated by the seeder or not:
//   - store-bytes/image: chunk data the store served with P2P on,
//     preheating included, over the image's stored size (1 is every piece
//     leaving the store once);
//   - store-bytes-p2p/direct: the same over what the store served when
//     every node read from it;
//   - seeder-sent/image: what the seeder sent to nodes, over the image's
//     stored size (clusterNodes if every node read from the seeder);
//   - time-p2p/direct: until the last node holds the image, with P2P on
//     over every node reading from the store.
func BenchmarkClusterStart(b *testing.B) {
	c := newCluster(b)
	c.storeLimit.Store(rate.NewLimiter(clusterStoreRate, 256<<10))
	images := 0
	for _, preheated := range []bool{false, true} {
		name := "cold"
		if preheated {
			name = "preheated"
		}
		b.Run(name, func(b *testing.B) {
			var p2pBytes, directBytes, seederBytes, stored int64
			var p2pTime, directTime time.Duration
			for range b.N {
				images++
				img, digest, size := c.convertEntries(b, clusterImage(uint64(images)), convert.Options{})
				stored += size

				direct := make([]*agent, clusterNodes)
				for n := range direct {
					direct[n] = c.storeAgent(b, fmt.Sprintf("direct-%d-%d", images, n))
				}
				dTime, dBytes := c.startAll(b, direct, img)
				directTime += dTime
				directBytes += dBytes

				storeBefore := c.blobBytes.Load()
				if preheated {
					c.preheat(b, img, digest)
				}
				p2p := make([]*agent, clusterNodes)
				for n := range p2p {
					p2p[n] = c.agent(b, fmt.Sprintf("p2p-%d-%d", images, n))
				}
				seederBefore := c.seederStats(b).Server.ServedBytes
				pTime, _ := c.startAll(b, p2p, img)
				p2pTime += pTime
				p2pBytes += c.blobBytes.Load() - storeBefore
				seederBytes += c.seederStats(b).Server.ServedBytes - seederBefore
				var fromPeers, fromSeeders int64
				for _, a := range p2p {
					s := a.src.Stats()
					fromPeers += s.FromPeers
					fromSeeders += s.FromSeeders
				}
				b.Logf("%d nodes, an image of %d B stored: each node from the store in %s, %d B from it; P2P in %s, %d B from the store, pieces from peers %d, from seeders %d",
					clusterNodes, size, dTime.Round(time.Millisecond), dBytes, pTime.Round(time.Millisecond), c.blobBytes.Load()-storeBefore, fromPeers, fromSeeders)
			}
			b.ReportMetric(float64(p2pBytes)/float64(stored), "store-bytes/image")
			b.ReportMetric(float64(p2pBytes)/float64(directBytes), "store-bytes-p2p/direct")
			b.ReportMetric(float64(seederBytes)/float64(stored), "seeder-sent/image")
			b.ReportMetric(p2pTime.Seconds()/directTime.Seconds(), "time-p2p/direct")
		})
	}
}

// peerUplink paces each holder's piece server in BenchmarkPeerParallel:
// a node's uplink, shared with its own work, is what bounds a range read
// from it.
const peerUplink = 25 << 20 // bytes per second

// BenchmarkPeerParallel: a node reads an image one range at a time, as a
// program reading its files does (the kernel's readahead asks for one
// window after the other), from four nodes that hold it, each sending at
// peerUplink. It reports time-parts/one-parent: with every range read in
// parts from all four at once (SKIFF_AGENT_PEER_PARALLEL=4, the default)
// over each range from one of them (SKIFF_AGENT_PEER_PARALLEL=1).
func BenchmarkPeerParallel(b *testing.B) {
	c := newCluster(b)
	var partsTime, wholeTime time.Duration
	for i := range b.N {
		img, _, size := c.convertEntries(b, clusterImage(1000+uint64(i)), convert.Options{})
		holders := make([]*agent, 4)
		for n := range holders {
			holders[n] = c.agentWith(b, fmt.Sprintf("holder-%d-%d", i, n), agentOptions{uploadRate: peerUplink, storeOnly: true})
		}
		// From the store: the scheduler then remembers no flights, and
		// the seeder holds nothing, so the reader's parents are the four.
		c.startAll(b, holders, img)
		// Every holder has announced what it holds.
		fr := img.Frames[len(img.Frames)-1]
		eventually(b, "the holders are announced", func() bool {
			held := 0
			for _, p := range c.table.Parents("reader", img.Blobs[fr.Blob], int64(fr.Offset), int64(fr.CompressedSize), time.Now()) {
				if p.Role == schedule.RolePeer && !p.Fetching {
					held++
				}
			}
			return held == len(holders)
		})
		for _, parallel := range []int{4, 1} {
			r := c.agentWith(b, fmt.Sprintf("reader-%d-%d", i, parallel), agentOptions{parallel: parallel, leech: true})
			storeBefore := c.blobBytes.Load()
			took, _ := c.startAll(b, []*agent{r}, img, fetch.Streams(1))
			s := r.src.Stats()
			if (parallel > 1 && s.Assembled == 0) || s.FromSeeders != 0 {
				b.Fatalf("no range read in parts, or some from the seeder: %+v", s)
			}
			if n := c.blobBytes.Load() - storeBefore; n != 0 {
				b.Fatalf("the reader took %d B from the store", n)
			}
			if parallel > 1 {
				partsTime += took
			} else {
				wholeTime += took
			}
			b.Logf("an image of %d B stored, from %d holders sending %d B/s each, one range at a time: read in %s with up to %d parents a range (%d ranges, %d of them in parts)",
				size, len(holders), peerUplink, took.Round(time.Millisecond), parallel, s.Requests, s.Assembled)
		}
	}
	b.ReportMetric(partsTime.Seconds()/wholeTime.Seconds(), "time-parts/one-parent")
}

// startAll has every node fetch all of img at once, as a node prefetching
// an image does, and returns the time until the last one holds it and the
// chunk data the store served meanwhile. Every node's copy is then read
// back and checked.
func (c *cluster) startAll(t testing.TB, nodes []*agent, img *bootstrap.Bootstrap, opts ...fetch.PrefetchOption) (time.Duration, int64) {
	t.Helper()
	var files []uint32
	for ino := range img.Inodes {
		if img.Inodes[ino].Type() == bootstrap.ModeRegular {
			files = append(files, uint32(ino))
		}
	}
	before := c.blobBytes.Load()
	start := time.Now()
	var g errgroup.Group
	for _, a := range nodes {
		g.Go(func() error {
			if err := a.f.Prefetch(context.Background(), img, files, opts...); err != nil {
				return fmt.Errorf("%s: %w", a.id, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	took, served := time.Since(start), c.blobBytes.Load()-before
	for _, a := range nodes {
		a.readAll(t, img)
	}
	return took, served
}

// clusterImage is an application image's mix: a few large files, half of
// them binaries that hardly compress, and many small text files.
func clusterImage(seed uint64) []fixture.Entry {
	entries := []fixture.Entry{fixture.Dir("app", 0o755), fixture.Dir("app/lib", 0o755)}
	for i := range 8 {
		data := fixture.Text(seed*100+uint64(i), 8<<20+i*4096)
		if i%2 == 0 {
			data = fixture.Random(seed*100+uint64(i), 6<<20+i*4096)
		}
		entries = append(entries, fixture.Entry{Header: fixture.File(fmt.Sprintf("app/blob%d", i), 0o644, "").Header, Data: data})
	}
	for i := range 400 {
		entries = append(entries, fixture.File(fmt.Sprintf("app/lib/m%03d.py", i), 0o644, string(fixture.Text(seed*10000+uint64(i), 2000+i*40))))
	}
	return entries
}
