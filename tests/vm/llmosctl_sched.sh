#!/bin/sh
# SPDX-License-Identifier: MIT
#
# llmosctl sched, top and bench against the module, in the VM. Prints TAP.
set -u
out=/tmp/llmosctl_sched.out
. "$(dirname "$0")/tap.sh"

echo "TAP version 13"
expect "sched status answers" sh -c 'llmosctl sched status | grep -q "policy:    built-in"'
expect "a tenant weight is set" llmosctl sched weight 12 300
expect "and shows in the status" sh -c \
	'llmosctl --json sched status | tr -d " \n" | grep -q "\"tenant\":12,\"weight\":300"'
expect "a bad weight is refused" sh -c '! llmosctl sched weight 12 0 2>/dev/null'
expect "bench with synthetic workers completes every request" sh -c \
	'llmosctl --json bench --workers 2 --service exp:1 --arrival poisson:300 --requests 100 |
	 grep -q "\"requests\": 100"'
expect "the scheduler is idle afterwards" sh -c \
	'llmosctl --json sched status | tr -d " \n" | grep -q "\"workers\":0"'
expect "top prints rates" sh -c \
	'llmosctl --json top --interval 0.2 --iterations 1 | grep -q "completed_per_s"'
echo "1..$n"
