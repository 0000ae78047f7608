package service

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/cache"
	"github.com/skiff-dev/skiff/pkg/convert"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/peer"
	"github.com/skiff-dev/skiff/pkg/piece"
	"github.com/skiff-dev/skiff/pkg/schedule"
	"github.com/skiff-dev/skiff/pkg/store"
	"github.com/skiff-dev/skiff/pkg/store/storeurl"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
)

// cluster is a P2P cluster in process against real servers: nats-server,
// MinIO behind a proxy that counts the chunk-data bytes it serves, the
// seeder service and a scheduler (schedule.Server on a Table, as
// skiff-scheduler composes it), plus agents made of the same parts as
// skiff-agent mountd with P2P on.
type cluster struct {
	t         testing.TB
	nats      testenv.NATS
	storeURL  string       // through the counting proxy
	direct    store.Store  // MinIO without the proxy, for the converter
	blobBytes atomic.Int64 // chunk-data bytes MinIO served through the proxy
	blobGets  atomic.Int64 // chunk-data GETs
	// storeLimit, when set, paces the chunk data MinIO serves through the
	// proxy, shared by every node: the cluster's bandwidth to its store.
	storeLimit atomic.Pointer[rate.Limiter]
	table      *schedule.Table
	scheduler  *schedule.Server
	seederURL  string
	bus        *bus.Bus
	nc         *nats.Conn
}

func newCluster(t testing.TB) *cluster {
	t.Helper()
	c := &cluster{t: t}
	c.nats = testenv.StartNATS(t, testenv.NATSOptions{})
	m := testenv.StartMinIO(t)
	bucket := m.Bucket(t, "skiff")
	t.Setenv(storeurl.EnvAccessKey, m.AccessKey)
	t.Setenv(storeurl.EnvSecretKey, m.SecretKey)
	ctx := context.Background()
	var err error
	if c.direct, err = storeurl.Open(ctx, "s3://"+bucket+"?endpoint="+m.Endpoint+"&insecure=true"); err != nil {
		t.Fatal(err)
	}
	// The proxy keeps the Host header, so S3 signatures made for the
	// proxy's address still match.
	target, _ := url.Parse("http://" + m.Endpoint)
	rp := httputil.NewSingleHostReverseProxy(target)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/"+store.BlobPrefix) {
			c.blobGets.Add(1)
			w = &countingWriter{ResponseWriter: w, n: &c.blobBytes, limit: c.storeLimit.Load(), ctx: r.Context()}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)
	c.storeURL = "s3://" + bucket + "?endpoint=" + strings.TrimPrefix(proxy.URL, "http://") + "&insecure=true"

	if c.nc, err = bus.Connect(c.nats.URL, "test"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.nc.Close)
	if c.bus, err = bus.New(c.nc); err != nil {
		t.Fatal(err)
	}

	// The scheduler, on its own connection, as skiff-scheduler runs it.
	snc, err := bus.Connect(c.nats.URL, "scheduler")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(snc.Close)
	c.table = schedule.NewTable(schedule.Options{TTL: 3 * time.Second})
	c.scheduler = schedule.NewServer(snc, c.table, slog.Default())
	c.run(func(ctx context.Context) error { return c.scheduler.Run(ctx, 250*time.Millisecond) })

	// The seeder service.
	c.seederURL = c.startSeeder(t, "seeder-1")
	eventually(t, "the seeder is announced", func() bool { return c.table.Stats(time.Now()).Seeders == 1 })
	return c
}

