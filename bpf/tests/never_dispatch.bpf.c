// SPDX-License-Identifier: GPL-2.0-only
/*
 * never_dispatch: misbehaves on purpose - queues every request and never
 * hands one out. The watchdog must eject it once a request waits past
 * timeout_ms while a worker asks for work.
 */
#include "../llmos.bpf.h"

char _license[] SEC("license") = "GPL";

#define Q 3

SEC("struct_ops/never_dispatch_init")
s32 BPF_PROG(never_dispatch_init)
{
	return llmos_create_queue(Q);
}

SEC("struct_ops/never_dispatch_enqueue")
s32 BPF_PROG(never_dispatch_enqueue, struct llmos_core_req *req, u64 enq_flags)
{
	return llmos_queue_insert_fifo(req, Q);
}

SEC("struct_ops/never_dispatch_dispatch")
void BPF_PROG(never_dispatch_dispatch, struct llmos_core_worker *w, u32 budget)
{
}

SEC(".struct_ops.link")
struct llmos_sched_ops never_dispatch_ops = {
	.init		= (void *)never_dispatch_init,
	.enqueue	= (void *)never_dispatch_enqueue,
	.dispatch	= (void *)never_dispatch_dispatch,
	.timeout_ms	= 500,
	.name		= "never_dispatch",
};
