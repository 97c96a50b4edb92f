# sagabox — run `make help` for the targets.
GO       ?= go
PKGS     ?= ./...
TIMEOUT  ?= 20m
SOAK_SAGAS ?= 100000

.DEFAULT_GOAL := help

help: ## List the targets.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

demo: ## Run the demo order flow (throwaway PostgreSQL + in-process Kafka unless DATABASE_URL/KAFKA_BROKERS are set).
	$(GO) run ./cmd/orderdemo $(ARGS)

test: ## Run the tests against real PostgreSQL and a Kafka-protocol broker (started for you).
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout $(TIMEOUT) $(PKGS)

test-race: ## Run the tests with the race detector.
	$(GO) test -race -count=1 -timeout $(TIMEOUT) $(PKGS)

bench: ## Run the benchmarks; each prints its figures beside a baseline measured in the same run.
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m $(PKGS)

lint: ## gofmt, go vet and staticcheck.
	@test -z "$$(gofmt -l . | tee /dev/stderr)"
	$(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@latest $(PKGS)

integration: ## End-to-end suite on testcontainers-go with faults (needs Docker; RUN=regexp picks tests; see integration/doc.go).
	$(GO) test -tags integration -count=1 -timeout 30m -run '$(RUN)' -v ./integration/

soak: ## Soak run, not in CI: SOAK_SAGAS sagas (default 100000) under random faults; prints invariants and throughput.
	SAGABOX_SOAK_SAGAS=$(SOAK_SAGAS) $(GO) test -tags integration -count=1 -timeout 8h -run '^TestSoak$$' -v ./integration/

images: ## Build the local PostgreSQL and broker images for the integration suite (scripts/build-images.sh).
	scripts/build-images.sh

build: ## Build the binaries into bin/.
	$(GO) build -o bin/ ./cmd/...

.PHONY: help demo test test-race bench lint build integration soak images
