// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * llmos core: request lifecycle, queues, workers and the built-in weighted
 * fair queuing policy. See llmos_core.h.
 */
#include "llmos_core.h"

#define llmos_container_of(ptr, type, member) \
	((type *)((char *)(ptr) - offsetof(type, member)))

/* Tenant queue keys: requeued requests (k1 = 0) first, then by priority. */
#define LLMOS_K1_REQUEUED 0
#define LLMOS_K1_PRIO(prio) (256 - (u64)(prio))

static struct llmos_core_req *llmos_q_req(struct llmos_tnode *n)
{
	return n ? llmos_container_of(n, struct llmos_core_req, q_node) : NULL;
}

static struct llmos_core_tenant *llmos_vt_tenant(struct llmos_tnode *n)
{
	return n ? llmos_container_of(n, struct llmos_core_tenant, vt_node) :
		   NULL;
}

static struct llmos_core_tenant *llmos_id_tenant(struct llmos_tnode *n)
{
	return n ? llmos_container_of(n, struct llmos_core_tenant, id_node) :
		   NULL;
}

/* @r goes into policy queue @q, or (@q NULL) leaves the one it is in. */
static void llmos_set_dsq(struct llmos_core_sched *s, struct llmos_core_req *r,
			  struct llmos_core_queue *q)
{
	if (r->dsq)
		llmos_treap_erase(&s->held, &r->held_node);
	r->dsq = q;
	if (q)
		llmos_treap_insert(&s->held, &r->held_node, r->seq, 0);
}

static struct llmos_core_tenant *llmos_idle_tenant(struct llmos_tnode *n)
{
	return n ? llmos_container_of(n, struct llmos_core_tenant, idle_node) :
		   NULL;
}

/*
 * Keep @t among the idle tenants exactly while it may be taken back: no
 * live request (nothing points to it) and the default weight (nobody set
 * one to keep).
 */
static void llmos_tenant_check_idle(struct llmos_core_sched *s,
				    struct llmos_core_tenant *t)
{
	bool idle = !t->live && t->weight == LLMOS_CORE_DEFAULT_WEIGHT;

	if (idle == t->idle)
		return;
	if (idle)
		llmos_treap_insert(&s->idle, &t->idle_node, ++s->idle_seq,
				   t->id);
	else
		llmos_treap_erase(&s->idle, &t->idle_node);
	t->idle = idle;
}

void llmos_core_init(struct llmos_core_sched *s)
{
	memset(s, 0, sizeof(*s));
	llmos_treap_init(&s->reqs);
	llmos_treap_init(&s->tenants);
	llmos_treap_init(&s->backlog);
	llmos_treap_init(&s->workers);
	llmos_treap_init(&s->queues);
	llmos_treap_init(&s->idle);
	llmos_treap_init(&s->held);
}

static bool llmos_finished(u8 state)
{
	return state == LLMOS_REQ_COMPLETED || state == LLMOS_REQ_CANCELLED ||
	       state == LLMOS_REQ_FAILED;
}

static void llmos_set_state(struct llmos_core_sched *s,
			    struct llmos_core_req *r, u8 state)
{
	if (r->state)
		s->stats.nr[r->state]--;
	if (r->state == LLMOS_REQ_QUEUED)
		r->ten->queued--;
	r->state = state;
	s->stats.nr[state]++;
	if (state == LLMOS_REQ_QUEUED)
		r->ten->queued++;
	/*
	 * Finished: the request lets its tenant go (which may then be taken
	 * back for another, so nothing may read it through the request).
	 */
	if (llmos_finished(state)) {
		r->ten->live--;
		llmos_tenant_check_idle(s, r->ten);
		r->ten = NULL;
	}
}

/*
 * The tenant @id in *@out, made when new: from the oldest idle tenant when
 * the tenants are at their limit (-ENOSPC without one), otherwise from
 * *@spare (-ENOMEM without one; *@spare is then the scheduler's).
 */
