#!/usr/bin/env bash
# Builds local stand-ins for the third-party images docker-compose.yaml
# names, for machines that cannot pull from any registry (CI). Each stand-in
# is FROM scratch around the binary the Makefile builds into bin/ from the
# same project, laid out like the upstream image (entrypoint path, user, listen
# environment), so the compose file runs unchanged. The stand-ins have no
# shell and none of the upstream images' extra tools, except for the one
# command a healthcheck in the compose file runs: the MinIO stand-in's mc
# (e2e/compose/mc) answers `mc ready local`.
#
# A tag that already holds an image not built here (a real pull) is left
# alone. Stand-ins carry the label dev.skiff.standin=true.
#
#   e2e/compose/standins.sh     # from anywhere; builds missing tools first
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
make -s -C "$root" bin/nats-server bin/minio bin/registry bin/jaeger >&2

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

# install copies binary to path inside the image's root filesystem, with
# the shared libraries it links (the tool builds may use cgo).
install() {
	local rootfs=$1 binary=$2 path=$3 lib
	mkdir -p "$rootfs$(dirname "$path")"
	cp "$binary" "$rootfs$path"
	for lib in $(ldd "$binary" 2>/dev/null | grep -o '/[^ ]*' || true); do
		mkdir -p "$rootfs$(dirname "$lib")"
		cp -L "$lib" "$rootfs$lib"
	done
}

# standin builds tag from the Dockerfile on stdin and the rootfs prepared
# in $ctx/$name.
standin() {
	local tag=$1 name=$2
	if docker image inspect "$tag" >/dev/null 2>&1 &&
		[[ $(docker image inspect -f '{{index .Config.Labels "dev.skiff.standin"}}' "$tag") != true ]]; then
		echo "standins: $tag is a real image, kept" >&2
		return
	fi
	mkdir -p "$ctx/$name/rootfs/tmp"
	chmod 1777 "$ctx/$name/rootfs/tmp"
	{ echo 'FROM scratch'; echo 'LABEL dev.skiff.standin=true'; echo 'COPY rootfs/ /'; cat; } > "$ctx/$name/Dockerfile"
	docker build -q -t "$tag" "$ctx/$name" >/dev/null
	echo "standins: built $tag" >&2
}

install "$ctx/nats/rootfs" "$root/bin/nats-server" /nats-server
standin nats:2 nats <<'DOCKERFILE'
EXPOSE 4222 6222 8222
ENTRYPOINT ["/nats-server"]
DOCKERFILE

install "$ctx/minio/rootfs" "$root/bin/minio" /usr/bin/minio
CGO_ENABLED=0 go -C "$root" build -trimpath -o "$ctx/minio/rootfs/usr/bin/mc" ./e2e/compose/mc
standin minio/minio:latest minio <<'DOCKERFILE'
EXPOSE 9000
VOLUME ["/data"]
ENTRYPOINT ["/usr/bin/minio"]
DOCKERFILE

install "$ctx/registry/rootfs" "$root/bin/registry" /bin/registry
standin registry:3 registry <<'DOCKERFILE'
EXPOSE 5000
VOLUME ["/var/lib/registry"]
ENTRYPOINT ["/bin/registry"]
CMD ["serve", "/etc/distribution/config.yml"]
DOCKERFILE

install "$ctx/jaeger/rootfs" "$root/bin/jaeger" /cmd/jaeger/jaeger-linux
standin jaegertracing/jaeger:2.13.0 jaeger <<'DOCKERFILE'
ENV JAEGER_LISTEN_HOST=0.0.0.0
EXPOSE 4317 4318 16686 13133
VOLUME ["/tmp"]
USER 10001
ENTRYPOINT ["/cmd/jaeger/jaeger-linux"]
DOCKERFILE
