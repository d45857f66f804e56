// SPDX-License-Identifier: GPL-2.0-only
/*
 * fifo: first come, first served, across all tenants.
 *
 * The simplest llmos policy, and the one to start from. init creates one
 * queue; enqueue appends every request to it; dispatch hands its heads to
 * the worker that has room. Priorities, tenants, weights, costs and
 * deadlines are ignored: a long request from one tenant delays everyone
 * behind it (see sjf, prio, edf and wfq for policies that care).
 *
 * Load: llmosctl sched attach fifo.bpf.o; llmosctl sched status shows it.
 */
#include "llmos.bpf.h"

char _license[] SEC("license") = "GPL";

#define FIFO_QUEUE 1

SEC("struct_ops/fifo_init")
s32 BPF_PROG(fifo_init)
{
	return llmos_create_queue(FIFO_QUEUE);
}

SEC("struct_ops/fifo_enqueue")
s32 BPF_PROG(fifo_enqueue, struct llmos_core_req *req, u64 enq_flags)
{
	return llmos_queue_insert_fifo(req, FIFO_QUEUE);
}

SEC("struct_ops/fifo_dispatch")
void BPF_PROG(fifo_dispatch, struct llmos_core_worker *w, u32 budget)
{
	llmos_queue_move_to_worker(FIFO_QUEUE, w, budget);
}

SEC(".struct_ops.link")
struct llmos_sched_ops fifo_ops = {
	.init		= (void *)fifo_init,
	.enqueue	= (void *)fifo_enqueue,
	.dispatch	= (void *)fifo_dispatch,
	.timeout_ms	= 5000,
	.name		= "fifo",
};
