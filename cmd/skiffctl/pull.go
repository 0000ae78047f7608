package main

import (
	"context"
	"fmt"
	"io"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/distribution/reference"
)

// runPull pulls an image into containerd for the skiff snapshotter, as
// ctr-remote's rpull does for stargz: layers are labelled with the image
// reference, manifest and layer digests exactly as the CRI plugin labels
// them, so the agent can find the image's Skiff conversion and tell
// containerd not to download the layers it serves lazily.
func runPull(ctx context.Context, env settings, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("pull", "IMAGE", stderr)
	address := fs.String("address", env.ContainerdAddress, "containerd socket")
	namespace := fs.String("namespace", env.ContainerdNamespace, "containerd namespace")
	snapshotter := fs.String("snapshotter", "skiff", "snapshotter to unpack into (the name of the agent's proxy plugin)")
	if err := parseArgs(fs, args, 1); err != nil {
		return err
	}
	named, err := reference.ParseDockerRef(fs.Arg(0))
	if err != nil {
		return fmt.Errorf("image reference %q: %w", fs.Arg(0), err)
	}
	ref := named.String()
	client, err := containerd.New(*address, containerd.WithDefaultNamespace(*namespace))
	if err != nil {
		return fmt.Errorf("connect to containerd at %s: %w", *address, err)
	}
	defer client.Close()
	ctx = namespaces.WithNamespace(ctx, *namespace)
	resolver := docker.NewResolver(docker.ResolverOptions{
		// Registries on this machine speak plain HTTP, as everywhere
		// else in Skiff.
		Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchLocalhost)),
	})
	img, err := client.Pull(ctx, ref,
		containerd.WithResolver(resolver),
		containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(*snapshotter),
		containerd.WithImageHandlerWrapper(snapshotters.AppendInfoHandlerWrapper(ref)),
	)
	if err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	fmt.Fprintf(stdout, "%s %s\n", img.Name(), img.Target().Digest)
	return nil
}
