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
 * tenant's weight is the one in the "weights" hash map (key: tenant,
 * value: weight, taken as 10000 above that), which the user may update
 * while the policy runs (bpftool map update, or a loader of its own);
 * where that has none, or 0, the module's weight of the tenant (llmosctl
 * sched weight, default 100). Tags are kept by whole tenant id (tenants
 * are users' ids, so no two may share one), in an LRU map of about
 * MAX_TENANTS, the module's default max_tenants (an LRU map may evict a
 * little before it is full): past that, the tenant that enqueued least
 * recently loses its tag, and starts at the clock when it comes back, as
 * an idle one does.
 *
 * A cost counts up to 2^20 (a whole context's tokens). A request
 * cancelled while queued (dequeue; not one a worker took, which moved the
 * clock) gives back the step it added to its tenant's tag, kept in its
 * policy_data: the tag goes down by it, not below the clock (where an
 * idle tenant starts anyway). If it was not the tenant's last request
 * queued, the later ones keep the tags they got (each counted the
 * cancelled step: none is served earlier than had it never been
 * submitted), and the tenant's next new request starts where it would
 * have without it: a tenant never gets more than its share, but within a
 * tenant order is by tag, and a new request may pass an older one.
 * (Re-tagging the later ones would need a way to move a queued request;
 * refunding only the last one queued would keep what cancels in
 * submission order cost.) Only a step still in the tag comes back: the
 * tenant's "since" (a req->seq) is its first request whose step is,
 * moved on when the clock left its tag behind (it starts afresh at the
 * clock, what it paid spent) or when its tag was held near the clock
 * (below); so no refund is more than what the request paid, nor comes
 * once the clock passed what it paid for.
 *
 * A tenant's tag stays within 2^50 of the clock (what that forgives is not
 * given back: the steps of its requests queued so far, and of the one
 * held there), and a dispatch moves the clock by one largest step (2^40)
 * at most, so a tenant far ahead never carries the clock along. The clock
 * only grows: before it or a tag could wrap (2^62: some 2^22 requests
 * served, each of the largest step), the policy stops with
 * llmos_policy_error(-EOVERFLOW), and the built-in policy (which rebases
 * its clock) serves everything; attach it again to start from 0.
 */
#include "llmos.bpf.h"

char _license[] SEC("license") = "GPL";

#define WFQ_QUEUE 1
#define DEFAULT_WEIGHT 100
#define MAX_WEIGHT 10000 /* LLMOS_MAX_WEIGHT */
#define MAX_TENANTS 65536 /* the module's max_tenants by default */
#define WFQ_SCALE 1048576ULL /* 2^20, LLMOS_CORE_WFQ_SCALE */
#define WFQ_MAX_COST 1048576ULL /* 2^20 tokens, the most a context holds */
#define WFQ_MAX_STEP (WFQ_MAX_COST * WFQ_SCALE) /* 2^40, at weight 1 */
/* 2^50: 2^10 requests of the largest cost ahead at weight 1 */
#define WFQ_MAX_LEAD 0x4000000000000ULL
/* 2^62; a step adds 2^40 at most (the largest cost times 2^20 at weight 1) */
#define WFQ_TAG_LIMIT 0x4000000000000000ULL
#define WFQ_EOVERFLOW 75 /* EOVERFLOW: vmlinux.h has no errno macros */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TENANTS);
	__type(key, u32);
	__type(value, u32);
} weights SEC(".maps");

/* A tenant's tag, and from which request on it holds their steps. */
struct wfq_tag {
	u64 finish;	/* its last request's finish tag */
	u64 since;	/* req->seq of the first whose step may come back */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_TENANTS);
	__type(key, u32);
	__type(value, struct wfq_tag);
} tags SEC(".maps");

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
	u64 start, step, cost = req->cost ? req->cost : 1;
	struct wfq_tag *t;

	/* No request costs more than a whole context's tokens. */
	if (cost > WFQ_MAX_COST)
		cost = WFQ_MAX_COST;

	w = bpf_map_lookup_elem(&weights, &tenant);
	if (w && *w)
		weight = *w < MAX_WEIGHT ? *w : MAX_WEIGHT;
	else if (req->ten && req->ten->weight)
		weight = req->ten->weight;
	t = bpf_map_lookup_elem(&tags, &tenant);
	if (!t) {
		/* New (or its tag went): it starts at the clock. */
		struct wfq_tag fresh = { .finish = vclock, .since = req->seq };

		bpf_map_update_elem(&tags, &tenant, &fresh, BPF_NOEXIST);
		t = bpf_map_lookup_elem(&tags, &tenant);
	}
	if (!t) {
		/* No room at all: served at the clock, with no tag kept. */
		req->policy_data = 0;
		return llmos_queue_insert(req, WFQ_QUEUE, vclock);
	}
	if (t->finish < vclock) {
		/* Behind the clock: it starts there, what it paid spent. */
		start = vclock;
		t->since = req->seq;
	} else if (t->finish - vclock > WFQ_MAX_LEAD) {
		/*
		 * Held within WFQ_MAX_LEAD of the clock, or the requests of
		 * a tenant far ahead would carry its tag (and, once served,
		 * the clock) to the limit below. What that forgives is no
		 * longer in the tag: the steps so far, and this one's (it
		 * starts where the tag was cut), are not given back.
		 */
		start = vclock + WFQ_MAX_LEAD;
		t->since = req->seq + 1;
	} else {
		start = t->finish;
	}
	if (start >= WFQ_TAG_LIMIT) {
		llmos_policy_error(-WFQ_EOVERFLOW);
		return -1;
	}
	step = cost * WFQ_SCALE / weight;
	t->finish = start + step;
	req->policy_data = step; /* what a cancel gives back */
	return llmos_queue_insert(req, WFQ_QUEUE, start);
}

/*
 * A request cancelled in the queue: its tenant's tag goes back by its
 * step, if the tag still holds it (since), never below the clock.
 */
SEC("struct_ops/wfq_dequeue")
void BPF_PROG(wfq_dequeue, struct llmos_core_req *req)
{
	u32 tenant = req->tenant;
	u64 step = req->policy_data;
	struct wfq_tag *t;

	req->policy_data = 0; /* once */
	t = bpf_map_lookup_elem(&tags, &tenant);
	if (!t || !step || req->seq < t->since || t->finish <= vclock)
		return;
	if (step > WFQ_MAX_STEP)
		step = WFQ_MAX_STEP;
	t->finish = t->finish - vclock > step ? t->finish - step : vclock;
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
		 * tenant with many requests queued, held at WFQ_MAX_LEAD)
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
	.dequeue	= (void *)wfq_dequeue,
	.timeout_ms	= 30000,
	.name		= "wfq",
};
