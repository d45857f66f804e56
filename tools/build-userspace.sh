#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Configure and build one userspace lane in build/LANE:
#   default   the normal build (+ static tools and kernel test programs)
#   asan      AddressSanitizer + UndefinedBehaviorSanitizer
#   tsan      ThreadSanitizer
set -euo pipefail
cd "$(dirname "$0")/.."
lane=${1:-default}
CACHE=${LLMOS_CACHE:-/var/cache/llmos}
export CCACHE_DIR=${CCACHE_DIR:-$CACHE/ccache}
# A user who builds after a root `make deps` cannot write the shared cache
# (ccache would fail every compile): theirs is then in their own folder.
if ! mkdir -p "$CCACHE_DIR" 2>/dev/null || [ ! -w "$CCACHE_DIR" ]; then
	CCACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/llmos-ccache
	if mkdir -p "$CCACHE_DIR" 2>/dev/null && [ -w "$CCACHE_DIR" ]; then
		echo "build-userspace: $CACHE/ccache is not writable; compiler cache in $CCACHE_DIR" >&2
	else
		export CCACHE_DISABLE=1
		echo "build-userspace: no writable compiler cache; compiling without one" >&2
	fi
fi
# Paths under the source tree are hashed relative to it, so that a clone in
# another folder hits the cache too.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD}
args=()
case "$lane" in
default)
	# shellcheck disable=SC1091
	[ -f "$CACHE/kernel.env" ] && args+=("-DLLMOS_KSRC=$(. "$CACHE/kernel.env" && echo "$LLMOS_KSRC")")
	;;
asan) args+=(-DLLMOS_SANITIZE=address,undefined) ;;
tsan) args+=(-DLLMOS_SANITIZE=thread) ;;
*) echo "build-userspace: unknown lane '$lane' (default, asan, tsan)" >&2; exit 2 ;;
esac
cmake -S . -B "build/$lane" -G Ninja "${args[@]}" >/dev/null
cmake --build "build/$lane"
