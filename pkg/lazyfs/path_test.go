package lazyfs

import (
	"testing"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/fetch/fetchtest"
)

func TestPathNamesInodes(t *testing.T) {
	img, err := fetchtest.Build([]fetchtest.Entry{
		{Path: "/", Mode: bootstrap.ModeDir | 0o755},
		{Path: "/top", Mode: bootstrap.ModeRegular | 0o644, Data: []byte("t")},
		{Path: "/a", Mode: bootstrap.ModeDir | 0o755},
		{Path: "/a/b", Mode: bootstrap.ModeDir | 0o755},
		{Path: "/a/b/deep", Mode: bootstrap.ModeRegular | 0o644, Data: []byte("d")},
		{Path: "/a/link", Mode: bootstrap.ModeSymlink | 0o777, Target: "b/deep"},
	}, fetchtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	fsys := &fileSystem{b: img.Bootstrap}
	for _, p := range []string{"/", "/top", "/a", "/a/b", "/a/b/deep", "/a/link"} {
		ino, ok := img.Bootstrap.LookupPath(p)
		if !ok {
			t.Fatalf("%s not in the image", p)
		}
		if got := fsys.path(ino); got != p {
			t.Errorf("path(%d) = %q, want %q", ino, got, p)
		}
	}
}
