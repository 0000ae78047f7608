package lazymount

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/fetch/fetchtest"
)

type nopReader struct{}

func (nopReader) ReadChunk(ctx context.Context, b *bootstrap.Bootstrap, idx uint32) ([]byte, error) {
	return make([]byte, b.Chunks[idx].Size), nil
}

func testImage(t *testing.T) *bootstrap.Bootstrap {
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
	data := formatStartupSet(b, files)
	if want := startupHeader + "\n/lib/big\n/bin/app\n"; string(data) != want {
		t.Fatalf("startup set:\n%s\nwant:\n%s", data, want)
	}
	got, err := parseStartupSet(data, b)
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

func TestParseStartupSet(t *testing.T) {
	b := testImage(t)
	app, _ := b.LookupPath("/bin/app")
	tests := []struct {
		name    string
		in      string
		want    []uint32
		wantErr bool
	}{
		{"unknown paths are skipped", startupHeader + "\n/gone\n/bin/app\n", []uint32{app}, false},
		{"empty set", startupHeader + "\n", nil, false},
		{"no header", "/bin/app\n", nil, true},
		{"empty input", "", nil, true},
	}
	for _, tt := range tests {
		got, err := parseStartupSet([]byte(tt.in), b)
		if (err != nil) != tt.wantErr {
			t.Errorf("%s: err = %v", tt.name, err)
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}
