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

// benchLayer is one layer of a benchmark image, built from the Go
// toolchain installed on this machine (no image can be pulled here).
type benchLayer struct {
	dirs      []string // GOROOT entries added; nil means all but those of other layers
	mode      int64    // if set, files are re-added with this mode (a "RUN chmod -R" layer)
	whiteouts []string // GOROOT-relative paths deleted
}

// Two images of the same ~15k files (Go sources, archives, binaries):
// "flat" ships each file once, in three layers; "dockerfile" is layered as
// a typical Dockerfile would be: the toolchain, its sources, then a
// hardening step that chmods the binaries (re-adding them, as overlayfs
// copy-up makes every chmod do) and deletes the test suite.
var benchImages = map[string][]benchLayer{
	"flat":       {{dirs: []string{"src"}}, {dirs: []string{"pkg"}}, {}},
	"dockerfile": {{}, {dirs: []string{"src", "test"}}, {dirs: []string{"bin"}, mode: 0o750, whiteouts: []string{"test", "src/cmd/go/testdata"}}},
}

// benchImage writes a gzip image to an OCI layout and returns its layer
// files. change, if set, alters one source file, making a second version.
func benchImage(b *testing.B, kind, layout, tag string, change bool) []string {
	b.Helper()
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		b.Fatalf("go env GOROOT: %v", err)
	}
	goroot := strings.TrimSpace(string(out))
	layers := benchImages[kind]
	named := map[string]bool{}
	for _, l := range layers {
		if l.mode == 0 {
			for _, d := range l.dirs {
				named[d] = true
			}
		}
	}
	top, err := os.ReadDir(goroot)
	if err != nil {
		b.Fatal(err)
	}
	var files []string
	for i, l := range layers {
		dirs := l.dirs
		if dirs == nil {
			for _, e := range top {
				if !named[e.Name()] {
					dirs = append(dirs, e.Name())
				}
			}
		}
		path := filepath.Join(filepath.Dir(layout), fmt.Sprintf("%s-%s-layer%d.tar.gz", kind, tag, i))
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		zw, _ := gzip.NewWriterLevel(f, gzip.DefaultCompression)
		tw := tar.NewWriter(zw)
		for _, w := range l.whiteouts {
			dir, base := filepath.Split(w)
			if err := tw.WriteHeader(&tar.Header{Name: "usr/local/go/" + dir + ".wh." + base, Typeflag: tar.TypeReg, Mode: 0o644}); err != nil {
				b.Fatal(err)
			}
		}
		for _, name := range dirs {
			edit := func(rel string, hdr *tar.Header, data []byte) []byte {
				if l.mode != 0 && hdr.Typeflag == tar.TypeReg {
					hdr.Mode = l.mode
				}
				if change && name == "src" && rel == filepath.Join("fmt", "print.go") {
					return append(data, []byte("\n// second version\n")...)
				}
				return data
			}
			if err := fixture.TarTree(tw, filepath.Join(goroot, name), "usr/local/go/"+name, edit); err != nil {
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
	// Fixed and content-defined chunking on the same images: the default
	// (fixed) was chosen from these numbers, see docs/performance.md.
	for _, run := range []struct{ kind, chunking string }{{"dockerfile", "fixed"}, {"dockerfile", "cdc"}, {"flat", "fixed"}, {"flat", "cdc"}} {
		b.Run(run.kind+"/"+run.chunking, func(b *testing.B) { benchConvert(b, run.kind, run.chunking) })
	}
}

func benchConvert(b *testing.B, kind, chunking string) {
	dir := b.TempDir()
	layout := filepath.Join(dir, "layout")
	files := benchImage(b, kind, layout, "v1", false)
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
		runBench(b, ctx, "convert", "--chunking", chunking, "--store", "file://"+storeDir, "oci:"+layout+":v1", "oci:"+layout+":v1-skiff")
		skiff += time.Since(start)
		stored = dirSize(b, filepath.Join(storeDir, "blobs"))
	}
	b.StopTimer()
	b.ReportMetric(float64(skiff)/float64(base), "convert/baseline")
	b.ReportMetric(float64(stored)/float64(gz), "stored/gzip")

	// A second version with one source file changed, into the same store.
	storeDir := filepath.Join(dir, "store0")
	before := dirSize(b, storeDir)
	benchImage(b, kind, layout, "v2", true)
	runBench(b, ctx, "convert", "--chunking", chunking, "--store", "file://"+storeDir, "oci:"+layout+":v2", "oci:"+layout+":v2-skiff")
	added := dirSize(b, storeDir) - before
	b.ReportMetric(float64(added)/float64(before), "v2-added/store")
	b.Logf("%s: gzip layers %d B, stored %d B, v2 added %d B; baseline %s, skiff %s", kind, gz, stored, added, base/time.Duration(b.N), skiff/time.Duration(b.N))
}

func runBench(b *testing.B, ctx context.Context, args ...string) {
	b.Helper()
	var out strings.Builder
	if code := run(ctx, args, &out, &out); code != 0 {
		b.Fatalf("skiffctl %s: exit %d\n%s", strings.Join(args, " "), code, out.String())
	}
}
