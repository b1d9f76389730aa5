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
	@echo "make build    build tether-relay, tether-agent and tether into $(BIN)/"
	@echo "make demo     run a relay and a simulated agent on 127.0.0.1 and print how to call them"
	@echo "make test     lint, unit and end-to-end tests with -race (and emulated ARM when qemu is present)"
	@echo "make cross    build the agent for linux $(ARCHES) into $(DIST)/"
	@echo "make e2e-arm  run the armv6 and arm64 agents under qemu-user-static against a native relay"
	@echo "make fuzz     run every fuzz target for FUZZTIME (default 30s)"
	@echo "make lint     gofmt and go vet"

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
race32:
	GOARCH=386 $(GO) vet ./...
	GOARCH=386 $(GO) test -count=1 -timeout 10m ./protocol/... ./hw/...

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

e2e-arm: agent-armv6 agent-arm64
	TETHER_E2E_ARM=$(CURDIR)/$(DIST) $(GO) test -count=1 -timeout 10m -run TestEmulatedARM ./e2e/

FUZZTIME ?= 30s
fuzz:
	$(GO) test -run=NONE -fuzz=FuzzDecode -fuzztime=$(FUZZTIME) ./protocol/

clean:
	rm -rf $(BIN) $(DIST)
