# tether — build, test and run targets. `make help` lists them.

GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
BUILD    := CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)"
# Board builds trade inlining for size: the agent waits on the network and
# the hardware, not the CPU, and without inlining the armv6 binary fits the
# Pi Zero budget with room to spare.
AGENT_BUILD := $(BUILD) -gcflags=all=-l
BIN      := bin
DIST     := dist
ARCHES   := armv6 armv7 arm64 riscv64 amd64
# Largest stripped armv6 agent we accept (6 MiB).
ARMV6_MAX := 6291456

.PHONY: help build test test-go race32 demo cross lint fuzz e2e-arm clean

help:
	@echo "make build    build tether-relay, tether-agent, tether, tether-bench and tether-chaos into $(BIN)/"
	@echo "make demo     run a relay and a simulated agent on 127.0.0.1 and print how to call them"
	@echo "make test     lint, unit and end-to-end tests with -race (and emulated ARM when qemu is present)"
	@echo "make cross    build the agent for linux $(ARCHES) into $(DIST)/"
	@echo "make package  .deb packages into $(DIST)/: agent for armhf (armv6), arm64, amd64; relay for amd64, arm64"
	@echo "make e2e-arm  run the armv6 and arm64 agents under qemu-user-static against a native relay"
	@echo "make fuzz     run every fuzz target for FUZZTIME (default 30s)"
	@echo "make lint     gofmt and go vet"
	@echo "make chaos    1,000 requests through 120 random faults (kill -9, resets, half-open links, slow links); must lose nothing"
	@echo "make bench    the benchmark suite beside NATS and raw TCP (BENCHMARKS.md); results in $(DIST)/bench.json"

build:
	@mkdir -p $(BIN)
	$(BUILD) -o $(BIN)/ ./cmd/...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

test: lint test-go race32
	@if command -v qemu-arm-static >/dev/null 2>&1 || command -v qemu-arm >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory e2e-arm; \
	else echo "qemu-user-static not installed: skipping the emulated ARM run"; fi

test-go:
	$(GO) test -race -count=1 -timeout 15m ./...

# A 32-bit build and vet catch int-size bugs before an ARMv6 board does.
# The tests are those of every package the agent links (go list -deps
# ./cmd/tether-agent); the relay is packaged for 64-bit hosts only.
race32:
	GOARCH=386 $(GO) vet ./...
	GOARCH=386 $(GO) test -count=1 -timeout 10m ./protocol/... ./hw/... ./agent/... \
	  ./cmd/tether-agent/ ./internal/batchconn/ ./internal/yamlite/

demo: build
	@bash deploy/demo.sh

# agent-%: build the agent for one board architecture into dist/.
agent-%:
	@mkdir -p $(DIST)
	@case $* in \
	  armv6) env="GOARCH=arm GOARM=6";; \
	  armv7) env="GOARCH=arm GOARM=7";; \
	  *) env="GOARCH=$*";; \
	esac; \
	env GOOS=linux $$env $(AGENT_BUILD) -o $(DIST)/tether-agent-linux-$* ./cmd/tether-agent || exit 1; \
	printf '%-34s %9d bytes\n' tether-agent-linux-$* $$(stat -c %s $(DIST)/tether-agent-linux-$*)

cross: $(addprefix agent-,$(ARCHES))
	@size=$$(stat -c %s $(DIST)/tether-agent-linux-armv6); \
	  if [ $$size -gt $(ARMV6_MAX) ]; then echo "armv6 agent is $$size bytes, over the 6 MiB budget"; exit 1; fi; \
	  echo "armv6 agent: $$size bytes (budget $(ARMV6_MAX))"

# bench: the benchmark suite of BENCHMARKS.md. Figures go to stdout as
# "name value unit xRATIO baseline" lines and to $(DIST)/bench.json. The
# agents of every architecture are built first so their sizes are reported.
# BENCHFLAGS passes options, e.g. BENCHFLAGS="--only rt,tput".
.PHONY: bench
bench: $(addprefix agent-,$(ARCHES))
	@mkdir -p $(BIN)
	$(BUILD) -o $(BIN)/tether-bench ./cmd/tether-bench
	$(BIN)/tether-bench --json $(DIST)/bench.json --dist $(DIST) $(BENCHFLAGS)

e2e-arm: agent-armv6 agent-arm64
	TETHER_E2E_ARM=$(CURDIR)/$(DIST) $(GO) test -count=1 -timeout 10m -run TestEmulatedARM ./e2e/

