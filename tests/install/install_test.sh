#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# `make install` for other programs: installs the build in BUILD into a
# staging DESTDIR, then builds and runs a program against it twice, found
# through pkg-config and through find_package(llmos). Prints TAP.
set -euo pipefail
build=$1
src=$2
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
n=0
fail=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
notok() { n=$((n + 1)); fail=1; echo "not ok $n - $1"; sed 's/^/# /' "$stage/log"; }
echo "1..4"

if DESTDIR=$stage/root cmake --install "$build" --prefix /usr/local >"$stage/log" 2>&1 &&
	[ -f "$stage/root/usr/local/include/llmos/worker_pool.hh" ] &&
	[ -f "$stage/root/usr/local/include/linux/llmos.h" ] &&
	[ -f "$stage/root/usr/local/lib/libllmos.a" ] &&
	[ -x "$stage/root/usr/local/bin/llmosctl" ]; then
	ok "install puts headers, libraries and llmosctl under DESTDIR"
else
	notok "install puts headers, libraries and llmosctl under DESTDIR"
fi

mkdir -p "$stage/app"
cat >"$stage/app/main.cc" <<'CC'
#include <cstdio>
#include <linux/llmos.h>
#include <llmos/channel.hh>
#include <llmos/device.hh>
#include <llmos/engine/types.hh>
#include <memory>

int main() {
    auto ring = std::make_unique<llmos::channel_ring<8>>();
    llmos::channel_sender<8> tx(*ring);
    llmos::channel_receiver<8> rx(*ring);
    tx.send({42, 0, 0, 0});
    llmos::descriptor d[1];
    bool ok = rx.try_receive(d) == 1 && d[0].request == 42;
    ok = ok && llmos::engine::row_bytes(llmos::engine::ggml_type::q8_0, 64) == 68u;
    std::printf("abi %d, %s\n", LLMOS_ABI_MAJOR, ok ? "ok" : "bad");
    return ok ? 0 : 1;
}
CC

export PKG_CONFIG_SYSROOT_DIR=$stage/root
export PKG_CONFIG_PATH=$stage/root/usr/local/lib/pkgconfig
if flags=$(pkg-config --cflags --libs llmos 2>"$stage/log") &&
	# shellcheck disable=SC2086
	g++ -o "$stage/app/pc" "$stage/app/main.cc" $flags >"$stage/log" 2>&1 &&
	"$stage/app/pc" >"$stage/log" 2>&1; then
	ok "a program builds with pkg-config llmos and runs"
else
	notok "a program builds with pkg-config llmos and runs"
fi

cat >"$stage/app/CMakeLists.txt" <<'CM'
cmake_minimum_required(VERSION 3.25)
project(app CXX)
set(CMAKE_CXX_STANDARD 20)
find_package(llmos 0.1 REQUIRED)
add_executable(app main.cc)
target_link_libraries(app PRIVATE llmos::llmos llmos::llmos_engine)
CM
if cmake -S "$stage/app" -B "$stage/app/build" -DCMAKE_PREFIX_PATH="$stage/root/usr/local" \
	>"$stage/log" 2>&1 && cmake --build "$stage/app/build" >"$stage/log" 2>&1 &&
	"$stage/app/build/app" >"$stage/log" 2>&1; then
	ok "a program builds with find_package(llmos) and runs"
else
	notok "a program builds with find_package(llmos) and runs"
fi

# Nothing of the source or build tree leaks into what was installed.
if ! grep -rl -e "$src" -e "$build" "$stage/root/usr/local/lib/pkgconfig" \
	"$stage/root/usr/local/lib/cmake" >"$stage/log" 2>&1; then
	ok "installed package files do not point into the build or source tree"
else
	notok "installed package files do not point into the build or source tree"
fi
exit $fail