static int llmos_tenant_get(struct llmos_core_sched *s, u32 id,
			    struct llmos_core_tenant **spare,
			    struct llmos_core_tenant **out)
{
	struct llmos_core_tenant *t;

	t = llmos_id_tenant(llmos_treap_find(&s->tenants, id, 0));
	if (t) {
		*out = t;
		return 0;
	}
	if (s->max_tenants && s->tenants.nr >= s->max_tenants) {
		t = llmos_idle_tenant(llmos_treap_first(&s->idle));
		if (!t)
			return -ENOSPC;
		llmos_treap_erase(&s->idle, &t->idle_node);
		llmos_treap_erase(&s->tenants, &t->id_node);
		s->stats.tenants_reclaimed++;
	} else {
		if (!spare || !*spare)
			return -ENOMEM;
		t = *spare;
		*spare = NULL;
	}
	memset(t, 0, sizeof(*t));
	t->id = id;
	t->weight = LLMOS_CORE_DEFAULT_WEIGHT;
	llmos_treap_init(&t->q);
	llmos_treap_insert(&s->tenants, &t->id_node, id, 0);
	*out = t;
	return 0;
}

/* Queue @r in its tenant with key @k1, making the tenant backlogged. */
static void llmos_tenant_enqueue(struct llmos_core_sched *s,
				 struct llmos_core_req *r, u64 k1)
{
	struct llmos_core_tenant *t = r->ten;

	if (llmos_treap_empty(&t->q)) {
		if (t->vtime < s->vclock)
			t->vtime = s->vclock;
		llmos_treap_insert(&s->backlog, &t->vt_node, t->vtime, t->id);
	}
	llmos_treap_insert(&t->q, &r->q_node, k1, r->seq);
}

static void llmos_tenant_dequeue(struct llmos_core_sched *s,
				 struct llmos_core_req *r)
{
	struct llmos_core_tenant *t = r->ten;

	llmos_treap_erase(&t->q, &r->q_node);
	if (llmos_treap_empty(&t->q))
		llmos_treap_erase(&s->backlog, &t->vt_node);
}

int llmos_core_submit(struct llmos_core_sched *s, struct llmos_core_req *r,
		      struct llmos_core_tenant **spare, u64 now)
{
	struct llmos_core_tenant *t;
	int ret = llmos_tenant_get(s, r->tenant, spare, &t);

	if (ret)
		return ret;
	t->live++;
	llmos_tenant_check_idle(s, t);
	r->id = ++s->last_req_id;
	r->seq = ++s->seq;
	r->ten = t;
	r->worker = NULL;
	r->state = 0;
	r->requeues = 0;
	r->counted = 0;
	r->t_submit = now;
	r->t_dispatch = 0;
	r->t_run = 0;
	r->t_end = 0;
	r->dsq = NULL;
	r->policy_data = 0;
	r->charged = 0;
	llmos_set_state(s, r, LLMOS_REQ_QUEUED);
	llmos_treap_insert(&s->reqs, &r->id_node, r->id, 0);
	s->stats.submitted++;
	if (s->policy) {
		s->enqueuing = r;
		ret = s->policy->enqueue(s, r);
		s->enqueuing = NULL;
		if (!ret && (r->dsq || r->worker))
			return 0;
		/* Left nowhere: the built-in policy takes it. */
		if (r->dsq)
			llmos_treap_erase(&r->dsq->q, &r->q_node);
		llmos_set_dsq(s, r, NULL);
		r->worker = NULL;
		if (!s->policy_fault) {
			s->policy_fault = LLMOS_CORE_FAULT_ENQUEUE;
			s->policy_fault_req = r->id;
		}
	}
	llmos_tenant_enqueue(s, r, LLMOS_K1_PRIO(r->prio));
	return 0;
}

struct llmos_core_req *llmos_core_find(struct llmos_core_sched *s, u64 id)
{
	struct llmos_tnode *n = llmos_treap_find(&s->reqs, id, 0);

	return n ? llmos_container_of(n, struct llmos_core_req, id_node) : NULL;
}

