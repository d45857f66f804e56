#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# make check: deps -> build -> lint -> unit/e2e tests (default, asan+ubsan,
# tsan lanes) -> kernel tests in the VM. Every step runs even when an earlier
# one failed (unless it needs what failed); the last line is
# "N passed, N failed[, N skipped]" over all test cases (each gtest case,
# each kselftest case, each VM runner case, each lint step, the docs step),
# and the exit status is non-zero on any failure.
#
#   tools/check.sh          everything
#   tools/check.sh lint     the lint steps only
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
CACHE=${LLMOS_CACHE:-/var/cache/llmos}
export LLMOS_CACHE=$CACHE
export CCACHE_DIR=${CCACHE_DIR:-$CACHE/ccache}
export CCACHE_BASEDIR=$root
logs=$root/build/logs
mkdir -p "$logs"

passed=0
failed=0
skipped=0
failures=()

say() { printf 'check: %s\n' "$*"; }

# count NAME PASS FAIL SKIP
count() {
	passed=$((passed + $2))
	failed=$((failed + $3))
	skipped=$((skipped + $4))
	[ "$3" -eq 0 ] || failures+=("$1")
}

# run NAME CMD...: run a step with its output in build/logs/NAME.log; on
# failure show the end of that log. Returns the step's status.
run() {
	local name=$1 t0 rc=0
	shift
	t0=$(date +%s)
	"$@" >"$logs/$name.log" 2>&1 || rc=$?
	if [ $rc -eq 0 ]; then
		say "$name: ok ($(($(date +%s) - t0)) s)"
	else
		say "$name: FAILED (status $rc, $(($(date +%s) - t0)) s); end of $logs/$name.log:"
		tail -n 60 "$logs/$name.log" | sed 's/^/    /'
	fi
	return $rc
}

# A step that is one test case.
case_step() {
	local name=$1
	if run "$@"; then count "$name" 1 0 0; else count "$name" 0 1 0; fi
}

# A build step: counted only when it fails (it is not a test case).
build_step() {
	local name=$1
	run "$@" && return 0
	count "$name" 0 1 0
	return 1
}

kenv() {
	# shellcheck disable=SC1091
	. "$CACHE/kernel.env"
}

kernel_c_files() {
	find kmod include/uapi bpf tests/kernel tests/bench -name '*.[ch]' \
		! -name '*.mod.c' ! -name 'vmlinux.h' 2>/dev/null | sort
}

cxx_files() {
	find userspace tools tests -name '*.cc' -o -name '*.hh' 2>/dev/null | sort
}

lint_checkpatch() {
	kenv
	local f out bad=0
	for f in $(kernel_c_files); do
		# BPF policies take tunables as const volatile globals (the
		# sched_ext idiom that libbpf's rodata needs).
		local ignore=
		case "$f" in bpf/*) ignore=--ignore=VOLATILE ;; esac
		out=$(perl "$LLMOS_KSRC/scripts/checkpatch.pl" --strict --no-tree \
			--quiet --show-types $ignore -f "$f" 2>&1) || true
		if [ -n "$out" ]; then
			printf '%s\n' "$out"
			bad=1
		fi
	done
	return $bad
}

# kernel-doc parses cleanly, and every UAPI struct and enum has a comment.
lint_kerneldoc() {
	kenv
	local out bad=0 name
	out=$(perl "$LLMOS_KSRC/scripts/kernel-doc" -none -Wall \
		include/uapi/linux/llmos.h $(find kmod -name '*.[ch]' ! -name '*.mod.c') 2>&1)
	if [ -n "$out" ]; then
		printf '%s\n' "$out"
		bad=1
	fi
	for name in $(sed -nE 's/^(struct|enum) (llmos_[a-z0-9_]+) \{.*/\1:\2/p' \
		include/uapi/linux/llmos.h); do
		if ! grep -qE "^ \* ${name%%:*} ${name#*:} - " include/uapi/linux/llmos.h; then
			echo "include/uapi/linux/llmos.h: ${name/:/ } has no kernel-doc comment"
			bad=1
		fi
	done
	return $bad
}

lint_clang_format() {
	# shellcheck disable=SC2046
	clang-format --dry-run --Werror $(cxx_files)
}

lint_spdx() {
	local f files bad=0
	# The files git knows: without a git checkout there is nothing to say.
	# (Root checking another user's clone: git would refuse it as unsafe.)
	files=$(git -c safe.directory="$PWD" ls-files --cached --others --exclude-standard) ||
		{ echo "lint-spdx: not a git checkout"; return 1; }
	for f in $(grep -E '\.(c|h|cc|hh|sh|bpf\.c)$|(^|/)(Makefile|Kbuild|CMakeLists\.txt)$' <<<"$files"); do
		if ! head -n 2 "$f" | grep -q 'SPDX-License-Identifier:'; then
			echo "$f: no SPDX line at the top"
			bad=1
		fi
	done
	return $bad
}

