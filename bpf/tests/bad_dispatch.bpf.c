// SPDX-License-Identifier: GPL-2.0-only
/*
 * bad_dispatch: misbehaves on purpose - queues requests, then dispatches
 * from a queue it never made. It is ejected inside that DISPATCH, and the
 * worker waiting there must get the requests it gave back.
 */
#include "../llmos.bpf.h"

char _license[] SEC("license") = "GPL";

#define Q 3

SEC("struct_ops/bad_dispatch_init")
s32 BPF_PROG(bad_dispatch_init)
{
	return llmos_create_queue(Q);
}

SEC("struct_ops/bad_dispatch_enqueue")
s32 BPF_PROG(bad_dispatch_enqueue, struct llmos_core_req *req, u64 enq_flags)
{
	return llmos_queue_insert_fifo(req, Q);
}

SEC("struct_ops/bad_dispatch_dispatch")
void BPF_PROG(bad_dispatch_dispatch, struct llmos_core_worker *w, u32 budget)
{
	llmos_queue_move_to_worker(Q + 1, w, budget);
}

SEC(".struct_ops.link")
struct llmos_sched_ops bad_dispatch_ops = {
	.init		= (void *)bad_dispatch_init,
	.enqueue	= (void *)bad_dispatch_enqueue,
	.dispatch	= (void *)bad_dispatch_dispatch,
	.timeout_ms	= 60000,
	.name		= "bad_dispatch",
};
