package piece

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// ErrNotHeld is returned (wrapped) for a range the store does not hold
// entirely.
var ErrNotHeld = errors.New("piece not held")

// Store keeps frames as stored in blobs, one file per frame under
// dir/<blob hex>/<offset>, and forgets the oldest frames when it grows
// past its limit. It is a fetch.FrameSink: a Fetcher hands it every frame
// it verified. Safe for concurrent use.
type Store struct {
	dir string
	max int64 // bytes; 0 = unlimited
	log *slog.Logger

	mu     sync.Mutex
	frames map[bootstrap.Digest]map[int64]int64 // blob → offset → size
	queue  []frameKey                           // insertion order, for eviction
	size   int64
	gen    atomic.Uint64 // bumped on every change of holdings
	// added is closed, and replaced, whenever a frame is added: Await
	// waits on it.
	added chan struct{}
}

type frameKey struct {
	blob bootstrap.Digest
	off  int64
}

// Holding is what the store holds of one blob.
type Holding struct {
	Blob   bootstrap.Digest
	Ranges Ranges
}

// tempPrefix starts the name of a frame file still being written.
const tempPrefix = ".tmp-"

// staleTempAge is how old a temporary file must be for Open to take it for
// the leftover of a crashed write. Younger ones may be writes in progress:
// a mount process taking over from another opens the store while the old
// one still runs, and a write lasts milliseconds.
const staleTempAge = 10 * time.Minute

// Open opens (creating it if needed) the store in dir, keeping at most
// maxBytes (0: no limit). Frames left by an earlier process are served
// again: they were verified when they were written. Temporary files of
// writes that crashed are removed once older than staleTempAge. Failures
// to write or remove frames go to log (nil: slog.Default()).
func Open(dir string, maxBytes int64, log *slog.Logger) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open piece store: %w", err)
	}
	if log == nil {
		log = slog.Default()
	}
	s := &Store{dir: dir, max: maxBytes, log: log, frames: map[bootstrap.Digest]map[int64]int64{}, added: make(chan struct{})}
	type found struct {
		k    frameKey
		size int64
		mod  int64
	}
	var all []found
	now := time.Now()
	blobs, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("open piece store: %w", err)
	}
	for _, bd := range blobs {
		blob, err := bootstrap.ParseDigest("sha256:" + bd.Name())
		if err != nil || !bd.IsDir() {
			continue
		}
		ents, err := os.ReadDir(filepath.Join(dir, bd.Name()))
		if err != nil {
			return nil, fmt.Errorf("open piece store: %w", err)
		}
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), tempPrefix) {
				s.removeStaleTemp(filepath.Join(dir, bd.Name(), e.Name()), e, now)
				continue
			}
			off, err := strconv.ParseInt(e.Name(), 10, 64)
			if err != nil || off < 0 {
				continue
			}
			info, err := e.Info()
			if err != nil || !info.Mode().IsRegular() || info.Size() == 0 {
				continue
			}
			all = append(all, found{frameKey{blob, off}, info.Size(), info.ModTime().UnixNano()})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].mod < all[j].mod })
	for _, f := range all {
		s.add(f.k, f.size)
	}
	s.evict()
	return s, nil
}

// removeStaleTemp removes the temporary file p of a write that crashed
// long enough ago. Failing to is only space not reclaimed.
func (s *Store) removeStaleTemp(p string, e fs.DirEntry, now time.Time) {
	info, err := e.Info()
	if err != nil || !info.Mode().IsRegular() || now.Sub(info.ModTime()) < staleTempAge {
		return
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("piece: remove temporary file of a crashed write", "path", p, "err", err)
	}
}

func (s *Store) path(k frameKey) string {
	return filepath.Join(s.dir, k.blob.Hex(), strconv.FormatInt(k.off, 10))
}

// add records a frame; s.mu must be held (or s not yet shared).
func (s *Store) add(k frameKey, size int64) {
	m := s.frames[k.blob]
	if m == nil {
		m = map[int64]int64{}
		s.frames[k.blob] = m
	}
	m[k.off] = size
	s.queue = append(s.queue, k)
	s.size += size
	s.gen.Add(1)
	close(s.added)
	s.added = make(chan struct{})
}

// evict drops the oldest frames until the store fits its limit.
func (s *Store) evict() {
	for s.max > 0 && s.size > s.max && len(s.queue) > 0 {
		k := s.queue[0]
		s.queue = s.queue[1:]
		size, ok := s.frames[k.blob][k.off]
		if !ok {
			continue
		}
		delete(s.frames[k.blob], k.off)
		if len(s.frames[k.blob]) == 0 {
			delete(s.frames, k.blob)
		}
		s.size -= size
		s.gen.Add(1)
		if err := os.Remove(s.path(k)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("piece: evict frame", "blob", k.blob, "offset", k.off, "err", err)
		}
	}
}

// KeepFrame stores one verified frame; it implements fetch.FrameSink.
// Failures are logged: a frame not kept is only a frame not shared.
func (s *Store) KeepFrame(blob bootstrap.Digest, off int64, raw []byte) {
	if err := s.Put(blob, off, raw); err != nil {
		s.log.Warn("piece: keep frame", "blob", blob, "offset", off, "err", err)
	}
}

// Put stores the frame of blob at off.
func (s *Store) Put(blob bootstrap.Digest, off int64, raw []byte) error {
	if off < 0 || len(raw) == 0 {
		return fmt.Errorf("put piece %s@%d: empty or negative range", blob, off)
	}
	k := frameKey{blob, off}
	s.mu.Lock()
	_, held := s.frames[blob][off]
	s.mu.Unlock()
	if held {
		return nil
	}
	p := s.path(k)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("put piece %s@%d: %w", blob, off, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), tempPrefix+"*")
	if err != nil {
		return fmt.Errorf("put piece %s@%d: %w", blob, off, err)
	}
	_, err = tmp.Write(raw)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), p)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("put piece %s@%d: %w", blob, off, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, held := s.frames[blob][off]; !held {
		s.add(k, int64(len(raw)))
		s.evict()
	}
	return nil
}

