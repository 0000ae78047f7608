# Skiff build, test and tooling entry points. Run `make help` for a summary.
#
# Third-party server and tool binaries are built from pinned versions into the
# gitignored bin/ directory, once per machine: a target is skipped when its
# binary already exists. Delete bin/<name> to rebuild it.

SHELL       := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

GO     ?= go
BIN    := $(CURDIR)/bin
export PATH := $(BIN):$(PATH)

# Extra flags for go test, e.g. `make test TESTFLAGS=-v` (CI sets -v).
TESTFLAGS  ?=
BENCHFLAGS ?= -benchtime 1x -benchmem
TEST_TIMEOUT ?= 20m

# Pinned versions. minio only publishes pseudo-versions.
MINIO_VERSION       := v0.0.0-20260212201848-7aac2a2c5b7c
REGISTRY_VERSION    := v3.1.2
NATS_VERSION        := v2.15.2
CRANE_VERSION       := v0.22.1
STATICCHECK_VERSION := v0.8.2
BUF_VERSION         := v1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
COMPOSE_VERSION     := v2.29.7

# Every module of the workspace, as directories relative to the root, so new
# modules added to go.work (services/converter, node-agent, ...) are covered
# without editing this file.
MODULES = $(shell $(GO) list -m -f '{{.Dir}}' | sed 's|^$(CURDIR)|.|')

# Binaries: each main package under these directories becomes bin/<dir name>.
CMD_DIRS = $(wildcard cmd/*/ services/*/cmd/*/ node-agent/cmd/*/)

TOOLS := bin/minio bin/registry bin/nats-server bin/crane bin/staticcheck bin/buf bin/protoc-gen-go

DEB_PACKAGES := containerd runc fuse3 skopeo umoci erofs-utils zstd pigz

.PHONY: help build test e2e bench fuzz lint proto tools deps demo clean compose-v2

help:
	@echo "make demo     run the Skiff demo on its embedded default image"
	@echo "make test     run unit and integration tests of every module (builds tools first)"
	@echo "make e2e      run end-to-end tests (-tags e2e ./e2e/...)"
	@echo "make bench    run benchmarks once each and write bench/report.md"
	@echo "make build    build every binary into bin/"
	@echo "make fuzz     run every fuzz target for FUZZTIME (30s) and keep the corpus in testdata/"
	@echo "make lint     gofmt, go vet and staticcheck on every module"
	@echo "make proto    regenerate protobuf code with buf"
	@echo "make tools    build pinned server and tool binaries into bin/"
	@echo "make deps     install the Debian packages Skiff needs"
	@echo "make clean    remove built Skiff binaries (keeps the slow tool builds)"

# Each command directory is built from inside its own module so that a module
# not (yet) in go.work still builds with its own go.mod. A broken binary does
# not hide the others; the target fails at the end.
build:
	@mkdir -p bin
	@status=0; \
	for d in $(CMD_DIRS); do \
		echo "go build bin/$$(basename $$d)"; \
		$(GO) -C $$d build -o $(BIN)/ . || status=1; \
	done; \
	exit $$status

