// SPDX-License-Identifier: GPL-2.0-only
/*
 * prio: strict priority across all tenants, FIFO within a priority.
 *
 * One queue keyed by 255 - priority: a higher priority always goes first,
 * and among equals the earlier submission. Starvation of low priorities
 * under sustained high-priority load is the price (the built-in policy and
 * wfq bound it with tenant shares).
 */
#include "llmos.bpf.h"

char _license[] SEC("license") = "GPL";

#define PRIO_QUEUE 1

SEC("struct_ops/prio_init")
s32 BPF_PROG(prio_init)
{
	return llmos_create_queue(PRIO_QUEUE);
}

SEC("struct_ops/prio_enqueue")
s32 BPF_PROG(prio_enqueue, struct llmos_core_req *req, u64 enq_flags)
{
	return llmos_queue_insert(req, PRIO_QUEUE, 255 - req->prio);
}

SEC("struct_ops/prio_dispatch")
void BPF_PROG(prio_dispatch, struct llmos_core_worker *w, u32 budget)
{
	llmos_queue_move_to_worker(PRIO_QUEUE, w, budget);
}

SEC(".struct_ops.link")
struct llmos_sched_ops prio_ops = {
	.init		= (void *)prio_init,
	.enqueue	= (void *)prio_enqueue,
	.dispatch	= (void *)prio_dispatch,
	.timeout_ms	= 30000,
	.name		= "prio",
};
