// SPDX-License-Identifier: GPL-2.0-only
/*
 * error_exit: misbehaves on purpose - queues its first requests, then
 * gives up with llmos_policy_error(42) on the fifth. The module must eject
 * it and serve every request with the built-in policy.
 */
#include "../llmos.bpf.h"

char _license[] SEC("license") = "GPL";

#define Q 7

static u64 seen;

SEC("struct_ops/error_exit_init")
s32 BPF_PROG(error_exit_init)
{
	return llmos_create_queue(Q);
}

SEC("struct_ops/error_exit_enqueue")
s32 BPF_PROG(error_exit_enqueue, struct llmos_core_req *req, u64 enq_flags)
{
	if (++seen == 5)
		llmos_policy_error(42);
	return llmos_queue_insert_fifo(req, Q);
}

SEC("struct_ops/error_exit_dispatch")
void BPF_PROG(error_exit_dispatch, struct llmos_core_worker *w, u32 budget)
{
	/* Never dispatches: the requests wait for the ejection. */
}

SEC(".struct_ops.link")
struct llmos_sched_ops error_exit_ops = {
	.init		= (void *)error_exit_init,
	.enqueue	= (void *)error_exit_enqueue,
	.dispatch	= (void *)error_exit_dispatch,
	.timeout_ms	= 60000,
	.name		= "error_exit",
};
