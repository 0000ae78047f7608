package lazymount

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/fetch/fetchtest"
	"github.com/skiff-dev/skiff/pkg/startup"
)

type nopReader struct{}

func (nopReader) ReadChunk(ctx context.Context, b *bootstrap.Bootstrap, idx uint32) ([]byte, error) {
	return make([]byte, b.Chunks[idx].Size), nil
}

func testImage(t testing.TB) *bootstrap.Bootstrap {
	t.Helper()
	img, err := fetchtest.Build([]fetchtest.Entry{
		{Path: "/bin/app", Mode: bootstrap.ModeRegular | 0o755, Data: []byte("app binary")},
		{Path: "/etc/conf", Mode: bootstrap.ModeRegular | 0o644, Data: []byte("conf")},
		{Path: "/lib/big", Mode: bootstrap.ModeRegular | 0o644, Data: []byte(strings.Repeat("x", 200<<10))},
	}, fetchtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return img.Bootstrap
}

func TestRecordedStartupSetRoundTrips(t *testing.T) {
	b := testImage(t)
	rec := newRecorder(b, nopReader{}, time.Hour)
	read := func(path string) {
		ino, ok := b.LookupPath(path)
		if !ok {
			t.Fatalf("%s missing", path)
		}
		for _, c := range b.FileChunks(ino) {
			if _, err := rec.ReadChunk(context.Background(), b, c); err != nil {
				t.Fatal(err)
			}
		}
	}
	read("/lib/big")
	read("/bin/app")
	read("/lib/big")
	files := rec.finish()
	data := startup.Format(b, files)
	if want := startup.Header + "\n/lib/big\n/bin/app\n"; string(data) != want {
		t.Fatalf("startup set:\n%s\nwant:\n%s", data, want)
	}
	got, err := startup.Parse(data, b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, files) {
		t.Errorf("parsed %v, recorded %v", got, files)
	}
	if again := rec.finish(); len(again) != 0 {
		t.Errorf("second finish returned %v, want nothing", again)
	}
}

func TestRecorderOffOrExpiredRecordsNothing(t *testing.T) {
	b := testImage(t)
	for _, window := range []time.Duration{0, time.Nanosecond} {
		rec := newRecorder(b, nopReader{}, window)
		time.Sleep(time.Millisecond)
		if _, err := rec.ReadChunk(context.Background(), b, 0); err != nil {
			t.Fatal(err)
		}
		if got := rec.finish(); len(got) != 0 {
			t.Errorf("window %v: recorded %v", window, got)
		}
	}
}

// TestWaitPauseWaitsOutReads: waitPause returns only once reads have
// stopped for the pause, and reads from this process' own threads do not
// count.
func TestWaitPauseWaitsOutReads(t *testing.T) {
	rec := newRecorder(&bootstrap.Bootstrap{}, nil, 0)
	rec.arm()
	ctx := context.Background()
	own := &fuse.Context{Caller: fuse.Caller{Pid: 4242}}
	rec.reading(4242, true)
	rec.touch(own)
	select {
	case <-rec.used:
		t.Fatal("a read of this process' own counted as a container's")
	default:
	}
	// Reads every tenth of the pause, then none: waitPause must return
	// only after a gap of a whole pause between reads (or since the last).
	const pause = 200 * time.Millisecond
	done := make(chan int64, 1)
	go func() {
		rec.waitPause(ctx, pause)
		done <- time.Now().UnixNano()
	}()
	var reads []int64
	var returned int64
	for range 20 {
		rec.touch(ctx)
		reads = append(reads, rec.last.Load())
		time.Sleep(pause / 10)
		select {
		case returned = <-done:
		default:
		}
		if returned != 0 {
			break
		}
	}
	if returned == 0 {
		select {
		case returned = <-done:
		case <-time.After(10 * pause):
			t.Fatal("waitPause did not return after the reads stopped")
		}
	}
	var gap int64
	prev := reads[0]
	for _, at := range append(reads[1:], returned) {
		if at > returned {
			break
		}
		gap, prev = max(gap, at-prev), at
	}
	if time.Duration(gap) < pause {
		t.Errorf("waitPause returned with reads at most %s apart before it, want a pause of %s", time.Duration(gap), pause)
	}
	// Reads of this process' own do not end a pause.
	last := rec.last.Load()
	rec.touch(own)
	if rec.last.Load() != last {
		t.Error("a read of this process' own counted as a container's")
	}
}

func TestInReadOrder(t *testing.T) {
	tests := []struct {
		name         string
		read, served []uint32
		want         []uint32
	}{
		{"served order", []uint32{1, 2, 3}, []uint32{3, 1, 2}, []uint32{3, 1, 2}},
		// 4 was read ahead with 3, which was served last.
		{"read ahead follows its neighbour", []uint32{1, 3, 4, 5}, []uint32{5, 3, 1}, []uint32{5, 3, 4, 1}},
		{"before any served comes first", []uint32{1, 2, 3}, []uint32{3, 2}, []uint32{1, 3, 2}},
		// Served but not read: the kernel no longer holds it, or its
		// chunk was another file's.
		{"served only", []uint32{2}, []uint32{7, 2}, []uint32{2}},
		{"nothing served", []uint32{1, 2}, nil, []uint32{1, 2}},
	}
	for _, tt := range tests {
		if got := inReadOrder(tt.read, tt.served); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: inReadOrder(%v, %v) = %v, want %v", tt.name, tt.read, tt.served, got, tt.want)
		}
	}
}

func TestStartupHead(t *testing.T) {
	b := &bootstrap.Bootstrap{Inodes: []bootstrap.Inode{{Size: 0}, {Size: 3 << 20}, {Size: 1 << 20}, {Size: 5}, {Size: 8 << 20}}}
	tests := []struct {
		name       string
		set        []uint32
		head, tail []uint32
	}{
		{"split once the head holds headBytes", []uint32{1, 2, 3, 4}, []uint32{1, 2}, []uint32{3, 4}},
		{"a large first file is the head alone", []uint32{4, 1}, []uint32{4}, []uint32{1}},
		{"all of a small set", []uint32{3, 2}, []uint32{3, 2}, nil},
		{"inodes out of range count nothing", []uint32{9, 3}, []uint32{9, 3}, nil},
		{"empty", nil, nil, nil},
	}
	for _, tt := range tests {
		head, tail := startupHead(b, tt.set)
		if !reflect.DeepEqual(head, tt.head) || !reflect.DeepEqual(tail, tt.tail) {
			t.Errorf("%s: startupHead(%v) = %v, %v; want %v, %v", tt.name, tt.set, head, tail, tt.head, tt.tail)
		}
	}
}
