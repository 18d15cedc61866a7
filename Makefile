# Parley's two everyday commands: `make run` and `make test`; `make help`
# lists the rest.
GO      ?= go
LISTEN  ?= :8080
ADMIN   ?= 127.0.0.1:6060
NODE_ID ?= n1
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# The local cluster (deployments/local/cluster.sh reads these).
CLUSTER_NODES ?= 4
CLUSTER_PORT  ?= 8080
CLUSTER_DIR   ?= run/cluster
export CLUSTER_NODES CLUSTER_PORT CLUSTER_DIR
# Debian packages the tests need: a real redis-server (and redis-cli for the
# Redis Cluster test), HAProxy (deployment tests, make cluster), Chromium
# (the browser test) and docker-compose (to validate the compose file; no
# Docker engine is needed).
TEST_PACKAGES ?= redis-server redis-tools haproxy chromium docker-compose prometheus

.PHONY: help run build test test-deps vet lint fuzz bench profile soak clean cluster cluster-down
.DEFAULT_GOAL := help

## help: list the make targets
help:
	@awk -F': ' '/^## / {sub(/^## /, ""); printf "  make %-13s %s\n", $$1, substr($$0, length($$1) + 3)}' $(MAKEFILE_LIST)

## run: one node alone (embedded bus) on LISTEN=:8080, admin on ADMIN=127.0.0.1:6060; open http://localhost:8080
run:
	$(GO) run ./cmd/parley --listen $(LISTEN) --admin $(ADMIN) --node-id $(NODE_ID)

## build: build the node and the benchmark tool into bin/ (bin/parley --version)
build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o bin/parley ./cmd/parley
	$(GO) build -o bin/parley-bench ./cmd/parley-bench

## cluster: Redis, CLUSTER_NODES=4 nodes and HAProxy on 127.0.0.1:CLUSTER_PORT=8080 as plain processes
cluster: build
	bash deployments/local/cluster.sh up

## cluster-down: stop what make cluster started (logs stay in CLUSTER_DIR=run/cluster)
cluster-down:
	bash deployments/local/cluster.sh down

## test-deps: install what the tests need (Debian/Ubuntu: apt-get; as root or with sudo)
test-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v redis-cli >/dev/null || missing="$$missing redis-tools"; \
	command -v haproxy >/dev/null || missing="$$missing haproxy"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; \
	fi
	$(GO) mod download
	$(GO) run $(STATICCHECK) -version >/dev/null

## vet: formatting, go vet, module checksums
vet:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) mod verify

## lint: staticcheck (pinned; fetched by the Go toolchain on first use)
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
lint:
	$(GO) run $(STATICCHECK) ./...

## test: install test dependencies, vet, lint, and run every test with the race detector
test: test-deps vet lint
	$(GO) test -race -count=1 -shuffle=on -timeout 15m ./...

## soak: the chaos soak for SOAK_DURATION=3m: 2 nodes, Redis with AOF, faults at random; prints its figures
# 16 resuming clients and a fault every 1-3s; RELIABILITY.md keeps the last long run. `make test` runs 30s of it.
SOAK_DURATION ?= 3m
soak: test-deps
	SOAK_DURATION=$(SOAK_DURATION) $(GO) test -race -count=1 -timeout 60m -run '^TestSoak$$' -v ./e2e/

## fuzz: run each fuzz target for FUZZTIME (default 30s)
FUZZTIME ?= 30s
fuzz:
	$(GO) test ./netpoll -run '^$$' -fuzz FuzzAssembler -fuzztime $(FUZZTIME)
	$(GO) test ./protocol -run '^$$' -fuzz FuzzDecode -fuzztime $(FUZZTIME)
	$(GO) test ./node -run '^$$' -fuzz FuzzHandshake -fuzztime $(FUZZTIME)

## bench: the benchmark matrix against the Node baseline; rewrites BENCHMARKS.md
bench:
	bash bench/run.sh

## profile: heap and CPU profiles of a loaded node under bench/profiles/
profile:
	bash bench/profile.sh

## clean: remove bin/, run/ and benchmark output
clean:
	rm -rf bin run bench/reports bench/profiles
