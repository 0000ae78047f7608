package piece

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"golang.org/x/time/rate"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/telemetry"
)

// Path is where a Server serves pieces: GET Path +
// "<blob hex>?offset=N&size=N[&wait=MS]". With wait, a server that does
// not hold the range waits up to MS milliseconds (at most MaxWait) for it
// to arrive before answering 404: its node is fetching it (see
// schedule.Parent.Fetching).
const Path = "/pieces/"

// MaxWait bounds the wait a request may ask for.
const MaxWait = 30 * time.Second

// Seeder brings a range of a blob into the store from elsewhere (the blob
// store), verified. A seeder's Server uses one to answer requests for
// pieces it does not hold yet.
type Seeder interface {
	Seed(ctx context.Context, blob bootstrap.Digest, off, size int64) error
}

// Server serves the pieces of a Store over HTTP.
type Server struct {
	store  *Store
	seeder Seeder // nil: only what is held is served
	log    *slog.Logger
	upload *rate.Limiter // nil: unlimited

	load                           atomic.Int32
	served, missed, seeded, waited atomic.Int64
	servedBytes, seedErrors        atomic.Int64
}

// ServerOption tunes a Server.
type ServerOption func(*Server)

// WithUploadRate bounds the bytes a Server sends a second, over all its
// requests together, so that serving peers leaves a node's network to its
// own containers (Dragonfly's upload rate limit). 0 or less: unlimited.
func WithUploadRate(bytesPerSecond int64) ServerOption {
	return func(s *Server) {
		if bytesPerSecond > 0 {
			s.upload = rate.NewLimiter(rate.Limit(bytesPerSecond), int(min(bytesPerSecond, uploadBurst)))
		}
	}
}

// uploadBurst is the most a rate-limited Server sends at once.
const uploadBurst = 256 << 10

