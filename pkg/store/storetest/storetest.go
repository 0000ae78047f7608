// Package storetest is the conformance suite every store.Store
// implementation must pass, so that callers can rely on the interface's
// contract (ranges, atomic overwrite, lexical listing, error kinds) no matter
// which store a URL selects. Implementations call Run from their own tests
// with a constructor for an empty store.
package storetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/skiff-dev/skiff/pkg/store"
)

// Run runs the conformance suite. newStore must return an empty store that
// no other subtest uses; it is called once per subtest.
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, st store.Store)
	}{
		{"RoundTrip", testRoundTrip},
		{"RangedGet", testRangedGet},
		{"UnknownSize", testUnknownSize},
		{"ShortReader", testShortReader},
		{"Overwrite", testOverwrite},
		{"NotFound", testNotFound},
		{"List", testList},
		{"ListStops", testListStops},
		{"Delete", testDelete},
		{"InvalidKeys", testInvalidKeys},
		{"Large", testLarge},
		{"Concurrent", testConcurrent},
		{"ConcurrentOverwrite", testConcurrentOverwrite},
		{"Cancelled", testCancelled},
		{"CancelledMidPut", testCancelledMidPut},
		{"CancelledMidGet", testCancelledMidGet},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, newStore(t))
		})
	}
}

// Data returns n deterministic pseudo-random bytes; seed makes different
// objects differ.
func Data(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, uint64(n)))
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n - n%8; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

func put(t *testing.T, st store.Store, key string, data []byte) {
	t.Helper()
	if err := st.Put(context.Background(), key, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("Put(%q, %d bytes): %v", key, len(data), err)
	}
}

func get(t *testing.T, st store.Store, key string, off, length int64) []byte {
	t.Helper()
	rc, err := st.Get(context.Background(), key, off, length)
	if err != nil {
		t.Fatalf("Get(%q, %d, %d): %v", key, off, length, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("Get(%q, %d, %d): read: %v", key, off, length, err)
	}
	if err := rc.Close(); err != nil {
		t.Fatalf("Get(%q, %d, %d): close: %v", key, off, length, err)
	}
	return b
}

// equal compares contents without printing megabytes on failure.
func equal(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: got %d bytes (sha256 %x), want %d bytes (sha256 %x)",
			what, len(got), sha256.Sum256(got), len(want), sha256.Sum256(want))
	}
}

func wantNotFound(t *testing.T, st store.Store, key string) {
	t.Helper()
	ctx := context.Background()
	if _, err := st.Stat(ctx, key); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Stat(%q) = %v, want an error wrapping store.ErrNotFound", key, err)
	}
	rc, err := st.Get(ctx, key, 0, -1)
	if err == nil {
		rc.Close()
	}
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get(%q) = %v, want an error wrapping store.ErrNotFound", key, err)
	}
}

// Keys lists the keys under prefix, failing the test if List fails.
func Keys(t testing.TB, st store.Store, prefix string) []string {
	t.Helper()
	var got []string
	err := st.List(context.Background(), prefix, func(info store.Info) error {
		got = append(got, info.Key)
		return nil
	})
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return got
}

func testRoundTrip(t *testing.T, st store.Store) {
	for i, size := range []int{0, 1, 4096, 1<<20 + 7} {
		key := fmt.Sprintf("roundtrip/%d", size)
		data := Data(size, uint64(i))
		put(t, st, key, data)
		equal(t, key, get(t, st, key, 0, -1), data)
		info, err := st.Stat(context.Background(), key)
		if err != nil {
			t.Fatalf("Stat(%q): %v", key, err)
		}
		if info.Key != key || info.Size != int64(size) {
			t.Fatalf("Stat(%q) = %+v, want key %q size %d", key, info, key, size)
		}
		if info.ModTime.IsZero() {
			t.Fatalf("Stat(%q): zero ModTime", key)
		}
	}
}