/* Take @r out of wherever it waits or runs. */
static void llmos_req_unlink(struct llmos_core_sched *s,
			     struct llmos_core_req *r)
{
	if (r->state == LLMOS_REQ_QUEUED) {
		if (r->worker) {
			llmos_treap_erase(&r->worker->local, &r->q_node);
		} else if (r->dsq) {
			llmos_treap_erase(&r->dsq->q, &r->q_node);
			llmos_set_dsq(s, r, NULL);
			if (s->policy && s->policy->dequeue)
				s->policy->dequeue(s, r);
		} else {
			llmos_tenant_dequeue(s, r);
		}
	} else {
		llmos_treap_erase(&r->worker->inflight, &r->q_node);
	}
	r->worker = NULL;
}

int llmos_core_cancel(struct llmos_core_sched *s, struct llmos_core_req *r,
		      u64 now)
{
	if (llmos_finished(r->state))
		return -EALREADY;
	llmos_req_unlink(s, r);
	r->t_end = now;
	llmos_set_state(s, r, LLMOS_REQ_CANCELLED);
	s->stats.cancelled++;
	return 0;
}

int llmos_core_release(struct llmos_core_sched *s, struct llmos_core_req *r)
{
	if (!llmos_finished(r->state))
		return -EBUSY;
	llmos_treap_erase(&s->reqs, &r->id_node);
	s->stats.nr[r->state]--;
	r->state = 0;
	return 0;
}

void llmos_core_worker_add(struct llmos_core_sched *s,
			   struct llmos_core_worker *w)
{
	w->id = ++s->last_worker_id;
	llmos_treap_init(&w->local);
	llmos_treap_init(&w->inflight);
	llmos_treap_insert(&s->workers, &w->id_node, w->id, 0);
}

/*
 * A request the built-in policy took comes back unserved: its tenant's
 * virtual time loses what taking it added (not below the clock, where a
 * tenant that comes back starts), or it would pay for it twice.
 */
static void llmos_refund(struct llmos_core_sched *s, struct llmos_core_req *r)
{
	struct llmos_core_tenant *t = r->ten;
	u64 vt = t->vtime > r->charged ? t->vtime - r->charged : 0;

	r->charged = 0;
	if (vt < s->vclock)
		vt = s->vclock;
	if (vt == t->vtime)
		return;
	if (llmos_treap_empty(&t->q)) {
		t->vtime = vt;
		return;
	}
	llmos_treap_erase(&s->backlog, &t->vt_node);
	t->vtime = vt;
	llmos_treap_insert(&s->backlog, &t->vt_node, t->vtime, t->id);
}

/* Back to the front of its tenant; @strike: its worker vanished with it. */
static void llmos_requeue(struct llmos_core_sched *s, struct llmos_core_req *r,
			  bool strike)
{
	if (r->charged)
		llmos_refund(s, r);
	r->worker = NULL;
	r->requeues += strike;
	r->t_dispatch = 0; /* no worker holds it now */
	llmos_set_state(s, r, LLMOS_REQ_QUEUED);
	llmos_tenant_enqueue(s, r, LLMOS_K1_REQUEUED);
	s->stats.requeued++;
}

int llmos_core_give_back(struct llmos_core_sched *s,
			 struct llmos_core_worker *w, struct llmos_core_req *r)
{
	if (r->worker != w || r->state == LLMOS_REQ_QUEUED)
		return -ESRCH;
	if (r->state != LLMOS_REQ_DISPATCHED && r->state != LLMOS_REQ_RUNNING)
		return -EINVAL;
	llmos_treap_erase(&w->inflight, &r->q_node);
	llmos_requeue(s, r, false);
	return 0;
}

u32 llmos_core_worker_remove(struct llmos_core_sched *s,
			     struct llmos_core_worker *w)
{
	struct llmos_core_req *r;
	u32 n = 0;

