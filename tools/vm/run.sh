#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Boot the Debian 6.12 kernel under QEMU (TCG) with a busybox initramfs that
# holds the module and the guest programs, and run them.
#
#   run.sh [options] test   load the module, run every program in the tests
#                           folder (TAP), unload; print the TAP and a summary,
#                           fail on a failing or missing case, a bad kernel
#                           log, a crash or a timeout (then show the guest's
#                           kernel log)
#   run.sh [options] demo   load the module and run the demo script
#   run.sh [options] bench  load the module and run every program in the
#                           bench folder (--bench DIR), showing their output
#   run.sh [options] shell  interactive guest shell on this terminal
#
# Options: --module KO  --tests DIR (repeatable)  --demo FILE  --bpf DIR
# (its *.bpf.o go to /bpf)  --bin FILE (extra program in /bin, repeatable;
# NAME-static goes in as NAME; a dynamic one brings its libraries)  --data FILE
# (into /data, repeatable)  --out DIR (logs, counts)  --timeout SECONDS
# (whole VM)
# Environment: LLMOS_CACHE (kernel.env from tools/deps.sh), LLMOS_VM_MEM_MB
# (default 1024), LLMOS_VM_NUMA (2 nodes by default, or 1), LLMOS_VM_APPEND
# (extra kernel arguments), LLMOS_TEST_SCALE (size of stress tests, default 1).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
CACHE=${LLMOS_CACHE:-/var/cache/llmos}
module=
tests=()
demo=
bench=
bpfdir=
out=
# Scaled with the stress tests (each guest program gets half).
vm_timeout=$(awk -v s="${LLMOS_TEST_SCALE:-1}" 'BEGIN { t = 300; if (s + 0 > 1) t = int(300 * s); print t }')
bins=()
data=()

die() { printf 'vm: error: %s\n' "$*" >&2; exit 2; }

while [ $# -gt 0 ]; do
	case "$1" in
	--module) module=$2; shift 2 ;;
	--tests) tests+=("$2"); shift 2 ;;
	--demo) demo=$2; shift 2 ;;
	--bench) bench=$2; shift 2 ;;
	--bpf) bpfdir=$2; shift 2 ;;
	--bin) bins+=("$2"); shift 2 ;;
	--data) data+=("$2"); shift 2 ;;
	--out) out=$2; shift 2 ;;
	--timeout) vm_timeout=$2; shift 2 ;;
	test | demo | bench | shell) mode=$1; shift ;;
	*) die "unknown argument '$1' (see the top of $0)" ;;
	esac
done
[ -n "${mode:-}" ] || die "say test, demo or shell"
[ -f "$CACHE/kernel.env" ] || die "no $CACHE/kernel.env: run 'make deps' first"
# shellcheck disable=SC1091
. "$CACHE/kernel.env"
[ -f "$LLMOS_VMLINUZ" ] || die "no kernel image $LLMOS_VMLINUZ: run 'make deps'"
[ -n "$module" ] && [ -f "$module" ] || die "no module: give --module PATH/llmos.ko"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing: run 'make deps'"

