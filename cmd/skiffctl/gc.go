package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/skiff-dev/skiff/pkg/gc"
	"github.com/skiff-dev/skiff/pkg/image"
	"github.com/skiff-dev/skiff/pkg/store/storeurl"
)

// minGrace is the shortest --grace accepted. The grace period must exceed
// the longest conversion, which no run can know; an hour is longer than
// any conversion seen, and catches a unit typed wrong ("24m" for "24h").
// Tests lower it.
var minGrace = time.Hour

// runGC deletes from the store what no Skiff image in the named
// registries needs (see pkg/gc): the registries are the only record of
// which images are alive, so without one every image would look dead.
func runGC(ctx context.Context, env settings, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("gc", "REGISTRY[/REPOSITORY]...", stderr)
	storeURL := fs.String("store", env.Store, storeFlagHelp)
	dryRun := fs.Bool("dry-run", false, "report what would be deleted and change nothing")
	grace := fs.Duration("grace", gc.DefaultGrace, "age before anything unused is marked dead or condemned, and again before it is deleted; must exceed the longest conversion (at least "+minGrace.String()+")")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "skiffctl gc: name every registry (host[:port]) or repository (host[:port]/repo) holding Skiff images of this store: collecting without knowing the live images would delete them all")
		fs.Usage()
		return errUsage
	}
	if *grace < minGrace {
		return fmt.Errorf("--grace %s: must be at least %s, and longer than the longest conversion", *grace, minGrace)
	}
	st, err := storeurl.OpenExisting(ctx, *storeURL)
	if err != nil {
		return err
	}
	live, err := image.LiveBootstraps(ctx, fs.Args(), image.LiveOptions{})
	if err != nil {
		return err
	}
	for _, t := range fs.Args() {
		if live.Targets[t] == 0 {
			// More likely a wrong name, or a catalog that permissions
			// filter, than a registry emptied on purpose.
			return fmt.Errorf("no Skiff image found in %s: refusing to collect, which would delete every image of the store that only it holds; name only registries and repositories holding Skiff images", t)
		}
	}
	rep, err := gc.Collect(ctx, st, live.Digests(), gc.Options{Grace: *grace, DryRun: *dryRun, ReadMissing: live.ReadBootstrap})
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
		fmt.Fprintf(w, ", %d of them not in this store (the blobs they name are kept)", r.LiveMissing)
	}
	fmt.Fprintln(w)
	if r.LeasesLive > 0 || r.LeasesDeleted.Count > 0 {
		fmt.Fprintf(w, "leases:     %d bootstraps no registry names kept live by node agents' leases, %d stale leases %sdeleted\n", r.LeasesLive, r.LeasesDeleted.Count, would)
	}
	fmt.Fprintf(w, "bootstraps: %d kept (%s), %d %sdeleted (%s) with %d startup sets, %d %smarked dead (%s), %d awaiting deletion (%s), %d %srevived\n",
		r.BootstrapsKept.Count, bytesString(r.BootstrapsKept.Bytes), r.BootstrapsDeleted.Count, would, bytesString(r.BootstrapsDeleted.Bytes), r.StartupSetsDeleted.Count,
		r.BootstrapsMarked.Count, would, bytesString(r.BootstrapsMarked.Bytes), r.BootstrapsPending.Count, bytesString(r.BootstrapsPending.Bytes), r.BootstrapsRevived.Count, would)
	fmt.Fprintf(w, "blobs:      %d kept (%s), %d %scondemned (%s), %d %sdeleted (%s), %d awaiting deletion (%s)\n",
		r.BlobsKept.Count, bytesString(r.BlobsKept.Bytes), r.BlobsCondemned.Count, would, bytesString(r.BlobsCondemned.Bytes),
		r.BlobsDeleted.Count, would, bytesString(r.BlobsDeleted.Bytes), r.BlobsPending.Count, bytesString(r.BlobsPending.Bytes))
	fmt.Fprintf(w, "indexes:    %d %srestored, %d %sdeleted without their blob (%s)\n", r.IndexesRestored.Count, would, r.IndexesDeleted.Count, would, bytesString(r.IndexesDeleted.Bytes))
	if r.BootstrapsRestored.Count > 0 {
		fmt.Fprintf(w, "restored:   %d live bootstraps missing from the store %swritten back (%s)\n", r.BootstrapsRestored.Count, would, bytesString(r.BootstrapsRestored.Bytes))
	}
	if r.BlobsMissing > 0 {
		fmt.Fprintf(w, "damage:     %d blobs referenced by bootstraps are missing from the store (run skiffctl check on the images)\n", r.BlobsMissing)
	}
	if r.BlobsRaced > 0 {
		fmt.Fprintf(w, "damage:     %d blobs were deleted while a conversion published them again (see the error log; re-push or reconvert those images)\n", r.BlobsRaced)
	}
}
