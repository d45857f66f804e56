// SPDX-License-Identifier: GPL-2.0-only
/*
 * llmos: kfuncs for BPF scheduling policies (struct_ops llmos_sched_ops).
 *
 * They are meant for a policy's callbacks, which run with the scheduler's
 * lock held; called anywhere else they do nothing and report the misuse,
 * which ejects the policy. A request may only be queued while it is being
 * enqueued, and moved only to the worker being dispatched to.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/bpf.h>
#include <linux/btf.h>
#include <linux/btf_ids.h>
#include <linux/module.h>
#include <linux/slab.h>

#include "llmos.h"
#include "llmos_bpf.h"

static bool llmos_kfunc_ok(void)
{
	if (llmos_bpf_in_callback())
		return true;
	llmos_bpf_stray(); /* without the lock: the watchdog ejects it */
	return false;
}

static struct llmos_core_queue *llmos_kfunc_queue(u64 queue_id, u64 req)
{
	struct llmos_core_queue *q = llmos_core_queue_find(llmos_sched_core(),
							   queue_id);

	if (!q)
		llmos_bpf_fault(LLMOS_EXIT_MISUSE, -ENOENT, req);
	return q;
}

__bpf_kfunc_start_defs();

/**
 * llmos_create_queue() - create a queue for the policy's requests
 * @queue_id: its id, chosen by the policy
 *
 * A queue orders its requests by a u64 key, then by submission (so key 0
 * for all makes it FIFO).
 *
 * Return: 0, -EEXIST, -ENOMEM, -ENOSPC (the policy has 65536 queues), or
 * -EPERM outside a policy callback.
 */
__bpf_kfunc s32 llmos_create_queue(u64 queue_id)
{
	struct llmos_core_queue *q;
	int ret;

	if (!llmos_kfunc_ok())
		return -EPERM;
	q = kzalloc(sizeof(*q), GFP_ATOMIC | __GFP_ACCOUNT);
	if (!q)
		return -ENOMEM;
	ret = llmos_core_queue_add(llmos_sched_core(), q, queue_id);
	if (ret)
		kfree(q);
	return ret;
}

/**
 * llmos_destroy_queue() - take away a queue the policy no longer needs
 * @queue_id: an empty queue the policy created
 *
 * (A policy's queues all go when it stops; this is for a policy that
 * makes them as it goes, one per worker for instance.)
 *
 * Return: 0, -ENOENT (no such queue), -EBUSY (it holds requests), or
 * -EPERM outside a policy callback.
 */
__bpf_kfunc s32 llmos_destroy_queue(u64 queue_id)
{
	struct llmos_core_queue *q;
	int ret;

	if (!llmos_kfunc_ok())
		return -EPERM;
	ret = llmos_core_queue_remove(llmos_sched_core(), queue_id, &q);
	if (!ret)
		kfree(q);
	return ret;
}

/**
 * llmos_queue_insert() - queue the request being enqueued, by key
 * @req: the request passed to enqueue
 * @queue_id: a queue the policy created
 * @key: its place: smaller first (a virtual time, a deadline, a cost)
 *
 * Return: 0, or -EINVAL (and the policy is ejected) when @req is not the
 * request being enqueued or the queue does not exist.
 */
__bpf_kfunc s32 llmos_queue_insert(struct llmos_core_req *req, u64 queue_id,
				   u64 key)
{
	struct llmos_core_queue *q;

	if (!llmos_kfunc_ok())
		return -EPERM;
	q = llmos_kfunc_queue(queue_id, req->id);
	if (!q)
		return -EINVAL;
	return llmos_core_queue_insert(llmos_sched_core(), q, req, key);
}

/**
 * llmos_queue_insert_fifo() - queue the request being enqueued, last
 * @req: the request passed to enqueue
 * @queue_id: a queue the policy created
 *
 * Return: as llmos_queue_insert().
 */
__bpf_kfunc s32 llmos_queue_insert_fifo(struct llmos_core_req *req,
					u64 queue_id)
{
	return llmos_queue_insert(req, queue_id, 0);
}

/**
 * llmos_queue_move_to_worker() - hand the heads of a queue to a worker
 * @queue_id: a queue the policy created
 * @w: the worker passed to dispatch
 * @n: how many at most
 *
 * Return: how many were moved (0 on misuse, which ejects the policy).
 */
__bpf_kfunc u32 llmos_queue_move_to_worker(u64 queue_id,
					   struct llmos_core_worker *w, u32 n)
{
	struct llmos_core_queue *q;

	if (!llmos_kfunc_ok())
		return 0;
	q = llmos_kfunc_queue(queue_id, 0);
	if (!q)
		return 0;
	return llmos_core_queue_move(llmos_sched_core(), q, w, n);
}

/**
 * llmos_queue_len() - requests in a queue
 * @queue_id: a queue the policy created
 *
 * Return: the number, or -ENOENT (-EPERM outside a callback).
 */