func testRangedGet(t *testing.T, st store.Store) {
	const key = "blobs/sha256/ranged"
	data := Data(1000, 1)
	put(t, st, key, data)
	tests := []struct {
		name        string
		off, length int64
		want        []byte
		err         error
	}{
		{"start", 0, 10, data[:10], nil},
		{"middle", 100, 200, data[100:300], nil},
		{"end", 990, 10, data[990:], nil},
		{"whole", 0, 1000, data, nil},
		{"whole to end", 0, -1, data, nil},
		{"middle to end", 500, -1, data[500:], nil},
		{"zero length", 50, 0, nil, nil},
		{"zero length at end", 1000, 0, nil, nil},
		{"to end at end", 1000, -1, nil, nil},
		{"one byte", 999, 1, data[999:], nil},
		{"past end", 995, 10, nil, store.ErrOutOfRange},
		{"offset past end", 1001, 0, nil, store.ErrOutOfRange},
		{"offset past end to end", 1001, -1, nil, store.ErrOutOfRange},
		{"far past end", 1 << 40, 1, nil, store.ErrOutOfRange},
		{"negative offset", -1, 5, nil, store.ErrOutOfRange},
		{"bad length", 0, -2, nil, store.ErrOutOfRange},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.err == nil {
				equal(t, tc.name, get(t, st, key, tc.off, tc.length), tc.want)
				return
			}
			rc, err := st.Get(context.Background(), key, tc.off, tc.length)
			if err == nil {
				b, rerr := io.ReadAll(rc)
				rc.Close()
				t.Fatalf("Get(%d, %d) returned %d bytes (read error %v), want an error wrapping %v", tc.off, tc.length, len(b), rerr, tc.err)
			}
			if !errors.Is(err, tc.err) {
				t.Fatalf("Get(%d, %d) = %v, want an error wrapping %v", tc.off, tc.length, err, tc.err)
			}
		})
	}
}

// opaque hides Len, Seek and WriterTo so that a store cannot learn the size
// any other way than by reading.
type opaque struct{ r io.Reader }

func (o opaque) Read(p []byte) (int, error) { return o.r.Read(p) }

func testUnknownSize(t *testing.T, st store.Store) {
	for i, size := range []int{0, 10, 3<<20 + 1} {
		key := fmt.Sprintf("unknown/%d", size)
		data := Data(size, uint64(i))
		if err := st.Put(context.Background(), key, opaque{bytes.NewReader(data)}, -1); err != nil {
			t.Fatalf("Put(%q, size -1): %v", key, err)
		}
		equal(t, key, get(t, st, key, 0, -1), data)
		info, err := st.Stat(context.Background(), key)
		if err != nil || info.Size != int64(size) {
			t.Fatalf("Stat(%q) = %+v, %v; want size %d", key, info, err, size)
		}
	}
}

// A reader that ends before the promised size must fail the Put and must
// not replace what was there.
func testShortReader(t *testing.T, st store.Store) {
	const key = "short"
	old := Data(100, 1)
	put(t, st, key, old)
	err := st.Put(context.Background(), key, opaque{bytes.NewReader(Data(50, 2))}, 100)
	if err == nil {
		t.Fatal("Put with a reader shorter than size succeeded")
	}
	equal(t, "object after failed put", get(t, st, key, 0, -1), old)

	err = st.Put(context.Background(), "short-new", opaque{bytes.NewReader(Data(50, 2))}, 100)
	if err == nil {
		t.Fatal("Put with a reader shorter than size succeeded")
	}
	wantNotFound(t, st, "short-new")
}

func testOverwrite(t *testing.T, st store.Store) {
	const key = "index/sha256/over"
	put(t, st, key, Data(5000, 1))
	second := Data(300, 2)
	put(t, st, key, second)
	equal(t, "overwritten object", get(t, st, key, 0, -1), second)
	info, err := st.Stat(context.Background(), key)
	if err != nil || info.Size != 300 {
		t.Fatalf("Stat after overwrite = %+v, %v; want size 300", info, err)
	}
	if got := Keys(t, st, ""); !slices.Equal(got, []string{key}) {
		t.Fatalf("List after overwrite = %q, want just %q", got, key)
	}
}

