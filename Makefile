# sagabox — run `make help` for the targets.
GO       ?= go
PKGS     ?= ./...
TIMEOUT  ?= 20m
SOAK_SAGAS ?= 100000
# An execution count, not a duration: with a duration go1.26's fuzz coordinator can report a
# bare "context deadline exceeded" failure at the deadline on a busy machine (go.dev/issue/75804,
# fixed in Go 1.27). A count has no deadline to race; a loaded machine only takes longer.
FUZZTIME ?= 10000x
RACE_PKGS ?= $(PKGS)

.DEFAULT_GOAL := help

help: ## List the targets.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

demo: ## Run the demo order flow (throwaway PostgreSQL + in-process Kafka unless DATABASE_URL/KAFKA_BROKERS are set).
	@$(GO) run ./cmd/orderdemo $(ARGS)

test: ## Run the tests against real PostgreSQL and a Kafka-protocol broker (started for you).
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout $(TIMEOUT) $(PKGS)

test-race: ## Run the tests with the race detector (RACE_PKGS; CI's default set fits its time budget).
	$(GO) test -race -count=1 -timeout $(TIMEOUT) $(RACE_PKGS)

fuzz: ## Run every Fuzz target in the tree for FUZZTIME each (default 10000x executions; a duration such as 1m works too).
	@set -e; for dir in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -r -n1 dirname | sort -u); do \
	  for f in $$(grep -h -o '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go | cut -c6-); do \
	    echo "== fuzz $$dir $$f ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) $$dir; \
	  done; \
	done

bench: ## Run the benchmarks; each prints its figures beside a baseline measured in the same run.
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m $(PKGS)

MODE_PKGS ?= ./outbox/... ./relay/... ./inbox/... ./participants/... ./sagastate/... ./internal/demo/

test-modes: ## The core packages' tests again in pgx's exec and simple_protocol query modes (default_query_exec_mode, as behind PgBouncer).
	SAGABOX_TEST_QUERY_EXEC_MODE=exec $(GO) test -count=1 -timeout $(TIMEOUT) $(MODE_PKGS)
	SAGABOX_TEST_QUERY_EXEC_MODE=simple_protocol $(GO) test -count=1 -timeout $(TIMEOUT) $(MODE_PKGS)

lint: ## gofmt, go vet and staticcheck (pinned by the tool directive in go.mod), with and without the integration tag.
	@test -z "$$(gofmt -l . | tee /dev/stderr)" || { echo "gofmt: run 'gofmt -w .' on the files above" >&2; exit 1; }
	$(GO) vet $(PKGS)
	$(GO) vet -tags integration ./integration/
	$(GO) tool staticcheck $(PKGS)
	$(GO) tool staticcheck -tags integration ./integration/

tidy: ## Fail when go.mod or go.sum is not what 'go mod tidy' would write.
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run 'go mod tidy'" >&2; exit 1; }

integration: ## End-to-end suite on testcontainers-go with faults (needs Docker; RUN=regexp picks tests; see integration/doc.go).
	$(GO) test -tags integration -count=1 -timeout 30m -run '$(RUN)' -v ./integration/

soak: ## Soak run, not in CI: SOAK_SAGAS sagas (default 100000) under random faults; prints invariants and throughput.
	SAGABOX_SOAK_SAGAS=$(SOAK_SAGAS) $(GO) test -tags integration -count=1 -timeout 8h -run '^TestSoak$$' -v ./integration/

images: ## Build the local PostgreSQL and broker images for the integration suite (scripts/build-images.sh).
	scripts/build-images.sh

build: ## Build the binaries into bin/ (stamped with the VCS revision for --version when built in a git clone).
	$(GO) build -buildvcs=auto -o bin/ ./cmd/...

.PHONY: help demo test test-modes test-race fuzz bench lint tidy build integration soak images