// span lists the frames [off, off+size) of blob lies in, and where in
// the first frame it starts; nil when the store does not hold all of it.
// A range may start and end inside frames: a node reads one range from
// several parents at once, in parts cut without knowing where frames
// begin.
func (s *Store) span(blob bootstrap.Digest, off, size int64) (ks []frameKey, sizes []int64, skip int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.frames[blob]
	start := off
	if _, ok := m[off]; !ok {
		// Inside a frame, or not held: a walk of the blob's frames is
		// rare enough (only parts of a split range start there).
		found := false
		for pos, n := range m {
			if pos < off && off < pos+n {
				start, found = pos, true
				break
			}
		}
		if !found {
			return nil, nil, 0
		}
	}
	for pos, end := start, off+size; pos < end; {
		n, ok := m[pos]
		if !ok {
			return nil, nil, 0
		}
		ks, sizes = append(ks, frameKey{blob, pos}), append(sizes, n)
		pos += n
	}
	return ks, sizes, off - start
}

// Has reports whether the store holds all of [off, off+size) of blob.
func (s *Store) Has(blob bootstrap.Digest, off, size int64) bool {
	if size <= 0 {
		return false
	}
	ks, _, _ := s.span(blob, off, size)
	return ks != nil
}

// Await returns once the store holds all of [off, off+size) of blob, or
// with an error wrapping ErrNotHeld when ctx ends first: a node serves a
// range it is fetching itself to peers that arrive meanwhile.
func (s *Store) Await(ctx context.Context, blob bootstrap.Digest, off, size int64) error {
	for {
		// The channel is taken before looking, so that a frame added
		// between the look and the wait still ends the wait.
		s.mu.Lock()
		added := s.added
		s.mu.Unlock()
		if s.Has(blob, off, size) {
			return nil
		}
		select {
		case <-added:
		case <-ctx.Done():
			return fmt.Errorf("await piece %s [%d,+%d): %w: %w", blob, off, size, ErrNotHeld, context.Cause(ctx))
		}
	}
}

// Piece is a held range of a blob, open for reading. Its frame files are
// opened together, so that an eviction while it is sent cannot tear it,
// and sent as files, which the kernel copies to a socket itself.
type Piece struct {
	files []*os.File
	skip  int64 // bytes of the first file before the range
	size  int64
}

// Size is the piece's length in bytes.
func (p *Piece) Size() int64 { return p.size }

// WriteTo writes the piece to w.
func (p *Piece) WriteTo(w io.Writer) (int64, error) {
	var n int64
	for i, f := range p.files {
		if i == 0 && p.skip > 0 {
			if _, err := f.Seek(p.skip, io.SeekStart); err != nil {
				return n, err
			}
		}
		// io.CopyN still lets the kernel copy the file to a socket.
		m, err := io.CopyN(w, f, p.size-n)
		n += m
		if err != nil && !errors.Is(err, io.EOF) {
			return n, err
		}
		if n == p.size {
			break
		}
	}
	if n != p.size {
		return n, fmt.Errorf("piece: frame files ended after %d of %d bytes", n, p.size)
	}
	return n, nil
}

// Close closes the piece's files.
func (p *Piece) Close() error {
	var errs []error
	for _, f := range p.files {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}

// Open opens [off, off+size) of blob, which must lie in held frames;
// otherwise the error wraps ErrNotHeld.
func (s *Store) Open(blob bootstrap.Digest, off, size int64) (*Piece, error) {
	if off < 0 || size <= 0 {
		return nil, fmt.Errorf("open piece %s [%d,+%d): bad range", blob, off, size)
	}
	ks, sizes, skip := s.span(blob, off, size)
	if ks == nil {
		return nil, fmt.Errorf("open piece %s [%d,+%d): %w", blob, off, size, ErrNotHeld)
	}
	p := &Piece{size: size, skip: skip}
	for i, k := range ks {
		f, err := os.Open(s.path(k))
		if err == nil {
			p.files = append(p.files, f)
			var fi os.FileInfo
			if fi, err = f.Stat(); err == nil && fi.Size() != sizes[i] {
				err = fmt.Errorf("frame file changed size: %w", ErrNotHeld)
			}
		}
		if errors.Is(err, fs.ErrNotExist) {
			// Evicted between span and here.
			err = ErrNotHeld
		}
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("open piece %s [%d,+%d): %w", blob, off, size, err)
		}
	}
	return p, nil
}

// Holdings lists what the store holds, by blob, as merged ranges.
func (s *Store) Holdings() []Holding {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Holding, 0, len(s.frames))
	for blob, m := range s.frames {
		rs := make([]Range, 0, len(m))
		for off, n := range m {
			rs = append(rs, Range{off, off + n})
		}
		out = append(out, Holding{Blob: blob, Ranges: Normalize(rs)})
	}
	sort.Slice(out, func(i, j int) bool { return string(out[i].Blob[:]) < string(out[j].Blob[:]) })
	return out
}

// Generation changes whenever the holdings do, so an announcer can tell
// whether there is news without comparing holdings.
func (s *Store) Generation() uint64 { return s.gen.Load() }

// Size returns the bytes held.
func (s *Store) Size() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.size
}

// Free returns the bytes the store can take before it evicts, or -1 when
// it has no limit.
func (s *Store) Free() int64 {
	if s.max <= 0 {
		return -1
	}
	return max(s.max-s.Size(), 0)
}