# Tests run module by module: `./...` never crosses into a nested module, so
# this covers each package exactly once. A failing module does not stop the
# others; the target fails at the end if any did.
test: tools
	@status=0; \
	for m in $(MODULES); do \
		echo "=== module $$m"; \
		( cd $$m && $(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(TESTFLAGS) ./... ) || status=1; \
	done; \
	exit $$status

# TestComposeStack also needs `docker compose` and bin/jaeger (for its Jaeger
# stand-in image). Their first build takes many minutes, so it happens here
# rather than inside the test's timeout; without a Docker engine the test
# skips and neither is built.
e2e: tools
	@if docker info >/dev/null 2>&1; then $(MAKE) -s compose-v2 bin/jaeger; fi
	@if [ -d e2e ]; then \
		$(GO) test -count=1 -timeout 30m -tags e2e $(TESTFLAGS) ./e2e/... ; \
	else \
		echo "no e2e/ directory"; \
	fi

# Benchmarks run once each (-benchtime 1x): they measure end-to-end jobs, not
# nanosecond loops. Raw output goes to bench/raw.txt, a markdown summary to
# bench/report.md; failing packages are listed in the report and fail the
# target after the report is written.
bench: tools
	@mkdir -p bench
	@status=0; : > bench/raw.txt; \
	for m in $(MODULES); do \
		echo "=== module $$m" | tee -a bench/raw.txt; \
		( cd $$m && $(GO) test -count=1 -run '^$$' -bench . $(BENCHFLAGS) -timeout 60m ./... ) 2>&1 \
			| tee -a bench/raw.txt || status=1; \
	done; \
	echo "=== e2e (-tags e2e: real containerd, registry, MinIO, agent)" | tee -a bench/raw.txt; \
	$(GO) test -count=1 -tags e2e -run '^$$' -bench . $(BENCHFLAGS) -timeout 60m ./e2e/ 2>&1 \
		| tee -a bench/raw.txt || status=1; \
	awk -f tools/benchreport.awk -v date="$$(date -u +%Y-%m-%dT%H:%MZ)" \
		-v goversion="$$($(GO) env GOVERSION)" -v cpu="$$(nproc) CPU" bench/raw.txt > bench/report.md; \
	echo "wrote bench/report.md"; \
	exit $$status

# Fuzz targets run one after another; inputs the fuzzer finds interesting are
# copied into each package's testdata/fuzz so plain `go test` replays them.
fuzz:
	FUZZTIME=$${FUZZTIME:-30s} tools/fuzz.sh

lint: bin/staticcheck
	@out=$$(find . -name '*.go' -not -path './bin/*' -not -path './.cache/*' -print0 | xargs -0 -r gofmt -l); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	@status=0; \
	for m in $(MODULES); do \
		echo "=== module $$m"; \
		( cd $$m && $(GO) vet -tags e2e ./... && $(BIN)/staticcheck -tags e2e ./... ) || status=1; \
	done; \
	exit $$status

proto: bin/buf bin/protoc-gen-go
	cd proto && $(BIN)/buf generate

demo: build bin/registry
	$(GO) run ./cmd/skiff-demo

tools: $(TOOLS)

# Tools are built outside the workspace (`go install pkg@version` ignores
# go.work and go.mod), so their dependencies never touch Skiff's go.mod.
bin/minio:
	GOBIN=$(BIN) $(GO) install github.com/minio/minio@$(MINIO_VERSION)

bin/registry:
	GOBIN=$(BIN) $(GO) install github.com/distribution/distribution/v3/cmd/registry@$(REGISTRY_VERSION)

bin/nats-server:
	GOBIN=$(BIN) $(GO) install github.com/nats-io/nats-server/v2@$(NATS_VERSION)

bin/crane:
	GOBIN=$(BIN) $(GO) install github.com/google/go-containerregistry/cmd/crane@$(CRANE_VERSION)

bin/staticcheck:
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

bin/buf:
	GOBIN=$(BIN) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)

bin/protoc-gen-go:
	GOBIN=$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)

# The compose module's main package is named "cmd"; docker finds plugins by
# file name, so the binary is installed under its plugin name, with the
# version stamped as compose's own release build does. Skipped when
# `docker compose` already works.
COMPOSE_PLUGIN := $(HOME)/.docker/cli-plugins/docker-compose
compose-v2:
	@if docker compose version >/dev/null 2>&1; then \
		echo "docker compose present: $$(docker compose version)"; \
	else \
		tmp=$$(mktemp -d); \
		GOBIN=$$tmp $(GO) install -ldflags '-X github.com/docker/compose/v2/internal.Version=$(COMPOSE_VERSION)' \
			github.com/docker/compose/v2/cmd@$(COMPOSE_VERSION); \
		mkdir -p $(dir $(COMPOSE_PLUGIN)); \
		mv $$tmp/cmd $(COMPOSE_PLUGIN); rmdir $$tmp; \
		docker compose version; \
	fi

