// SPDX-License-Identifier: GPL-2.0-only
/*
 * wfq: weighted fair queuing across tenants, weights in a map.
 *
 * Start-time fair queuing with tags computed at enqueue: a request's start
 * tag is max(the virtual clock, its tenant's last finish tag), its finish
 * tag start + cost * 1024 / weight; the single queue is ordered by start
 * tag. The virtual clock follows the start tag of the request that last
 * started or finished (kept in its policy_data). Weights come from the
 * "weights" map (tenant -> weight, default 100), which the user may update
 * while the policy runs (bpftool map update, or a loader of its own).
 */
#include "llmos.bpf.h"

char _license[] SEC("license") = "GPL";

#define WFQ_QUEUE 1
#define DEFAULT_WEIGHT 100

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, u32);
	__type(value, u32);
} weights SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, u32);
	__type(value, u64);
} finish SEC(".maps");

static u64 vclock;

SEC("struct_ops/wfq_init")
s32 BPF_PROG(wfq_init)
{
	return llmos_create_queue(WFQ_QUEUE);
}

SEC("struct_ops/wfq_enqueue")
s32 BPF_PROG(wfq_enqueue, struct llmos_core_req *req, u64 enq_flags)
{
	u32 tenant = req->tenant, weight = DEFAULT_WEIGHT, *w;
	u64 start = vclock, cost = req->cost ? req->cost : 1, *f, fin;

	w = bpf_map_lookup_elem(&weights, &tenant);
	if (w && *w)
		weight = *w;
	f = bpf_map_lookup_elem(&finish, &tenant);
	if (f && *f > start)
		start = *f;
	fin = start + cost * 1024 / weight;
	bpf_map_update_elem(&finish, &tenant, &fin, BPF_ANY);
	req->policy_data = start;
	return llmos_queue_insert(req, WFQ_QUEUE, start);
}

SEC("struct_ops/wfq_dispatch")
void BPF_PROG(wfq_dispatch, struct llmos_core_worker *w, u32 budget)
{
	llmos_queue_move_to_worker(WFQ_QUEUE, w, budget);
}

SEC("struct_ops/wfq_running")
void BPF_PROG(wfq_running, struct llmos_core_req *req, struct llmos_core_worker *w)
{
	if (req->policy_data > vclock)
		vclock = req->policy_data;
}

SEC("struct_ops/wfq_completed")
void BPF_PROG(wfq_completed, struct llmos_core_req *req, s32 status, u64 runtime_ns,
	      u32 tokens)
{
	if (req->policy_data > vclock)
		vclock = req->policy_data;
}

SEC(".struct_ops.link")
struct llmos_sched_ops wfq_ops = {
	.init		= (void *)wfq_init,
	.enqueue	= (void *)wfq_enqueue,
	.dispatch	= (void *)wfq_dispatch,
	.running	= (void *)wfq_running,
	.completed	= (void *)wfq_completed,
	.timeout_ms	= 30000,
	.name		= "wfq",
};
