#!/bin/sh
# SPDX-License-Identifier: MIT
# What `make demo` shows inside the VM, once the module is loaded.
set -e
run() {
	echo "\$ $*"
	"$@"
	echo
}

echo
run ls -l /dev/llmos
run llmosctl status
echo "# A persistent mindspace holds an agent's context; it outlives every process."
run llmosctl ms create agent-ctx --size 1G --mode 0640
run llmosctl ms write agent-ctx "system: you are a helpful assistant."
run llmosctl ms write agent-ctx --offset 4096 "user: what is a mindspace?"
run llmosctl ms info agent-ctx
echo "# Pages are allocated on first touch: 1G of address space, 8K resident."
run llmosctl ms list
echo "# Save it (sparse file), remove it, load it back: same bytes."
run llmosctl ms save agent-ctx /tmp/agent-ctx.llmosms
run ls -ls /tmp/agent-ctx.llmosms
run llmosctl ms rm agent-ctx
run llmosctl ms load /tmp/agent-ctx.llmosms
run llmosctl ms read agent-ctx --length 36
echo
run llmosctl --json ms quota
run cat /sys/kernel/debug/llmos/mindspaces
run llmosctl ms rm agent-ctx

echo "# The request scheduler: a weighted-fair policy in BPF, attached at run time."
run llmosctl sched attach /bpf/wfq.bpf.o
run llmosctl sched weight 0 300
run llmosctl sched weight 1 100
echo "# Synthetic workers and clients through it: two tenants, 1200 requests/s"
echo "# (Poisson) for 1000/s of service. Tenant 0's weight gives it 750/s, more"
echo "# than its 600/s: it barely waits; tenant 1 queues."
run llmosctl bench --workers 2 --tenants 2 --service exp:2 --arrival poisson:1200 --requests 600
echo "# What the scheduler saw (a llmosctl top snapshot):"
run llmosctl top --iterations 1
run llmosctl sched status
run llmosctl sched detach
