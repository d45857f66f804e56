// SPDX-License-Identifier: GPL-2.0-only
/*
 * wfq: weighted fair queuing across tenants, weights in a map.
 *
 * Start-time fair queuing with tags computed at enqueue: a request's start
 * tag is max(the virtual clock, its tenant's last finish tag), its finish
 * tag start + cost * 2^20 / weight (the built-in policy's scale: with
 * weights up to 10000 and costs from 1, every step is at least 104, so
 * shares follow weights closely); the single queue is ordered by start
 * tag. The virtual clock follows the start tag of the request dispatched
 * last: dispatch moves one request at a time, taking each one's key. A
 * tenant's weight is the one in the "weights" array (index: tenant,
 * value: weight, taken as 10000 above that), which the user may update
 * while the policy runs (bpftool map update, or a loader of its own);
 * where that says 0 (the default), the module's weight of the tenant
 * (llmosctl sched weight, default 100). Arrays, not hash maps, keep
 * enqueue cheap: tenants are told apart modulo MAX_TENANTS.
 *
 * A cost counts up to 2^20 (a whole context's tokens). A cancelled
 * request's cost is not given back, but a tenant's tag stays within 2^50
 * of the clock, and a dispatch moves the clock by one largest step (2^40)
 * at most, so cancelled requests never carry the clock along. Tags only
 * grow: before they could wrap (2^62: some 2^22 requests served, each of
 * the largest step), the policy stops with llmos_policy_error(-EOVERFLOW),
 * and the built-in policy (which rebases its clock) serves everything;
 * attach it again to start from 0.
 */
#include "llmos.bpf.h"

char _license[] SEC("license") = "GPL";

#define WFQ_QUEUE 1
#define DEFAULT_WEIGHT 100
#define MAX_WEIGHT 10000 /* LLMOS_MAX_WEIGHT */
#define MAX_TENANTS 4096
#define WFQ_SCALE 1048576ULL /* 2^20, LLMOS_CORE_WFQ_SCALE */
#define WFQ_MAX_COST 1048576ULL /* 2^20 tokens, the most a context holds */
#define WFQ_MAX_STEP (WFQ_MAX_COST * WFQ_SCALE) /* 2^40, at weight 1 */
/* 2^50: 2^10 requests of the largest cost ahead at weight 1 */
#define WFQ_MAX_LEAD 0x4000000000000ULL
/* 2^62; a step adds 2^40 at most (the largest cost times 2^20 at weight 1) */
#define WFQ_TAG_LIMIT 0x4000000000000000ULL
#define WFQ_EOVERFLOW 75 /* EOVERFLOW: vmlinux.h has no errno macros */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_TENANTS);
	__type(key, u32);
	__type(value, u32);
} weights SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_TENANTS);
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
	u32 tenant = req->tenant % MAX_TENANTS, weight = DEFAULT_WEIGHT, *w;
	u64 start = vclock, cost = req->cost ? req->cost : 1, *f;

	/* No request costs more than a whole context's tokens. */
	if (cost > WFQ_MAX_COST)
		cost = WFQ_MAX_COST;

	w = bpf_map_lookup_elem(&weights, &tenant);
	if (w && *w)
		weight = *w < MAX_WEIGHT ? *w : MAX_WEIGHT;
	else if (req->ten && req->ten->weight)
		weight = req->ten->weight;
	f = bpf_map_lookup_elem(&finish, &tenant);
	if (!f)
		return -1;
	if (*f > start)
		start = *f;
	/*
	 * A tenant's tag stays within WFQ_MAX_LEAD of the clock: costs of
	 * requests cancelled before they ran are never given back, and
	 * would otherwise carry its tag (and, once served, the clock) to
	 * the limit below.
	 */
	if (start - vclock > WFQ_MAX_LEAD)
		start = vclock + WFQ_MAX_LEAD;
	if (start >= WFQ_TAG_LIMIT) {
		llmos_policy_error(-WFQ_EOVERFLOW);
		return -1;
	}
	*f = start + cost * WFQ_SCALE / weight;
	return llmos_queue_insert(req, WFQ_QUEUE, start);
}

/* The most requests one dispatch moves (LLMOS_MAX_DISPATCH). */
#define MAX_BUDGET 256

SEC("struct_ops/wfq_dispatch")
void BPF_PROG(wfq_dispatch, struct llmos_core_worker *w, u32 budget)
{
	/* One at a time: the clock takes the key of the last one moved. */
	for (u32 i = 0; i < budget && i < MAX_BUDGET; i++) {
		u64 head = llmos_queue_peek_key(WFQ_QUEUE);

		if (!llmos_queue_move_to_worker(WFQ_QUEUE, w, 1))
			break;
		/*
		 * At most one largest step at a time: a head far ahead (a
		 * tenant whose cancelled requests' costs carried its tag)
		 * does not carry the clock along.
		 */
		if (head > vclock)
			vclock = head - vclock > WFQ_MAX_STEP ?
				 vclock + WFQ_MAX_STEP : head;
	}
}

SEC(".struct_ops.link")
struct llmos_sched_ops wfq_ops = {
	.init		= (void *)wfq_init,
	.enqueue	= (void *)wfq_enqueue,
	.dispatch	= (void *)wfq_dispatch,
	.timeout_ms	= 30000,
	.name		= "wfq",
};