func testNotFound(t *testing.T, st store.Store) {
	wantNotFound(t, st, "missing")
	wantNotFound(t, st, "blobs/sha256/missing")
	// A key that is only a prefix of an existing key is not an object.
	put(t, st, "dir/file", []byte("x"))
	wantNotFound(t, st, "dir")
	rc, err := st.Get(context.Background(), "missing", 10, 5)
	if err == nil {
		rc.Close()
	}
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("ranged Get of a missing key = %v, want store.ErrNotFound", err)
	}
}

func testList(t *testing.T, st store.Store) {
	// "a-c" sorts before "a/b" ('-' < '/') although a directory walk
	// would meet "a/..." first.
	all := []string{
		"a-c", "a/b", "a/c/d", "a0", "b",
		"blobs/sha256/aa", "blobs/sha256/ab", "blobs/sha256/b0",
		"bootstraps/sha256/00",
	}
	shuffled := slices.Clone(all)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	for i, k := range shuffled {
		put(t, st, k, Data(i+1, uint64(i)))
	}
	var infos []store.Info
	if err := st.List(context.Background(), "", func(info store.Info) error {
		infos = append(infos, info)
		return nil
	}); err != nil {
		t.Fatalf("List: %v", err)
	}
	for i, info := range infos {
		want := slices.Index(shuffled, info.Key) + 1
		if int64(want) != info.Size {
			t.Fatalf("List entry %d = %+v, want size %d", i, info, want)
		}
		if info.ModTime.IsZero() {
			t.Fatalf("List entry %d = %+v: zero ModTime", i, info)
		}
	}
	tests := []struct {
		prefix string
		want   []string
	}{
		{"", all},
		{"a", []string{"a-c", "a/b", "a/c/d", "a0"}},
		{"a/", []string{"a/b", "a/c/d"}},
		{"a/c", []string{"a/c/d"}},
		{"b", []string{"b", "blobs/sha256/aa", "blobs/sha256/ab", "blobs/sha256/b0", "bootstraps/sha256/00"}},
		{"blobs/", []string{"blobs/sha256/aa", "blobs/sha256/ab", "blobs/sha256/b0"}},
		{"blobs/sha256/a", []string{"blobs/sha256/aa", "blobs/sha256/ab"}},
		{"blobs/sha256/ab", []string{"blobs/sha256/ab"}},
		{"blobs/sha256/abc", nil},
		{"c", nil},
		{"../", nil},
	}
	for _, tc := range tests {
		if got := Keys(t, st, tc.prefix); !slices.Equal(got, tc.want) {
			t.Errorf("List(%q) = %q, want %q", tc.prefix, got, tc.want)
		}
	}
}

