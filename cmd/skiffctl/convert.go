package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/convert"
	"github.com/skiff-dev/skiff/pkg/image"
	"github.com/skiff-dev/skiff/pkg/startup"
	"github.com/skiff-dev/skiff/pkg/store/storeurl"
)

func runConvert(ctx context.Context, env settings, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("convert", "SOURCE [TARGET]", stderr)
	storeURL := fs.String("store", env.Store, storeFlagHelp)
	chunkSize := fs.Int("chunk-size", convert.DefaultChunkSize, "chunk size in bytes (fixed chunking) or average chunk size (cdc)")
	compression := fs.String("compression", convert.DefaultCompression.String(), "frame compression: zstd, lz4 or none")
	chunking := fs.String("chunking", string(convert.DefaultChunking), "chunking: fixed or cdc")
	batchSize := fs.Int("batch-size", convert.DefaultBatchSize, "pack chunks smaller than this into shared frames of up to this size")
	workDir := fs.String("work-dir", os.TempDir(), "directory for blob files before upload")
	remote := fs.Bool("remote", false, "ask the converter service to convert SOURCE (published as TAG-skiff) instead of converting here")
	natsURL := fs.String("nats", env.NATS, "NATS server of the converter service, with --remote")
	prefetch := fs.String("prefetch", "", "file listing paths (files or directories, one per line; - for standard input) whose files every node fetches first, as the image's startup set")
	platforms := fs.String("platform", "", "of a multi-platform SOURCE, convert only these platforms (os/arch[/variant], comma separated; default: every linux platform)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *remote {
		if *prefetch != "" || *platforms != "" {
			return fmt.Errorf("--prefetch and --platform need the conversion made here, not with --remote")
		}
		if fs.NArg() != 1 {
			fs.Usage()
			return errUsage
		}
		return convertRemote(ctx, *natsURL, fs.Arg(0), stdout)
	}
	if fs.NArg() < 1 || fs.NArg() > 2 {
		fs.Usage()
		return errUsage
	}
	source := fs.Arg(0)
	target := fs.Arg(1)
	if target == "" {
		t, err := image.SkiffTag(source)
		if err != nil {
			return fmt.Errorf("no TARGET given and %w", err)
		}
		target = t
	}
	comp, err := bootstrap.ParseCompression(*compression)
	if err != nil {
		return err
	}
	ch, err := convert.ParseChunking(*chunking)
	if err != nil {
		return err
	}
	var paths []string
	if *prefetch != "" {
		if paths, err = readPaths(*prefetch); err != nil {
			return err
		}
	}
	st, err := storeurl.Open(ctx, *storeURL)
	if err != nil {
		return err
	}
	index, images, err := image.LoadIndex(ctx, source)
	if err != nil {
		return err
	}
	if *platforms != "" {
		if index == nil {
			return fmt.Errorf("--platform: %s is a single image, not a multi-platform index", source)
		}
		if images, err = pickPlatforms(images, *platforms); err != nil {
			return err
		}
	}
	line := newProgressLine(stderr)
	c := convert.New(st, convert.Options{
		ChunkSize: *chunkSize, Compression: comp, Chunking: ch, BatchSize: *batchSize, WorkDir: *workDir, Prefetch: paths,
		Progress: func(p convert.Progress) {
			line.update("converting %s: layers %d/%d, %s of %s", source, p.LayersDone, p.Layers, bytesString(p.BytesRead), bytesString(p.Bytes))
		},
	})
	if index == nil {
		res, err := c.Convert(ctx, images[0].Image)
		line.done()
		if err != nil {
			return err
		}
		line.update("pushing %s", target)
		err = image.Write(ctx, target, res.Image)
		line.done()
		if err != nil {
			return err
		}
		digest, err := res.Image.Digest()
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s@%s\n", target, digest)
		printConverted(stdout, "  ", res)
		return nil
	}
	res, err := c.ConvertIndex(ctx, *index, images)
	line.done()
	if err != nil {
		return err
	}
	line.update("pushing %s", target)
	err = image.WriteIndex(ctx, target, res.Index)
	line.done()
	if err != nil {
		return err
	}
	digest, err := res.Index.Digest()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s@%s (%d platforms)\n", target, digest, len(res.Platforms))
	for _, p := range res.Platforms {
		fmt.Fprintf(stdout, "  %s:\n", p.Platform.String())
		printConverted(stdout, "    ", p.Result)
	}
	return nil
}

// printConverted describes one converted image, each line indented.
func printConverted(w io.Writer, indent string, res *convert.Result) {
	s := res.Stats
	fmt.Fprintf(w, "%sbootstrap %s (%s), %d files, %d chunks\n", indent, res.Bootstrap, bytesString(res.BootstrapSize), s.Files, s.Chunks)
	fmt.Fprintf(w, "%ssource layers %s, logical %s, stored %s (%.2fx of source), new in store %s, in %s\n", indent,
		bytesString(res.SourceBytes), bytesString(s.LogicalBytes), bytesString(s.StoredBytes),
		ratio(s.StoredBytes, res.SourceBytes), bytesString(res.NewBytes), res.Duration.Round(1e6))
	if res.PrefetchFiles > 0 {
		fmt.Fprintf(w, "%sstartup set of %d files, fetched first by every node\n", indent, res.PrefetchFiles)
	}
}

// readPaths reads the paths listed in file (- for standard input), as
// startup.Paths splits them.
func readPaths(file string) ([]string, error) {
	var data []byte
	var err error
	if file == "-" {
		data, err = io.ReadAll(io.LimitReader(os.Stdin, startup.MaxSize))
	} else {
		data, err = os.ReadFile(file)
	}
	if err != nil {
		return nil, fmt.Errorf("read --prefetch paths: %w", err)
	}
	paths := startup.Paths(string(data))
	if len(paths) == 0 {
		return nil, fmt.Errorf("--prefetch %s lists no paths", file)
	}
	return paths, nil
}

func ratio(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}
