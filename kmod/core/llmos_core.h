/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * llmos core: the policy-free request scheduler and the built-in policy.
 *
 * Plain C, compiled into the module and into libllmos (its local backend
 * and host tests). It allocates nothing and takes no lock: the caller embeds
 * or allocates every object, serialises all calls on one scheduler, and
 * passes the time in (so tests are deterministic).
 *
 * Queues are treaps ordered by (k1, k2). A tenant's queue is ordered by
 * priority, then submission: k1 = 256 - priority, k2 = submission sequence;
 * requests a vanished worker held go back with k1 = 0 (ahead of everything
 * of their tenant) in their original order. A worker's local queue is FIFO.
 *
 * The built-in policy is weighted fair queuing across tenants (start-time
 * fair queuing on expected tokens): each backlogged tenant has a virtual
 * time; dispatch serves the tenant with the smallest, then advances it by
 * cost * LLMOS_CORE_WFQ_SCALE / weight; a tenant that becomes backlogged
 * starts at max(its virtual time, the scheduler's virtual clock).
 */
#ifndef _LLMOS_CORE_SCHED_H
#define _LLMOS_CORE_SCHED_H

#ifdef __KERNEL__
#include <linux/bits.h>
#include <linux/errno.h>
#include <linux/stddef.h>
#include <linux/string.h>
#include <linux/types.h>
#else
#include "llmos_core_user.h"
#endif
#include <linux/llmos.h>

#include "llmos_treap.h"

#define LLMOS_CORE_WFQ_SCALE 1048576u /* 2^20 */
#define LLMOS_CORE_DEFAULT_WEIGHT 100
#define LLMOS_CORE_MAX_WEIGHT 10000
/* Most queues a policy may have at once. */
#define LLMOS_CORE_MAX_QUEUES 65536
/* Virtual times are taken back by the clock when one reaches this. */
#define LLMOS_CORE_VT_REBASE BIT_ULL(62)
#define LLMOS_CORE_LAT_BUCKETS 32

struct llmos_core_worker;
struct llmos_core_tenant;
struct llmos_core_queue;
struct llmos_core_sched;

/**
 * struct llmos_core_req - a request
 * @id_node: in the scheduler's index by id
 * @q_node: in a tenant queue, a worker's local queue, or a worker's
 *	in-flight set
 * @id: unique id (from 1)
 * @seq: submission sequence
 * @tenant: tenant id
 * @cost: expected tokens (0 counts as 1)
 * @prio: priority, 0..255, higher first within a tenant
 * @state: &enum llmos_req_state
 * @counted: its first dispatch was counted (latency, tenant's service)
 * @deadline_ns: absolute deadline, 0 for none (for policies that use it)
 * @ms_id: mindspace holding the prompt and the result
 * @prompt_off: prompt offset in the mindspace
 * @prompt_len: prompt length
 * @result_off: result offset, set at completion
 * @result_len: result length, set at completion
 * @tokens: tokens produced, set at completion
 * @status: 0, or the worker's error at completion
 * @requeues: times its worker vanished while it held it
 * @t_submit: submission time, ns
 * @t_dispatch: when the worker holding it took it, ns; 0 while none
 *	holds it (never dispatched, or back in a queue), so a finished request
 *	with 0 was not being run when it ended
 * @t_run: last start time, ns
 * @t_end: completion or cancellation time, ns
 * @policy_data: free for the attached policy (the only field a BPF policy
 *	may write)
 * @ten: its tenant; NULL once it finished
 * @worker: the worker holding it (local queue or in flight), or NULL
 * @dsq: the policy queue holding it, or NULL
 * @owner: the caller's (the client that submitted it)
 * @charged: what the built-in policy added to its tenant's virtual time
 *	when it last took it (0: it did not), given back if it comes back
 * @held_node: in the scheduler's requests held by policy queues, while
 *	@dsq is set
 */
struct llmos_core_req {
	struct llmos_tnode id_node;
	struct llmos_tnode q_node;
	u64 id;
	u64 seq;
	u32 tenant;
	u32 cost;
	u8 prio;
	u8 state;
	u8 counted;
	u64 deadline_ns;
	u64 ms_id;
	u64 prompt_off;
	u64 prompt_len;
	u64 result_off;
	u64 result_len;
	u32 tokens;
	s32 status;
	u32 requeues;
	u64 t_submit;
	u64 t_dispatch;
	u64 t_run;
	u64 t_end;
	u64 policy_data;
	struct llmos_core_tenant *ten;
	struct llmos_core_worker *worker;
	struct llmos_core_queue *dsq;
	void *owner;
	u64 charged;
	struct llmos_tnode held_node;
};

/**
 * struct llmos_core_tenant - a tenant: a share of the scheduler
 * @id_node: in the scheduler's index by tenant id
 * @vt_node: in the set of backlogged tenants, by virtual time
 * @id: tenant id
 * @weight: share (1..%LLMOS_CORE_MAX_WEIGHT)
 * @vtime: virtual time
 * @q: queued requests the built-in policy holds
 * @served_reqs: requests dispatched (once each, however often requeued)
 * @served_tokens: tokens of completed requests
 * @queued: its requests QUEUED, wherever they wait (@q, or an attached
 *	policy's queues)
 * @idle_node: in the scheduler's idle tenants, by when they became idle
 * @live: its requests not finished (their @ten points here)
 * @idle: in the idle tenants: no live request and the default weight, so
 *	it may be taken back when the tenants reach their limit
 */
struct llmos_core_tenant {
	struct llmos_tnode id_node;
	struct llmos_tnode vt_node;
	u32 id;
	u32 weight;
	u64 vtime;
	struct llmos_treap q;
	u64 served_reqs;
	u64 served_tokens;
	u32 queued;
	struct llmos_tnode idle_node;
	u32 live;
	bool idle;
};

/**
 * struct llmos_core_worker - a worker: runs requests, @capacity at a time
 * @id_node: in the scheduler's index by worker id
 * @id: unique id (from 1)
 * @capacity: requests it may hold at once (batch slots)
 * @numa_node: its NUMA node, or -1
 * @model: the model it serves (0: any)
 * @local: its local queue (requests the policy put aside for it)
 * @inflight: requests dispatched to it and not finished, by id
 * @owner: the caller's
 */
struct llmos_core_worker {
	struct llmos_tnode id_node;
	u64 id;
	u32 capacity;
	s32 numa_node;
	u64 model;
	struct llmos_treap local;
	struct llmos_treap inflight;
	void *owner;
};

/**
 * struct llmos_core_queue - a queue created by a policy
 * @id_node: in the scheduler's index of policy queues, by id
 * @id: the id the policy chose
 * @q: its requests, by (key, submission sequence)
 */
struct llmos_core_queue {
	struct llmos_tnode id_node;
	u64 id;
	struct llmos_treap q;
};

/**
 * struct llmos_core_policy - a policy that replaces the built-in one
 * @enqueue: place @r (QUEUED) in one of its queues with
 *	llmos_core_queue_insert() (or a worker's local queue); 0 on success.
 *	A request it leaves nowhere goes to the built-in policy and the
 *	scheduler records a fault.
 * @dispatch: move up to @budget requests to @w's local queue with
 *	llmos_core_queue_move()
 * @dequeue: @r left the policy's queues (cancelled), or NULL
 *
 * Requests the policy does not take, or leaves behind when it goes, are
 * served by the built-in policy: nothing is lost.
 */
struct llmos_core_policy {
	int (*enqueue)(struct llmos_core_sched *s, struct llmos_core_req *r);
	void (*dispatch)(struct llmos_core_sched *s, struct llmos_core_worker *w,
			 u32 budget);
	void (*dequeue)(struct llmos_core_sched *s, struct llmos_core_req *r);
};

/* Why a policy misbehaved (llmos_core_sched.policy_fault). */
enum llmos_core_fault {
	LLMOS_CORE_FAULT_NONE,
	LLMOS_CORE_FAULT_ENQUEUE,	/* enqueue left a request nowhere */
	LLMOS_CORE_FAULT_MISUSE,	/* a queue call out of place */
};

/**
 * struct llmos_core_stats - counters of a scheduler
 * @nr: requests in each state now (index: &enum llmos_req_state)
 * @submitted: requests submitted
 * @dispatched: dispatches (a requeued request counts again)
 * @completed: requests completed
 * @failed: requests failed
 * @cancelled: requests cancelled
 * @requeued: requests given back (vanished workers, give-backs)
 * @vt_rebases: times the built-in policy took its virtual times back
 *	before they could wrap
 * @tenants_reclaimed: idle tenants taken back for new ones (@max_tenants)
 * @lat_hist: dispatch latency (submission to first dispatch): bucket b
 *	counts latencies in [2^b, 2^(b+1)) microseconds, b = 0 also below
 */
struct llmos_core_stats {
	u64 nr[LLMOS_REQ_STATE_MAX];
	u64 submitted;
	u64 dispatched;
	u64 completed;
	u64 failed;
	u64 cancelled;
	u64 requeued;
	u64 vt_rebases;
	u64 tenants_reclaimed;
	u64 lat_hist[LLMOS_CORE_LAT_BUCKETS];
};

/**
 * struct llmos_core_sched - a scheduler
 * @reqs: requests that are not released, by id
 * @tenants: tenants, by id
 * @backlog: tenants with queued requests, by (virtual time, id)
 * @workers: workers, by id
 * @last_req_id: the last request id given
 * @last_worker_id: the last worker id given
 * @seq: submission sequence
 * @vclock: virtual clock of the built-in policy
 * @queues: the policy's queues, by id
 * @policy: the attached policy, or NULL for the built-in one
 * @enqueuing: the request being enqueued by @policy, or NULL
 * @dispatching: the worker @policy is dispatching to, or NULL
 * @dispatch_budget: what @policy may still move to @dispatching
 * @policy_fault: &enum llmos_core_fault, set when @policy misbehaved
 * @policy_fault_req: the request involved in @policy_fault, or 0
 * @stats: counters
 * @held: the requests in the policy's queues, by submission (the
 *	oldest first: what the watchdog looks at)
 * @idle: tenants that may be taken back, oldest idle first
 * @idle_seq: when the last tenant became idle
 * @max_tenants: most tenants kept (0: no limit); past it the oldest idle
 *	one is taken back (its counters lost) for a new one, and without
 *	one a new tenant is refused
 */
struct llmos_core_sched {
	struct llmos_treap reqs;
	struct llmos_treap tenants;
	struct llmos_treap backlog;
	struct llmos_treap workers;
	u64 last_req_id;
	u64 last_worker_id;
	u64 seq;
	u64 vclock;
	struct llmos_treap queues;
	const struct llmos_core_policy *policy;
	struct llmos_core_req *enqueuing;
	struct llmos_core_worker *dispatching;
	u32 dispatch_budget;
	u32 policy_fault;
	u64 policy_fault_req;
	struct llmos_core_stats stats;
	struct llmos_treap held;
	struct llmos_treap idle;
	u64 idle_seq;
	u32 max_tenants;
};

void llmos_core_init(struct llmos_core_sched *s);

/*
 * Submit @r (tenant, cost, prio, deadline, mindspace fields set by the
 * caller). Its tenant is created when new, as for
 * llmos_core_set_weight(). Returns 0, -ENOMEM (a new tenant and no spare)
 * or -ENOSPC (a new tenant, at @max_tenants, none idle).
 */
int llmos_core_submit(struct llmos_core_sched *s, struct llmos_core_req *r,
		      struct llmos_core_tenant **spare, u64 now);
struct llmos_core_req *llmos_core_find(struct llmos_core_sched *s, u64 id);
/* Cancel a request that has not finished: 0, or -EALREADY. */
int llmos_core_cancel(struct llmos_core_sched *s, struct llmos_core_req *r,
		      u64 now);
/* Forget a finished request (the caller frees it): 0, or -EBUSY. */
int llmos_core_release(struct llmos_core_sched *s, struct llmos_core_req *r);

void llmos_core_worker_add(struct llmos_core_sched *s,
			   struct llmos_core_worker *w);
/*
 * Take @w away: what it held goes back to the front of its tenant, in
 * submission order; what it had been handed counts as a requeue (it may
 * have crashed it), what was only in its local queue does not. Returns
 * how many requests were requeued.
 */
u32 llmos_core_worker_remove(struct llmos_core_sched *s,
			     struct llmos_core_worker *w);
/*
 * Hand @w up to @max requests (fewer if its capacity is reached), oldest
 * first out of its local queue, which the policy fills when it is empty.
 * Returns how many were written to @out.
 */
u32 llmos_core_dispatch(struct llmos_core_sched *s, struct llmos_core_worker *w,
			struct llmos_core_req **out, u32 max, u64 now);
/*
 * DISPATCHED or RUNNING -> QUEUED again, at the front of its tenant, not
 * counted in its requeues: a dispatch whose requests never reached @w, or
 * a worker handing back what it will not finish (it stops). 0 or -ESRCH
 * (not held by @w: queued, finished, another's). As with a vanished
 * worker's requests, an attached policy is not asked again: the built-in
 * queues serve it.
 */
int llmos_core_give_back(struct llmos_core_sched *s,
			 struct llmos_core_worker *w, struct llmos_core_req *r);
/* DISPATCHED -> RUNNING, by the worker holding it: 0, -ESRCH, -EINVAL. */
int llmos_core_start(struct llmos_core_sched *s, struct llmos_core_worker *w,
		     struct llmos_core_req *r, u64 now);
/*
 * DISPATCHED or RUNNING -> COMPLETED (@status 0) or FAILED, by the worker
 * holding it: 0, -ESRCH (not held by @w), -EINVAL (wrong state).
 */
int llmos_core_complete(struct llmos_core_sched *s, struct llmos_core_worker *w,
			struct llmos_core_req *r, s32 status, u32 tokens,
			u64 result_off, u64 result_len, u64 now);

/*
 * Set a tenant's weight (1..LLMOS_CORE_MAX_WEIGHT): 0, -EINVAL, -ENOMEM,
 * -ENOSPC. A new tenant is made from *@spare (which is then set to NULL:
 * the scheduler owns it), or, at @max_tenants, from the tenant idle the
 * longest (no live request, the default weight), whose counters are lost;
 * without either it is refused.
 */
int llmos_core_set_weight(struct llmos_core_sched *s, u32 tenant, u32 weight,
			  struct llmos_core_tenant **spare);
struct llmos_core_tenant *llmos_core_tenant_find(struct llmos_core_sched *s,
						 u32 tenant);
/* Iterate tenants by id: pass NULL for the first. */
struct llmos_core_tenant *llmos_core_tenant_next(struct llmos_core_sched *s,
						 struct llmos_core_tenant *t);
/* Remove and return a tenant with no queued request, for freeing. */
struct llmos_core_tenant *llmos_core_tenant_pop(struct llmos_core_sched *s);
u32 llmos_core_queued(const struct llmos_core_sched *s);

/* Policy queues. Calls out of place set policy_fault and do nothing. */
/*
 * Add @q (allocated by the caller) with @id: 0, -EEXIST, or -ENOSPC when
 * the policy has %LLMOS_CORE_MAX_QUEUES already.
 */
int llmos_core_queue_add(struct llmos_core_sched *s, struct llmos_core_queue *q,
			 u64 id);
struct llmos_core_queue *llmos_core_queue_find(struct llmos_core_sched *s,
					       u64 id);
/* In enqueue: put the request being enqueued in @q, ordered by @key. */
int llmos_core_queue_insert(struct llmos_core_sched *s,
			    struct llmos_core_queue *q,
			    struct llmos_core_req *r, u64 key);
/*
 * In dispatch: move up to @n heads of @q to @w's local queue, and no more
 * than the budget the dispatch callback was given (a worker's local queue
 * holds only what it has room for: the rest stays where every worker, and
 * the watchdog, sees it).
 */
u32 llmos_core_queue_move(struct llmos_core_sched *s, struct llmos_core_queue *q,
			  struct llmos_core_worker *w, u32 n);
/*
 * Detach the policy: its queued requests go to the built-in policy, in
 * submission order. Then llmos_core_queue_pop() hands back each queue, for
 * freeing.
 */
void llmos_core_policy_reset(struct llmos_core_sched *s);
struct llmos_core_queue *llmos_core_queue_pop(struct llmos_core_sched *s);
/*
 * Take the empty queue @id away, into *@out for the caller to free: 0,
 * -ENOENT (no such queue) or -EBUSY (it holds requests).
 */
int llmos_core_queue_remove(struct llmos_core_sched *s, u64 id,
			    struct llmos_core_queue **out);
/* The request held longest by the policy's queues, or NULL: O(log n). */
struct llmos_core_req *llmos_core_policy_oldest(struct llmos_core_sched *s);

#endif /* _LLMOS_CORE_SCHED_H */
