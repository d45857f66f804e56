#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Build the BPF scheduling policies: vmlinux.h from the module's BTF (over
# the kernel's), then every bpf/*.bpf.c and bpf/tests/*.bpf.c with clang-19
# into build/bpf/NAME.bpf.o. Needs kmod/llmos.ko built.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${LLMOS_CACHE:-/var/cache/llmos}
# shellcheck disable=SC1091
. "$CACHE/kernel.env"
out=build/bpf
mkdir -p "$out"
[ -f kmod/llmos.ko ] || { echo "build-bpf: build the module first (make kmod)" >&2; exit 2; }
if [ ! -f "$out/vmlinux.h" ] || [ kmod/llmos.ko -nt "$out/vmlinux.h" ]; then
	bpftool btf dump file kmod/llmos.ko --base-btf "$LLMOS_KDIR/vmlinux" format c \
		>"$out/vmlinux.h.tmp"
	mv "$out/vmlinux.h.tmp" "$out/vmlinux.h"
fi
for src in bpf/*.bpf.c bpf/tests/*.bpf.c; do
	obj="$out/$(basename "$src" .c).o"
	if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ bpf/llmos.bpf.h -nt "$obj" ] ||
		[ "$out/vmlinux.h" -nt "$obj" ]; then
		clang-19 -target bpf -O2 -g -Wall -Werror -D__TARGET_ARCH_x86 \
			-I"$out" -Ibpf -c "$src" -o "$obj"
	fi
done
