package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"sort"
	"strings"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/image"
	"github.com/skiff-dev/skiff/pkg/store"
	"github.com/skiff-dev/skiff/pkg/store/storeurl"
)

func runCheck(ctx context.Context, env settings, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("check", "IMAGE", stderr)
	storeURL := fs.String("store", env.Store, storeFlagHelp)
	concurrency := fs.Int("concurrency", max(8, 2*runtime.NumCPU()), "requests in flight")
	if err := parseArgs(fs, args, 1); err != nil {
		return err
	}
	ref := fs.Arg(0)
	// Of a multi-platform image, every platform: the check is for the
	// whole cluster, whatever this machine's architecture.
	images, err := image.LoadBootstraps(ctx, ref)
	if err != nil {
		return err
	}
	st, err := storeurl.OpenExisting(ctx, *storeURL)
	if err != nil {
		return err
	}
	var failed []string
	for _, p := range images {
		if p.Platform.OS != "" {
			fmt.Fprintf(stdout, "platform:  %s\n", p.Platform.String())
		}
		if err := checkImage(ctx, ref, p.Bootstrap, p.Digest, st, *concurrency, stdout, stderr); err != nil {
			if p.Platform.OS == "" {
				return err
			}
			failed = append(failed, fmt.Sprintf("%s: %v", p.Platform.String(), err))
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%s", strings.Join(failed, "\n"))
	}
	return nil
}

// checkImage verifies every chunk of one image's bootstrap against st.
func checkImage(ctx context.Context, ref string, b *bootstrap.Bootstrap, d bootstrap.Digest, st store.Store, concurrency int, stdout, stderr io.Writer) error {
	prog := newProgressLine(stderr)
	rep, err := fetch.Verify(ctx, b, fetch.NewStoreSource("store", st), fetch.VerifyOptions{
		Concurrency: concurrency,
		Progress: func(done, total int64) {
			prog.update("checked %s of %s", bytesString(done), bytesString(total))
		},
	})
	prog.done()
	if err != nil {
		return err
	}
	s := b.Stats()
	fmt.Fprintf(stdout, "image:     %s\nbootstrap: %s\nchecked:   %d chunks in %d frames, %s read (%d all-zero chunks need no data)\n",
		ref, d, rep.Chunks, rep.Frames, bytesString(rep.Bytes), s.ZeroChunks)
	if len(rep.Bad) == 0 {
		fmt.Fprintln(stdout, "result:    ok")
		return nil
	}
	paths := chunkPaths(b, rep.Bad)
	sort.Slice(rep.Bad, func(i, j int) bool { return rep.Bad[i].Digest.Hex() < rep.Bad[j].Digest.Hex() })
	fmt.Fprintf(stdout, "result:    %d corrupt chunks\n", len(rep.Bad))
	var names []string
	for _, bad := range rep.Bad {
		fmt.Fprintf(stdout, "corrupt %s: %v\n", bad.Digest, bad.Err)
		for _, p := range paths[bad.Chunk] {
			fmt.Fprintf(stdout, "  in %s\n", p)
		}
		names = append(names, fmt.Sprintf("%s (%s)", bad.Digest, strings.Join(paths[bad.Chunk], ", ")))
	}
	return fmt.Errorf("%d of %d chunks are corrupt:\n  %s", len(rep.Bad), rep.Chunks, strings.Join(names, "\n  "))
}

// chunkPaths maps each bad chunk to every path whose content uses it.
func chunkPaths(b *bootstrap.Bootstrap, bad []fetch.BadChunk) map[uint32][]string {
	want := map[uint32]bool{}
	for _, c := range bad {
		want[c.Chunk] = true
	}
	paths := map[uint32][]string{}
	b.Walk(func(p string, ino uint32) error {
		if b.Inodes[ino].Type() != bootstrap.ModeRegular {
			return nil
		}
		named := map[uint32]bool{} // a chunk may repeat within a file
		for _, ci := range b.FileChunks(ino) {
			if want[ci] && !named[ci] {
				paths[ci] = append(paths[ci], p)
				named[ci] = true
			}
		}
		return nil
	})
	return paths
}
