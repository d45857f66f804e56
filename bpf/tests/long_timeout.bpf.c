// SPDX-License-Identifier: GPL-2.0-only
/*
 * long_timeout: asks for a watchdog limit past the most allowed (600000
 * ms), which would switch the watchdog off in all but name. Refused.
 */
#include "../llmos.bpf.h"

char _license[] SEC("license") = "GPL";

#define Q 13

SEC("struct_ops/long_timeout_init")
s32 BPF_PROG(long_timeout_init)
{
	return llmos_create_queue(Q);
}

SEC("struct_ops/long_timeout_enqueue")
s32 BPF_PROG(long_timeout_enqueue, struct llmos_core_req *req, u64 enq_flags)
{
	return llmos_queue_insert_fifo(req, Q);
}

SEC("struct_ops/long_timeout_dispatch")
void BPF_PROG(long_timeout_dispatch, struct llmos_core_worker *w, u32 budget)
{
	llmos_queue_move_to_worker(Q, w, budget);
}

SEC(".struct_ops.link")
struct llmos_sched_ops long_timeout_ops = {
	.init		= (void *)long_timeout_init,
	.enqueue	= (void *)long_timeout_enqueue,
	.dispatch	= (void *)long_timeout_dispatch,
	.timeout_ms	= 600001,
	.name		= "long_timeout",
};