// NewServer serves st; seeder, if not nil, is asked for ranges st lacks.
func NewServer(st *Store, seeder Seeder, log *slog.Logger, opts ...ServerOption) *Server {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{store: st, seeder: seeder, log: log}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Load is the number of requests being served, which peers announce so
// the scheduler can spread readers.
func (s *Server) Load() int { return int(s.load.Load()) }

// ServerStats counts a Server's requests.
type ServerStats struct {
	Served      int64 `json:"served"`      // requests answered with data
	ServedBytes int64 `json:"servedBytes"` // bytes sent
	Missed      int64 `json:"missed"`      // requests for ranges not held (404)
	Seeded      int64 `json:"seeded"`      // requests answered after seeding
	SeedErrors  int64 `json:"seedErrors"`  // seeding failures (502)
	Waited      int64 `json:"waited"`      // requests answered after waiting for the range to arrive
}

// Stats returns current counters.
func (s *Server) Stats() ServerStats {
	return ServerStats{Served: s.served.Load(), ServedBytes: s.servedBytes.Load(), Missed: s.missed.Load(), Seeded: s.seeded.Load(), SeedErrors: s.seedErrors.Load(), Waited: s.waited.Load()}
}

// ServeHTTP answers GET Path<blob hex>?offset=&size= with exactly size
// bytes, 404 when the range is not held (and cannot be seeded).
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.load.Add(1)
	defer s.load.Add(-1)
	if r.Method != http.MethodGet {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	blob, off, size, wait, err := parseRequest(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ctx, span := telemetry.Tracer("skiff/piece").Start(telemetry.ExtractHTTP(r.Context(), r.Header), "piece.serve")
	defer span.End()
	span.SetAttributes(attribute.String("skiff.blob", blob.String()), attribute.Int64("skiff.offset", off), attribute.Int64("skiff.size", size))
	piece, err := s.store.Open(blob, off, size)
	if errors.Is(err, ErrNotHeld) && s.seeder != nil {
		if serr := s.seeder.Seed(ctx, blob, off, size); serr != nil {
			s.seedErrors.Add(1)
			span.RecordError(serr)
			span.SetStatus(codes.Error, "seed failed")
			s.log.Warn("piece: seed failed", "blob", blob, "offset", off, "size", size, "err", serr)
			http.Error(w, serr.Error(), http.StatusBadGateway)
			return
		}
		s.seeded.Add(1)
		piece, err = s.store.Open(blob, off, size)
	}
	if errors.Is(err, ErrNotHeld) && s.seeder == nil && wait > 0 {
		wctx, cancel := context.WithTimeout(ctx, wait)
		err = s.store.Await(wctx, blob, off, size)
		cancel()
		if err == nil {
			s.waited.Add(1)
			piece, err = s.store.Open(blob, off, size)
		}
	}
	switch {
	case errors.Is(err, ErrNotHeld):
		s.missed.Add(1)
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	case err != nil:
		span.RecordError(err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer piece.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(piece.Size(), 10))
	// Streamed from the frame files, not gathered in memory: a seeder
	// answers many peers at once, each asking up to MaxSize.
	var out io.Writer = w
	if s.upload != nil {
		out = &pacedWriter{w: w, limit: s.upload, ctx: ctx}
	}
	n, err := piece.WriteTo(out)
	s.servedBytes.Add(n)
	if err != nil {
		// The peer left, or the connection broke; the peer verifies
		// what it got and sees a short body.
		s.log.Debug("piece: send", "blob", blob, "offset", off, "size", size, "err", err)
		return
	}
	s.served.Add(1)
}

func parseRequest(r *http.Request) (blob bootstrap.Digest, off, size int64, wait time.Duration, err error) {
	hex, ok := strings.CutPrefix(r.URL.Path, Path)
	if !ok {
		return blob, 0, 0, 0, fmt.Errorf("path %q is not under %s", r.URL.Path, Path)
	}
	blob, err = bootstrap.ParseDigest("sha256:" + hex)
	if err != nil {
		return blob, 0, 0, 0, fmt.Errorf("blob: %w", err)
	}
	q := r.URL.Query()
	off, err = strconv.ParseInt(q.Get("offset"), 10, 64)
	if err != nil || off < 0 {
		return blob, 0, 0, 0, fmt.Errorf("bad offset %q", q.Get("offset"))
	}
	size, err = strconv.ParseInt(q.Get("size"), 10, 64)
	if err != nil || size <= 0 || size > MaxSize {
		return blob, 0, 0, 0, fmt.Errorf("bad size %q", q.Get("size"))
	}
	if off > math.MaxInt64-size {
		// The range's end would wrap negative, which every range check
		// after this one would have to catch.
		return blob, 0, 0, 0, fmt.Errorf("bad range: offset %d + size %d overflows", off, size)
	}
	if w := q.Get("wait"); w != "" {
		ms, err := strconv.ParseInt(w, 10, 64)
		if err != nil || ms < 0 || ms > MaxWait.Milliseconds() {
			return blob, 0, 0, 0, fmt.Errorf("bad wait %q (milliseconds, at most %d)", w, MaxWait.Milliseconds())
		}
		wait = time.Duration(ms) * time.Millisecond
	}
	return blob, off, size, wait, nil
}

// MaxSize bounds one piece request; the Fetcher's merged requests stay
// well below it.
const MaxSize = 64 << 20

// pacedWriter passes writes on no faster than its limiter allows. It has
// no ReadFrom, so the piece's files are copied through a buffer rather
// than sent by the kernel: the pace needs the bytes to pass here.
type pacedWriter struct {
	w     io.Writer
	limit *rate.Limiter
	ctx   context.Context
}

func (p *pacedWriter) Write(b []byte) (int, error) {
	written := 0
	for written < len(b) {
		part := b[written:min(len(b), written+p.limit.Burst())]
		if err := p.limit.WaitN(p.ctx, len(part)); err != nil {
			return written, fmt.Errorf("upload rate: %w", err)
		}
		n, err := p.w.Write(part)
		written += n
		if err != nil {
			return written, err
		}
	}
	return written, nil
}
