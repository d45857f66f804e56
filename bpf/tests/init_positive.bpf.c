// SPDX-License-Identifier: GPL-2.0-only
/*
 * init_positive: misbehaves on purpose - its init returns 1, neither 0 nor
 * an errno. The attach must fail with EINVAL (never hand the loader a
 * number it would take for a file descriptor: 1 is standard output),
 * with 1 in the exit info.
 */
#include "../llmos.bpf.h"

char _license[] SEC("license") = "GPL";

#define Q 12

SEC("struct_ops/init_positive_init")
s32 BPF_PROG(init_positive_init)
{
	llmos_create_queue(Q);
	return 1;
}

SEC("struct_ops/init_positive_enqueue")
s32 BPF_PROG(init_positive_enqueue, struct llmos_core_req *req, u64 enq_flags)
{
	return llmos_queue_insert_fifo(req, Q);
}

SEC("struct_ops/init_positive_dispatch")
void BPF_PROG(init_positive_dispatch, struct llmos_core_worker *w, u32 budget)
{
	llmos_queue_move_to_worker(Q, w, budget);
}

SEC(".struct_ops.link")
struct llmos_sched_ops init_positive_ops = {
	.init		= (void *)init_positive_init,
	.enqueue	= (void *)init_positive_enqueue,
	.dispatch	= (void *)init_positive_dispatch,
	.name		= "init_positive",
};
