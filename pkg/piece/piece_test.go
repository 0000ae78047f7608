package piece

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

func TestRanges(t *testing.T) {
	tests := []struct {
		name     string
		in       []Range
		want     Ranges
		off, end int64
		covers   bool
	}{
		{"empty", nil, Ranges{}, 0, 1, false},
		{"adjacent merge", []Range{{10, 20}, {0, 10}}, Ranges{{0, 20}}, 5, 20, true},
		{"gap kept", []Range{{0, 10}, {11, 20}}, Ranges{{0, 10}, {11, 20}}, 5, 15, false},
		{"overlap merge", []Range{{0, 10}, {5, 30}, {40, 50}}, Ranges{{0, 30}, {40, 50}}, 40, 50, true},
		{"empty dropped", []Range{{5, 5}, {7, 9}}, Ranges{{7, 9}}, 7, 9, true},
		{"past end", []Range{{0, 10}}, Ranges{{0, 10}}, 5, 11, false},
		{"before start", []Range{{10, 20}}, Ranges{{10, 20}}, 9, 12, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Normalize(tt.in)
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("Normalize(%v) = %v, want %v", tt.in, got, tt.want)
			}
			if c := got.Covers(tt.off, tt.end); c != tt.covers {
				t.Errorf("%v.Covers(%d, %d) = %v, want %v", got, tt.off, tt.end, c, tt.covers)
			}
		})
	}
}

var (
	blobA = bootstrap.Sum([]byte("a"))
	blobB = bootstrap.Sum([]byte("b"))
)

// frames puts frames of the given sizes back to back at the start of
// blob and returns the blob's bytes.
func frames(t *testing.T, s *Store, blob bootstrap.Digest, sizes ...int) []byte {
	t.Helper()
	var all []byte
	for i, n := range sizes {
		data := bytes.Repeat([]byte{byte(i + 1)}, n)
		if err := s.Put(blob, int64(len(all)), data); err != nil {
			t.Fatal(err)
		}
		all = append(all, data...)
	}
	return all
}

// readPiece reads a piece whole.
func readPiece(s *Store, blob bootstrap.Digest, off, size int64) ([]byte, error) {
	p, err := s.Open(blob, off, size)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	var b bytes.Buffer
	if _, err := p.WriteTo(&b); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// TestPieceOutlivesEviction: a piece opened before its frames are evicted
// is still sent whole.
func TestPieceOutlivesEviction(t *testing.T) {
	s, err := Open(t.TempDir(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	all := frames(t, s, blobA, 10, 20)
	p, err := s.Open(blobA, 0, 30)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ks, _, _ := s.span(blobA, 0, 30)
	for _, k := range ks {
		if err := os.Remove(s.path(k)); err != nil {
			t.Fatal(err)
		}
	}
	var b bytes.Buffer
	if n, err := p.WriteTo(&b); err != nil || n != 30 || !bytes.Equal(b.Bytes(), all) {
		t.Fatalf("piece after its files went: %d bytes, %v", n, err)
	}
	if _, err := s.Open(blobA, 0, 30); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("open after the files went: %v, want ErrNotHeld", err)
	}
}

func TestStoreRead(t *testing.T) {
	s, err := Open(t.TempDir(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	all := frames(t, s, blobA, 10, 20, 30)
	// A second blob with a hole: frames [0,10) and [20,30).
	if err := s.Put(blobB, 0, all[:10]); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(blobB, 20, all[20:30]); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		blob      bootstrap.Digest
		off, size int64
		ok        bool
	}{
		{"one frame", blobA, 10, 20, true},
		{"all frames", blobA, 0, 60, true},
		{"two frames", blobA, 10, 50, true},
		// Parts of a range read from several parents start and end
		// anywhere.
		{"inside a frame", blobA, 5, 3, true},
		{"ends inside a frame", blobA, 0, 15, true},
		{"starts inside a frame", blobA, 25, 35, true},
		{"inside frames at both ends", blobA, 5, 50, true},
		{"past the end", blobA, 30, 40, false},
		{"starts past the end", blobA, 60, 1, false},
		{"zero size", blobA, 0, 0, false},
		{"held part before a hole", blobB, 5, 3, true},
		{"across a hole", blobB, 5, 10, false},
		{"after a hole", blobB, 22, 5, true},
		{"in a hole", blobB, 10, 5, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readPiece(s, tt.blob, tt.off, tt.size)
			if tt.ok != (err == nil) || s.Has(tt.blob, tt.off, tt.size) != tt.ok {
				t.Fatalf("Read [%d,+%d): err %v, want ok=%v", tt.off, tt.size, err, tt.ok)
			}
			if tt.ok && !bytes.Equal(got, all[tt.off:tt.off+tt.size]) {
				t.Fatal("wrong bytes")
			}
		})
	}
	got := map[bootstrap.Digest]string{}
	for _, h := range s.Holdings() {
		got[h.Blob] = fmt.Sprint(h.Ranges)
	}
	if len(got) != 2 || got[blobA] != "[{0 60}]" || got[blobB] != "[{0 10} {20 30}]" {
		t.Errorf("holdings %v", got)
	}
}

func TestStoreEvictsAndReopens(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, 50, nil)
	if err != nil {
		t.Fatal(err)
	}
	g := s.Generation()
	frames(t, s, blobA, 20, 20, 20) // the first frame must go
	if s.Generation() == g {
		t.Error("generation did not change")
	}
	if s.Has(blobA, 0, 20) || !s.Has(blobA, 20, 40) || s.Size() != 40 || s.Free() != 10 {
		t.Fatalf("after eviction: size %d, holdings %+v", s.Size(), s.Holdings())
	}
	r, err := Open(dir, 50, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Has(blobA, 20, 40) || r.Size() != 40 {
		t.Fatalf("reopened: %+v", r.Holdings())
	}
}

// TestOpenRemovesStaleTemps: a write that crashed leaves its temporary
// file behind, and nothing else ever removes it. A recent one may be the
// write of another process sharing the store and must stay.
func TestOpenRemovesStaleTemps(t *testing.T) {
	dir := t.TempDir()
	blobDir := filepath.Join(dir, blobA.Hex())
	if err := os.MkdirAll(blobDir, 0o700); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		age      time.Duration
		wantKept bool
	}{
		{tempPrefix + "crashed-long-ago", 24 * time.Hour, false},
		{tempPrefix + "crashed-just-past-limit", staleTempAge + time.Minute, false},
		{tempPrefix + "being-written", time.Second, true},
		{"0", 24 * time.Hour, true},                  // a frame
		{"notes", 24 * time.Hour, true},              // not the store's
		{tempPrefix + "in-future", -time.Hour, true}, // clock stepped back
	}
	now := time.Now()
	for _, tt := range tests {
		p := filepath.Join(blobDir, tt.name)
		if err := os.WriteFile(p, []byte("frame"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, now.Add(-tt.age), now.Add(-tt.age)); err != nil {
			t.Fatal(err)
		}
	}
	s, err := Open(dir, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := os.Stat(filepath.Join(blobDir, tt.name))
			if kept := err == nil; kept != tt.wantKept {
				t.Errorf("kept = %v (stat: %v), want %v", kept, err, tt.wantKept)
			}
		})
	}
	if !s.Has(blobA, 0, 5) || s.Size() != 5 {
		t.Errorf("holdings %+v, want the one frame", s.Holdings())
	}
}