# apt-get update runs once, and only when a package is missing.
deps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then echo "Debian packages present: $(DEB_PACKAGES)"; exit 0; fi; \
	sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	echo "installing:$$missing"; \
	$$sudo apt-get update -qq; \
	DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing

clean:
	@for d in $(CMD_DIRS); do rm -f bin/$$(basename $$d); done
	rm -f bench/raw.txt

# --- Docker Compose stack (docker-compose.yaml) ---

# Jaeger v2.13.0 is tagged v1.76.0 in its Go module (the module path has no
# /v2). Its go.mod has a replace directive, which `go install pkg@version`
# refuses, so it is built inside a copy of its own module, with its own
# go.sum. CGO is off: the binary goes into a FROM-scratch image in the
# compose test.
JAEGER_VERSION := v1.76.0
bin/jaeger:
	@tmp=$$(mktemp -d); trap 'chmod -R u+w $$tmp; rm -rf $$tmp' EXIT; \
	src=$$(GOWORK=off GOFLAGS= $(GO) mod download -json github.com/jaegertracing/jaeger@$(JAEGER_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p'); \
	cp -r $$src/. $$tmp; chmod -R u+w $$tmp; \
	cd $$tmp && GOWORK=off GOFLAGS= CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/jaeger ./cmd/jaeger

# Skiff's images for docker-compose.yaml and deploy/kubernetes, FROM scratch:
# the binaries are built static on the host (no Go base image is needed),
# the Dockerfile only copies them. IMAGE_TAG matches the compose file's and
# the manifests' default.
.PHONY: images compose-up compose-down
IMAGE_TAG     ?= dev
IMAGE_CONTEXT := $(BIN)/docker-context
SKIFF_VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)
images:
	@rm -rf $(IMAGE_CONTEXT); mkdir -p $(IMAGE_CONTEXT)/rootfs/tmp $(IMAGE_CONTEXT)/rootfs/var/lib/skiff/work $(IMAGE_CONTEXT)/rootfs/etc/ssl/certs
	@chmod 1777 $(IMAGE_CONTEXT)/rootfs/tmp
	@cp /etc/ssl/certs/ca-certificates.crt $(IMAGE_CONTEXT)/rootfs/etc/ssl/certs/
	@mkdir -p $(IMAGE_CONTEXT)/seeder-rootfs/var/lib/skiff-seeder/pieces
	@for s in converter scheduler seeder; do \
		echo "go build skiff-$$s"; \
		CGO_ENABLED=0 $(GO) -C services/$$s/cmd/skiff-$$s build -trimpath \
			-ldflags "-s -w -X github.com/skiff-dev/skiff/services/$$s/internal/service.Version=$(SKIFF_VERSION)" -o $(IMAGE_CONTEXT)/ .; \
	done
	CGO_ENABLED=0 $(GO) -C cmd/skiffctl build -trimpath -ldflags '-s -w' -o $(IMAGE_CONTEXT)/ .
	CGO_ENABLED=0 $(GO) -C node-agent/cmd/skiff-agent build -trimpath -ldflags '-s -w' -o $(IMAGE_CONTEXT)/ .
	@for target in converter scheduler seeder skiffctl agent; do \
		echo "docker build skiff/$$target:$(IMAGE_TAG)"; \
		docker build -q -f deploy/docker/Dockerfile --target $$target -t skiff/$$target:$(IMAGE_TAG) $(IMAGE_CONTEXT) >/dev/null; \
	done

compose-up: images compose-v2
	SKIFF_CONVERTER_IMAGE=skiff/converter:$(IMAGE_TAG) SKIFF_SCHEDULER_IMAGE=skiff/scheduler:$(IMAGE_TAG) \
	SKIFF_SEEDER_IMAGE=skiff/seeder:$(IMAGE_TAG) SKIFF_SKIFFCTL_IMAGE=skiff/skiffctl:$(IMAGE_TAG) \
	docker compose up -d --wait

compose-down: compose-v2
	docker compose down
