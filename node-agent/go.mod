module github.com/skiff-dev/skiff/node-agent

go 1.26.0

require github.com/skiff-dev/skiff v0.0.0

require (
	github.com/caarlos0/env/v11 v11.4.2 // indirect
	github.com/containerd/containerd/api v1.9.0 // indirect
	github.com/containerd/containerd/v2 v2.1.4 // indirect
	github.com/containerd/errdefs v1.0.0 // indirect
	github.com/google/go-containerregistry v0.22.1 // indirect
	github.com/hanwen/go-fuse/v2 v2.12.1 // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sync v0.24.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.43.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260928230214-8a89bd6388cc // indirect
	google.golang.org/grpc v1.83.2 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
	k8s.io/cri-api v0.32.3 // indirect
)

replace (
	github.com/skiff-dev/skiff => ../
	github.com/skiff-dev/skiff/proto => ../proto
)
