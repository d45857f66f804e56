// SPDX-License-Identifier: GPL-2.0-only
/*
 * write_field: must not load - it writes a request field other than
 * policy_data (the verifier refuses it).
 */
#include "../llmos.bpf.h"

char _license[] SEC("license") = "GPL";

SEC("struct_ops/write_field_enqueue")
s32 BPF_PROG(write_field_enqueue, struct llmos_core_req *req, u64 enq_flags)
{
	req->cost = 1;
	return 0;
}

SEC("struct_ops/write_field_dispatch")
void BPF_PROG(write_field_dispatch, struct llmos_core_worker *w, u32 budget)
{
}

SEC(".struct_ops.link")
struct llmos_sched_ops write_field_ops = {
	.enqueue	= (void *)write_field_enqueue,
	.dispatch	= (void *)write_field_dispatch,
	.name		= "write_field",
};