# Debian packages, built by nfpm (a tool directive in go.mod, so nothing is
# fetched beyond the Go module proxy). The armhf agent package carries the
# armv6 build: one package for a Pi Zero and every later Pi. The recipes are
# deploy/packaging/*.nfpm.yaml; e2e/package_test.go builds and inspects them.
# PKG_VERSION turns `git describe` into a Debian version: v1.2.3 → 1.2.3,
# v1.2.3-4-gabc → 1.2.3+4.gabc, a bare commit → 0.0.0+abc (also one whose
# hash starts with a digit, which would otherwise outrank every release).
PKG_VERSION ?= $(shell echo '$(VERSION)' | sed -E -e 's/^v//' \
	-e 's/^([0-9a-f]{7,40}(-dirty)?)$$/0.0.0+\1/' -e 's/^([^0-9])/0.0.0+\1/' \
	-e 's/-([0-9]+)-g([0-9a-f]+)/+\1.g\2/' -e 's/-dirty$$/+dirty/' -e 's/(\+.*)\+dirty$$/\1.dirty/')
PKG_MAINTAINER ?= tether maintainers <maintainers@tether.invalid>
NFPM := $(GO) tool nfpm
AGENT_DEBS := armhf:armv6 arm64:arm64 amd64:amd64
RELAY_ARCHES := amd64 arm64

.PHONY: package
package: agent-armv6 agent-arm64 agent-amd64
	@for a in $(RELAY_ARCHES); do \
	  GOOS=linux GOARCH=$$a $(BUILD) -o $(DIST)/tether-relay-linux-$$a ./cmd/tether-relay || exit 1; \
	done
	@rm -f $(DIST)/tether-agent_*.deb $(DIST)/tether-relay_*.deb
	@export SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || date +%s) \
	  TETHER_VERSION='$(PKG_VERSION)' TETHER_MAINTAINER='$(PKG_MAINTAINER)'; \
	for p in $(AGENT_DEBS); do \
	  TETHER_ARCH=$${p%%:*} TETHER_BINARY=$(DIST)/tether-agent-linux-$${p##*:} \
	    $(NFPM) package -f deploy/packaging/tether-agent.nfpm.yaml -p deb -t $(DIST)/ || exit 1; \
	done; \
	for a in $(RELAY_ARCHES); do \
	  TETHER_ARCH=$$a TETHER_BINARY=$(DIST)/tether-relay-linux-$$a \
	    $(NFPM) package -f deploy/packaging/tether-relay.nfpm.yaml -p deb -t $(DIST)/ || exit 1; \
	done
	@for f in $(DIST)/*.deb; do printf '%-52s %9d bytes\n' $$(basename $$f) $$(stat -c %s $$f); done

# Chaos run: real relay and agent processes with a fault-injecting proxy
# between them (internal/chaos). Prints one "chaos: requests=… lost=0 …"
# line and fails on any lost, doubly executed, unresolved or misreported
# request. CHAOSFLAGS adds flags, e.g. CHAOSFLAGS="-seed 42". The quick
# variant is e2e's TestChaosQuick, part of make test.
.PHONY: chaos
chaos:
	$(GO) run ./cmd/tether-chaos -requests 1000 -faults 120 $(CHAOSFLAGS)

# FUZZTIME is a duration (30s) or an execution count (100000x). Counts are
# what CI uses: a duration can end in a spurious "context deadline exceeded"
# failure from Go's fuzz coordinator (go.dev/issue/75804).
FUZZTIME ?= 30s
# Every decoder of untrusted bytes, as "Target package". The minimizer is
# capped: with Go's default (60s) a fuzzer that finds new coverage in a
# large input (the example config) spends up to a minute minimizing it and
# reports 0 execs/s meanwhile; that is not a hang in the code under test.
FUZZ_TARGETS := FuzzDecode:./protocol/ FuzzSubmit:./protocol/ FuzzClientFrame:./protocol/ \
	FuzzFastDecode:./protocol/ FuzzJournalRecords:./agent/ FuzzParseConfig:./hw/ \
	FuzzParseFile:./cmd/tether-agent/ FuzzWALDecode:./relay/ FuzzExecute:./hw/mock/
FUZZMINIMIZE ?= 10s
fuzz:
	@for t in $(FUZZ_TARGETS); do \
	  echo "fuzz $${t%%:*} ($(FUZZTIME))"; \
	  $(GO) test -run=NONE -fuzz="^$${t%%:*}\$$" -fuzztime=$(FUZZTIME) -fuzzminimizetime=$(FUZZMINIMIZE) $${t##*:} || exit 1; \
	done

# The differential fuzz of internal/yamlite against yaml.v3 is kept out of
# `make fuzz` (and so out of CI): a new disagreement it finds is a subset
# rule to add, not a crash, and should not fail an unrelated change. Its
# corpus still runs in `make test`; run this before touching yamlite.
.PHONY: fuzz-yamlite
fuzz-yamlite:
	$(GO) test -run=NONE -fuzz='^FuzzAgreesWithYAMLv3$$' -fuzztime=$(FUZZTIME) -fuzzminimizetime=$(FUZZMINIMIZE) ./internal/yamlite/

clean:
	rm -rf $(BIN) $(DIST)
