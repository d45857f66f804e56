#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# The GPU checks, for a machine with an NVIDIA GPU that cannot build the
# project (no GoogleTest, liburing, ... there): the programs are built here
# (build/default, with the CUDA backend) and packed with the libraries they
# load; the GPU machine runs them from the pack.
#
#   tools/gpu-check.sh pack [BUILD [PACK]]   here: BUILD (build/default) -> PACK
#                                            (build/gpu-bundle), stripped
#   tools/gpu-check.sh run [PACK]            there: the driver and device, every
#                                            GPU test, then `engine_bench --cuda`
#
# run writes its logs to $OUT (or build/gpu-out): probe.txt (nvidia-smi, the
# driver vs this build's CUDA runtime, cuBLAS), tests.log, bench.log and
# summary.txt, whose last line is "gpu-check: N passed, N failed, N
# skipped" (a test program that crashes or runs out of time, and a
# benchmark that fails, count as failures; so does a usable GPU without
# cuBLAS, on a "gpu-check: FAILED: ..." line above it, and a machine with
# no GPU the build can use, unless GPU_CHECK_ALLOW_NO_GPU=1). Exit status:
# 0 when nothing failed. GPU_CHECK_NO_BENCH=1 skips the benchmark, GPU_CHECK_TIMEOUT
# (seconds, default 480) bounds the whole run: each test program gets up
# to 150 s of what is left (one with less than 30 s left is not started,
# and counts as a failure), the benchmark the rest. summary.txt is written
# again after each step, so that a run killed from outside keeps its counts.
#
# The programs have their build's paths compiled in (the test data, llmosd,
# llmos-mkmodel); run makes those paths lead into the pack where they do not
# exist (the GPU machine runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."

# The programs of the pack: the GPU's tests, what they start, the benchmark.
tests=(cuda_memory_test cuda_test cuda_kernels_test cuda_llm_engine_test llmosd_engine_test)
tools=(tools/llmosd/llmosd tools/mkmodel/llmos-mkmodel host-bench/engine_bench)