// An error from fn stops the listing and comes back wrapped.
func testListStops(t *testing.T, st store.Store) {
	for _, k := range []string{"x/1", "x/2", "x/3"} {
		put(t, st, k, []byte(k))
	}
	stop := errors.New("stop here")
	var seen []string
	err := st.List(context.Background(), "x/", func(info store.Info) error {
		seen = append(seen, info.Key)
		if len(seen) == 2 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) {
		t.Fatalf("List = %v, want the error returned by fn", err)
	}
	if !slices.Equal(seen, []string{"x/1", "x/2"}) {
		t.Fatalf("List called fn for %q, want it to stop after x/2", seen)
	}
}

func testDelete(t *testing.T, st store.Store) {
	ctx := context.Background()
	put(t, st, "del/one", []byte("one"))
	put(t, st, "del/two", []byte("two"))
	if err := st.Delete(ctx, "del/one"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	wantNotFound(t, st, "del/one")
	if err := st.Delete(ctx, "del/one"); err != nil {
		t.Fatalf("second Delete of the same key: %v", err)
	}
	if err := st.Delete(ctx, "never/existed"); err != nil {
		t.Fatalf("Delete of a missing key: %v", err)
	}
	if got := Keys(t, st, ""); !slices.Equal(got, []string{"del/two"}) {
		t.Fatalf("List after Delete = %q, want [del/two]", got)
	}
	equal(t, "surviving object", get(t, st, "del/two", 0, -1), []byte("two"))
	// The key can be written again after deletion.
	put(t, st, "del/one", []byte("again"))
	equal(t, "rewritten object", get(t, st, "del/one", 0, -1), []byte("again"))
}

func testInvalidKeys(t *testing.T, st store.Store) {
	ctx := context.Background()
	bad := []string{"", "/abs", "/", "a/", "a//b", ".", "..", "../escape", "a/../../escape", "a/./b", `a\b`, `..\escape`}
	for _, key := range bad {
		t.Run(fmt.Sprintf("%q", key), func(t *testing.T) {
			if err := st.Put(ctx, key, bytes.NewReader([]byte("x")), 1); !errors.Is(err, store.ErrInvalidKey) {
				t.Errorf("Put = %v, want store.ErrInvalidKey", err)
			}
			rc, err := st.Get(ctx, key, 0, -1)
			if err == nil {
				rc.Close()
			}
			if !errors.Is(err, store.ErrInvalidKey) {
				t.Errorf("Get = %v, want store.ErrInvalidKey", err)
			}
			if _, err := st.Stat(ctx, key); !errors.Is(err, store.ErrInvalidKey) {
				t.Errorf("Stat = %v, want store.ErrInvalidKey", err)
			}
			if err := st.Delete(ctx, key); !errors.Is(err, store.ErrInvalidKey) {
				t.Errorf("Delete = %v, want store.ErrInvalidKey", err)
			}
		})
	}
	if got := Keys(t, st, ""); len(got) != 0 {
		t.Fatalf("invalid keys wrote objects %q", got)
	}
}

// Large objects take the multipart path of object stores, both with a known
// size and without one.
func testLarge(t *testing.T, st store.Store) {
	const size = 17<<20 + 3
	data := Data(size, 7)
	put(t, st, "large/known", data)
	if err := st.Put(context.Background(), "large/unknown", opaque{bytes.NewReader(data)}, -1); err != nil {
		t.Fatalf("Put(size -1, %d bytes): %v", size, err)
	}
	for _, key := range []string{"large/known", "large/unknown"} {
		equal(t, key, get(t, st, key, 0, -1), data)
		// A range straddling the 16 MiB part boundary.
		const off = 16<<20 - 1000
		equal(t, key+" across parts", get(t, st, key, off, 5000), data[off:off+5000])
		equal(t, key+" tail", get(t, st, key, size-10, -1), data[size-10:])
	}
}

func testConcurrent(t *testing.T, st store.Store) {
	const workers = 8
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range 4 {
				key := fmt.Sprintf("conc/%d/%d", w, i)
				data := Data(64<<10+w*100+i, uint64(w*10+i))
				if err := st.Put(context.Background(), key, bytes.NewReader(data), int64(len(data))); err != nil {
					t.Errorf("Put(%q): %v", key, err)
					return
				}
				rc, err := st.Get(context.Background(), key, 100, 1000)
				if err != nil {
					t.Errorf("Get(%q): %v", key, err)
					return
				}
				got, err := io.ReadAll(rc)
				rc.Close()
				if err != nil || !bytes.Equal(got, data[100:1100]) {
					t.Errorf("Get(%q, 100, 1000): %d bytes, err %v: content differs", key, len(got), err)
				}
			}
		})
	}
	wg.Wait()
	if got := Keys(t, st, "conc/"); len(got) != workers*4 {
		t.Fatalf("List after concurrent puts found %d keys, want %d", len(got), workers*4)
	}
}

