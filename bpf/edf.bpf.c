// SPDX-License-Identifier: GPL-2.0-only
/*
 * edf: earliest deadline first.
 *
 * One queue keyed by the request's absolute deadline (CLOCK_MONOTONIC ns);
 * requests without one (deadline 0) go after every request that has one,
 * in submission order. On a single worker EDF meets every deadline that
 * any order could meet; it does not drop requests that are already late.
 */
#include "llmos.bpf.h"

char _license[] SEC("license") = "GPL";

#define EDF_QUEUE 1

SEC("struct_ops/edf_init")
s32 BPF_PROG(edf_init)
{
	return llmos_create_queue(EDF_QUEUE);
}

SEC("struct_ops/edf_enqueue")
s32 BPF_PROG(edf_enqueue, struct llmos_core_req *req, u64 enq_flags)
{
	u64 key = req->deadline_ns ? req->deadline_ns : ~0ULL;

	return llmos_queue_insert(req, EDF_QUEUE, key);
}

SEC("struct_ops/edf_dispatch")
void BPF_PROG(edf_dispatch, struct llmos_core_worker *w, u32 budget)
{
	llmos_queue_move_to_worker(EDF_QUEUE, w, budget);
}

SEC(".struct_ops.link")
struct llmos_sched_ops edf_ops = {
	.init		= (void *)edf_init,
	.enqueue	= (void *)edf_enqueue,
	.dispatch	= (void *)edf_dispatch,
	.timeout_ms	= 30000,
	.name		= "edf",
};
