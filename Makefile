# Kiln — the two commands a newcomer needs are `make run` and `make test`.
# Everything else here is what they are made of.

SHELL := /bin/bash
GO ?= go
BUILD := $(CURDIR)/build
BIN := $(CURDIR)/bin
export KILN_BUILD := $(BUILD)

# Debian packages the build and the tests need. `make deps` installs the
# missing ones (root, as on the project's machines and CI).
DEB_PKGS := gcc libc6-dev make musl-tools cpio busybox-static qemu-system-x86 linux-image-amd64 \
	redis-server protobuf-compiler file

# Packages whose tests boot real KVM guests; on a host without /dev/kvm they
# run inside scripts/kvmbox.
KVM_PKGS := ./unikernel/vmm ./unikernel/gocompat ./test/e2e ./node-agent ./node-agent/vmhost ./test/chaos

.PHONY: all deps build build-guest kernel guests vmmguests examples examples-go kiln run test test-host \
	test-kvm bench check proto fmt vet clean

all: build

deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

kernel:
	$(MAKE) -C unikernel/kernel O=$(BUILD)/kernel

guests:
	$(MAKE) -C unikernel/guests O=$(BUILD)/guests

vmmguests:
	$(MAKE) -C unikernel/vmm/testdata O=$(BUILD)/vmmguests

examples:
	$(MAKE) -C examples/hello-c O=$(BUILD)/examples/hello-c

# The Go examples, built as `kiln deploy` builds source (package builder):
# build/examples/NAME/NAME.
GO_EXAMPLES := hello-go json-echo sha256 fanout wordcount-exec
examples-go:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	CGO_ENABLED=0 $(GO) build -o "$$tmp/kiln" ./cmd/kiln && \
	for ex in $(GO_EXAMPLES); do "$$tmp/kiln" build examples/$$ex -o $(BUILD)/examples/$$ex/$$ex || exit 1; done

build-guest: kernel guests vmmguests examples examples-go

kiln: kernel
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -o $(BIN)/kiln ./cmd/kiln
	cp $(BUILD)/kernel/kiln-kernel.elf $(BIN)/kiln-kernel.elf

build: deps build-guest kiln

run: build
	scripts/run

test: build test-host test-kvm

test-host:
	$(MAKE) -C unikernel/kernel/test check
	$(GO) vet ./...
	$(GO) test -count=1 ./...

# On a host with a working /dev/kvm the KVM tests already ran in test-host;
# elsewhere they run here, inside a QEMU VM that has one, and must not skip.
test-kvm:
	@if [ -e /dev/kvm ] && exec 3<>/dev/kvm 2>/dev/null; then \
		echo "test-kvm: /dev/kvm works here; KVM tests ran with test-host"; \
	else scripts/kvmtests $(KVM_PKGS); fi

bench: build
	scripts/bench

fmt:
	gofmt -w $$(git ls-files '*.go')

vet:
	$(GO) vet ./...

# check: formatting, vet, and generated code that matches its sources.
check: proto
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...
	@git diff --exit-code -- proto/ || { echo "proto/: generated code is stale: commit the output of make proto"; exit 1; }

proto:
	scripts/protogen

clean:
	rm -rf $(BUILD) $(BIN)
