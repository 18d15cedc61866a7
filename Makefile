# Parley's two everyday commands: `make run` and `make test`.
GO      ?= go
LISTEN  ?= :8080
ADMIN   ?= 127.0.0.1:6060
NODE_ID ?= n1
# Debian packages the tests need: a real redis-server (and redis-cli for the
# Redis Cluster test).
TEST_PACKAGES ?= redis-server redis-tools

.PHONY: run build test test-deps vet fuzz bench profile clean

## run: start one node alone (embedded bus) on $(LISTEN); open http://localhost:8080
run:
	$(GO) run ./cmd/parley --listen $(LISTEN) --admin $(ADMIN) --node-id $(NODE_ID)

## build: build the node and the benchmark tool into bin/
build:
	$(GO) build -o bin/parley ./cmd/parley
	$(GO) build -o bin/parley-bench ./cmd/parley-bench

## test-deps: install what the tests need (Debian/Ubuntu: apt-get; as root or with sudo)
test-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v redis-cli >/dev/null || missing="$$missing redis-tools"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(TEST_PACKAGES); \
	fi
	$(GO) mod download

## vet: formatting, go vet, module checksums
vet:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) mod verify

## test: install test dependencies, vet, and run every test with the race detector
test: test-deps vet
	$(GO) test -race -count=1 -shuffle=on -timeout 15m ./...

## fuzz: run each fuzz target for FUZZTIME (default 30s)
FUZZTIME ?= 30s
fuzz:
	$(GO) test ./netpoll -run '^$$' -fuzz FuzzAssembler -fuzztime $(FUZZTIME)
	$(GO) test ./protocol -run '^$$' -fuzz FuzzDecode -fuzztime $(FUZZTIME)

## bench: the benchmark matrix against the Node baseline; rewrites BENCHMARKS.md
bench:
	bash bench/run.sh

## profile: heap and CPU profiles of a loaded node under bench/profiles/
profile:
	bash bench/profile.sh

clean:
	rm -rf bin bench/reports bench/profiles