// TestClientTransport: the caller's context bounds a request, but not the
// pool behind it. Without a dial timeout a vanished peer holds a dial for
// the kernel's SYN retries; without an idle timeout connections to peers
// no longer asked stay open for good.
func TestClientTransport(t *testing.T) {
	tr, ok := NewClient(nil).http.Transport.(*http.Transport)
	if !ok {
		t.Fatalf("transport is %T", NewClient(nil).http.Transport)
	}
	tests := []struct {
		name      string
		got, want any
	}{
		{"idle connections time out", tr.IdleConnTimeout, 90 * time.Second},
		{"dials through a bounded dialer", tr.DialContext != nil, true},
		{"idle connections per peer", tr.MaxIdleConnsPerHost, 8},
		{"peers are dialed directly, never through a proxy", tr.Proxy == nil, true},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}

type countingSeeder struct {
	store *Store
	data  []byte
	calls atomic.Int32
	fail  bool
}

func (c *countingSeeder) Seed(ctx context.Context, blob bootstrap.Digest, off, size int64) error {
	c.calls.Add(1)
	if c.fail {
		return errors.New("store unreachable")
	}
	return c.store.Put(blob, off, c.data[off:off+size])
}

func TestServerAndClient(t *testing.T) {
	ctx := context.Background()
	held, err := Open(t.TempDir(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	all := frames(t, held, blobA, 10, 20)
	seedStore, err := Open(t.TempDir(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	seeder := &countingSeeder{store: seedStore, data: all}
	failing := &countingSeeder{store: seedStore, fail: true}

	plain := httptest.NewServer(NewServer(held, nil, nil))
	defer plain.Close()
	seeding := httptest.NewServer(NewServer(seedStore, seeder, nil))
	defer seeding.Close()
	broken := httptest.NewServer(NewServer(seedStore, failing, nil))
	defer broken.Close()
	c := NewClient(nil)
	addr := func(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "http://") }

	tests := []struct {
		name      string
		srv       *httptest.Server
		blob      bootstrap.Digest
		off, size int64
		wantErr   string
	}{
		{"held", plain, blobA, 0, 30, ""},
		{"not held", plain, blobB, 0, 10, "404"},
		{"inside frames", plain, blobA, 5, 10, ""},
		{"past what is held", plain, blobA, 25, 10, "404"},
		{"seeded on demand", seeding, blobA, 10, 20, ""},
		{"seeded already", seeding, blobA, 10, 20, ""},
		{"seeding fails", broken, blobB, 0, 10, "502"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.Get(ctx, addr(tt.srv), tt.blob, tt.off, tt.size, 0)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, all[tt.off:tt.off+tt.size]) {
				t.Fatal("wrong bytes")
			}
		})
	}
	if n := seeder.calls.Load(); n != 1 {
		t.Errorf("seeder called %d times, want once (the second request is served from the store)", n)
	}
	for _, bad := range []string{
		"/pieces/xyz?offset=0&size=1",
		"/pieces/" + blobA.Hex() + "?offset=-1&size=1",
		"/pieces/" + blobA.Hex() + "?offset=0&size=0",
		"/pieces/" + blobA.Hex() + "?offset=9223372036854775807&size=2", // the end overflows
		"/pieces/" + blobA.Hex() + "?offset=0&size=1&wait=-1",
		"/pieces/" + blobA.Hex() + "?offset=0&size=1&wait=soon",
		"/pieces/" + blobA.Hex() + "?offset=0&size=1&wait=30001", // over MaxWait
	} {
		resp, err := http.Get(plain.URL + bad)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("GET %s: %s, want 400", bad, resp.Status)
		}
	}
	if n := seeder.calls.Load(); n != 1 {
		t.Errorf("bad requests reached the seeder: %d calls, want still 1", n)
	}
}

// A node serves a range it is fetching to peers asking with a wait, once
// the range arrives; a range that does not arrive in time is a 404.
func TestServerWaitsForArrivingRange(t *testing.T) {
	ctx := context.Background()
	st, err := Open(t.TempDir(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(st, nil, nil)
	hs := httptest.NewServer(srv)
	defer hs.Close()
	addr := strings.TrimPrefix(hs.URL, "http://")
	c := NewClient(nil)

	if _, err := c.Get(ctx, addr, blobA, 0, 30, 0); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("without a wait: %v, want 404 at once", err)
	}
	type result struct {
		data []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		data, err := c.Get(ctx, addr, blobA, 0, 30, 10*time.Second)
		done <- result{data, err}
	}()
	// The range arrives in two frames; the wait ends with the second.
	time.Sleep(100 * time.Millisecond)
	if err := st.Put(blobA, 0, bytes.Repeat([]byte{1}, 10)); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		t.Fatalf("answered with half the range held: %v", r.err)
	case <-time.After(100 * time.Millisecond):
	}
	if err := st.Put(blobA, 10, bytes.Repeat([]byte{2}, 20)); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if want := append(bytes.Repeat([]byte{1}, 10), bytes.Repeat([]byte{2}, 20)...); !bytes.Equal(r.data, want) {
		t.Fatal("wrong bytes after the wait")
	}
	if s := srv.Stats(); s.Waited != 1 || s.Missed != 1 {
		t.Errorf("stats %+v, want 1 waited and 1 missed", s)
	}

	start := time.Now()
	if _, err := c.Get(ctx, addr, blobA, 30, 10, 200*time.Millisecond); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("a range that never arrives: %v, want 404", err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("answered after %s, before the wait was over", d)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := st.Await(cctx, blobA, 30, 10); !errors.Is(err, ErrNotHeld) {
		t.Errorf("Await with its context over: %v, want ErrNotHeld", err)
	}
	if err := st.Await(cctx, blobA, 0, 30); err != nil {
		t.Errorf("Await of a held range: %v", err)
	}
}

// A server with an upload rate sends no faster than it, over all its
// requests together, and still sends the right bytes.
func TestServerUploadRate(t *testing.T) {
	st, err := Open(t.TempDir(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	all := frames(t, st, blobA, 64<<10, 64<<10)
	const bytesPerSecond = 256 << 10 // also the burst
	hs := httptest.NewServer(NewServer(st, nil, nil, WithUploadRate(bytesPerSecond)))
	defer hs.Close()
	addr := strings.TrimPrefix(hs.URL, "http://")
	c := NewClient(nil)
	const requests = 4
	start := time.Now()
	errs := make(chan error, requests)
	for range requests {
		go func() {
			got, err := c.Get(context.Background(), addr, blobA, 0, int64(len(all)), 0)
			if err == nil && !bytes.Equal(got, all) {
				err = errors.New("wrong bytes")
			}
			errs <- err
		}()
	}
	for range requests {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// The first burst goes at once; the rest at the rate.
	sent := int64(requests * len(all))
	if least := time.Duration(float64(sent-bytesPerSecond) / bytesPerSecond * 0.9 * float64(time.Second)); time.Since(start) < least {
		t.Errorf("sent %d bytes in %s, faster than %d bytes a second allows (at least %s)", sent, time.Since(start), bytesPerSecond, least)
	}
}
