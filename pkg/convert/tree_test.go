package convert

import (
	"bytes"
	"testing"

	"github.com/skiff-dev/skiff/internal/fixture"
)

// TestWhiteoutsFollowSymlinks: entries are placed through symlinked
// directories, so whiteouts and opaque markers must find their directory
// the same way, as containerd's applier does (it resolves a marker's parent
// inside the root); otherwise a file deleted by an upper layer survives in
// the image. gone and kept are paths without symlinks.
func TestWhiteoutsFollowSymlinks(t *testing.T) {
	usrLib := []fixture.Entry{
		fixture.Dir("usr", 0o755), fixture.Dir("usr/lib", 0o755),
		fixture.File("usr/lib/foo", 0o644, "foo"), fixture.File("usr/lib/bar", 0o644, "bar"),
	}
	with := func(base []fixture.Entry, more ...fixture.Entry) []fixture.Entry {
		return append(append([]fixture.Entry(nil), base...), more...)
	}
	tests := []struct {
		name       string
		lower      []fixture.Entry
		upper      []fixture.Entry
		gone, kept []string
	}{
		{
			name:  "whiteout through a relative symlink",
			lower: with(usrLib, fixture.Symlink("lib", "usr/lib")),
			upper: []fixture.Entry{fixture.Whiteout("lib", "foo")},
			gone:  []string{"usr/lib/foo"},
			kept:  []string{"usr/lib/bar", "lib"},
		},
		{
			name: "whiteout of a file placed through the symlink",
			lower: []fixture.Entry{
				fixture.Dir("usr", 0o755), fixture.Dir("usr/lib", 0o755), fixture.Symlink("lib", "usr/lib"),
				fixture.File("lib/foo", 0o644, "foo"), fixture.File("lib/bar", 0o644, "bar"),
			},
			upper: []fixture.Entry{fixture.Whiteout("lib", "foo")},
			gone:  []string{"usr/lib/foo"},
			kept:  []string{"usr/lib/bar", "lib"},
		},
		{
			name:  "whiteout through an absolute symlink",
			lower: with(usrLib, fixture.Symlink("lib", "/usr/lib")),
			upper: []fixture.Entry{fixture.Whiteout("lib", "foo")},
			gone:  []string{"usr/lib/foo"},
			kept:  []string{"usr/lib/bar"},
		},
		{
			name:  "whiteout through a symlink higher up",
			lower: with(usrLib, fixture.Symlink("u", "usr")),
			upper: []fixture.Entry{fixture.Whiteout("u/lib", "foo")},
			gone:  []string{"usr/lib/foo"},
			kept:  []string{"usr/lib/bar"},
		},
		{
			name:  "symlink resolution stays inside the root",
			lower: with(usrLib, fixture.Symlink("lib", "../../../usr/lib")),
			upper: []fixture.Entry{fixture.Whiteout("lib", "foo")},
			gone:  []string{"usr/lib/foo"},
			kept:  []string{"usr/lib/bar"},
		},
		{
			name:  "opaque marker through a symlink",
			lower: with(usrLib, fixture.Symlink("lib", "usr/lib")),
			upper: []fixture.Entry{fixture.Opaque("lib"), fixture.File("lib/new", 0o644, "new")},
			gone:  []string{"usr/lib/foo", "usr/lib/bar"},
			kept:  []string{"usr/lib/new", "lib"},
		},
		{
			name:  "whiteout of the symlink itself",
			lower: with(usrLib, fixture.Symlink("lib", "usr/lib")),
			upper: []fixture.Entry{fixture.Whiteout("", "lib")},
			gone:  []string{"lib"},
			kept:  []string{"usr/lib/foo", "usr/lib/bar"},
		},
		{
			name:  "whiteout under a regular file",
			lower: []fixture.Entry{fixture.File("f", 0o644, "f")},
			upper: []fixture.Entry{fixture.Whiteout("f", "x")},
			kept:  []string{"f"},
		},
		{
			name:  "whiteout through a dangling symlink",
			lower: []fixture.Entry{fixture.Symlink("d", "nowhere")},
			upper: []fixture.Entry{fixture.Whiteout("d", "x"), fixture.Opaque("d")},
			gone:  []string{"nowhere"},
			kept:  []string{"d"},
		},
		{
			name:  "whiteout through a symlink loop",
			lower: []fixture.Entry{fixture.Symlink("a", "b"), fixture.Symlink("b", "a")},
			upper: []fixture.Entry{fixture.Whiteout("a", "x"), fixture.Opaque("b")},
			kept:  []string{"a", "b"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newTree()
			for i, layer := range [][]fixture.Entry{tt.lower, tt.upper} {
				ents, err := readLayer(bytes.NewReader(mustTar(t, layer...)), newChunker(FixedChunking, 4096), &memSink{})
				if err != nil {
					t.Fatalf("layer %d: %v", i, err)
				}
				if err := tr.apply(ents); err != nil {
					t.Fatalf("layer %d: %v", i, err)
				}
			}
			for _, p := range tt.gone {
				if tr.lookup(p) != nil {
					t.Errorf("%s survived the upper layer's whiteout", p)
				}
			}
			for _, p := range tt.kept {
				if tr.lookup(p) == nil {
					t.Errorf("%s is missing", p)
				}
			}
		})
	}
}
