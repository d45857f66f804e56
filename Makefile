# SPDX-License-Identifier: MIT
#
#   make demo     set up, build, boot the test VM and show the module answering
#   make check    set up, build, lint, run every test; last line "N passed, N failed"
#
#   make bench    benchmarks (ratios against baselines in the same run)
#   make install  libllmos (headers, libraries, pkg-config, CMake package) and
#                 llmosctl under PREFIX (default /usr/local), staged in DESTDIR
#   make deps | build | kmod | lint | unit | vm-test | vm-shell | clean
#
# LLMOS_CACHE (default /var/cache/llmos) holds downloaded packages, the
# unpacked kernel and the compiler cache, outside the clone.

LLMOS_CACHE ?= /var/cache/llmos
export LLMOS_CACHE
export CCACHE_DIR ?= $(LLMOS_CACHE)/ccache
export CCACHE_BASEDIR := $(CURDIR)

BUILD := $(CURDIR)/build
KENV := . $(LLMOS_CACHE)/kernel.env &&
LANES := default asan tsan

.PHONY: all deps build kmod userspace bpf lint unit vm-test vm-shell demo bench check clean install

all: build

deps:
	@bash tools/deps.sh

build: kmod userspace bpf

# BPF policies, against the module's BTF (build/bpf/*.bpf.o).
bpf: kmod
	@bash tools/build-bpf.sh

kmod: deps
	@$(KENV) $(MAKE) -s -C $$LLMOS_KDIR M=$(CURDIR)/kmod modules

# One CMake build per lane: default (also builds the static guest
# programs), asan (address + undefined) and tsan.
userspace: deps
	@bash tools/build-userspace.sh default

lint: deps
	@bash tools/check.sh lint

unit: userspace
	@cd $(BUILD)/default && ctest --output-on-failure

VM_TESTS := --tests $(BUILD)/default/kernel-tests --tests $(BUILD)/default/vm-gtests \
	--tests tests/vm --bpf $(BUILD)/bpf \
	--bin $(BUILD)/default/tools/llmosctl

vm-test: build
	@tools/vm/run.sh --module kmod/llmos.ko $(VM_TESTS) --out $(BUILD)/vm test

vm-shell: build
	@tools/vm/run.sh --module kmod/llmos.ko $(VM_TESTS) --out $(BUILD)/vm-shell shell

demo: build
	@tools/vm/run.sh --module kmod/llmos.ko --demo tools/vm/demo.sh \
		--bin $(BUILD)/default/tools/llmosctl --out $(BUILD)/vm-demo demo

# Benchmarks: ratios against baselines measured in the same run.
bench: build
	@for b in $(BUILD)/default/host-bench/*; do echo "# $$b (this machine)"; $$b; done
	@tools/vm/run.sh --module kmod/llmos.ko --bench $(BUILD)/default/kernel-bench \
		--bpf $(BUILD)/bpf --out $(BUILD)/vm-bench bench

check:
	@bash tools/check.sh

PREFIX ?= /usr/local
install: userspace
	DESTDIR=$(DESTDIR) cmake --install $(BUILD)/default --prefix $(PREFIX)

clean:
	rm -rf $(BUILD)
	@if [ -f $(LLMOS_CACHE)/kernel.env ]; then \
		$(KENV) $(MAKE) -s -C $$LLMOS_KDIR M=$(CURDIR)/kmod clean; fi
