// SPDX-License-Identifier: GPL-2.0-only
/*
 * bad_worker: misbehaves on purpose - when a worker comes online it tries
 * to hand it requests outside of dispatch, which is a kfunc misuse. The
 * module must eject it and serve every request with the built-in policy.
 */
#include "../llmos.bpf.h"

char _license[] SEC("license") = "GPL";

#define Q 5

SEC("struct_ops/bad_worker_init")
s32 BPF_PROG(bad_worker_init)
{
	return llmos_create_queue(Q);
}

SEC("struct_ops/bad_worker_enqueue")
s32 BPF_PROG(bad_worker_enqueue, struct llmos_core_req *req, u64 enq_flags)
{
	return llmos_queue_insert_fifo(req, Q);
}

SEC("struct_ops/bad_worker_dispatch")
void BPF_PROG(bad_worker_dispatch, struct llmos_core_worker *w, u32 budget)
{
}

SEC("struct_ops/bad_worker_online")
void BPF_PROG(bad_worker_online, struct llmos_core_worker *w)
{
	llmos_queue_move_to_worker(Q, w, 1);
}

SEC(".struct_ops.link")
struct llmos_sched_ops bad_worker_ops = {
	.init		= (void *)bad_worker_init,
	.enqueue	= (void *)bad_worker_enqueue,
	.dispatch	= (void *)bad_worker_dispatch,
	.worker_online	= (void *)bad_worker_online,
	.timeout_ms	= 60000,
	.name		= "bad_worker",
};
