package main

import (
	"archive/tar"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/pkg/image"
)

// benchImage writes a three-layer gzip image of the Go toolchain installed
// on this machine (~15k files of source, archives and binaries: a
// realistic mix) to an OCI layout, and returns the layer files. change, if
// set, alters one source file, making a "second version".
func benchImage(b *testing.B, layout, tag string, change bool) []string {
	b.Helper()
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		b.Fatalf("go env GOROOT: %v", err)
	}
	goroot := strings.TrimSpace(string(out))
	groups := [][]string{{"src"}, {"pkg"}, nil} // nil: everything else
	top, err := os.ReadDir(goroot)
	if err != nil {
		b.Fatal(err)
	}
	for _, e := range top {
		if e.Name() != "src" && e.Name() != "pkg" {
			groups[2] = append(groups[2], e.Name())
		}
	}
	var files []string
	for i, g := range groups {
		path := filepath.Join(filepath.Dir(layout), fmt.Sprintf("%s-layer%d.tar.gz", tag, i))
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		zw, _ := gzip.NewWriterLevel(f, gzip.DefaultCompression)
		tw := tar.NewWriter(zw)
		for _, name := range g {
			var mutate func(string, []byte) []byte
			if change && name == "src" {
				mutate = func(rel string, data []byte) []byte {
					if rel == filepath.Join("fmt", "print.go") {
						return append(data, []byte("\n// second version\n")...)
					}
					return data
				}
			}
			if err := fixture.TarTree(tw, filepath.Join(goroot, name), "usr/local/go/"+name, mutate); err != nil {
				b.Fatal(err)
			}
		}
		if err := tw.Close(); err != nil {
			b.Fatal(err)
		}
		zw.Close()
		f.Close()
		files = append(files, path)
	}
	var ls []v1.Layer
	for _, f := range files {
		l, err := tarball.LayerFromFile(f, tarball.WithMediaType(types.OCILayer))
		if err != nil {
			b.Fatal(err)
		}
		ls = append(ls, l)
	}
	img, err := fixture.Image(ls...)
	if err != nil {
		b.Fatal(err)
	}
	if err := image.Write(context.Background(), "oci:"+layout+":"+tag, img); err != nil {
		b.Fatal(err)
	}
	return files
}

func dirSize(b *testing.B, root string) int64 {
	var n int64
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// BenchmarkConvert compares `skiffctl convert` with `gunzip | zstd -3 -T2`
// over the same gzip layers, in one run, and reports the store's size
// against the gzip layers and what a second version adds.
func BenchmarkConvert(b *testing.B) {
	for _, tool := range []string{"gunzip", "zstd"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("%s is not installed (make deps installs it): no baseline to compare with", tool)
		}
	}
	dir := b.TempDir()
	layout := filepath.Join(dir, "layout")
	files := benchImage(b, layout, "v1", false)
	var gz int64
	for _, f := range files {
		info, _ := os.Stat(f)
		gz += info.Size()
	}
	ctx := context.Background()
	var base, skiff time.Duration
	var stored int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		for j, f := range files {
			out := filepath.Join(dir, fmt.Sprintf("baseline%d.zst", j))
			cmd := exec.Command("bash", "-c", `gunzip -c "$1" | zstd -3 -T2 -q -f -o "$2"`, "bash", f, out)
			if o, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("baseline: %v\n%s", err, o)
			}
		}
		base += time.Since(start)

		storeDir := filepath.Join(dir, fmt.Sprintf("store%d", i))
		start = time.Now()
		runBench(b, ctx, "convert", "--store", "file://"+storeDir, "oci:"+layout+":v1", "oci:"+layout+":v1-skiff")
		skiff += time.Since(start)
		stored = dirSize(b, filepath.Join(storeDir, "blobs"))
	}
	b.StopTimer()
	b.ReportMetric(float64(skiff)/float64(base), "convert/baseline")
	b.ReportMetric(float64(stored)/float64(gz), "stored/gzip")

	// A second version with one source file changed, into the same store.
	storeDir := filepath.Join(dir, "store0")
	before := dirSize(b, storeDir)
	benchImage(b, layout, "v2", true)
	runBench(b, ctx, "convert", "--store", "file://"+storeDir, "oci:"+layout+":v2", "oci:"+layout+":v2-skiff")
	added := dirSize(b, storeDir) - before
	b.ReportMetric(float64(added)/float64(before), "v2-added/store")
	b.Logf("gzip layers %d B, stored %d B, v2 added %d B; baseline %s, skiff %s", gz, stored, added, base/time.Duration(b.N), skiff/time.Duration(b.N))
}

func runBench(b *testing.B, ctx context.Context, args ...string) {
	b.Helper()
	var out strings.Builder
	if code := run(ctx, args, &out, &out); code != 0 {
		b.Fatalf("skiffctl %s: exit %d\n%s", strings.Join(args, " "), code, out.String())
	}
}
