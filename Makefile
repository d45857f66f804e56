# SPDX-License-Identifier: MIT
#
#   make demo     set up, build, serve a model with llmosd, then boot the test VM and
#                 show the module, mindspaces and a BPF policy
#   make check    set up, build, lint, run every test; last line "N passed, N failed"
#                 (and ", N skipped" when some were, each saying why)
#
#   make bench    benchmarks (ratios against baselines in the same run)
#   make install  libllmos (headers, libraries, pkg-config, CMake package) and
#                 the tools under PREFIX (default /usr/local), the llmosd unit,
#                 udev rule, sysusers entry and the manual pages; staged in
#                 DESTDIR (the module: install-dkms or install-kmod);
#                 make uninstall takes them away
#   make htmldocs the documentation in build/htmldocs (Sphinx; warnings fail)
#   make man      check the manual pages in man/ (rendered text in build/man)
#   make deps | build | kmod [KDIR=...] | lint | unit | vm-test | vm-shell | clean
#
# LLMOS_CACHE (default /var/cache/llmos) holds downloaded packages, the
# unpacked kernel and the compiler cache, outside the clone.

LLMOS_CACHE ?= /var/cache/llmos
export LLMOS_CACHE
export CCACHE_DIR ?= $(LLMOS_CACHE)/ccache
export CCACHE_BASEDIR := $(CURDIR)

BUILD := $(CURDIR)/build
KENV := . "$(LLMOS_CACHE)/kernel.env" &&
LANES := default asan tsan

.PHONY: all deps build kmod userspace bpf lint unit vm-test vm-shell demo bench check clean install

all: build

deps:
	@bash tools/deps.sh

build: kmod userspace bpf

# BPF policies, against the module's BTF (build/bpf/*.bpf.o).
bpf: kmod
	@bash tools/build-bpf.sh

# KDIR: other kernel headers than the cached 6.12 kernel's (make kmod
# KDIR=/lib/modules/$(uname -r)/build: the running kernel's; no make deps).
ifeq ($(origin KDIR),command line)
kmod:
	@$(MAKE) -s -C "$(KDIR)" M="$(CURDIR)/kmod" modules
else
kmod: deps
	@$(KENV) $(MAKE) -s -C "$$LLMOS_KDIR" M="$(CURDIR)/kmod" modules
endif

# One CMake build per lane: default (also builds the static guest
# programs), asan (address + undefined) and tsan.
userspace: deps
	@bash tools/build-userspace.sh default

lint: deps
	@bash tools/check.sh lint

unit: userspace
	@cd $(BUILD)/default && ctest --output-on-failure

VM_TESTS = --tests $(BUILD)/default/kernel-tests --tests $(BUILD)/default/vm-gtests \
	--tests tests/vm --bpf $(BUILD)/bpf \
	--bin $(BUILD)/default/tools/llmosctl-static --bin $(BUILD)/default/tools/llmosd/llmosd \
	$$([ ! -x $(BUILD)/default/tests/llmosd_emu ] || echo --bin $(BUILD)/default/tests/llmosd_emu) \
	--data $(CURDIR)/../shared/testdata/llama-tiny-f32.gguf

vm-test: build
	@tools/vm/run.sh --module kmod/llmos.ko $(VM_TESTS) --out $(BUILD)/vm test

vm-shell: build
	@tools/vm/run.sh --module kmod/llmos.ko $(VM_TESTS) --out $(BUILD)/vm-shell shell

# The host half (llmosd on this machine, local backend), then the VM half
# (the module, mindspaces, a BPF policy, llmosctl top).
demo: build
	@bash tools/demo.sh $(BUILD)/default
	@tools/vm/run.sh --module kmod/llmos.ko --demo tools/vm/demo.sh --bpf $(BUILD)/bpf \
		--bin $(BUILD)/default/tools/llmosctl-static --out $(BUILD)/vm-demo demo

