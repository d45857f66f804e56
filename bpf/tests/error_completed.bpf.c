// SPDX-License-Identifier: GPL-2.0-only
/*
 * error_completed: misbehaves on purpose - FIFO, but gives up with
 * llmos_policy_error(7) when the first request completes. The module must
 * eject it at that COMPLETE, not at some later command.
 */
#include "../llmos.bpf.h"

char _license[] SEC("license") = "GPL";

#define Q 9

SEC("struct_ops/error_completed_init")
s32 BPF_PROG(error_completed_init)
{
	return llmos_create_queue(Q);
}

SEC("struct_ops/error_completed_enqueue")
s32 BPF_PROG(error_completed_enqueue, struct llmos_core_req *req, u64 enq_flags)
{
	return llmos_queue_insert_fifo(req, Q);
}

SEC("struct_ops/error_completed_dispatch")
void BPF_PROG(error_completed_dispatch, struct llmos_core_worker *w, u32 budget)
{
	llmos_queue_move_to_worker(Q, w, budget);
}

SEC("struct_ops/error_completed_completed")
void BPF_PROG(error_completed_completed, struct llmos_core_req *req, s32 status,
	      u64 runtime_ns, u32 tokens)
{
	llmos_policy_error(7);
}

SEC(".struct_ops.link")
struct llmos_sched_ops error_completed_ops = {
	.init		= (void *)error_completed_init,
	.enqueue	= (void *)error_completed_enqueue,
	.dispatch	= (void *)error_completed_dispatch,
	.completed	= (void *)error_completed_completed,
	.timeout_ms	= 60000,
	.name		= "error_completed",
};
