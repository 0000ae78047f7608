package startup

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/fetch/fetchtest"
)

func testImage(t testing.TB) *bootstrap.Bootstrap {
	t.Helper()
	img, err := fetchtest.Build([]fetchtest.Entry{
		{Path: "/bin/app", Mode: bootstrap.ModeRegular | 0o755, Data: []byte("app binary")},
		{Path: "/bin/tool", Mode: bootstrap.ModeRegular | 0o755, Data: []byte("tool")},
		{Path: "/etc/conf", Mode: bootstrap.ModeRegular | 0o644, Data: []byte("conf")},
		{Path: "/lib/big", Mode: bootstrap.ModeRegular | 0o644, Data: []byte(strings.Repeat("x", 200<<10))},
		{Path: "/lib/sub/deep", Mode: bootstrap.ModeRegular | 0o644, Data: []byte("deep")},
		{Path: "/libx/other", Mode: bootstrap.ModeRegular | 0o644, Data: []byte("other")},
		{Path: "/lib/link", Mode: bootstrap.ModeSymlink | 0o777, Target: "big"},
	}, fetchtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return img.Bootstrap
}

func TestFormatRoundTrips(t *testing.T) {
	b := testImage(t)
	big, _ := b.LookupPath("/lib/big")
	app, _ := b.LookupPath("/bin/app")
	data := Format(b, []uint32{big, app})
	if want := Header + "\n/lib/big\n/bin/app\n"; string(data) != want {
		t.Fatalf("set:\n%s\nwant:\n%s", data, want)
	}
	got, err := Parse(data, b)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []uint32{big, app}) {
		t.Errorf("parsed %v", got)
	}
}

func TestParse(t *testing.T) {
	b := testImage(t)
	app, _ := b.LookupPath("/bin/app")
	conf, _ := b.LookupPath("/etc/conf")
	tests := []struct {
		name    string
		in      string
		want    []uint32
		wantErr bool
	}{
		{"unknown paths are skipped", Header + "\n/gone\n/bin/app\n", []uint32{app}, false},
		{"a file named twice is listed once", Header + "\n/bin/app\n/etc/conf\n//bin/app\n/bin/app\n", []uint32{app, conf}, false},
		{"empty set", Header + "\n", nil, false},
		{"no header", "/bin/app\n", nil, true},
		{"empty input", "", nil, true},
	}
	for _, tt := range tests {
		got, err := Parse([]byte(tt.in), b)
		if (err != nil) != tt.wantErr {
			t.Errorf("%s: err = %v", tt.name, err)
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestPaths(t *testing.T) {
	for _, tc := range []struct {
		name, list string
		want       []string
	}{
		{"lines", "/bin/app\n/etc\n", []string{"/bin/app", "/etc"}},
		{"commas", "/bin/app,/etc", []string{"/bin/app", "/etc"}},
		{"both, spaced", " /a , /b\n\t/c\r\n", []string{"/a", "/b", "/c"}},
		{"blanks and comments", "# startup\n\n,,\n  # indented, too\n/a\n", []string{"/a"}},
		{"a # inside a path", "/a#b", []string{"/a#b"}},
		{"empty", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Paths(tc.list); !slices.Equal(got, tc.want) {
				t.Errorf("Paths(%q) = %q, want %q", tc.list, got, tc.want)
			}
		})
	}
}

func TestExpand(t *testing.T) {
	b := testImage(t)
	ino := func(p string) uint32 {
		i, ok := b.LookupPath(p)
		if !ok {
			t.Fatalf("%s missing", p)
		}
		return i
	}
	tests := []struct {
		name    string
		paths   []string
		want    []string
		wantErr string
	}{
		{"files in the order named", []string{"/etc/conf", "/bin/app"}, []string{"/etc/conf", "/bin/app"}, ""},
		{"a directory is the files under it", []string{"/lib"}, []string{"/lib/big", "/lib/sub/deep"}, ""},
		{"not a sibling sharing the prefix", []string{"/lib/"}, []string{"/lib/big", "/lib/sub/deep"}, ""},
		{"relative and unclean paths", []string{"bin/../etc/conf", "lib/sub"}, []string{"/etc/conf", "/lib/sub/deep"}, ""},
		{"each file once, where first named", []string{"/lib/big", "/lib", "/lib/big"}, []string{"/lib/big", "/lib/sub/deep"}, ""},
		{"the root is every file", []string{"/"}, []string{"/bin/app", "/bin/tool", "/etc/conf", "/lib/big", "/lib/sub/deep", "/libx/other"}, ""},
		{"a symlink names no file", []string{"/lib/link"}, nil, ""},
		{"a missing path is an error", []string{"/bin/app", "/bin/ap"}, nil, "/bin/ap: no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Expand(b, tt.paths)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one saying %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var want []uint32
			for _, p := range tt.want {
				want = append(want, ino(p))
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got %v, want %v (%v)", got, want, tt.want)
			}
		})
	}
}

// FuzzParse: a startup set comes from the store, written by
// whichever node ran the image first. Whatever it holds, parsing it never
// panics and names only inodes of the image, and a set written back from
// what was parsed parses to the same files.
func FuzzParse(f *testing.F) {
	b := testImage(f)
	f.Add([]byte(Header + "\n/bin/app\n/etc/conf\n"))
	f.Add([]byte(Header + "\n/gone\n/bin\n/\n//bin//app\n/bin/../etc/conf\n"))
	f.Add([]byte(Header + "\r\n/bin/app\r\n"))
	f.Add([]byte("/bin/app\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := Parse(data, b)
		if err != nil {
			return
		}
		for _, ino := range got {
			if int(ino) >= len(b.Inodes) {
				t.Fatalf("inode %d of an image of %d", ino, len(b.Inodes))
			}
		}
		again, err := Parse(Format(b, got), b)
		if err != nil {
			t.Fatalf("a set written from a parsed one does not parse: %v", err)
		}
		if !slices.Equal(again, got) {
			t.Fatalf("written back and parsed again: %v, want %v", again, got)
		}
	})
}