	while ((r = llmos_q_req(llmos_treap_first(&w->inflight)))) {
		llmos_treap_erase(&w->inflight, &r->q_node);
		llmos_requeue(s, r, true);
		n++;
	}
	while ((r = llmos_q_req(llmos_treap_first(&w->local)))) {
		llmos_treap_erase(&w->local, &r->q_node);
		llmos_requeue(s, r, false);
		n++;
	}
	llmos_treap_erase(&s->workers, &w->id_node);
	return n;
}

/*
 * Take the virtual clock back to 0 before virtual times can wrap (a
 * dispatch adds at most 2^52: cost 2^32 at weight 1), so that the order
 * they give stays. Every backlogged tenant is at or after the clock; an
 * idle one before it starts at the clock when it comes back anyway.
 */
static void llmos_vt_rebase(struct llmos_core_sched *s)
{
	struct llmos_tnode *n;
	u64 base = s->vclock;

	for (n = llmos_treap_first(&s->tenants); n; n = llmos_treap_next(n)) {
		struct llmos_core_tenant *t = llmos_id_tenant(n);

		t->vtime = t->vtime > base ? t->vtime - base : 0;
	}
	/* The same shift for all keeps the backlog's order. */
	for (n = llmos_treap_first(&s->backlog); n; n = llmos_treap_next(n))
		n->k1 = llmos_vt_tenant(n)->vtime;
	s->vclock = 0;
	s->stats.vt_rebases++;
}

/*
 * The built-in policy: move up to @budget requests from the tenant with
 * the smallest virtual time to @w's local queue.
 */
static void llmos_wfq_dispatch(struct llmos_core_sched *s,
			       struct llmos_core_worker *w, u32 budget)
{
	while (budget--) {
		struct llmos_core_tenant *t;
		struct llmos_core_req *r;

		t = llmos_vt_tenant(llmos_treap_first(&s->backlog));
		if (!t)
			return;
		r = llmos_q_req(llmos_treap_first(&t->q));
		llmos_treap_erase(&t->q, &r->q_node);
		llmos_treap_erase(&s->backlog, &t->vt_node);
		s->vclock = t->vtime;
		r->charged = (u64)(r->cost ? r->cost : 1) *
			     LLMOS_CORE_WFQ_SCALE / t->weight;
		t->vtime += r->charged;
		if (t->vtime >= LLMOS_CORE_VT_REBASE)
			llmos_vt_rebase(s);
		if (!llmos_treap_empty(&t->q))
			llmos_treap_insert(&s->backlog, &t->vt_node, t->vtime,
					   t->id);
		r->worker = w;
		llmos_treap_insert(&w->local, &r->q_node, 0, ++s->seq);
	}
}

static u32 llmos_lat_bucket(u64 ns)
{
	u64 us = ns >> 10;
	u32 b;

	if (!us)
		return 0;
	b = 63 - __builtin_clzll(us);
	return b < LLMOS_CORE_LAT_BUCKETS ? b : LLMOS_CORE_LAT_BUCKETS - 1;
}

u32 llmos_core_dispatch(struct llmos_core_sched *s, struct llmos_core_worker *w,
			struct llmos_core_req **out, u32 max, u64 now)
{
	u32 room = w->capacity > w->inflight.nr ?
		   w->capacity - w->inflight.nr : 0;
	u32 n = 0;

	if (max > room)
		max = room;
	/*
	 * Under a policy, the built-in queues hold only requests given back
	 * (by a worker, or one that vanished) and ones queued before it was
	 * attached: older than anything it holds, they go first.
	 */
	if (s->policy && w->local.nr < max)
		llmos_wfq_dispatch(s, w, max - w->local.nr);
	if (s->policy && w->local.nr < max) {
		s->dispatching = w;
		s->dispatch_budget = max - w->local.nr;
		s->policy->dispatch(s, w, s->dispatch_budget);
		s->dispatching = NULL;
		s->dispatch_budget = 0;
	}
	/* The built-in policy serves what the attached one did not take. */
	if (w->local.nr < max)
		llmos_wfq_dispatch(s, w, max - w->local.nr);
	while (n < max) {
		struct llmos_core_req *r = llmos_q_req(llmos_treap_first(&w->local));

		if (!r)
			break;
		llmos_treap_erase(&w->local, &r->q_node);
		llmos_treap_insert(&w->inflight, &r->q_node, r->id, 0);
		/* A request dispatched again (requeued) counts once. */
		if (!r->counted) {
			s->stats.lat_hist[llmos_lat_bucket(now - r->t_submit)]++;
			r->ten->served_reqs++;
			r->counted = 1;
		}
		r->t_dispatch = now;
		llmos_set_state(s, r, LLMOS_REQ_DISPATCHED);
		s->stats.dispatched++;
		out[n++] = r;
	}
	return n;
}

