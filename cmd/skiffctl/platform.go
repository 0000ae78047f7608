package main

import (
	"context"
	"fmt"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/image"
)

// pickPlatforms keeps the images of the platforms list names
// (os/arch[/variant], comma separated); naming one the index lacks fails.
func pickPlatforms(images []image.Platform, list string) ([]image.Platform, error) {
	have := make([]v1.Platform, len(images))
	for i, p := range images {
		have[i] = p.Platform
	}
	idx, err := matchPlatforms(have, list)
	if err != nil {
		return nil, err
	}
	out := make([]image.Platform, len(idx))
	for i, j := range idx {
		out[i] = images[j]
	}
	return out, nil
}

// matchPlatforms returns the positions in have of the platforms list
// names (os/arch[/variant], comma separated), each once, in the list's
// order; naming one have lacks fails, saying what there is.
func matchPlatforms(have []v1.Platform, list string) ([]int, error) {
	var out []int
	for _, name := range strings.Split(list, ",") {
		want, err := v1.ParsePlatform(strings.TrimSpace(name))
		if err == nil && (want.OS == "" || want.Architecture == "") {
			err = fmt.Errorf("want os/arch[/variant]")
		}
		if err != nil {
			return nil, fmt.Errorf("--platform %q: %w", name, err)
		}
		found := false
		for i, p := range have {
			if p.Satisfies(*want) && !slices.Contains(out, i) {
				out, found = append(out, i), true
			}
		}
		if !found {
			names := make([]string, len(have))
			for i, p := range have {
				names[i] = p.String()
			}
			return nil, fmt.Errorf("--platform %s: the index has %s", name, strings.Join(names, ", "))
		}
	}
	return out, nil
}

// platformBootstrap loads the bootstrap of the Skiff image at ref: of this
// machine's platform, or of the one platform names when ref is a Skiff
// index.
func platformBootstrap(ctx context.Context, ref, platform string) (*bootstrap.Bootstrap, bootstrap.Digest, error) {
	if platform == "" {
		return image.LoadBootstrap(ctx, ref)
	}
	boots, err := image.LoadBootstraps(ctx, ref)
	if err != nil {
		return nil, bootstrap.Digest{}, err
	}
	if boots[0].Platform.OS == "" {
		return nil, bootstrap.Digest{}, fmt.Errorf("--platform: %s is a single image, not a multi-platform index", ref)
	}
	have := make([]v1.Platform, len(boots))
	for i, b := range boots {
		have[i] = b.Platform
	}
	idx, err := matchPlatforms(have, platform)
	if err != nil {
		return nil, bootstrap.Digest{}, err
	}
	if len(idx) != 1 {
		return nil, bootstrap.Digest{}, fmt.Errorf("--platform %s names %d of the index's platforms; name one", platform, len(idx))
	}
	return boots[idx[0]].Bootstrap, boots[idx[0]].Digest, nil
}