// startSeeder runs a seeder as skiff-seeder composes it, until the test
// ends, and returns the URL of its handler.
func (c *cluster) startSeeder(t testing.TB, id string) string {
	t.Helper()
	ctx := context.Background()
	st, err := storeurl.Open(ctx, c.storeURL)
	if err != nil {
		t.Fatal(err)
	}
	pieces, err := piece.Open(t.TempDir(), 1<<30, nil)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := bus.Connect(c.nats.URL, "skiff-seeder "+id, nats.RetryOnFailedConnect(true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	b, err := bus.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	const ackWait = 10 * time.Second
	cons, err := b.SeederConsumer(ctx, ackWait)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(Deps{ID: id, Advertise: ln.Addr().String(), Store: st, Pieces: pieces, NATS: nc, Completed: cons},
		WithConcurrency(1), WithAnnounceInterval(300*time.Millisecond), WithAckWait(ackWait))
	died := c.run(func(ctx context.Context) error {
		g, ctx := errgroup.WithContext(ctx)
		g.Go(func() error { return s.Serve(ctx, ln) })
		g.Go(func() error { return s.Announce(ctx) })
		g.Go(func() error { return s.ServeSeedRequests(ctx) })
		g.Go(func() error { return s.Preheat(ctx) })
		return g.Wait()
	})
	url := "http://" + ln.Addr().String()
	testenv.WaitHTTP(t, url+"/healthz", died)
	return url
}

type countingWriter struct {
	http.ResponseWriter
	n     *atomic.Int64
	limit *rate.Limiter // nil: unpaced
	ctx   context.Context
}

func (w *countingWriter) Write(b []byte) (int, error) {
	if w.limit == nil {
		n, err := w.ResponseWriter.Write(b)
		w.n.Add(int64(n))
		return n, err
	}
	written := 0
	for written < len(b) {
		part := b[written:min(len(b), written+w.limit.Burst())]
		if err := w.limit.WaitN(w.ctx, len(part)); err != nil {
			return written, err
		}
		n, err := w.ResponseWriter.Write(part)
		w.n.Add(int64(n))
		written += n
		if err != nil {
			return written, err
		}
	}
	return written, nil
}

// run runs fn until the test ends; the returned channel yields its error
// if it stops early.
func (c *cluster) run(fn func(ctx context.Context) error) <-chan error {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	early := make(chan error, 1)
	go func() {
		err := fn(ctx)
		done <- err
		early <- err
	}()
	c.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			c.t.Errorf("stopped with: %v", err)
		}
	})
	return early
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *cluster) seederStats(t testing.TB) Stats {
	t.Helper()
	resp, err := http.Get(c.seederURL + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s Stats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// convert converts a generated image into MinIO (directly, not counted)
// and returns its bootstrap and the total stored size of its frames.
func (c *cluster) convert(t testing.TB, seed uint64) (*bootstrap.Bootstrap, bootstrap.Digest, int64) {
	t.Helper()
	var entries []fixture.Entry
	entries = append(entries, fixture.Dir("data", 0o755))
	for i := range 6 {
		entries = append(entries, fixture.Entry{Header: fixture.File(fmt.Sprintf("data/r%d", i), 0o644, "").Header, Data: fixture.Random(seed*100+uint64(i), 90<<10+i*1000)})
	}
	for i := range 20 {
		entries = append(entries, fixture.File(fmt.Sprintf("data/small%02d", i), 0o644, string(fixture.Text(seed*1000+uint64(i), 3000))))
	}
	return c.convertEntries(t, entries, convert.Options{ChunkSize: 32 << 10, BatchSize: 16 << 10})
}

// convertEntries converts an image of one layer holding entries into
// MinIO (directly, not counted) and returns its bootstrap and the total
// stored size of its frames.
func (c *cluster) convertEntries(t testing.TB, entries []fixture.Entry, opts convert.Options) (*bootstrap.Bootstrap, bootstrap.Digest, int64) {
	t.Helper()
	img, err := fixture.OneLayer(entries)
	if err != nil {
		t.Fatal(err)
	}
	opts.WorkDir = c.t.TempDir()
	res, err := convert.New(c.direct, opts).Convert(context.Background(), img)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := c.direct.Get(context.Background(), store.BootstrapKey(res.Bootstrap.Hex()), 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	buf.ReadFrom(rc)
	rc.Close()
	b, err := bootstrap.Decode(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, fr := range b.Frames {
		total += int64(fr.CompressedSize)
	}
	return b, res.Bootstrap, total
}

// agent is a node: its Fetcher reads cache → peer source → store, keeps
// the pieces it receives, serves them and announces them, like
// skiff-agent mountd with P2P on.
type agent struct {
	id     string
	f      *fetch.Fetcher
	src    *peer.Source
	pieces *piece.Store
	server *piece.Server
	srv    *http.Server
}

// agentOptions are an agent's settings that tests and benchmarks vary;
// zero values are skiff-agent's defaults.
type agentOptions struct {
	uploadRate int64 // SKIFF_AGENT_PEER_UPLOAD_RATE
	parallel   int   // SKIFF_AGENT_PEER_PARALLEL
	// storeOnly: the node reads from the store alone, as with P2P off,
	// yet serves and announces what it holds.
	storeOnly bool
	// leech: the node reads from peers but neither serves nor announces,
	// so that what it reads changes no one's parents.
	leech bool
}

// agent starts a node; t is the (sub)test that may fail, the node runs
// until the whole test ends.
func (c *cluster) agent(t testing.TB, id string) *agent {
	t.Helper()
	return c.agentWith(t, id, agentOptions{})
}

func (c *cluster) agentWith(t testing.TB, id string, opts agentOptions) *agent {
	t.Helper()
	st, ch := c.node(t)
	pieces, err := piece.Open(filepath.Join(c.t.TempDir(), "pieces"), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := bus.Connect(c.nats.URL, id)
	if err != nil {
		t.Fatal(err)
	}
	c.t.Cleanup(nc.Close)
	a := &agent{id: id, pieces: pieces}
	a.src = peer.NewSource(nc, id, nil, peer.SourceOptions{PieceTimeout: time.Second, Parallel: opts.parallel})
	sources := []fetch.Source{a.src, fetch.NewStoreSource("store", st)}
	if opts.storeOnly {
		sources = sources[1:]
	}
	a.f = fetch.New(ch, sources, fetch.WithFrameSink(pieces))
	c.t.Cleanup(a.f.Flush)
	if opts.leech {
		return a
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := piece.NewServer(pieces, nil, nil, piece.WithUploadRate(opts.uploadRate))
	a.server = server
	a.srv = &http.Server{Handler: server}
	go a.srv.Serve(ln)
	c.t.Cleanup(func() { a.srv.Close() })
	ann := &peer.Announcer{NC: nc, ID: id, Addr: ln.Addr().String(), Role: schedule.RolePeer, Store: pieces, Load: server.Load, Interval: 300 * time.Millisecond}
	c.run(ann.Run)
	eventually(t, id+" is announced", func() bool {
		_, ok := c.table.Peer(id, time.Now())
		return ok
	})
	return a
}

// storeAgent starts a node that reads cache → store only, as skiff-agent
// mountd does with P2P off.
func (c *cluster) storeAgent(t testing.TB, id string) *agent {
	t.Helper()
	st, ch := c.node(t)
	a := &agent{id: id, f: fetch.New(ch, []fetch.Source{fetch.NewStoreSource("store", st)})}
	c.t.Cleanup(a.f.Flush)
	return a
}

// node opens a node's store, through the counting proxy, and its own
// chunk cache.
func (c *cluster) node(t testing.TB) (store.Store, *cache.Cache) {
	t.Helper()
	st, err := storeurl.Open(context.Background(), c.storeURL)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := cache.Open(filepath.Join(c.t.TempDir(), "cache"), 0)
	if err != nil {
		t.Fatal(err)
	}
	return st, ch
}

// readAll reads every stored chunk of b and checks it.
func (a *agent) readAll(t testing.TB, b *bootstrap.Bootstrap) {
	t.Helper()
	for i, ch := range b.Chunks {
		data, err := a.f.ReadChunk(context.Background(), b, uint32(i))
		if err != nil {
			t.Fatalf("%s: chunk %d: %v", a.id, i, err)
		}
		if bootstrap.Sum(data) != ch.Digest {
			t.Fatalf("%s: chunk %d: wrong content", a.id, i)
		}
	}
}

// source returns the named source's fetch statistics.
func (a *agent) source(name string) fetch.SourceStats {
	for _, s := range a.f.Stats().Sources {
		if s.Name == name {
			return s
		}
	}
	return fetch.SourceStats{}
}

// preheat has the seeder preheat the image of bootstrap b (digest), as a
// conversion completing does, and waits until the scheduler knows.
func (c *cluster) preheat(t testing.TB, b *bootstrap.Bootstrap, digest bootstrap.Digest) {
	t.Helper()
	c.preheatEvent(t, &skiffv1.ConversionCompleted{Target: "test/app:v1-skiff", BootstrapDigest: digest.String()}, b)
}

// preheatEvent publishes ev and waits until the seeder has preheated it
// and the scheduler knows it holds every image of bs.
func (c *cluster) preheatEvent(t testing.TB, ev *skiffv1.ConversionCompleted, bs ...*bootstrap.Bootstrap) {
	t.Helper()
	before := c.seederStats(t).Preheats
	if _, err := c.bus.Publish(context.Background(), bus.SubjectCompleted, "", ev); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the seeder preheated the image", func() bool { return c.seederStats(t).Preheats == before+1 })
	for _, b := range bs {
		eventually(t, "the seeder is known to hold the image", func() bool { return c.holdsAll("seeder-1", b) })
	}
}

// holdsAll reports whether the table lists id as holding every frame of b.
func (c *cluster) holdsAll(id string, b *bootstrap.Bootstrap) bool {
	p, ok := c.table.Peer(id, time.Now())
	if !ok {
		return false
	}
	for _, fr := range b.Frames {
		if !p.Holdings[b.Blobs[fr.Blob]].Covers(fr.Offset, fr.Offset+int64(fr.CompressedSize)) {
			return false
		}
	}
	return true
}

func TestPiecesLeaveTheStoreOncePerCluster(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()

	// A conversion completes: the seeder preheats it, reading each frame
	// from the store once.
	b, digest, total := c.convert(t, 1)
	c.preheat(t, b, digest)
	preheated := c.blobBytes.Load()
	if preheated < total || preheated > total+total/10 {
		t.Fatalf("preheat read %d bytes of chunk data from the store, want about %d (each frame once)", preheated, total)
	}
	t.Logf("preheat: %d frames, %d bytes from the store in %d GETs", len(b.Frames), preheated, c.blobGets.Load())

	t.Run("first agent reads from the seeder", func(t *testing.T) {
		a := c.agent(t, "agent-a")
		a.readAll(t, b)
		if got := c.blobBytes.Load(); got != preheated {
			t.Errorf("store served %d more bytes", got-preheated)
		}
		if s := a.src.Stats(); s.FromSeeders == 0 || a.source("store").Requests != 0 {
			t.Errorf("agent-a: peer %+v, store %+v", s, a.source("store"))
		}
		eventually(t, "agent-a is known to hold the image", func() bool { return c.holdsAll("agent-a", b) })
	})

	t.Run("second agent reads from the first", func(t *testing.T) {
		bAgent := c.agent(t, "agent-b")
		bAgent.readAll(t, b)
		if got := c.blobBytes.Load(); got != preheated {
			t.Errorf("store served %d more bytes", got-preheated)
		}
		s := bAgent.src.Stats()
		if s.FromPeers == 0 || s.FromPeers != s.Requests || bAgent.source("store").Requests != 0 {
			t.Errorf("agent-b should read everything from agent-a: peer %+v, store %+v", s, bAgent.source("store"))
		}
	})

	t.Run("a piece nobody holds is seeded once", func(t *testing.T) {
		// No completed event: nobody preheats this one.
		b2, _, total2 := c.convert(t, 2)
		before := c.blobBytes.Load()
		x := c.agent(t, "agent-x")
		x.readAll(t, b2)
		seeded := c.blobBytes.Load() - before
		if seeded < total2 || seeded > total2+total2/10 {
			t.Errorf("on-demand seeding read %d bytes from the store, want about %d", seeded, total2)
		}
		if x.source("store").Requests != 0 || c.seederStats(t).Seeds == 0 {
			t.Errorf("agent-x should read through the seeder: store %+v, seeder %+v", x.source("store"), c.seederStats(t))
		}
		y := c.agent(t, "agent-y")
		y.readAll(t, b2)
		if got := c.blobBytes.Load() - before; got != seeded {
			t.Errorf("second reader made the store serve %d more bytes", got-seeded)
		}
	})

	t.Run("nodes starting at once take each piece from the store once", func(t *testing.T) {
		// Nobody holds this image and all ask at once: the seeder the
		// scheduler names fetches each piece once for all of them,
		// and sends it to as many as the scheduler's MaxChildren (4);
		// the others get it from those.
		b4, _, total4 := c.convert(t, 4)
		nodes := make([]*agent, 6)
		for i := range nodes {
			nodes[i] = c.agent(t, fmt.Sprintf("agent-at-once-%d", i))
		}
		sentBefore := c.seederStats(t).Server.ServedBytes
		_, served := c.startAll(t, nodes, b4)
		if served < total4 || served > total4+total4/10 {
			t.Errorf("%d nodes starting at once made the store serve %d bytes, want about %d", len(nodes), served, total4)
		}
		var fromPeers int64
		for _, a := range nodes {
			if a.source("store").Requests != 0 {
				t.Errorf("%s went to the store: %+v", a.id, a.source("store"))
			}
			fromPeers += a.src.Stats().FromPeers
		}
		sent := c.seederStats(t).Server.ServedBytes - sentBefore
		if fromPeers == 0 || sent >= int64(len(nodes))*total4 {
			t.Errorf("the seeder sent %d bytes (%d nodes × %d), and nodes read %d ranges from each other: every node read from the seeder", sent, len(nodes), total4, fromPeers)
		}
	})

	t.Run("dead peer costs a retry, not a read", func(t *testing.T) {
		dead := c.agent(t, "agent-dead")
		dead.readAll(t, b)
		eventually(t, "agent-dead is known to hold the image", func() bool { return c.holdsAll("agent-dead", b) })
		// Its server dies; it keeps being announced (the worst case: a
		// zombie the scheduler still believes in).
		dead.srv.Close()
		before := c.blobBytes.Load()
		for i := range 3 {
			r := c.agent(t, fmt.Sprintf("agent-after-death-%d", i))
			r.readAll(t, b)
			if r.source("store").Requests != 0 {
				t.Errorf("%s went to the store: %+v", r.id, r.source("store"))
			}
		}
		if got := c.blobBytes.Load(); got != before {
			t.Errorf("store served %d more bytes", got-before)
		}
	})

	t.Run("hostile peer is rejected and reported", func(t *testing.T) {
		// A peer holding every frame, each with one byte flipped.
		bad := c.agent(t, "agent-hostile")
		for _, fr := range b.Frames {
			raw, err := c.storeRange(b.Blobs[fr.Blob], fr.Offset, int64(fr.CompressedSize))
			if err != nil {
				t.Fatal(err)
			}
			raw[len(raw)/2] ^= 0xff
			if err := bad.pieces.Put(b.Blobs[fr.Blob], fr.Offset, raw); err != nil {
				t.Fatal(err)
			}
		}
		eventually(t, "agent-hostile is known to hold the image", func() bool { return c.holdsAll("agent-hostile", b) })
		// A victim the scheduler ranks the hostile peer first for (ties
		// between idle holders are spread by hashing the asker).
		victim := ""
		for i := 0; victim == ""; i++ {
			name := fmt.Sprintf("agent-victim-%d", i)
			if ps := c.table.Parents(name, b.Blobs[0], b.Frames[0].Offset, int64(b.Frames[0].CompressedSize), time.Now()); len(ps) > 0 && ps[0].ID == "agent-hostile" {
				victim = name
			}
		}
		v := c.agent(t, victim)
		v.readAll(t, b)
		s := v.src.Stats()
		if s.Rejected == 0 || !strings.Contains(strings.Join(s.Banned, ","), "agent-hostile") {
			t.Errorf("victim did not ban the hostile peer: %+v", s)
		}
		eventually(t, "the scheduler set the hostile peer aside", func() bool { return c.table.Stats(time.Now()).Quarantined >= 1 })
		for _, p := range c.table.Parents("someone", b.Blobs[0], b.Frames[0].Offset, int64(b.Frames[0].CompressedSize), time.Now()) {
			if p.ID == "agent-hostile" {
				t.Error("hostile peer still offered as a parent")
			}
		}
	})

	t.Run("every platform of a multi-platform conversion is preheated", func(t *testing.T) {
		amd, amdDigest, _ := c.convert(t, 21)
		arm, armDigest, _ := c.convert(t, 22)
		c.preheatEvent(t, &skiffv1.ConversionCompleted{Target: "test/multi:v1-skiff", BootstrapDigest: amdDigest.String(),
			BootstrapDigests: []string{amdDigest.String(), armDigest.String()}}, amd, arm)
	})

	t.Run("seed request", func(t *testing.T) {
		var reply skiffv1.SeedReply
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := bus.Request(rctx, c.nc, bus.SubjectSeed("seeder-1"), &skiffv1.SeedRequest{BootstrapDigest: digest.String()}, &reply); err != nil {
			t.Fatal(err)
		}
		if reply.GetError() != "" || reply.GetFrames() != 0 {
			t.Errorf("seeding a preheated image: %+v", &reply)
		}
		// A part of a range (read from several parents) seeds the frames
		// it lies in, held already here.
		reply.Reset()
		if err := bus.Request(rctx, c.nc, bus.SubjectSeed("seeder-1"), &skiffv1.SeedRequest{Blob: b.Blobs[0][:], Offset: 1, Size: 10}, &reply); err != nil {
			t.Fatal(err)
		}
		if reply.GetError() != "" || reply.GetFrames() != 0 {
			t.Errorf("seeding a range inside a held frame: %+v", &reply)
		}
		last := b.Frames[len(b.Frames)-1]
		end := last.Offset + int64(last.CompressedSize)
		if err := bus.Request(rctx, c.nc, bus.SubjectSeed("seeder-1"), &skiffv1.SeedRequest{Blob: b.Blobs[0][:], Offset: uint64(end - 5), Size: 10}, &reply); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(reply.GetError(), "not within the blob's frames") {
			t.Errorf("seeding a range past the blob's end: %+v", &reply)
		}
		// An image converted with no event the seeder saw (as
		// `skiffctl preheat` asks): the reply comes when it is held.
		b3, digest3, total3 := c.convert(t, 3)
		reply.Reset()
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := bus.Request(pctx, c.nc, bus.SubjectSeed("seeder-1"), &skiffv1.SeedRequest{BootstrapDigest: digest3.String()}, &reply); err != nil {
			t.Fatal(err)
		}
		if reply.GetError() != "" || reply.GetFrames() != int64(len(b3.Frames)) || reply.GetBytes() != total3 {
			t.Errorf("preheating an image on request: %+v, want %d frames, %d bytes", &reply, len(b3.Frames), total3)
		}
		eventually(t, "the seeder is known to hold the image", func() bool { return c.holdsAll("seeder-1", b3) })
	})

	t.Run("NATS down falls back to the store", func(t *testing.T) {
		late := c.agent(t, "agent-late")
		c.nats.Stop()
		defer c.nats.Start()
		eventually(t, "agent-late notices", func() bool { return !late.src.Connected() })
		start := time.Now()
		late.readAll(t, b)
		s := late.src.Stats()
		if s.NoScheduler == 0 || late.source("store").Frames == 0 {
			t.Errorf("without NATS: peer %+v, store %+v", s, late.source("store"))
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("reading without NATS took %s", d)
		}
	})
}

// storeRange reads bytes of a blob from MinIO directly.
func (c *cluster) storeRange(blob bootstrap.Digest, off, size int64) ([]byte, error) {
	rc, err := c.direct.Get(context.Background(), store.BlobKey(blob.Hex()), off, size)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	var buf bytes.Buffer
	_, err = buf.ReadFrom(rc)
	return buf.Bytes(), err
}
