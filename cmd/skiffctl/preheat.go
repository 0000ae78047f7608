package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/image"
	"github.com/skiff-dev/skiff/pkg/schedule"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
)

// preheatAsker is the peer id skiffctl asks the scheduler as; no peer
// announces under it, so no peer is left out of the answer.
const preheatAsker = "skiffctl"

// runPreheat asks a seeder to copy the chunk data of a Skiff image from
// the store into its piece store, as seeders do by themselves for each
// conversion that completes while they run: for images converted before
// any seeder started, or that a seeder lost. It waits for the seeder's
// answer, which comes when the image is held.
func runPreheat(ctx context.Context, env settings, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("preheat", "IMAGE", stderr)
	natsURL := fs.String("nats", env.NATS, "NATS server of the scheduler and seeders")
	seeder := fs.String("seeder", "", "id of the seeder to ask (default: the one the scheduler names for the image's largest blob)")
	timeout := fs.Duration("timeout", 30*time.Minute, "how long to wait for the preheat to finish")
	if err := parseArgs(fs, args, 1); err != nil {
		return err
	}
	ref := fs.Arg(0)
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	// Of a multi-platform image, every platform: the cluster's nodes may
	// run any of them.
	images, err := image.LoadBootstraps(ctx, ref)
	if err != nil {
		return err
	}
	nc, err := bus.Connect(*natsURL, "skiffctl")
	if err != nil {
		return err
	}
	defer nc.Close()
	for _, p := range images {
		name := ref
		if p.Platform.OS != "" {
			name += " (" + p.Platform.String() + ")"
		}
		if err := preheat(ctx, nc, *seeder, name, p.Bootstrap, p.Digest, stdout); err != nil {
			return err
		}
	}
	return nil
}

// preheat has a seeder, the one named or else the one the scheduler names,
// preheat one image's bootstrap, and reports it as name.
func preheat(ctx context.Context, nc *nats.Conn, id, name string, b *bootstrap.Bootstrap, digest bootstrap.Digest, stdout io.Writer) error {
	if id == "" {
		var err error
		if id, err = responsibleSeeder(ctx, nc, b); err != nil {
			return err
		}
	}
	start := time.Now()
	var reply skiffv1.SeedReply
	err := bus.Request(ctx, nc, bus.SubjectSeed(id), &skiffv1.SeedRequest{BootstrapDigest: digest.String()}, &reply)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return fmt.Errorf("no seeder %q on NATS", id)
	case err != nil:
		return fmt.Errorf("seeder %s: %w", id, err)
	case reply.GetError() != "":
		return fmt.Errorf("seeder %s: %s", id, reply.GetError())
	}
	fmt.Fprintf(stdout, "%s preheated on seeder %s: %d frames, %s read from the store, in %s\n",
		name, id, reply.GetFrames(), bytesString(reply.GetBytes()), time.Since(start).Round(time.Millisecond))
	return nil
}

// responsibleSeeder asks a scheduler for the seeder that peers are sent
// to for the image's largest blob when no peer holds its pieces.
func responsibleSeeder(ctx context.Context, nc *nats.Conn, b *bootstrap.Bootstrap) (string, error) {
	fr, ok := largestBlobFrame(b)
	if !ok {
		return "", errors.New("the image has no chunk data to preheat")
	}
	blob := b.Blobs[fr.Blob]
	req := schedule.ParentsRequestMessage(schedule.ParentsRequest{PeerID: preheatAsker, Blob: blob, Off: fr.Offset, Size: int64(fr.CompressedSize)})
	var reply skiffv1.ParentsReply
	err := bus.Request(ctx, nc, bus.SubjectParents, req, &reply)
	if errors.Is(err, nats.ErrNoResponders) {
		return "", errors.New("no scheduler on NATS to name a seeder (run skiff-scheduler, or name one with --seeder)")
	}
	if err != nil {
		return "", err
	}
	// The responsible seeder comes last when it lacks the piece;
	// otherwise it is one of the holders, after the peers.
	parents := schedule.ParentsFromMessage(&reply)
	for i := len(parents) - 1; i >= 0; i-- {
		if parents[i].Role == schedule.RoleSeeder {
			return parents[i].ID, nil
		}
	}
	return "", errors.New("the scheduler knows no seeder")
}

// largestBlobFrame returns the first frame of the blob of b that stores
// the most bytes.
func largestBlobFrame(b *bootstrap.Bootstrap) (bootstrap.Frame, bool) {
	stored := make([]int64, len(b.Blobs))
	first := make([]int, len(b.Blobs))
	for i := range first {
		first[i] = -1
	}
	for i, fr := range b.Frames {
		stored[fr.Blob] += int64(fr.CompressedSize)
		if first[fr.Blob] < 0 {
			first[fr.Blob] = i
		}
	}
	best := -1
	for i := range stored {
		if first[i] >= 0 && (best < 0 || stored[i] > stored[best]) {
			best = i
		}
	}
	if best < 0 {
		return bootstrap.Frame{}, false
	}
	return b.Frames[first[best]], true
}
