// SPDX-License-Identifier: GPL-2.0-only
/*
 * strand_tenant: misbehaves on purpose - tenant 7's requests go to a queue
 * that no dispatch serves, everyone else's are served in order. While the
 * others flow, a worker is short only between them, never for timeout_ms
 * at once: the watchdog must still eject it.
 */
#include "../llmos.bpf.h"

char _license[] SEC("license") = "GPL";

#define SERVED 1
#define STRANDED 2
#define STRANDED_TENANT 7

SEC("struct_ops/strand_init")
s32 BPF_PROG(strand_init)
{
	return llmos_create_queue(SERVED) ?: llmos_create_queue(STRANDED);
}

SEC("struct_ops/strand_enqueue")
s32 BPF_PROG(strand_enqueue, struct llmos_core_req *req, u64 enq_flags)
{
	return llmos_queue_insert_fifo(req, req->tenant == STRANDED_TENANT ?
					    STRANDED : SERVED);
}

SEC("struct_ops/strand_dispatch")
void BPF_PROG(strand_dispatch, struct llmos_core_worker *w, u32 budget)
{
	llmos_queue_move_to_worker(SERVED, w, budget);
}

SEC(".struct_ops.link")
struct llmos_sched_ops strand_tenant_ops = {
	.init		= (void *)strand_init,
	.enqueue	= (void *)strand_enqueue,
	.dispatch	= (void *)strand_dispatch,
	.timeout_ms	= 500,
	.name		= "strand_tenant",
};