out=${out:-$(mktemp -d)}
mkdir -p "$out"
stage="$out/initramfs"
rm -rf "$stage"
mkdir -p "$stage"/{bin,sbin,usr/bin,lib,tests,bench,bpf,proc,sys,dev,tmp}
cp /bin/busybox "$stage/bin/busybox"
cp "$here/init" "$stage/init"
cp "$module" "$stage/lib/llmos.ko"
for t in "${tests[@]}"; do
	cp "$t"/* "$stage/tests/"
done
[ -z "$demo" ] || cp "$demo" "$stage/bin/demo"
[ -z "$bench" ] || cp "$bench"/* "$stage/bench/"
[ -z "$bpfdir" ] || cp "$bpfdir"/*.bpf.o "$stage/bpf/"
for b in "${bins[@]}"; do
	# NAME-static (the static build of a program) goes in as NAME.
	name=$(basename "$b")
	strip --strip-debug -o "$stage/bin/${name%-static}" "$b"
	# A dynamically linked program brings its shared libraries (and the
	# dynamic loader) along, at the paths it was linked against.
	if ldd "$b" >/dev/null 2>&1; then
		ldd "$b" | grep -o '/[^ ]*' | while read -r lib; do
			mkdir -p "$stage$(dirname "$lib")"
			[ -e "$stage$lib" ] || cp -L "$lib" "$stage$lib"
		done
	fi
done
for d in "${data[@]}"; do
	# Missing, it is left out: the tests that read it skip, saying so.
	if [ ! -f "$d" ]; then
		echo "vm: no data file $d: the tests that need it skip" >&2
		continue
	fi
	mkdir -p "$stage/data"
	cp "$d" "$stage/data/"
done
(cd "$stage" && find . | busybox cpio -o -H newc 2>/dev/null) | gzip -1 >"$out/initrd.gz"

append="console=ttyS0 loglevel=7 panic=-1 oops=panic panic_on_warn=1 llmos.mode=$mode"
# Tests run with slab debugging and KFENCE; benchmarks measure the kernel
# as it is shipped.
[ "$mode" = bench ] || append+=" slub_debug=FZPU kfence.sample_interval=10"
append+=" llmos.timeout=$((vm_timeout / 2)) llmos.scale=${LLMOS_TEST_SCALE:-1}"
append+=" ${LLMOS_VM_APPEND:-}"
# Two NUMA nodes (one socket, one CPU and half the memory each), so that
# node placement is tested; LLMOS_VM_NUMA=1 boots one node.
mem_mb=${LLMOS_VM_MEM_MB:-1024}
qemu=(qemu-system-x86_64 -accel tcg -cpu max -m "${mem_mb}M" -nodefaults -no-reboot)
if [ "${LLMOS_VM_NUMA:-2}" = 2 ]; then
	qemu+=(-smp 2,sockets=2,cores=1
		-object "memory-backend-ram,id=m0,size=$((mem_mb / 2))M"
		-object "memory-backend-ram,id=m1,size=$((mem_mb / 2))M"
		-numa node,nodeid=0,cpus=0,memdev=m0 -numa node,nodeid=1,cpus=1,memdev=m1)
else
	qemu+=(-smp 2)
fi
qemu+=(
	-kernel "$LLMOS_VMLINUZ" -initrd "$out/initrd.gz"
	-device isa-debug-exit,iobase=0xf4,iosize=4)

if [ "$mode" = shell ]; then
	exec "${qemu[@]}" -nographic -serial mon:stdio -append "${append/loglevel=7/loglevel=4}"
fi

console="$out/console.log"
tap="$out/tap.log"
: >"$tap"
rc=0
start=$(date +%s.%N)
if [ "$mode" = demo ] || [ "$mode" = bench ]; then
	{
		rc=0
		timeout --foreground "$vm_timeout" "${qemu[@]}" -display none -serial "file:$console" \
			-serial stdio -append "$append" </dev/null || rc=$?
		echo "$rc" >"$out/qemu.rc"
	} | sed -u -e 's/\r$//' -e 's/^### case ok /[ok] /' -e 's/^### case fail /[FAILED] /'
	rc=$(cat "$out/qemu.rc")
	[ "$rc" -eq 3 ] && exit 0
	echo "vm: $mode failed (QEMU status $rc); guest kernel log:" >&2
	tail -n 100 "$console" >&2
	exit 1
fi

timeout --foreground "$vm_timeout" "${qemu[@]}" -display none -serial "file:$console" \
	-serial "file:$tap" -append "$append" </dev/null || rc=$?
secs=$(echo "$(date +%s.%N) - $start" | bc)

tr -d '\r' <"$tap" >"$tap.clean"
# Count cases. A program contributes its TAP results; a missing plan, fewer
# results than planned, a non-zero exit (other than kselftest's 4 = all
# skipped) with no failing case, or a bad kernel log adds a failure.
# Every program staged must run (a guest that died part way, or the
# timeout, leaves the rest unrun), and every file staged beside them is a
# program, but tap.sh, which the scripts source.
staged= not_programs=
for f in "$stage"/tests/*; do
	[ -e "$f" ] || continue
	if [ -x "$f" ]; then
		staged+=" ${f##*/}"
	elif [ "${f##*/}" != tap.sh ]; then
		not_programs+=" ${f##*/}"
	fi