lint() {
	case_step lint-checkpatch lint_checkpatch
	case_step lint-kernel-doc lint_kerneldoc
	case_step lint-clang-format lint_clang_format
	case_step lint-spdx lint_spdx
	# The Sphinx build, the man pages and the coverage check, as one case.
	case_step docs bash tools/docs.sh check
}

# ctest in build/LANE, counted from its JUnit report.
ctest_lane() {
	local lane=$1 junit t0 rc=0
	junit="$root/build/$lane/junit.xml"
	t0=$(date +%s)
	rm -f "$junit"
	rm -rf "build/$lane/test-counts"
	# One test per CPU, four at most (a sanitized model test takes a GiB or
	# two): each test has its own folders, sockets and ports.
	local jobs
	jobs=$(nproc)
	[ "$jobs" -le 4 ] || jobs=4
	(cd "build/$lane" &&
		TSAN_OPTIONS="suppressions=$root/tests/tsan.supp ${TSAN_OPTIONS:-}" \
			ctest --output-on-failure --output-junit "$junit" --timeout 300 -j "$jobs" \
				--no-tests=error) \
		>"$logs/ctest-$lane.log" 2>&1 || rc=$?
	if [ ! -f "$junit" ]; then
		say "ctest-$lane: no report; end of $logs/ctest-$lane.log:"
		tail -n 60 "$logs/ctest-$lane.log" | sed 's/^/    /'
		count "ctest-$lane" 0 1 0
		return
	fi
	local tests fails skips disabled
	tests=$(grep -m1 -oE 'tests="[0-9]+"' "$junit" | tr -dc 0-9)
	fails=$(grep -m1 -oE 'failures="[0-9]+"' "$junit" | tr -dc 0-9)
	skips=$(grep -m1 -oE 'skipped="[0-9]+"' "$junit" | tr -dc 0-9)
	# Disabled tests (DISABLED_ cases) did not run: skipped, not passed.
	disabled=$(grep -m1 -oE 'disabled="[0-9]+"' "$junit" | tr -dc 0-9)
	skips=$((skips + ${disabled:-0}))
	# ctest failing with no failure in the report (a test that did not
	# run): one failure, taken from what passed.
	[ "$fails" -ne 0 ] || [ $rc -eq 0 ] || fails=1
	# Shell tests of several cases wrote their counts ("PASSED FAILED
	# SKIPPED", then each skip's reason): each case counts, not the one
	# test the report has (a pass when none failed, else a failure).
	local f p fl s extra_why=""
	for f in "build/$lane/test-counts"/*; do
		[ -f "$f" ] || continue
		p='' fl='' s=''
		read -r p fl s <"$f" || true
		if ! [[ $p =~ ^[0-9]+$ && $fl =~ ^[0-9]+$ && $s =~ ^[0-9]+$ ]]; then
			say "ctest-$lane: $f is not \"PASSED FAILED SKIPPED\": its test counts as one"
			continue
		fi
		tests=$((tests + p + fl + s - 1))
		[ "$fl" -eq 0 ] || fails=$((fails + fl - 1))
		skips=$((skips + s))
		extra_why+=$(sed -n "2,\$ s|^|$(basename "$f"): |p" "$f")$'\n'
	done
	say "ctest-$lane: $((tests - fails - skips)) passed, $fails failed, $skips skipped ($(($(date +%s) - t0)) s)"
	if [ "$fails" -ne 0 ]; then
		# The cases that failed, timed out or crashed (a sanitizer's
		# report on exit prints no [  FAILED  ] line), with their lines.
		{
			grep -E '\*\*\*(Failed|Timeout|Exception)|\[  FAILED  \]' "$logs/ctest-$lane.log"
			sed -n '/^The following tests FAILED:/,$p' "$logs/ctest-$lane.log"
		} | head -n 60 | sed 's/^/    /'
	fi
	# Each skip with its reason (the GoogleTest programs print
	# "skip: NAME: REASON" when they exit 77); other skips by name.
	local why
	# (Only a skipped case's: one that printed them and then failed on
	# its way out is a failure.)
	why=$(awk '/<testcase / { skipped = 0 } /<skipped/ { skipped = 1 }
		skipped && /^skip: / { print substr($0, 7) }' "$junit" |
		sed -e 's/&apos;/'"'"'/g' -e 's/&quot;/"/g' -e 's/&lt;/</g' -e 's/&gt;/>/g' \
			-e 's/&amp;/\&/g')
	why+=$'\n'$extra_why
	if [ "$(printf '%s' "$why" | grep -c .)" -ge "$skips" ]; then
		printf '%s\n' "$why" | grep . | sed 's/^/    skipped: /' || true
	else
		grep -E '\(Skipped\)' "$logs/ctest-$lane.log" | sed 's/^/    skipped: /'
	fi
	count "ctest-$lane" $((tests - fails - skips)) "$fails" "$skips"
}

vm_tests() {
	local t0 rc=0 p f s emu=()
	t0=$(date +%s)
	rm -f build/vm/counts
	# llmosd on the emulated GPU (x86-64 builds have it).
	[ ! -x build/default/tests/llmosd_emu ] || emu=(--bin build/default/tests/llmosd_emu)
	tools/vm/run.sh --module kmod/llmos.ko --tests build/default/kernel-tests \
		--tests build/default/vm-gtests \
		--tests tests/vm --bpf build/bpf --bin build/default/tools/llmosctl-static \
		--bin build/default/tools/llmosd/llmosd "${emu[@]}" \
		--data ../shared/testdata/llama-tiny-f32.gguf \
		--out build/vm test >"$logs/vm.log" 2>&1 || rc=$?
	if [ -f build/vm/counts ]; then
		read -r p f s <build/vm/counts
	else
		p=0 f=1 s=0
	fi
	say "vm: $p passed, $f failed, $s skipped ($(($(date +%s) - t0)) s)"
	# Each skip with its reason.
	[ ! -f build/vm/tap.log ] ||
		sed -n 's/^ok [0-9]* \(.*\) # SKIP \(.*\)/    skipped: \1: \2/p' build/vm/tap.log
	if [ "$f" -ne 0 ] || [ $rc -ne 0 ]; then
		grep -E '^not ok|^### case fail|^### kernel-log-bad|^# klog:' "$logs/vm.log" |
			head -n 60 | sed 's/^/    /'
		# The guest's kernel log from its first complaint (run.sh prints
		# it last), or the end of the log.
		if grep -q '^vm: guest kernel log' "$logs/vm.log"; then
			sed -n '/^vm: guest kernel log/,$p' "$logs/vm.log" | head -n 120 |
				sed 's/^/    /'
		else
			tail -n 80 "$logs/vm.log" | sed 's/^/    /'
		fi
		[ "$f" -ne 0 ] || f=1
	fi
	count vm "$p" "$f" "$s"
}

# The shared test data (a tiny llama model and its conformance vectors,
# tests/CMakeLists.txt's LLMOS_TESTDATA_DIR) sits beside the clone.
testdata_present() {
	local f=$root/../shared/testdata/llama-tiny-f32.gguf
	[ -f "$f" ] && return 0
	echo "no $f: the shared test data must sit in ../shared/testdata beside this" \
		"clone; the engine's, llmosd's and llmosctl's tests that read it fail without it"
	return 1
}

summary() {
	[ ${#failures[@]} -eq 0 ] || say "failed steps: ${failures[*]}"
	if [ "$skipped" -gt 0 ]; then
		echo "$passed passed, $failed failed, $skipped skipped"
	else
		echo "$passed passed, $failed failed"
	fi
	[ "$failed" -eq 0 ]
}

main() {
	local t0
	t0=$(date +%s)
	if [ "${1:-}" = lint ]; then
		lint
		summary
		return
	fi
	if ! build_step deps bash tools/deps.sh; then
		summary
		return
	fi
	# Counted (as a failure) only when it is missing: the tests that read
	# it then fail (the VM's skip), and this says why first.
	build_step testdata testdata_present
	local kmod_ok=1 default_ok=1
	build_step kmod bash -c '. "$LLMOS_CACHE/kernel.env" &&
		make -C "$LLMOS_KDIR" M="$PWD/kmod" modules' || kmod_ok=0
	build_step build-default tools/build-userspace.sh default || default_ok=0
	[ $kmod_ok -eq 0 ] || build_step bpf tools/build-bpf.sh || kmod_ok=0
	lint
	[ $default_ok -eq 0 ] || ctest_lane default
	build_step build-asan tools/build-userspace.sh asan && ctest_lane asan
	build_step build-tsan tools/build-userspace.sh tsan && ctest_lane tsan
	if [ $kmod_ok -eq 1 ] && [ $default_ok -eq 1 ]; then
		vm_tests
	fi
	say "total $(($(date +%s) - t0)) s"
	summary
}

main "$@"