// Readers racing with writers of one key must only ever see one complete
// version, never a mix or a truncated object.
func testConcurrentOverwrite(t *testing.T, st store.Store) {
	const (
		key     = "conc/over"
		size    = 256 << 10
		writers = 4
	)
	version := func(w int) []byte { return bytes.Repeat([]byte{byte('A' + w)}, size) }
	put(t, st, key, version(writers))
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for range 3 {
				if err := st.Put(context.Background(), key, bytes.NewReader(version(w)), size); err != nil {
					t.Errorf("Put: %v", err)
					return
				}
			}
		})
	}
	for range 2 {
		wg.Go(func() {
			for range 10 {
				rc, err := st.Get(context.Background(), key, 0, -1)
				if err != nil {
					t.Errorf("Get during overwrites: %v", err)
					return
				}
				got, err := io.ReadAll(rc)
				rc.Close()
				if err != nil {
					t.Errorf("read during overwrites: %v", err)
					return
				}
				if len(got) != size || !bytes.Equal(got, bytes.Repeat(got[:1], size)) {
					t.Errorf("read a torn object: %d bytes, starting %q", len(got), got[:min(len(got), 8)])
					return
				}
			}
		})
	}
	wg.Wait()
}

func testCancelled(t *testing.T, st store.Store) {
	put(t, st, "present", []byte("present"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := st.Put(ctx, "cancelled", bytes.NewReader([]byte("data")), 4); !errors.Is(err, context.Canceled) {
		t.Errorf("Put with a cancelled context = %v, want context.Canceled", err)
	}
	rc, err := st.Get(ctx, "present", 0, -1)
	if err == nil {
		rc.Close()
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Get with a cancelled context = %v, want context.Canceled", err)
	}
	if _, err := st.Stat(ctx, "present"); !errors.Is(err, context.Canceled) {
		t.Errorf("Stat with a cancelled context = %v, want context.Canceled", err)
	}
	if err := st.List(ctx, "", func(store.Info) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("List with a cancelled context = %v, want context.Canceled", err)
	}
	if err := st.Delete(ctx, "present"); !errors.Is(err, context.Canceled) {
		t.Errorf("Delete with a cancelled context = %v, want context.Canceled", err)
	}
	wantNotFound(t, st, "cancelled")
	equal(t, "object after cancelled calls", get(t, st, "present", 0, -1), []byte("present"))
}

// cancelAfter yields n bytes of data, cancels, and then keeps failing with
// the context's error, like a source that notices the cancellation itself.
type cancelAfter struct {
	n      int
	cancel context.CancelFunc
	ctx    context.Context
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	if c.n <= 0 {
		c.cancel()
		return 0, c.ctx.Err()
	}
	n := min(len(p), c.n)
	clear(p[:n])
	c.n -= n
	return n, nil
}

// A Put cancelled halfway must fail and leave the previous version intact.
func testCancelledMidPut(t *testing.T, st store.Store) {
	for _, size := range []int64{4 << 20, -1} {
		key := fmt.Sprintf("midput/%d", size)
		old := Data(1000, 3)
		put(t, st, key, old)
		ctx, cancel := context.WithCancel(context.Background())
		err := st.Put(ctx, key, &cancelAfter{n: 1 << 20, cancel: cancel, ctx: ctx}, size)
		cancel()
		if err == nil {
			t.Fatalf("Put(size %d) cancelled halfway succeeded", size)
		}
		equal(t, "object after cancelled put", get(t, st, key, 0, -1), old)
	}
	if got := Keys(t, st, ""); !slices.Equal(got, []string{"midput/-1", "midput/4194304"}) {
		t.Fatalf("List after cancelled puts = %q, want only the two original objects", got)
	}
}

// Cancelling the context of a Get stops reading from the returned stream.
func testCancelledMidGet(t *testing.T, st store.Store) {
	const key = "midget"
	put(t, st, key, Data(4<<20, 5))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rc, err := st.Get(ctx, key, 0, -1)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	defer rc.Close()
	if _, err := io.ReadFull(rc, make([]byte, 1000)); err != nil {
		t.Fatalf("read before cancel: %v", err)
	}
	cancel()
	n, err := io.Copy(io.Discard, rc)
	if err == nil {
		t.Fatalf("reading after cancel returned all remaining %d bytes without error", n)
	}
}