int llmos_core_start(struct llmos_core_sched *s, struct llmos_core_worker *w,
		     struct llmos_core_req *r, u64 now)
{
	if (r->worker != w || r->state == LLMOS_REQ_QUEUED)
		return -ESRCH;
	if (r->state != LLMOS_REQ_DISPATCHED)
		return -EINVAL;
	r->t_run = now;
	llmos_set_state(s, r, LLMOS_REQ_RUNNING);
	return 0;
}

int llmos_core_complete(struct llmos_core_sched *s, struct llmos_core_worker *w,
			struct llmos_core_req *r, s32 status, u32 tokens,
			u64 result_off, u64 result_len, u64 now)
{
	if (r->worker != w || r->state == LLMOS_REQ_QUEUED)
		return -ESRCH;
	if (r->state != LLMOS_REQ_DISPATCHED && r->state != LLMOS_REQ_RUNNING)
		return -EINVAL;
	llmos_treap_erase(&w->inflight, &r->q_node);
	r->worker = NULL;
	r->status = status;
	r->tokens = tokens;
	r->result_off = result_off;
	r->result_len = result_len;
	r->t_end = now;
	if (status) {
		llmos_set_state(s, r, LLMOS_REQ_FAILED);
		s->stats.failed++;
	} else {
		r->ten->served_tokens += tokens;
		llmos_set_state(s, r, LLMOS_REQ_COMPLETED);
		s->stats.completed++;
	}
	return 0;
}

int llmos_core_set_weight(struct llmos_core_sched *s, u32 tenant, u32 weight,
			  struct llmos_core_tenant **spare)
{
	struct llmos_core_tenant *t;
	int ret;

	if (!weight || weight > LLMOS_CORE_MAX_WEIGHT)
		return -EINVAL;
	ret = llmos_tenant_get(s, tenant, spare, &t);
	if (ret)
		return ret;
	t->weight = weight;
	llmos_tenant_check_idle(s, t);
	return 0;
}

struct llmos_core_tenant *llmos_core_tenant_find(struct llmos_core_sched *s,
						 u32 tenant)
{
	return llmos_id_tenant(llmos_treap_find(&s->tenants, tenant, 0));
}

struct llmos_core_tenant *llmos_core_tenant_next(struct llmos_core_sched *s,
						 struct llmos_core_tenant *t)
{
	return llmos_id_tenant(t ? llmos_treap_next(&t->id_node) :
				   llmos_treap_first(&s->tenants));
}

struct llmos_core_tenant *llmos_core_tenant_pop(struct llmos_core_sched *s)
{
	struct llmos_core_tenant *t;

	for (t = llmos_core_tenant_next(s, NULL); t;
	     t = llmos_core_tenant_next(s, t)) {
		if (llmos_treap_empty(&t->q)) {
			llmos_treap_erase(&s->tenants, &t->id_node);
			if (t->idle)
				llmos_treap_erase(&s->idle, &t->idle_node);
			t->idle = false;
			return t;
		}
	}
	return NULL;
}

u32 llmos_core_queued(const struct llmos_core_sched *s)
{
	return s->stats.nr[LLMOS_REQ_QUEUED];
}

static void llmos_policy_fault(struct llmos_core_sched *s, u64 req)
{
	if (!s->policy_fault) {
		s->policy_fault = LLMOS_CORE_FAULT_MISUSE;
		s->policy_fault_req = req;
	}
}

