// SPDX-License-Identifier: GPL-2.0-only
/*
 * error_init: misbehaves on purpose - its init reports llmos_policy_error(11)
 * and returns 0 anyway. The attach must fail, leaving the built-in policy
 * and the reason in the exit info.
 */
#include "../llmos.bpf.h"

char _license[] SEC("license") = "GPL";

#define Q 11

SEC("struct_ops/error_init_init")
s32 BPF_PROG(error_init_init)
{
	llmos_create_queue(Q);
	llmos_policy_error(11);
	return 0;
}

SEC("struct_ops/error_init_enqueue")
s32 BPF_PROG(error_init_enqueue, struct llmos_core_req *req, u64 enq_flags)
{
	return llmos_queue_insert_fifo(req, Q);
}

SEC("struct_ops/error_init_dispatch")
void BPF_PROG(error_init_dispatch, struct llmos_core_worker *w, u32 budget)
{
	llmos_queue_move_to_worker(Q, w, budget);
}

SEC(".struct_ops.link")
struct llmos_sched_ops error_init_ops = {
	.init		= (void *)error_init_init,
	.enqueue	= (void *)error_init_enqueue,
	.dispatch	= (void *)error_init_dispatch,
	.name		= "error_init",
};
