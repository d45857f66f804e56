#!/bin/sh
# SPDX-License-Identifier: MIT
#
# BPF scheduling policies in the VM: attach, serve, detach; policies that
# misbehave on purpose are ejected and every request still completes; one
# policy at a time; the module stays loaded while one is attached. TAP.
set -u
out=/tmp/llmosctl_policy.out
. "$(dirname "$0")/tap.sh"
# check DESCRIPTION 'SHELL CODE': run in this shell (it sees the functions)
check() { d=$1; if eval "$2" >"$out" 2>&1; then ok "$d"; else not_ok "$d"; fi; }
status() { llmosctl --json sched status | tr -d ' \n'; }
bench() { llmosctl --json bench --workers 2 --service exp:1 --arrival poisson:400 --requests "$1"; }

echo "TAP version 13"
if [ ! -f /bpf/fifo.bpf.o ]; then
	echo "1..0 # SKIP no BPF policies in this VM image"
	exit 0
fi

expect "attach fifo" llmosctl sched attach /bpf/fifo.bpf.o
check "status shows it" 'llmosctl sched status | grep -q "policy:    bpf:fifo"'
check "a second policy is refused" \
	'llmosctl sched attach /bpf/fifo.bpf.o 2>&1 | grep -q "attached already"'
check "the module cannot go while it is attached" '! rmmod llmos 2>/dev/null'
check "fifo serves every request" 'bench 200 | grep -q "\"requests\": 200"'
check "still attached after the run" 'status | grep -q "\"policy_state\":\"bpf\""'
expect "detach" llmosctl sched detach
check "the built-in policy is back, exit kind detach" 'status | grep -q "\"policy_state\":\"built-in\"" && status | grep -q "\"kind\":1"'
check "detach twice is an error" 'llmosctl sched detach 2>/dev/null; [ $? -eq 1 ]'

expect "attach error_exit" llmosctl sched attach /bpf/error_exit.bpf.o
check "every request completes although it gives up" 'bench 50 | grep -q "\"requests\": 50"'
check "it was ejected with its code" 'status | grep -q "\"policy_state\":\"ejected\"" && status | grep -q "\"code\":42" &&
	 status | grep -q "\"kind\":2"'
expect "detach it" llmosctl sched detach

expect "attach never_dispatch" llmosctl sched attach /bpf/never_dispatch.bpf.o
check "every request completes after the watchdog" 'bench 30 | grep -q "\"requests\": 30"'
check "the watchdog ejected it" 'status | grep -q "\"policy_state\":\"ejected\"" && status | grep -q "\"kind\":3"'
expect "detach it" llmosctl sched detach
for p in prio sjf edf wfq locality; do
	expect "attach $p" llmosctl sched attach /bpf/$p.bpf.o
	check "$p serves every request" 'bench 100 | grep -q "\"requests\": 100"'
	check "$p was never ejected" 'status | grep -q "\"policy_state\":\"bpf\""'
	expect "detach $p" llmosctl sched detach
done

# Attach and detach while requests flow: nothing is lost.
cycles=$(awk "BEGIN { n = int(20 * ${LLMOS_TEST_SCALE:-1}); print n < 4 ? 4 : n }")
llmosctl --json bench --workers 2 --service exp:2 --arrival poisson:300 --requests 600 \
	>/tmp/flow.json 2>&1 &
flow=$!
i=0
fails=0
while [ $i -lt "$cycles" ]; do
	llmosctl sched attach /bpf/fifo.bpf.o >/dev/null 2>&1 || fails=$((fails + 1))
	sleep 0.05
	llmosctl sched detach >/dev/null 2>&1 || fails=$((fails + 1))
	i=$((i + 1))
done
check "$cycles attach/detach cycles under load" '[ $fails -eq 0 ]'
check "every request of the flow completed" 'wait $flow && grep -q "\"requests\": 600" /tmp/flow.json'
# Weights through llmosctl, seen in bench's per-tenant rows: 1200
# requests/s, half each tenant's, at 1000/s of service. Under wfq, tenant
# 0 (weight 300) has 750/s and no backlog, tenant 1 the rest, and a queue
# (without the weights, the two wait about as long).
expect "attach wfq" llmosctl sched attach /bpf/wfq.bpf.o
expect "weights 300 and 100" sh -c 'llmosctl sched weight 0 300 && llmosctl sched weight 1 100'
llmosctl bench --workers 2 --tenants 2 --service exp:2 --arrival poisson:1200 --requests 600 \
	>/tmp/wfq.txt 2>&1
# The rows: TENANT WEIGHT REQUESTS mean p50 p99.
less=$(awk 'p && NF == 6 { w[$1] = $4 } /^TENANT/ { p = 1 }
	END { printf "%s", (0 in w && 1 in w && 3 * w[0] < w[1]) ? "yes" : "no" }' /tmp/wfq.txt)
echo "# mean wait (ms) by tenant, weights 300 and 100:" $(awk 'p && NF == 6 { print $1 ":", $4 } /^TENANT/ { p = 1 }' /tmp/wfq.txt)
check "the heavier tenant waits less than a third as long" 'cat /tmp/wfq.txt; [ "$less" = yes ]'
expect "weights back to 100, detach" sh -c \
	'llmosctl sched weight 0 100 && llmosctl sched weight 1 100 && llmosctl sched detach'
check "a tunable is set with --opt" \
	'llmosctl sched attach /bpf/locality.bpf.o --opt steal_after_ns=1000 && llmosctl sched detach'
check "a policy the verifier refuses: its log whole, then one line of ours" \
	'llmosctl sched attach /bpf/write_field.bpf.o >/tmp/wf.out 2>&1; [ $? -eq 1 ] &&
	 grep -q "END PROG LOAD LOG" /tmp/wf.out &&
	 tail -n 1 /tmp/wf.out | grep -q "^llmosctl: cannot load .*(the verifier says why above)"'
check "a negative value for an unsigned tunable is refused, a usage error" \
	'llmosctl sched attach /bpf/locality.bpf.o --opt steal_after_ns=-1 >/tmp/neg.out 2>&1
	 [ $? -eq 2 ] && grep -q "out of its range (0 to 2^64-1)" /tmp/neg.out &&
	 status | grep -q "\"policy_state\":\"built-in\""'
check "an unknown tunable is refused" \
	'llmosctl sched attach /bpf/locality.bpf.o --opt nosuch=1 2>&1 | grep -q "no tunable"'
check "a policy without tunables says so" \
	'llmosctl sched attach /bpf/fifo.bpf.o --opt x=1 2>&1 | grep -q "no tunables"'
check "a file that is no policy is refused, in one line" \
	'llmosctl sched attach /bin/busybox >/tmp/bb.out 2>&1; [ $? -eq 1 ] &&
	 [ "$(wc -l </tmp/bb.out)" -eq 1 ] && grep -q "not a BPF object file" /tmp/bb.out'
check "a struct_ops of another kind is refused, not loaded" \
	'llmosctl sched attach /bpf/not_a_policy.bpf.o >/tmp/nap.out 2>&1; [ $? -eq 2 ] &&
	 grep -q "holds no struct llmos_sched_ops" /tmp/nap.out &&
	 status | grep -q "\"policy_state\":\"built-in\""'
check "a policy outside .struct_ops.link is refused" \
	'llmosctl sched attach /bpf/unlinked.bpf.o >/tmp/unl.out 2>&1; [ $? -eq 2 ] &&
	 grep -q "struct_ops.link" /tmp/unl.out &&
	 status | grep -q "\"policy_state\":\"built-in\""'
echo "1..$n"