int llmos_core_queue_add(struct llmos_core_sched *s, struct llmos_core_queue *q,
			 u64 id)
{
	if (llmos_core_queue_find(s, id))
		return -EEXIST;
	if (s->queues.nr >= LLMOS_CORE_MAX_QUEUES)
		return -ENOSPC;
	q->id = id;
	llmos_treap_init(&q->q);
	llmos_treap_insert(&s->queues, &q->id_node, id, 0);
	return 0;
}

struct llmos_core_queue *llmos_core_queue_find(struct llmos_core_sched *s,
					       u64 id)
{
	struct llmos_tnode *n = llmos_treap_find(&s->queues, id, 0);

	return n ? llmos_container_of(n, struct llmos_core_queue, id_node) :
		   NULL;
}

int llmos_core_queue_insert(struct llmos_core_sched *s,
			    struct llmos_core_queue *q,
			    struct llmos_core_req *r, u64 key)
{
	if (!q || r != s->enqueuing || r->dsq || r->worker) {
		llmos_policy_fault(s, r->id);
		return -EINVAL;
	}
	llmos_set_dsq(s, r, q);
	llmos_treap_insert(&q->q, &r->q_node, key, r->seq);
	return 0;
}

u32 llmos_core_queue_move(struct llmos_core_sched *s, struct llmos_core_queue *q,
			  struct llmos_core_worker *w, u32 n)
{
	u32 moved = 0;

	if (!q || w != s->dispatching) {
		llmos_policy_fault(s, 0);
		return 0;
	}
	if (n > s->dispatch_budget)
		n = s->dispatch_budget;
	while (moved < n) {
		struct llmos_core_req *r = llmos_q_req(llmos_treap_first(&q->q));

		if (!r)
			break;
		llmos_treap_erase(&q->q, &r->q_node);
		llmos_set_dsq(s, r, NULL);
		r->worker = w;
		llmos_treap_insert(&w->local, &r->q_node, 0, ++s->seq);
		moved++;
	}
	s->dispatch_budget -= moved;
	return moved;
}

void llmos_core_policy_reset(struct llmos_core_sched *s)
{
	struct llmos_tnode *n;

	s->policy = NULL;
	s->enqueuing = NULL;
	s->dispatching = NULL;
	for (n = llmos_treap_first(&s->queues); n; n = llmos_treap_next(n)) {
		struct llmos_core_queue *q =
			llmos_container_of(n, struct llmos_core_queue, id_node);
		struct llmos_core_req *r;

		/* Tenant queues order by submission: the order comes back. */
		while ((r = llmos_q_req(llmos_treap_first(&q->q)))) {
			llmos_treap_erase(&q->q, &r->q_node);
			llmos_set_dsq(s, r, NULL);
			llmos_tenant_enqueue(s, r, LLMOS_K1_PRIO(r->prio));
		}
	}
	s->policy_fault = LLMOS_CORE_FAULT_NONE;
	s->policy_fault_req = 0;
}

int llmos_core_queue_remove(struct llmos_core_sched *s, u64 id,
			    struct llmos_core_queue **out)
{
	struct llmos_core_queue *q = llmos_core_queue_find(s, id);

	if (!q)
		return -ENOENT;
	if (!llmos_treap_empty(&q->q))
		return -EBUSY;
	llmos_treap_erase(&s->queues, &q->id_node);
	*out = q;
	return 0;
}

struct llmos_core_req *llmos_core_policy_oldest(struct llmos_core_sched *s)
{
	struct llmos_tnode *n = llmos_treap_first(&s->held);

	return n ? llmos_container_of(n, struct llmos_core_req, held_node) :
		   NULL;
}

struct llmos_core_queue *llmos_core_queue_pop(struct llmos_core_sched *s)
{
	struct llmos_tnode *n = llmos_treap_first(&s->queues);

	if (!n)
		return NULL;
	llmos_treap_erase(&s->queues, n);
	return llmos_container_of(n, struct llmos_core_queue, id_node);
}