# Benchmarks: ratios against baselines measured in the same run.
# Every benchmark runs, also after one failed; then the status says so.
bench: build
	@rc=0; for b in $(BUILD)/default/host-bench/*; do echo "# $$b (this machine)"; \
		$$b || { echo "bench: $$b failed" >&2; rc=1; }; done; \
	tools/vm/run.sh --module kmod/llmos.ko --bench $(BUILD)/default/kernel-bench \
		--bpf $(BUILD)/bpf --out $(BUILD)/vm-bench bench || \
		{ echo "bench: the kernel benchmarks failed" >&2; rc=1; }; exit $$rc

check:
	@bash tools/check.sh

# Documentation (tools/docs.sh): Documentation/ with the kernel's kernel-doc
# Sphinx extension from the unpacked linux-source, and the man/ pages.
.PHONY: htmldocs man
htmldocs: deps
	@bash tools/docs.sh html

man: deps
	@bash tools/docs.sh man

# Installation, staged under DESTDIR when it is set; running it again gives
# the same result. Directories can be set on the command line.
#   install            libllmos and llmosctl under PREFIX, install-packaging
#                      and install-man (the module is installed on its own: a
#                      module set to load at boot that is not there would fail
#                      the boot's module loading and hold llmosd back 90 s)
#   install-packaging  udev rule, sysusers.d and tmpfiles.d entries, the
#                      llmosd unit (ExecStart in PREFIX/bin), /etc/default/llmosd
#   install-dkms       the module's sources and dkms.conf in DKMSDIR, ready for
#                      `dkms add llmos/VERSION && dkms install llmos/VERSION`
#   install-kmod       the built kmod/llmos.ko in MODULEDIR/KVER/extra (KVER:
#                      the kernel release it was built for), loaded at boot
#   install-man        the manual pages of man/ in MANDIR/manN
#   uninstall          removes what these put in place but /etc/default/llmosd
#                      and the user and group (as a package's remove would)
# System files go where udev, systemd and dkms look for them, whatever PREFIX.
PREFIX ?= /usr/local
BINDIR = $(PREFIX)/bin
SYSCONFDIR = /etc
UDEVRULESDIR = /usr/lib/udev/rules.d
SYSUSERSDIR = /usr/lib/sysusers.d
TMPFILESDIR = /usr/lib/tmpfiles.d
UNITDIR = /usr/lib/systemd/system
MODULESLOADDIR = /usr/lib/modules-load.d
MODULEDIR = /lib/modules
MANDIR = $(PREFIX)/share/man
# The version has one home: project(llmos VERSION ...) in CMakeLists.txt.
LLMOS_VERSION := $(shell sed -n 's/^project.llmos VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
DKMSDIR = /usr/src/llmos-$(LLMOS_VERSION)
# The module's sources, without what Kbuild generates.
KMOD_SRCS = $(filter-out %.mod.c,$(wildcard kmod/Kbuild kmod/*.[ch] kmod/core/*.[ch]))
INSTALL_DATA = install -D -m 0644

.PHONY: install-packaging install-dkms install-kmod uninstall

# Installs what `make build` (or `make`) built: it builds nothing itself, so
# that `sudo make install` leaves no root-owned files in the build tree
# (cmake --install writes its file list and llmos.pc there: given back to
# the tree's owner). Nothing is installed when nothing was built.
BUILT = $(BUILD)/default/tools/llmosd/llmosd
install:
	@test -x "$(BUILT)" || { echo "install: nothing built in $(BUILD)/default:" \
		"run make first (as the user who builds)" >&2; exit 1; }
	@$(MAKE) --no-print-directory install-packaging install-man
	DESTDIR="$(DESTDIR)" cmake --install "$(BUILD)/default" --prefix "$(PREFIX)"
	@$(GIVE_BACK)
GIVE_BACK = if [ "$$(id -u)" = 0 ]; then chown --reference="$(BUILD)/default" \
	"$(BUILD)/default/install_manifest.txt" "$(BUILD)/default/userspace/llmos.pc"; fi

# A real install (no DESTDIR) keeps an existing /etc/default/llmosd, then
# makes the user, group and folders and has systemd and udev reread their
# files, as a package's postinst would.
install-packaging:
	$(INSTALL_DATA) packaging/60-llmos.rules "$(DESTDIR)$(UDEVRULESDIR)/60-llmos.rules"
	$(INSTALL_DATA) packaging/llmos.sysusers.conf "$(DESTDIR)$(SYSUSERSDIR)/llmos.conf"
	$(INSTALL_DATA) packaging/llmos.tmpfiles.conf "$(DESTDIR)$(TMPFILESDIR)/llmos.conf"
	install -d "$(DESTDIR)$(UNITDIR)"
	sed 's|@BINDIR@|$(BINDIR)|g' packaging/llmosd.service.in \
		>"$(DESTDIR)$(UNITDIR)/llmosd.service"
	chmod 0644 "$(DESTDIR)$(UNITDIR)/llmosd.service"
	@set -e; run() { echo "$$*"; "$$@"; }; \
	if [ -n "$(DESTDIR)" ] || [ ! -e "$(SYSCONFDIR)/default/llmosd" ]; then \
		run $(INSTALL_DATA) packaging/llmosd.default "$(DESTDIR)$(SYSCONFDIR)/default/llmosd"; \
	else echo "keeping $(SYSCONFDIR)/default/llmosd"; fi; \
	[ -z "$(DESTDIR)" ] || exit 0; \
	if command -v systemd-sysusers >/dev/null; then run systemd-sysusers "$(SYSUSERSDIR)/llmos.conf"; fi; \
	if command -v systemd-tmpfiles >/dev/null; then \
		run systemd-tmpfiles --create "$(TMPFILESDIR)/llmos.conf"; fi; \
	if [ -d /run/systemd/system ]; then run systemctl daemon-reload; fi; \
	if command -v udevadm >/dev/null; then run udevadm control --reload || true; \
		run udevadm trigger --action=change --subsystem-match=misc --sysname-match=llmos \
			|| true; fi

# The tree mirrors the repository (kmod/ beside include/uapi/), so the Kbuild
# finds the UAPI header where it always does. The sources of an earlier
# install of this version are replaced, not merged with.
install-dkms:
	@test -n "$(LLMOS_VERSION)" || { echo "install-dkms: no version in CMakeLists.txt" >&2; exit 1; }
	rm -rf "$(DESTDIR)$(DKMSDIR)/kmod" "$(DESTDIR)$(DKMSDIR)/include"
	for f in $(KMOD_SRCS) include/uapi/linux/llmos.h; do \
		$(INSTALL_DATA) "$$f" "$(DESTDIR)$(DKMSDIR)/$$f" || exit 1; done
	sed 's|@VERSION@|$(LLMOS_VERSION)|g' packaging/dkms.conf.in >"$(DESTDIR)$(DKMSDIR)/dkms.conf"
	chmod 0644 "$(DESTDIR)$(DKMSDIR)/dkms.conf"
	$(INSTALL_DATA) packaging/modules-load.conf "$(DESTDIR)$(MODULESLOADDIR)/llmos.conf"
	$(INSTALL_DATA) packaging/llmosd-device.conf \
		"$(DESTDIR)$(UNITDIR)/llmosd.service.d/llmos-device.conf"
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
		echo "systemctl daemon-reload"; systemctl daemon-reload; fi

# Each page goes to the folder of its section (man/llmosctl.8 -> man8/).
.PHONY: install-man
install-man:
	@set -e; for f in man/*.[1-8]; do \
		echo "$(INSTALL_DATA) $$f $(DESTDIR)$(MANDIR)/man$${f##*.}/$${f##*/}"; \
		$(INSTALL_DATA) "$$f" "$(DESTDIR)$(MANDIR)/man$${f##*.}/$${f##*/}"; done

# KVER defaults to the release in the module's vermagic, and may not name
# another (that kernel would refuse the module). depmod runs only for a real
# install (a staged tree is indexed where it is unpacked).
install-kmod:
	@test -f kmod/llmos.ko || { echo "install-kmod: kmod/llmos.ko is not built: make kmod," \
		"or make kmod KDIR=/lib/modules/$$(uname -r)/build for the running kernel" >&2; exit 1; }
	@PATH=$$PATH:/usr/sbin:/sbin; built=$$(modinfo -F vermagic kmod/llmos.ko | cut -d' ' -f1); \
	[ -n "$$built" ] || { echo "install-kmod: no kernel release in kmod/llmos.ko" >&2; exit 1; }; \
	kver='$(KVER)'; [ -n "$$kver" ] || kver=$$built; \
	[ "$$kver" = "$$built" ] || { echo "install-kmod: kmod/llmos.ko is built for $$built, not" \
		"$$kver: build it against that kernel's headers" >&2; exit 1; }; \
	boot=1; if [ -z "$(DESTDIR)" ] && [ ! -d "$(MODULEDIR)/$$kver/kernel" ]; then boot=0; \
		echo "install-kmod: warning: kernel $$kver is not installed on this machine:" \
			"the module is not set to load at boot (that would fail the boot's module" \
			"loading); once it runs that kernel, run make install-kmod again" >&2; fi; \
	set -e; run() { echo "$$*"; "$$@"; }; \
	run $(INSTALL_DATA) kmod/llmos.ko "$(DESTDIR)$(MODULEDIR)/$$kver/extra/llmos.ko"; \
	if [ $$boot = 1 ]; then \
		run $(INSTALL_DATA) packaging/modules-load.conf "$(DESTDIR)$(MODULESLOADDIR)/llmos.conf"; \
		run $(INSTALL_DATA) packaging/llmosd-device.conf \
			"$(DESTDIR)$(UNITDIR)/llmosd.service.d/llmos-device.conf"; fi; \
	if [ -z "$(DESTDIR)" ]; then run depmod -a "$$kver"; fi; \
	if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then run systemctl daemon-reload; fi

# What cmake --install puts in place is listed by installing into a scratch
# folder; so uninstall needs the build that was installed. A module DKMS
# still has is left to `dkms remove llmos/VERSION --all`, which comes first.
uninstall:
	@test -f "$(BUILD)/default/cmake_install.cmake" || { echo "uninstall: no build in" \
		"$(BUILD)/default: what it installed is what is removed" >&2; exit 1; }
	@if [ -z "$(DESTDIR)" ] && command -v dkms >/dev/null && dkms status llmos | grep -q .; then \
		echo "uninstall: DKMS still has llmos: dkms remove llmos/$(LLMOS_VERSION) --all first" >&2; \
		exit 1; fi
	@set -e; list=$$(mktemp -d); trap 'rm -rf "$$list"' EXIT; \
	DESTDIR="$$list" cmake --install "$(BUILD)/default" --prefix "$(PREFIX)" >/dev/null; \
	$(GIVE_BACK); \
	run() { echo "$$*"; "$$@"; }; \
	if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ] && \
		[ -e "$(UNITDIR)/llmosd.service" ]; then run systemctl disable --now llmosd.service; fi; \
	files=$$(cd "$$list" && find . ! -type d | sed 's|^\.||'); \
	dirs=$$(cd "$$list" && find . -depth -type d -name '*llmos*' | sed 's|^\.||'); \
	for f in $$files $(UDEVRULESDIR)/60-llmos.rules $(SYSUSERSDIR)/llmos.conf \
		$(TMPFILESDIR)/llmos.conf $(UNITDIR)/llmosd.service \
		$(UNITDIR)/llmosd.service.d/llmos-device.conf $(MODULESLOADDIR)/llmos.conf \
		$(foreach m,$(wildcard man/*.[1-8]),$(MANDIR)/man$(subst .,,$(suffix $(m)))/$(notdir $(m))); do \
		if [ -e "$(DESTDIR)$$f" ]; then run rm -f "$(DESTDIR)$$f"; fi; done; \
	for d in $$dirs $(UNITDIR)/llmosd.service.d; do \
		if [ -d "$(DESTDIR)$$d" ]; then run find "$(DESTDIR)$$d" -depth -type d -empty -delete; fi; \
	done; \
	if [ -d "$(DESTDIR)$(DKMSDIR)" ]; then run rm -rf "$(DESTDIR)$(DKMSDIR)"; fi; \
	for ko in "$(DESTDIR)$(MODULEDIR)"/*/extra/llmos.ko; do \
		[ -e "$$ko" ] || continue; run rm -f "$$ko"; kver=$${ko%/extra/llmos.ko}; \
		if [ -z "$(DESTDIR)" ]; then PATH=$$PATH:/usr/sbin:/sbin run depmod -a "$${kver##*/}"; fi; \
	done; \
	if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then run systemctl daemon-reload; fi

clean:
	rm -rf "$(BUILD)"
	@if [ -f "$(LLMOS_CACHE)/kernel.env" ]; then \
		$(KENV) $(MAKE) -s -C "$$LLMOS_KDIR" M="$(CURDIR)/kmod" clean; fi
