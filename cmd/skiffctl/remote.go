package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/skiff-dev/skiff/pkg/bus"
	"github.com/skiff-dev/skiff/pkg/conversion"
	"github.com/skiff-dev/skiff/pkg/image"
	skiffv1 "github.com/skiff-dev/skiff/proto/skiff/v1"
)

// convertRemote asks the converter service to convert source, exactly as
// a registry push notification would, and follows the conversion record
// until the Skiff image is pushed or the service gives up.
func convertRemote(ctx context.Context, natsURL, source string, stdout io.Writer) error {
	ref, err := image.ParseReference(source)
	if err != nil {
		return err
	}
	tag, ok := ref.(name.Tag)
	if !ok {
		return fmt.Errorf("%s is a digest reference: the service publishes TAG%s, so name a tag", source, image.TagSuffix)
	}
	if strings.HasSuffix(tag.TagStr(), image.TagSuffix) {
		return fmt.Errorf("%s is already a Skiff image tag", source)
	}
	desc, err := remote.Head(ref, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain))
	if err != nil {
		return fmt.Errorf("resolve %s: %w", source, err)
	}
	req := &skiffv1.ImagePushed{
		Registry: tag.RegistryStr(), Repository: tag.RepositoryStr(), Tag: tag.TagStr(),
		Digest: desc.Digest.String(), MediaType: string(desc.MediaType), Size: desc.Size,
		Origin: "skiffctl", PushedAt: timestamppb.Now(),
	}
	src := req.GetRegistry() + "/" + req.GetRepository() + ":" + req.GetTag()
	target := src + image.TagSuffix

	b, closeBus, err := dialBus(natsURL)
	if err != nil {
		return err
	}
	defer closeBus()
	if err := b.Setup(ctx); err != nil {
		return err
	}
	// The same id as the registry's notification of this push, so asking
	// right after pushing does not queue the image twice.
	msgID := req.GetDigest() + "@" + src
	r, err := b.Record(ctx, req.GetDigest())
	switch {
	case errors.Is(err, bus.ErrNoRecord):
	case err != nil:
		return err
	case r.State == conversion.Done && r.Target == target:
		fmt.Fprintf(stdout, "%s@%s (already converted)\n", r.Target, r.TargetDigest)
		return nil
	case r.State == conversion.Failed:
		// Asking again after a failure is a retry, not a duplicate.
		msgID += "#retry-" + strconv.FormatInt(time.Now().UnixNano(), 10)
	}
	ack, err := b.Publish(ctx, bus.SubjectImagePushed, msgID, req)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "requested conversion of %s@%s (request %d)\n", src, req.GetDigest(), ack.Sequence)
	last := ""
	return b.WatchRecord(ctx, req.GetDigest(), func(r *conversion.Record) (bool, error) {
		ours := r.Seq == ack.Sequence
		switch {
		case r.State == conversion.Done && (ours || r.Target == target):
			fmt.Fprintf(stdout, "%s@%s\n", r.Target, r.TargetDigest)
			boots := strings.Join(r.Bootstraps(), ", ")
			if n := len(r.BootstrapDigests); n > 1 {
				boots = fmt.Sprintf("%d platforms, bootstraps %s", n, boots)
			} else {
				boots = "bootstrap " + boots
			}
			fmt.Fprintf(stdout, "  %s (%s), stored %s, new in store %s, in %s, attempt %d\n", boots,
				bytesString(r.BootstrapSize), bytesString(r.StoredBytes), bytesString(r.NewBytes), r.Duration.Round(time.Millisecond), r.Attempts)
			return true, nil
		case r.State == conversion.Failed && ours:
			return true, fmt.Errorf("conversion of %s failed: %s", src, r.Reason)
		case !ours:
			return false, nil
		}
		line := fmt.Sprintf("  %s, attempt %d", r.State, r.Attempts)
		if r.Reason != "" {
			line += ": " + r.Reason
		}
		if line != last {
			fmt.Fprintln(stdout, line)
			last = line
		}
		return false, nil
	})
}
