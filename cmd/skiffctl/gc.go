package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/skiff-dev/skiff/pkg/gc"
	"github.com/skiff-dev/skiff/pkg/image"
)

// runGC deletes from the store what no Skiff image in the named
// registries needs (see pkg/gc): the registries are the only record of
// which images are alive, so without one every image would look dead.
func runGC(ctx context.Context, env settings, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("gc", "REGISTRY[/REPOSITORY]...", stderr)
	storeURL := fs.String("store", env.Store, storeFlagHelp)
	dryRun := fs.Bool("dry-run", false, "report what would be deleted and change nothing")
	grace := fs.Duration("grace", gc.DefaultGrace, "age before anything unused is condemned, and again before it is deleted; must exceed the longest conversion")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "skiffctl gc: name every registry (host[:port]) or repository (host[:port]/repo) holding Skiff images of this store: collecting without knowing the live images would delete them all")
		fs.Usage()
		return errUsage
	}
	if *grace <= 0 {
		return fmt.Errorf("--grace %s: must be positive", *grace)
	}
	st, err := openStore(ctx, *storeURL)
	if err != nil {
		return err
	}
	live, err := image.LiveBootstraps(ctx, fs.Args(), image.LiveOptions{})
	if err != nil {
		return err
	}
	if len(live.Bootstraps) == 0 {
		// More likely a wrong name than a registry emptied on purpose.
		return errors.New("no Skiff image found in " + strings.Join(fs.Args(), ", ") + ": refusing to collect, which would delete every image in the store")
	}
	rep, err := gc.Collect(ctx, st, live.Digests(), gc.Options{Grace: *grace, DryRun: *dryRun})
	if rep != nil {
		writeGCReport(stdout, live, rep)
	}
	return err
}

func writeGCReport(w io.Writer, live *image.Live, r *gc.Report) {
	would := ""
	if r.DryRun {
		fmt.Fprintln(w, "dry run: nothing was changed")
		would = "would be "
	}
	fmt.Fprintf(w, "live:       %d bootstraps named by Skiff images in %d repositories (%d manifests read)", len(live.Bootstraps), live.Repositories, live.Manifests)
	if r.LiveMissing > 0 {
		fmt.Fprintf(w, ", %d of them not in this store", r.LiveMissing)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "bootstraps: %d kept (%s), %d %sdeleted (%s) with %d startup sets\n",
		r.BootstrapsKept.Count, bytesString(r.BootstrapsKept.Bytes), r.BootstrapsDeleted.Count, would, bytesString(r.BootstrapsDeleted.Bytes), r.StartupSetsDeleted.Count)
	fmt.Fprintf(w, "blobs:      %d kept (%s), %d %scondemned (%s), %d %sdeleted (%s), %d awaiting deletion (%s)\n",
		r.BlobsKept.Count, bytesString(r.BlobsKept.Bytes), r.BlobsCondemned.Count, would, bytesString(r.BlobsCondemned.Bytes),
		r.BlobsDeleted.Count, would, bytesString(r.BlobsDeleted.Bytes), r.BlobsPending.Count, bytesString(r.BlobsPending.Bytes))
	fmt.Fprintf(w, "indexes:    %d %srestored\n", r.IndexesRestored.Count, would)
	if r.BlobsMissing > 0 {
		fmt.Fprintf(w, "damage:     %d blobs referenced by bootstraps are missing from the store (run skiffctl check on the images)\n", r.BlobsMissing)
	}
}