__bpf_kfunc s32 llmos_queue_len(u64 queue_id)
{
	struct llmos_core_queue *q;

	if (!llmos_kfunc_ok())
		return -EPERM;
	q = llmos_core_queue_find(llmos_sched_core(), queue_id);
	return q ? q->q.nr : -ENOENT;
}

/**
 * llmos_queue_peek() - the id of the request at the head of a queue
 * @queue_id: a queue the policy created
 *
 * Return: the request id, or 0 when the queue is empty or does not exist.
 */
__bpf_kfunc u64 llmos_queue_peek(u64 queue_id)
{
	struct llmos_core_queue *q;
	struct llmos_tnode *n;

	if (!llmos_kfunc_ok())
		return 0;
	q = llmos_core_queue_find(llmos_sched_core(), queue_id);
	n = q ? llmos_treap_first(&q->q) : NULL;
	return n ? container_of(n, struct llmos_core_req, q_node)->id : 0;
}

/**
 * llmos_queue_peek_key() - the key of the request at the head of a queue
 * @queue_id: a queue the policy created
 *
 * Return: the key it was inserted with, or 0 when the queue is empty or
 * does not exist.
 */
__bpf_kfunc u64 llmos_queue_peek_key(u64 queue_id)
{
	struct llmos_core_queue *q;
	struct llmos_tnode *n;

	if (!llmos_kfunc_ok())
		return 0;
	q = llmos_core_queue_find(llmos_sched_core(), queue_id);
	n = q ? llmos_treap_first(&q->q) : NULL;
	return n ? n->k1 : 0;
}

/**
 * llmos_set_tenant_weight() - set a tenant's weight in the built-in policy
 * @tenant: tenant id
 * @weight: 1..%LLMOS_MAX_WEIGHT
 *
 * Return: 0, -EINVAL, -ENOMEM, -ENOSPC (a new tenant past the module's
 * max_tenants, none idle), or -EPERM outside a callback.
 */
__bpf_kfunc s32 llmos_set_tenant_weight(u32 tenant, u32 weight)
{
	struct llmos_core_tenant *spare = NULL;
	struct llmos_core_sched *s = llmos_sched_core();
	int ret;

	if (!llmos_kfunc_ok())
		return -EPERM;
	llmos_sched_limits();
	if (!llmos_core_tenant_find(s, tenant))
		spare = kzalloc(sizeof(*spare), GFP_ATOMIC | __GFP_ACCOUNT);
	ret = llmos_core_set_weight(s, tenant, weight, &spare);
	kfree(spare);
	return ret;
}

/**
 * llmos_policy_error() - the policy gives up: it is ejected when the
 *	current callback returns
 * @code: a code of the policy's choosing, kept in the exit information
 */
__bpf_kfunc void llmos_policy_error(s64 code)
{
	if (llmos_kfunc_ok())
		llmos_bpf_fault(LLMOS_EXIT_ERROR, code, 0);
}

__bpf_kfunc_end_defs();

BTF_KFUNCS_START(llmos_kfunc_ids)
BTF_ID_FLAGS(func, llmos_create_queue)
BTF_ID_FLAGS(func, llmos_destroy_queue)
BTF_ID_FLAGS(func, llmos_queue_insert, KF_TRUSTED_ARGS)
BTF_ID_FLAGS(func, llmos_queue_insert_fifo, KF_TRUSTED_ARGS)
BTF_ID_FLAGS(func, llmos_queue_move_to_worker, KF_TRUSTED_ARGS)
BTF_ID_FLAGS(func, llmos_queue_len)
BTF_ID_FLAGS(func, llmos_queue_peek)
BTF_ID_FLAGS(func, llmos_queue_peek_key)
BTF_ID_FLAGS(func, llmos_set_tenant_weight)
BTF_ID_FLAGS(func, llmos_policy_error)
BTF_KFUNCS_END(llmos_kfunc_ids)

/* Only llmos_sched_ops programs, not other struct_ops types. */
static int llmos_kfunc_filter(const struct bpf_prog *prog, u32 kfunc_id)
{
	if (!btf_id_set8_contains(&llmos_kfunc_ids, kfunc_id))
		return 0;
	return llmos_bpf_prog_is_policy(prog) ? 0 : -EACCES;
}

static const struct btf_kfunc_id_set llmos_kfunc_set = {
	.owner = THIS_MODULE,
	.set = &llmos_kfunc_ids,
	.filter = llmos_kfunc_filter,
};

/**
 * llmos_kfuncs_init() - make the kfuncs available to struct_ops programs
 *
 * Return: 0 or a negative errno.
 */
int llmos_kfuncs_init(void)
{
	return register_btf_kfunc_id_set(BPF_PROG_TYPE_STRUCT_OPS,
					 &llmos_kfunc_set);
}
