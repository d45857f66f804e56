// SPDX-License-Identifier: GPL-2.0-only
/*
 * sjf: shortest (expected) job first.
 *
 * One queue keyed by the request's expected cost in tokens: short requests
 * overtake long ones, which cuts the mean and tail wait of short requests
 * under a mixed load. Long requests can starve while short ones keep
 * coming; the watchdog's timeout_ms bounds how long before the policy is
 * ejected for it, so keep it generous.
 */
#include "llmos.bpf.h"

char _license[] SEC("license") = "GPL";

#define SJF_QUEUE 1

SEC("struct_ops/sjf_init")
s32 BPF_PROG(sjf_init)
{
	return llmos_create_queue(SJF_QUEUE);
}

SEC("struct_ops/sjf_enqueue")
s32 BPF_PROG(sjf_enqueue, struct llmos_core_req *req, u64 enq_flags)
{
	return llmos_queue_insert(req, SJF_QUEUE, req->cost);
}

SEC("struct_ops/sjf_dispatch")
void BPF_PROG(sjf_dispatch, struct llmos_core_worker *w, u32 budget)
{
	llmos_queue_move_to_worker(SJF_QUEUE, w, budget);
}

SEC(".struct_ops.link")
struct llmos_sched_ops sjf_ops = {
	.init		= (void *)sjf_init,
	.enqueue	= (void *)sjf_enqueue,
	.dispatch	= (void *)sjf_dispatch,
	.timeout_ms	= 60000,
	.name		= "sjf",
};
