// SPDX-License-Identifier: GPL-2.0-only
/*
 * unlinked: a policy in a plain ".struct_ops" section. libbpf attaches
 * such a map without a link, which llmosctl could not pin (nor detach
 * later): llmosctl sched attach must refuse it, saying where it belongs.
 */
#include "../llmos.bpf.h"

char _license[] SEC("license") = "GPL";

#define Q 5

SEC("struct_ops/unlinked_init")
s32 BPF_PROG(unlinked_init)
{
	return llmos_create_queue(Q);
}

SEC("struct_ops/unlinked_enqueue")
s32 BPF_PROG(unlinked_enqueue, struct llmos_core_req *req, u64 enq_flags)
{
	return llmos_queue_insert_fifo(req, Q);
}

SEC("struct_ops/unlinked_dispatch")
void BPF_PROG(unlinked_dispatch, struct llmos_core_worker *w, u32 budget)
{
	llmos_queue_move_to_worker(Q, w, budget);
}

SEC(".struct_ops")
struct llmos_sched_ops unlinked_ops = {
	.init		= (void *)unlinked_init,
	.enqueue	= (void *)unlinked_enqueue,
	.dispatch	= (void *)unlinked_dispatch,
	.name		= "unlinked",
};
