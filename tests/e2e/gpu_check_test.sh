#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# tools/gpu-check.sh on this machine: packs BUILD's GPU programs with the
# libraries they load, then runs the pack (without the benchmark) as the
# GPU machine would. Without a GPU every GPU case skips with its reason and
# the rest pass; the pack must hold every program, stay small enough to
# carry, and report the driver and device as the engine sees them. Then a
# pack of stand-ins for a GPU without cuBLAS: that run must fail, saying so.
set -euo pipefail
build=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$src"
fail() {
	echo "gpu_check_test: $*" >&2
	exit 1
}
tools/gpu-check.sh pack "$build" "$tmp/pack" >"$tmp/pack.log" 2>&1 || fail "pack failed: $(cat "$tmp/pack.log")"
grep -q '^gpu-check: packed 8 programs' "$tmp/pack.log" || fail "$(cat "$tmp/pack.log")"
for b in cuda_memory_test cuda_test cuda_kernels_test cuda_llm_engine_test llmosd_engine_test \
	llmosd llmos-mkmodel engine_bench; do
	[ -x "$tmp/pack/bin/$b" ] || fail "$b is not in the pack"
done
[ -f "$tmp/pack/lib/liburing.so.2" ] || fail "liburing is not in the pack"
[ -f "$tmp/pack/testdata/llama-tiny-f32.gguf" ] || fail "the test data is not in the pack"
rc=0
# (A dry run: this machine may have no GPU, which alone fails a run.)
OUT=$tmp/out GPU_CHECK_NO_BENCH=1 GPU_CHECK_ALLOW_NO_GPU=1 tools/gpu-check.sh run "$tmp/pack" \
	>"$tmp/run.log" 2>&1 || rc=$?
last=$(tail -n 1 "$tmp/out/summary.txt" 2>/dev/null || true)
[[ $last =~ ^gpu-check:\ ([0-9]+)\ passed,\ ([0-9]+)\ failed,\ ([0-9]+)\ skipped$ ]] ||
	fail "no summary line (status $rc): $(tail -n 20 "$tmp/run.log")"
passed=${BASH_REMATCH[1]} failed=${BASH_REMATCH[2]} skipped=${BASH_REMATCH[3]}
if [ "$rc" -ne 0 ] || [ "$failed" -ne 0 ]; then
	fail "status $rc, $last: $(grep -A3 FAILED "$tmp/out/tests.log" | head -n 40)"
fi
[ "$passed" -gt 0 ] || fail "nothing passed: $last"
grep -q '^\[ info     \] ' "$tmp/out/probe.txt" || fail "no probe in probe.txt: $(cat "$tmp/out/probe.txt")"
grep -q 'benchmark not run (GPU_CHECK_NO_BENCH=1)' "$tmp/out/bench.log" || fail "bench.log: $(cat "$tmp/out/bench.log")"
if grep -q 'no device:' "$tmp/out/probe.txt"; then
	[ "$skipped" -gt 0 ] || fail "no GPU here, yet no case skipped: $last"
fi
! grep -q 'FAILED' "$tmp/out/summary.txt" || fail "a failure line: $(cat "$tmp/out/summary.txt")"

# A GPU the build can use, without cuBLAS (stand-ins for the pack's
# programs say so): a failure, on its own line in summary.txt, not a quiet
# pass of every /cublas case on the built-in kernels.
fake=$tmp/fake
mkdir -p "$fake/bin" "$fake/lib" "$fake/testdata"
cp "$tmp/pack/paths" "$fake/"
cat >"$fake/bin/stub" <<'STUB'
#!/bin/sh
case "$*" in
*cuda_probe*)
	echo '[ info     ] NVIDIA H100 80GB HBM3, cc 9.0, 81559 MiB, driver 13000, runtime 13000, GPUDirect RDMA 1'
	echo '[ info     ] cuBLAS: not loaded: libcublas.so.13: cannot open shared object file'
	;;
*gpu_probe*) echo "[ probe    ] built_with_cuda=1 usable=1 device='NVIDIA H100 80GB HBM3' reason=''" ;;
*--gtest_list_tests*) ;;
*) echo '[       OK ] stub.passes (1 ms)' ;;
esac
STUB
chmod +x "$fake/bin/stub"
for b in cuda_memory_test cuda_test cuda_kernels_test cuda_llm_engine_test llmosd_engine_test; do
	ln -s stub "$fake/bin/$b"
done
rc=0
OUT=$tmp/fake-out GPU_CHECK_NO_BENCH=1 tools/gpu-check.sh run "$fake" >"$tmp/fake.log" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "a usable GPU without cuBLAS, yet status 0: $(cat "$tmp/fake.log")"
grep -q '^gpu-check: FAILED: cuBLAS is not loaded, .*: libcublas.so.13: cannot open' \
	"$tmp/fake-out/summary.txt" || fail "no cuBLAS line: $(cat "$tmp/fake-out/summary.txt")"
[ "$(tail -n 1 "$tmp/fake-out/summary.txt")" = "gpu-check: 5 passed, 1 failed, 0 skipped" ] ||
	fail "summary.txt: $(cat "$tmp/fake-out/summary.txt")"

# No GPU the build can use, and no GPU_CHECK_ALLOW_NO_GPU: every GPU test
# would skip, which is a failure of the run, not a pass.
cat >"$fake/bin/stub" <<'STUB'
#!/bin/sh
case "$*" in
*cuda_probe*) echo '[ info     ] no device: no CUDA driver' ;;
*gpu_probe*) echo "[ probe    ] built_with_cuda=1 usable=0 device='' reason='no CUDA driver'" ;;
*--gtest_list_tests*) ;;
*) echo '[ SKIP     ] stub.skips (0 ms)' && exit 77 ;;
esac
STUB
rc=0
OUT=$tmp/nogpu-out GPU_CHECK_NO_BENCH=1 tools/gpu-check.sh run "$fake" >"$tmp/nogpu.log" 2>&1 ||
	rc=$?
[ "$rc" -ne 0 ] || fail "no GPU, yet status 0: $(cat "$tmp/nogpu.log")"
grep -qE '^gpu-check: (FAILED: no GPU this build can use here|nvidia-smi lists a GPU, but)' \
	"$tmp/nogpu-out/summary.txt" ||
	fail "no 'no GPU' line: $(cat "$tmp/nogpu-out/summary.txt")"
echo "gpu_check_test: $last"