done
# Kernel complaints on the console that no check in the guest saw (after
# its last look at the log, while it powered off): a failure too. (The
# same patterns as tools/vm/init's BAD_KLOG.)
console_bad=$(grep -cE 'BUG:|WARNING:|Oops|general protection|Call Trace:|kernel BUG|UBSAN|KFENCE|refcount_t:|list_(add|del) corruption' \
	"$console" 2>/dev/null || true)
read -r passed failed skipped < <(awk -v qemu_rc="$rc" -v staged="$staged" \
	-v not_programs="$not_programs" -v console_bad="${console_bad:-0}" '
function problem(msg) { failed++; print "not ok - " msg > "/dev/stderr" }
BEGIN {
	n_staged = split(staged, programs, " ")
	n_bad = split(not_programs, bad, " ")
	for (i = 1; i <= n_bad; i++) problem(bad[i] ": staged as a test but not executable")
}
/^### test / { name = $3; ran[name] = 1; plan = -1; n = 0; sfail = 0; open_sec = 1; next }
/^### exit / {
	open_sec = 0
	if (plan < 0) problem(name ": no TAP plan")
	else if (n < plan) problem(name ": " plan - n " of " plan " cases missing")
	else if (n > plan) problem(name ": " n " results for a plan of " plan)
	if ($4 != 0 && $4 != 4 && sfail == 0) problem(name ": exit status " $4)
	next
}
/^### case ok / { passed++; next }
/^### case fail / { problem(substr($0, 15)); next }
/^### kernel-log-bad / { klog_seen = 1; problem("kernel log after " $3 " shows BUG/WARNING/oops"); next }
/^### done/ { done = 1; next }
# A whole program skipped ("1..0 # SKIP why") is one skip, with its reason;
# a program with no cases and no reason is a problem.
open_sec && /^1\.\.0/ {
	plan = 0
	if ($0 ~ /# [Ss][Kk][Ii][Pp]/) {
		skipped++
		print "skip - " name ": " substr($0, index($0, "#") + 2) > "/dev/stderr"
	} else {
		problem(name ": no cases")
	}
	next
}
open_sec && /^1\.\.[0-9]+/ { plan = substr($1, 4) + 0; next }
open_sec && /^ok / { n++; if ($0 ~ /# [Ss][Kk][Ii][Pp]/) skipped++; else passed++; next }
open_sec && /^not ok / { n++; sfail++; failed++; next }
END {
	if (open_sec) problem(name ": did not finish")
	for (i = 1; i <= n_staged; i++)
		if (!(programs[i] in ran)) problem(programs[i] ": did not run")
	if (!done) problem("guest did not finish the run")
	if (console_bad + 0 > 0 && !klog_seen)
		problem("the guest kernel log (console.log) shows BUG/WARNING/oops that no check in the guest saw")
	if (qemu_rc != 3) problem("QEMU exit status " qemu_rc " (3 = guest reported success; 124 = timeout)")
	printf "%d %d %d\n", passed, failed, skipped
}' "$tap.clean")

cat "$tap.clean"
printf '%s %s %s\n' "$passed" "$failed" "$skipped" >"$out/counts"
printf 'vm: %d passed, %d failed, %d skipped in %.1f s (logs in %s)\n' \
	"$passed" "$failed" "$skipped" "$secs" "$out"
if [ "$failed" -ne 0 ]; then
	# (No complaint is no error: grep finds nothing, and pipefail.)
	first=$(grep -nE 'BUG:|WARNING:|Oops|Kernel panic|Call Trace:' "$console" |
		head -n1 | cut -d: -f1 || true)
	if [ -n "$first" ]; then
		echo "vm: guest kernel log from its first complaint (line $first of $console):"
		tail -n +"$((first > 5 ? first - 5 : 1))" "$console" | head -n 200 | tr -d '\r'
	else
		echo "vm: guest kernel log (last 150 lines of $console):"
		tail -n 150 "$console" | tr -d '\r'
	fi
	exit 1
fi