pack() {
	local build=${1:-build/default} out=${2:-build/gpu-bundle} t lib
	# (Output captured, then searched: grep -q leaving a pipe early would
	# make its writer fail, and pipefail the test.)
	local probe=
	if ! [ -x "$build/tests/cuda_test" ]; then
		echo "gpu-check: $build/tests/cuda_test is not built (make build first)" >&2
		return 1
	fi
	probe=$("$build/tests/cuda_test" --gtest_filter='cuda_probe.says*' 2>&1 || true)
	if grep -q 'built without CUDA' <<<"$probe"; then
		echo "gpu-check: $build has no CUDA backend (nvcc missing at configure time?)" >&2
		return 1
	fi
	rm -rf "$out"
	mkdir -p "$out/bin" "$out/lib/std" "$out/testdata"
	for t in "${tests[@]}"; do
		[ -x "$build/tests/$t" ] || { echo "gpu-check: $build/tests/$t is not built" >&2; return 1; }
		strip --strip-debug -o "$out/bin/$t" "$build/tests/$t"
	done
	for t in "${tools[@]}"; do
		[ -x "$build/$t" ] || { echo "gpu-check: $build/$t is not built" >&2; return 1; }
		strip --strip-debug -o "$out/bin/$(basename "$t")" "$build/$t"
	done
	# Every library they load but glibc's (the GPU machine's own glibc runs
	# them); the C++ runtime apart, used only when the machine's is older.
	# One this machine cannot find would be missing there too.
	local ldd_out
	ldd_out=$(ldd "$out"/bin/*)
	if grep -q 'not found' <<<"$ldd_out"; then
		echo "gpu-check: libraries the programs need are not found here:" >&2
		grep 'not found' <<<"$ldd_out" | sort -u >&2
		return 1
	fi
	for lib in $(awk '$2 == "=>" && $3 ~ /^\// { print $3 }' <<<"$ldd_out" | sort -u); do
		case "$(basename "$lib")" in
		libc.so.* | libm.so.* | libpthread.so.* | libdl.so.* | librt.so.* | ld-linux*) ;;
		libstdc++.so.* | libgcc_s.so.*) cp -L "$lib" "$out/lib/std/" ;;
		*) cp -L "$lib" "$out/lib/" ;;
		esac
	done
	cp ../shared/testdata/* "$out/testdata/"
	cp tools/gpu-check.sh "$out/"
	# The toolkit that built them, for the report (the driver must run it).
	{ nvcc --version 2>/dev/null || echo "nvcc: not on PATH"; } | tail -n 2 >"$out/toolkit"
	# The paths compiled into the programs.
	{
		echo "root=$PWD"
		echo "testdata=$(cd ../shared/testdata && pwd)"
		echo "build=$(cd "$build" && pwd)"
	} >"$out/paths"
	local size
	size=$(du -sm "$out" | cut -f1)
	echo "gpu-check: packed $((${#tests[@]} + ${#tools[@]})) programs and $(find "$out/lib" -type f | wc -l) libraries in $out (${size} MiB)"
	if [ "$size" -gt 56 ]; then
		echo "gpu-check: the pack is over 56 MiB: too large to carry to the GPU machine" >&2
		return 1
	fi
}

run() {
	local p out t0 limit
	p=$(cd "${1:-build/gpu-bundle}" && pwd)
	out=${OUT:-build/gpu-out}
	mkdir -p "$out"
	out=$(cd "$out" && pwd)
	t0=$(date +%s)
	elapsed() { echo $(($(date +%s) - t0)); }
	limit=${GPU_CHECK_TIMEOUT:-480}
	[ -f "$p/paths" ] || { echo "gpu-check: $p is not a pack (no paths file)" >&2; return 2; }
	local testdata build
	testdata=$(sed -n 's/^testdata=//p' "$p/paths")
	build=$(sed -n 's/^build=//p' "$p/paths")
	# Where the programs look: their build's paths, led into the pack.
	link() { # link TARGET PATH: PATH leads to TARGET unless it exists
		[ -e "$2" ] && return 0
		mkdir -p "$(dirname "$2")" && ln -sfn "$1" "$2"
	}
	# (A path that cannot be made is said, not fatal: the tests that need
	# it fail, the others run.)
	link "$p/testdata" "$testdata" || echo "gpu-check: cannot lead $testdata to the pack"
	link "$p/bin/llmosd" "$build/tools/llmosd/llmosd" || echo "gpu-check: cannot lead $build to the pack"
	link "$p/bin/llmos-mkmodel" "$build/tools/mkmodel/llmos-mkmodel" || true
	export LLMOS_MKMODEL=$p/bin/llmos-mkmodel
	local libs=$p/lib cublas missing
	# Every program, not one: a C++ runtime older than any of them wants
	# (GLIBCXX) takes the build's.
	missing=$(LD_LIBRARY_PATH=$libs timeout 20 ldd "$p"/bin/* 2>&1 | grep -E 'not found|version .* not found' || true)
	if [ -n "$missing" ]; then
		libs=$libs:$p/lib/std # this machine's C++ runtime is older than the build's
	fi
	cublas=$(timeout 20 find /usr/local /usr/lib /opt -name 'libcublas.so.13*' 2>/dev/null | head -n 1 || true)
	[ -n "$cublas" ] && libs=$libs:$(dirname "$cublas")
	# The driver's library where a container mounts it, if the loader
	# does not know the folder.
	local known
	known=$(ldconfig -p 2>/dev/null || true) # (searched after: see pack's grep)
	if ! grep -q 'libcuda\.so\.1' <<<"$known"; then
		for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu/nvidia; do
			[ -e "$d/libcuda.so.1" ] && libs=$libs:$d
		done
	fi
	export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
	local passed=0 failed=0 skipped=0 notes=()
	# The counts so far, in summary.txt: a run killed from outside keeps them.
	summary() {
		{
			[ "${#notes[@]}" -eq 0 ] || printf '%s\n' "${notes[@]}"
			echo "gpu-check: $passed passed, $failed failed, $skipped skipped${1:-}"
		} >"$out/summary.txt"
	}
	summary " (so far: the probe)"

	{
		echo "# $(date -u +%FT%TZ) on $(hostname), kernel $(uname -r), $(nproc) CPUs"
		grep -m1 'model name' /proc/cpuinfo || true
		{ ldd --version 2>&1 || true; } | sed -n 1p
		timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap \
			--format=csv 2>&1 || echo "nvidia-smi: not there, or it failed"
		echo "# built with: $(tr '\n' ' ' <"$p/toolkit" 2>/dev/null || echo unknown)"
		echo "# libraries: $LD_LIBRARY_PATH"
		[ -z "$missing" ] || echo "# with the pack's libraries alone: $missing"
		echo "# the loader's CUDA libraries: $(grep -oE 'lib(cuda|cublas)[^ ]*' <<<"$known" | sort -u | tr '\n' ' ')"
		echo "# still missing: $(timeout 20 ldd "$p"/bin/* 2>&1 | grep 'not found' | sort -u | tr '\n' ' ')"
		echo "# cuBLAS: ${cublas:-not found (the linear layers run on the built-in kernels)}"
		# What the build's CUDA runtime makes of this driver and device.
		timeout 60 "$p/bin/cuda_test" --gtest_filter='cuda_probe.*:cuda_blas.*' 2>&1 |
			grep -E '^\[ (info|probe)' || true
		timeout 60 "$p/bin/cuda_memory_test" --gtest_filter='gpu_probe.*' 2>&1 |
			grep -E '^\[ (info|probe)' || true
	} >"$out/probe.txt" 2>&1
	cat "$out/probe.txt"

	local t x left
	: >"$out/tests.log"
	# A GPU that this build cannot use (a driver older than CUDA 13 wants,
	# R580): every GPU test would skip, which must not read as a pass.
	local gpus
	gpus=$(timeout 30 nvidia-smi -L 2>/dev/null || true)
	if grep -q '^GPU ' <<<"$gpus" && grep -q 'usable=0' "$out/probe.txt"; then
		notes+=("gpu-check: nvidia-smi lists a GPU, but this build cannot use it: $(sed -n "s/.*usable=0.*reason='\(.*\)'/\1/p" "$out/probe.txt")")
		echo "${notes[-1]}" | tee -a "$out/tests.log"
		failed=$((failed + 1))
	elif ! grep -q 'usable=1' "$out/probe.txt" && [ "${GPU_CHECK_ALLOW_NO_GPU:-0}" != 1 ]; then
		# No GPU at all (no driver, or none lent): every GPU test skips,
		# and a run that tested nothing of the GPU path is no pass.
		notes+=("gpu-check: FAILED: no GPU this build can use here, so nothing of the GPU path was tested (GPU_CHECK_ALLOW_NO_GPU=1 for a dry run)")
		echo "${notes[-1]}" | tee -a "$out/tests.log"
		failed=$((failed + 1))
	fi
	# A GPU the build uses, but no cuBLAS: every /cublas case would run on
	# the built-in kernels and pass, testing nothing of cuBLAS.
	if grep -qE '^\[ info     \] .*, cc [0-9]+\.[0-9]+, ' "$out/probe.txt" &&
		grep -q '^\[ info     \] cuBLAS: not loaded' "$out/probe.txt"; then
		notes+=("gpu-check: FAILED: cuBLAS is not loaded, so the /cublas cases run on the built-in kernels: $(grep -m1 '^\[ info     \] cuBLAS: not loaded' "$out/probe.txt" | sed 's/^\[ info     \] cuBLAS: not loaded: //')")
		echo "${notes[-1]}" | tee -a "$out/tests.log"
		failed=$((failed + 1))
	fi
	summary " (so far: the probe)"
	for t in "${tests[@]}"; do
		echo "## $t" >>"$out/tests.log"
		x=0
		# Each test program gets up to 150 s, and no more than the run has
		# left; with less than 30 s left it is not started (a failure).
		left=$((limit - $(elapsed)))
		[ "$left" -le 150 ] || left=150
		if [ "$left" -lt 30 ]; then
			notes+=("gpu-check: FAILED: $t not run: ${left} s left of ${limit}")
			echo "${notes[-1]}" | tee -a "$out/tests.log"
			failed=$((failed + 1))
			summary " (so far: to $t)"
			continue
		fi
		timeout -k 5 "$left" "$p/bin/$t" --gtest_brief=0 >>"$out/tests.log" 2>&1 || x=$?
		# The counts from gtest's own summary lines.
		local res
		res=$(awk -v t="$t" '/^## /{on = ($2 == t)} on' "$out/tests.log")
		local np nf ns
		np=$(grep -c '^\[       OK \]' <<<"$res" || true)
		# (One line per test, ending in its time; the summary's lines
		# end otherwise.)
		nf=$(grep -cE '^\[  FAILED  \] .* \([0-9]+ ms\)$' <<<"$res" || true)
		ns=$(grep -cE '^\[ SKIP     \] .* \([0-9]+ ms\)$' <<<"$res" || true)
		passed=$((passed + np))
		failed=$((failed + nf))
		skipped=$((skipped + ns))
		# (77: every test of the program skipped.)
		if [ "$x" -ne 0 ] && [ "$x" -ne 77 ] && [ "$nf" -eq 0 ]; then
			failed=$((failed + 1)) # it crashed or timed out
			echo "gpu-check: $t ended with status $x" | tee -a "$out/tests.log"
		fi
		echo "gpu-check: $t done after $(elapsed) s" | tee -a "$out/tests.log"
		summary " (so far: to $t)"
	done
	grep -E '^\[(  FAILED  | SKIP     )\] .* \([0-9]+ ms\)$' "$out/tests.log" | sort -u |
		head -n 40 || true

	left=$((limit - $(elapsed)))
	if [ "${GPU_CHECK_NO_BENCH:-0}" = 1 ]; then
		echo "gpu-check: benchmark not run (GPU_CHECK_NO_BENCH=1)" | tee "$out/bench.log"
	elif [ "$left" -lt 60 ]; then
		echo "gpu-check: benchmark not run: ${left} s left of ${limit}" | tee "$out/bench.log"
	else
		x=0
		summary " (so far: the tests; the benchmark runs)"
		LLMOS_BENCH_MODELS=${LLMOS_BENCH_MODELS:-/tmp/llmos-bench-models} \
			timeout -k 5 "$left" "$p/bin/engine_bench" --cuda >"$out/bench.log" 2>&1 || x=$?
		cat "$out/bench.log"
		if [ "$x" -ne 0 ]; then
			# A benchmark that fails or runs out of time is a failure.
			failed=$((failed + 1))
			echo "gpu-check: engine_bench --cuda ended with status $x after $(elapsed) s" |
				tee -a "$out/bench.log"
		fi
	fi
	summary
	cat "$out/summary.txt"
	[ "$failed" -eq 0 ]
}

case "${1:-}" in
pack) shift && pack "$@" ;;
run) shift && run "$@" ;;
*)
	echo "usage: tools/gpu-check.sh pack [BUILD [PACK]] | run [PACK]" >&2
	exit 2
	;;
esac
