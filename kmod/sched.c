// SPDX-License-Identifier: GPL-2.0-only
/*
 * llmos: the request scheduler's kernel side - clients, workers and the
 * ioctls around the policy-free core in core/.
 *
 * Every open /dev/llmos is a client (struct llmos_client). Its requests are
 * kernel objects (struct llmos_kreq) embedding the core's request; the
 * client owns them from SUBMIT until WAIT collects them, or until its file
 * is closed. One spinlock serialises the core and every client's lists;
 * nothing under it sleeps or touches user memory.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/capability.h>
#include <linux/fs.h>
#include <linux/hashtable.h>
#include <linux/jiffies.h>
#include <linux/list.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/poll.h>
#include <linux/sched/signal.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/timekeeping.h>
#include <linux/uaccess.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include <linux/llmos.h>

#include "core/llmos_core.h"
#include "llmos.h"
#include "llmos_bpf.h"

#define CREATE_TRACE_POINTS
#include "trace.h"

static unsigned int max_client_requests = 65536;
module_param(max_client_requests, uint, 0644);
MODULE_PARM_DESC(max_client_requests,
		 "unfinished and uncollected requests one open /dev/llmos may have");

static unsigned int max_user_requests = 131072;
module_param(max_user_requests, uint, 0644);
MODULE_PARM_DESC(max_user_requests,
		 "unfinished and uncollected requests of all the files one user opened (0: no limit)");

static unsigned int max_tenants = 65536;
module_param(max_tenants, uint, 0644);
MODULE_PARM_DESC(max_tenants,
		 "most tenants kept (0: no limit): past it a new one takes the place of the one idle the longest, or is refused (ENOSPC)");

/**
 * struct llmos_sched_user - the requests of the files one user opened
 * @node: in llmos_sched_users
 * @uid: the user (inside a user namespace, the one who made it)
 * @files: open files of the user
 * @nr_reqs: their unfinished and uncollected requests
 *
 * Under llmos_sched.lock.
 */
struct llmos_sched_user {
	struct hlist_node node;
	kuid_t uid;
	u32 files;
	u32 nr_reqs;
};

static DEFINE_HASHTABLE(llmos_sched_users, 6);

/* Requests a closing file frees per hold of the scheduler's lock. */
#define LLMOS_RELEASE_BATCH 1024

/**
 * struct llmos_client - an open /dev/llmos
 * @worker: the core's worker, valid while @is_worker
 * @is_worker: WORKER_REGISTER was done
 * @reqs: every request it submitted and has not collected
 * @done: its finished requests, oldest first, not collected yet
 * @nr_reqs: length of @reqs
 * @user: whose requests they count as (the opener)
 * @wq: WAIT and poll() sleep here
 * @park_dispatch: an io_uring DISPATCH waiting for work, or NULL
 * @park_node: in llmos_sched.parked while @park_dispatch is set
 * @park_wait: an io_uring WAIT waiting for a finished request, or NULL
 * @park_wait_id: the request @park_wait waits for (0: any)
 * @park_deadline: jiffies when the parked DISPATCH ([0]) or WAIT ([1])
 *	times out (0: never)
 * @park_timeout: completes a parked command whose deadline passed
 * @dispatch_gen: llmos_sched.work_gen when a DISPATCH of it last found
 *	nothing: it waits for that to change
 * @t_short: ns since its DISPATCHes got fewer requests than they asked for
 *	and it had room for (0: the last one got all): the watchdog's measure
 *	of a policy keeping a worker waiting
 * @t_looked: ns of its last DISPATCH's look
 * @t_asked: ns its last DISPATCH that waited (asleep or parked) stopped
 *	waiting: with @t_looked, when it was last seen asking for work
 * @sleepers: its ioctl DISPATCHes asleep waiting for work
 * @finished: requests of it that finished so far (their done_seq)
 *
 * All fields but @wq and @park_timeout are under llmos_sched.lock.
 */
struct llmos_client {
	struct llmos_core_worker worker;
	bool is_worker;
	struct list_head reqs;
	struct list_head done;
	u32 nr_reqs;
	struct llmos_sched_user *user;
	wait_queue_head_t wq;
	struct io_uring_cmd *park_dispatch;
	struct list_head park_node;
	struct io_uring_cmd *park_wait;
	u64 park_wait_id;
	unsigned long park_deadline[2];
	struct delayed_work park_timeout[2];
	u64 dispatch_gen;
	u64 t_short;
	u64 t_looked;
	u64 t_asked;
	u32 sleepers;
	u64 finished;
};

/**
 * struct llmos_kreq - a request
 * @core: the core's request
 * @client: the client that submitted it
 * @ms_len: the length of its mindspace (0: none), which results lie inside
 * @node: in @client's reqs
 * @done_node: in @client's done list once finished, until a WAIT takes it
 * @done_seq: its place among @client's finished requests (1, 2, ...)
 * @collecting: a WAIT took it off the done list and copies it out: it is
 *	forgotten once that WAIT has written it, else put back in its place
 */
struct llmos_kreq {
	struct llmos_core_req core;
	struct llmos_client *client;
	u64 ms_len;
	struct list_head node;
	struct list_head done_node;
	u64 done_seq;
	bool collecting;
};

static struct {
	spinlock_t lock;	/* protects core, every client's lists */
	struct llmos_core_sched core;
	wait_queue_head_t work_wq;	/* workers waiting in DISPATCH */
	struct list_head parked;	/* clients with a parked DISPATCH */
	u64 work_gen;			/* under lock: bumped by each kick */
	u32 nr_workers;			/* under lock */
	atomic_t nr_clients;
	atomic_long_t nr_reqs;		/* llmos_kreq objects alive */
} llmos_sched;

static struct kmem_cache *llmos_req_cache;

static struct llmos_kreq *llmos_kreq(struct llmos_core_req *r)
{
	return container_of(r, struct llmos_kreq, core);
}

static struct llmos_client *llmos_client(struct llmos_ucmd *ucmd)
{
	return ucmd->file->private_data;
}

static bool llmos_req_finished(const struct llmos_core_req *r)
{
	return r->state == LLMOS_REQ_COMPLETED ||
	       r->state == LLMOS_REQ_FAILED || r->state == LLMOS_REQ_CANCELLED;
}

static u32 llmos_worker_room(const struct llmos_client *c)
{
	const struct llmos_core_worker *w = &c->worker;

	return w->capacity > w->inflight.nr ? w->capacity - w->inflight.nr : 0;
}

/*
 * Something changed that may give a worker work (a request came or went
 * back, a worker got room, the policy changed): DISPATCHes that found
 * nothing since the last kick look again. Wakes the blocked ones, and
 * completes parked io_uring DISPATCHes of workers with room (they take
 * their requests in their own task) while requests are queued: with the
 * built-in policy, as many as they can feed; with a BPF policy, which may
 * give them to some workers only, all of them. Idle workers are kicked
 * first: one that runs requests takes new ones only when its thread next
 * enters the kernel (after its step), an idle one at once. Under the lock.
 */
static void llmos_kick_workers(void)
{
	u32 queued = llmos_core_queued(&llmos_sched.core);
	u32 budget = queued && llmos_sched.core.policy ? U32_MAX : queued;
	struct llmos_client *c, *tmp;
	int pass;

	lockdep_assert_held(&llmos_sched.lock);
	llmos_sched.work_gen++;
	if (wq_has_sleeper(&llmos_sched.work_wq))
		wake_up(&llmos_sched.work_wq);
	for (pass = 0; pass < 2 && budget; pass++) {
		list_for_each_entry_safe(c, tmp, &llmos_sched.parked,
					 park_node) {
			u32 room = llmos_worker_room(c);

			if (!budget)
				break;
			if (!room || (!pass && c->worker.inflight.nr))
				continue;
			list_del_init(&c->park_node);
			llmos_uring_kick(c->park_dispatch);
			c->park_dispatch = NULL;
			c->t_asked = ktime_get_ns();
			budget -= min(budget, room);
		}
	}
}

/**
 * llmos_sched_limits() - hand the module's limits, as they are now, to the
 *	core; with the lock held
 */
void llmos_sched_limits(void)
{
	llmos_sched.core.max_tenants = READ_ONCE(max_tenants);
}

/**
 * llmos_sched_core() - the scheduler's core, for the BPF policy glue
 *
 * Return: the core; use it with the lock held.
 */
struct llmos_core_sched *llmos_sched_core(void)
{
	return &llmos_sched.core;
}

/**
 * llmos_sched_lock() - take the scheduler's lock
 */
void llmos_sched_lock(void)
	__acquires(&llmos_sched.lock)
{
	spin_lock(&llmos_sched.lock);
}

/**
 * llmos_sched_unlock() - release the scheduler's lock
 */
void llmos_sched_unlock(void)
	__releases(&llmos_sched.lock)
{
	spin_unlock(&llmos_sched.lock);
}

/**
 * llmos_sched_kick() - requests changed hands: wake the workers that may
 *	take them. Under the lock.
 */
void llmos_sched_kick(void)
{
	llmos_kick_workers();
}

/**
 * llmos_kick_again() - a kicked DISPATCH took nothing, for a reason of its
 *	own (its ring is going): the other workers look. Takes the lock.
 */
void llmos_kick_again(void)
{
	spin_lock(&llmos_sched.lock);
	llmos_kick_workers();
	spin_unlock(&llmos_sched.lock);
}

/* Tell @kr's client that it finished. Under the lock. */
static void llmos_req_notify(struct llmos_kreq *kr)
{
	struct llmos_client *c = kr->client;

	lockdep_assert_held(&llmos_sched.lock);
	trace_req_complete(kr->core.id, kr->core.state, kr->core.status,
			   kr->core.tokens, kr->core.t_end - kr->core.t_submit);
	kr->done_seq = ++c->finished;
	list_add_tail(&kr->done_node, &c->done);
	if (wq_has_sleeper(&c->wq))
		wake_up(&c->wq);
	if (c->park_wait &&
	    (!c->park_wait_id || c->park_wait_id == kr->core.id)) {
		llmos_uring_kick(c->park_wait);
		c->park_wait = NULL;
	}
}

static void llmos_wait_recheck(struct llmos_client *c);

/* Forget a finished request entirely. Under the lock. */
static void llmos_req_free(struct llmos_kreq *kr)
{
	lockdep_assert_held(&llmos_sched.lock);
	llmos_core_release(&llmos_sched.core, &kr->core);
	list_del(&kr->node);
	kr->client->nr_reqs--;
	kr->client->user->nr_reqs--;
	kmem_cache_free(llmos_req_cache, kr);
	atomic_long_dec(&llmos_sched.nr_reqs);
}

/*
 * Give the command just parked in @slot its @deadline (jiffies, 0: none).
 * Under the lock: the work is armed in the order commands park.
 */
static void llmos_park_arm(struct llmos_client *c, int slot,
			   unsigned long deadline)
{
	lockdep_assert_held(&llmos_sched.lock);
	c->park_deadline[slot] = deadline;
	if (deadline)
		mod_delayed_work(system_wq, &c->park_timeout[slot],
				 time_after(deadline, jiffies) ?
				 deadline - jiffies : 0);
}

/*
 * Complete @c's parked DISPATCH (@slot 0) or WAIT (@slot 1) with
 * -ETIMEDOUT when its deadline passed, or look again at its deadline: the
 * work may be stale (the command it was armed for completed, another
 * parked since with a deadline of its own).
 */
static void llmos_park_expire(struct llmos_client *c, int slot)
{
	struct io_uring_cmd **parked;
	unsigned long deadline;

	spin_lock(&llmos_sched.lock);
	parked = slot ? &c->park_wait : &c->park_dispatch;
	deadline = c->park_deadline[slot];
	if (*parked && deadline) {
		if (time_after_eq(jiffies, deadline)) {
			if (!slot) {
				list_del_init(&c->park_node);
				c->t_asked = ktime_get_ns();
			}
			llmos_uring_timeout(*parked);
			*parked = NULL;
		} else {
			llmos_park_arm(c, slot, deadline);
		}
	}
	spin_unlock(&llmos_sched.lock);
}

static void llmos_park_dispatch_expire(struct work_struct *work)
{
	llmos_park_expire(container_of(to_delayed_work(work),
				       struct llmos_client, park_timeout[0]), 0);
}

static void llmos_park_wait_expire(struct work_struct *work)
{
	llmos_park_expire(container_of(to_delayed_work(work),
				       struct llmos_client, park_timeout[1]), 1);
}

/*
 * The user @uid, with one more file: found, or made (allocated outside the
 * lock). NULL when memory is short.
 */
static struct llmos_sched_user *llmos_sched_user_get(kuid_t uid)
{
	struct llmos_sched_user *u, *spare;

	spare = kzalloc(sizeof(*spare), GFP_KERNEL_ACCOUNT);
	spin_lock(&llmos_sched.lock);
	hash_for_each_possible(llmos_sched_users, u, node, __kuid_val(uid))
		if (uid_eq(u->uid, uid))
			goto found;
	u = spare;
	spare = NULL;
	if (u) {
		u->uid = uid;
		hash_add(llmos_sched_users, &u->node, __kuid_val(uid));
	}
found:
	if (u)
		u->files++;
	spin_unlock(&llmos_sched.lock);
	kfree(spare);
	return u;
}

/* One file of @u fewer, its requests gone; forgotten with its last. */
static void llmos_sched_user_put(struct llmos_sched_user *u)
{
	lockdep_assert_held(&llmos_sched.lock);
	if (--u->files)
		return;
	WARN_ON(u->nr_reqs);
	hash_del(&u->node);
	kfree(u);
}

/**
 * llmos_client_open() - open of /dev/llmos: a new client
 * @inode: the device inode
 * @file: the new file
 *
 * Return: 0 or -ENOMEM.
 */
int llmos_client_open(struct inode *inode, struct file *file)
{
	struct llmos_client *c;

	c = kzalloc(sizeof(*c), GFP_KERNEL_ACCOUNT);
	if (!c)
		return -ENOMEM;
	c->user = llmos_sched_user_get(llmos_caller_uid());
	if (!c->user) {
		kfree(c);
		return -ENOMEM;
	}
	INIT_LIST_HEAD(&c->reqs);
	INIT_LIST_HEAD(&c->done);
	INIT_LIST_HEAD(&c->park_node);
	init_waitqueue_head(&c->wq);
	INIT_DELAYED_WORK(&c->park_timeout[0], llmos_park_dispatch_expire);
	INIT_DELAYED_WORK(&c->park_timeout[1], llmos_park_wait_expire);
	file->private_data = c;
	atomic_inc(&llmos_sched.nr_clients);
	return 0;
}

/**
 * llmos_client_release() - last close of a client
 * @inode: the device inode
 * @file: the file
 *
 * A worker's requests go back to their tenants; the client's unfinished
 * requests are cancelled and all of them freed.
 *
 * Return: 0.
 */
int llmos_client_release(struct inode *inode, struct file *file)
{
	struct llmos_client *c = file->private_data;
	struct llmos_kreq *kr, *tmp;
	u32 requeued = 0, held = 0;

	spin_lock(&llmos_sched.lock);
	if (c->is_worker) {
		llmos_bpf_worker(&c->worker, false);
		requeued = llmos_core_worker_remove(&llmos_sched.core, &c->worker);
		llmos_sched.nr_workers--;
		trace_sched_worker(c->worker.id, false, c->worker.capacity,
				   requeued);
	}
	/*
	 * In batches, the lock dropped between them: a file may hold
	 * max_client_requests, and everyone else's calls wait for the lock.
	 * Meanwhile a worker may finish one of them, or an administrator
	 * cancel it: it is then on the done list, which it leaves here.
	 */
	for (;;) {
		u32 n = 0;

		list_for_each_entry_safe(kr, tmp, &c->reqs, node) {
			if (n++ == LLMOS_RELEASE_BATCH)
				break;
			if (!llmos_req_finished(&kr->core)) {
				held += !!kr->core.worker; /* room for its worker */
				llmos_core_cancel(&llmos_sched.core, &kr->core,
						  ktime_get_ns());
			} else {
				list_del(&kr->done_node);
			}
			llmos_req_free(kr);
		}
		llmos_bpf_check_fault(); /* dequeue callbacks ran */
		if (requeued || held)
			llmos_kick_workers();
		requeued = 0;
		held = 0;
		if (list_empty(&c->reqs))
			break;
		spin_unlock(&llmos_sched.lock);
		cond_resched();
		spin_lock(&llmos_sched.lock);
	}
	llmos_sched_user_put(c->user);
	spin_unlock(&llmos_sched.lock);
	/* Nothing is parked (a parked command holds the file): only stale. */
	cancel_delayed_work_sync(&c->park_timeout[0]);
	cancel_delayed_work_sync(&c->park_timeout[1]);
	kfree(c);
	atomic_dec(&llmos_sched.nr_clients);
	return 0;
}

/**
 * llmos_client_poll() - poll() on a client: POLLIN while a finished
 *	request waits to be collected
 * @file: the file
 * @wait: poll table
 *
 * Return: the poll mask.
 */
__poll_t llmos_client_poll(struct file *file, struct poll_table_struct *wait)
{
	struct llmos_client *c = file->private_data;
	__poll_t mask = 0;

	poll_wait(file, &c->wq, wait);
	spin_lock(&llmos_sched.lock);
	if (!list_empty(&c->done))
		mask |= EPOLLIN | EPOLLRDNORM;
	spin_unlock(&llmos_sched.lock);
	return mask;
}

/**
 * llmos_worker_register() - LLMOS_IOC_WORKER_REGISTER
 * @ucmd: the command, a struct llmos_worker_register
 *
 * Return: 0 or a negative errno.
 */
int llmos_worker_register(struct llmos_ucmd *ucmd)
{
	struct llmos_worker_register *cmd = ucmd->cmd;
	struct llmos_client *c = llmos_client(ucmd);
	int ret = 0;

	if (cmd->flags || !cmd->capacity || cmd->capacity > LLMOS_MAX_CAPACITY ||
	    cmd->numa_node < -1)
		return -EINVAL;
	ret = llmos_worker_check();
	if (ret)
		return ret;
	spin_lock(&llmos_sched.lock);
	if (c->is_worker) {
		ret = -EBUSY;
	} else {
		c->worker.capacity = cmd->capacity;
		c->worker.numa_node = cmd->numa_node;
		c->worker.model = cmd->model;
		c->worker.owner = c;
		llmos_core_worker_add(&llmos_sched.core, &c->worker);
		c->is_worker = true;
		llmos_sched.nr_workers++;
		cmd->out_worker_id = c->worker.id;
		trace_sched_worker(c->worker.id, true, c->worker.capacity, 0);
		llmos_bpf_worker(&c->worker, true);
	}
	spin_unlock(&llmos_sched.lock);
	return ret ?: llmos_ucmd_respond(ucmd, sizeof(*cmd));
}

/*
 * A tenant for @tenant ready before the lock is taken for good: NULL when
 * it exists already (or memory is short: the core then says -ENOMEM).
 */
static struct llmos_core_tenant *llmos_tenant_spare(u32 tenant)
{
	bool exists;

	spin_lock(&llmos_sched.lock);
	exists = llmos_core_tenant_find(&llmos_sched.core, tenant);
	spin_unlock(&llmos_sched.lock);
	return exists ? NULL : kzalloc(sizeof(struct llmos_core_tenant),
				       GFP_KERNEL_ACCOUNT);
}

/* A new request of @c, not submitted yet; NULL when memory is short. */
static struct llmos_kreq *llmos_kreq_new(struct llmos_client *c, u32 tenant,
					 u32 prio, u32 cost, u64 deadline_ns,
					 u64 ms_id, u64 ms_len, u64 prompt_off,
					 u64 prompt_len)
{
	struct llmos_kreq *kr;

	kr = kmem_cache_zalloc(llmos_req_cache, GFP_KERNEL_ACCOUNT);
	if (!kr)
		return NULL;
	atomic_long_inc(&llmos_sched.nr_reqs);
	kr->client = c;
	kr->core.tenant = tenant;
	kr->core.prio = prio;
	kr->core.cost = cost;
	kr->core.deadline_ns = deadline_ns;
	kr->core.ms_id = ms_id;
	kr->ms_len = ms_len;
	kr->core.prompt_off = prompt_off;
	kr->core.prompt_len = prompt_len;
	kr->core.owner = kr;
	return kr;
}

/* Free a request that was never submitted. */
static void llmos_kreq_drop(struct llmos_kreq *kr)
{
	kmem_cache_free(llmos_req_cache, kr);
	atomic_long_dec(&llmos_sched.nr_reqs);
}

/*
 * Submit @kr for its client: 0 with its id in *@id, -EAGAIN (the client's
 * limit) or -ENOMEM. A new tenant is allocated outside the lock into
 * *@spare, which the caller frees when it is left over. On failure the
 * caller keeps @kr; on success @kr is the scheduler's (a worker may finish
 * it and the client collect it at once), so only *@id is left to use.
 */
static int llmos_kreq_submit(struct llmos_kreq *kr,
			     struct llmos_core_tenant **spare, u64 *id)
{
	struct llmos_client *c = kr->client;
	unsigned int per_user;
	int ret;

	for (;;) {
		spin_lock(&llmos_sched.lock);
		llmos_sched_limits();
		per_user = READ_ONCE(max_user_requests);
		if (c->nr_reqs >= READ_ONCE(max_client_requests) ||
		    (per_user && c->user->nr_reqs >= per_user))
			ret = -EAGAIN;
		else
			ret = llmos_core_submit(&llmos_sched.core, &kr->core,
						spare, ktime_get_ns());
		llmos_bpf_check_fault();
		if (!ret) {
			*id = kr->core.id;
			list_add_tail(&kr->node, &c->reqs);
			c->nr_reqs++;
			c->user->nr_reqs++;
			trace_req_submit(kr->core.id, kr->core.tenant,
					 kr->core.prio, kr->core.cost,
					 llmos_core_queued(&llmos_sched.core));
			llmos_kick_workers();
		}
		spin_unlock(&llmos_sched.lock);
		if (ret != -ENOMEM || *spare)
			return ret;
		*spare = kzalloc(sizeof(**spare), GFP_KERNEL_ACCOUNT);
		if (!*spare)
			return ret;
	}
}

/*
 * A request of @c submitted whose id the caller could not be told: take it
 * back, as it is now. Another thread of the client may have cancelled it,
 * or a worker finished it, or WAIT collected it already (or is copying it
 * out: that WAIT has it).
 */
static void llmos_take_back(struct llmos_client *c, u64 id)
{
	struct llmos_core_req *r;
	struct llmos_kreq *kr;

	spin_lock(&llmos_sched.lock);
	r = llmos_core_find(&llmos_sched.core, id);
	if (r && llmos_kreq(r)->client == c && !llmos_kreq(r)->collecting) {
		bool held = r->worker;

		kr = llmos_kreq(r);
		if (llmos_core_cancel(&llmos_sched.core, r, ktime_get_ns()))
			list_del(&kr->done_node); /* it had finished */
		else
			llmos_bpf_check_fault(); /* its dequeue ran */
		llmos_req_free(kr);
		if (held)
			llmos_kick_workers(); /* its worker has room */
		/* A WAIT for it, or any, may now have nothing to wait for. */
		llmos_wait_recheck(c);
	}
	spin_unlock(&llmos_sched.lock);
}

/**
 * llmos_submit() - LLMOS_IOC_SUBMIT
 * @ucmd: the command, a struct llmos_submit
 *
 * Return: 0 with the request's id in out_id, or a negative errno.
 */
int llmos_submit(struct llmos_ucmd *ucmd)
{
	struct llmos_submit *cmd = ucmd->cmd;
	struct llmos_client *c = llmos_client(ucmd);
	struct llmos_core_tenant *spare = NULL;
	struct llmos_kreq *kr;
	int admin = -1;
	u64 id, ms_len;
	int ret;

	if (cmd->flags || cmd->__reserved || cmd->priority > LLMOS_MAX_PRIORITY)
		return -EINVAL;
	ret = llmos_tenant_check(cmd->tenant, &admin);
	if (ret)
		return ret;
	ret = llmos_ms_check_request(cmd->ms_id, cmd->prompt_off,
				     cmd->prompt_len, &ms_len);
	if (ret)
		return ret;
	kr = llmos_kreq_new(c, cmd->tenant, cmd->priority,
			    cmd->cost, cmd->deadline_ns, cmd->ms_id, ms_len,
			    cmd->prompt_off, cmd->prompt_len);
	if (!kr)
		return -ENOMEM;
	ret = llmos_kreq_submit(kr, &spare, &id);
	kfree(spare);
	if (ret) {
		llmos_kreq_drop(kr);
		return ret;
	}
	cmd->out_id = id;

	ret = llmos_ucmd_respond(ucmd, sizeof(*cmd));
	if (ret)
		llmos_take_back(c, id);
	return ret;
}

/*
 * The bytes of a user element of @size bytes past the @known ones the
 * kernel reads: 0 when they are zero (or there are none), -E2BIG when
 * some are not (the element asks for what this kernel does not know), or
 * -EFAULT.
 */
static int llmos_uelem_tail(const void __user *u, size_t known, size_t size)
{
	int ret;

	if (size <= known)
		return 0;
	ret = check_zeroed_user(u + known, size - known);
	if (ret < 0)
		return ret;
	return ret ? 0 : -E2BIG;
}

/**
 * llmos_submit_batch() - LLMOS_IOC_SUBMIT_BATCH
 * @ucmd: the command, a struct llmos_submit_batch
 *
 * Every entry is read and checked before any is submitted. An entry
 * larger than the kernel's struct with non-zero bytes in the part the
 * kernel does not know is not submitted: its out_error is -E2BIG, as
 * SUBMIT's would be.
 *
 * Return: 0 when every entry was read and written back (each has its
 * out_id and out_error), or a negative errno (then no request of the
 * batch stays submitted).
 */
int llmos_submit_batch(struct llmos_ucmd *ucmd)
{
	struct llmos_submit_batch *cmd = ucmd->cmd;
	struct llmos_client *c = llmos_client(ucmd);
	void __user *uptr = u64_to_user_ptr(cmd->entries_uptr);
	struct llmos_core_tenant *spare = NULL;
	struct llmos_submit_entry *e;
	struct llmos_kreq **kr;
	u64 ms_len;
	u32 i, done = 0;
	int admin = -1;
	int ret = 0;

	if (cmd->flags || cmd->__reserved || !cmd->count ||
	    cmd->count > LLMOS_MAX_DISPATCH ||
	    cmd->entry_size < sizeof(*e) || cmd->entry_size > PAGE_SIZE)
		return -EINVAL;
	e = kcalloc(cmd->count, sizeof(*e), GFP_KERNEL);
	kr = kcalloc(cmd->count, sizeof(*kr), GFP_KERNEL);
	if (!e || !kr) {
		ret = -ENOMEM;
		goto out;
	}
	for (i = 0; i < cmd->count; i++) {
		void __user *u = uptr + (size_t)i * cmd->entry_size;
		int tail;

		if (copy_from_user(&e[i], u, sizeof(*e))) {
			ret = -EFAULT;
			goto out;
		}
		tail = llmos_uelem_tail(u, sizeof(*e), cmd->entry_size);
		if (tail == -EFAULT) {
			ret = tail;
			goto out;
		}
		e[i].out_id = 0;
		e[i].out_error = tail ?: -EINVAL;
		if (tail || e[i].__reserved || e[i].__reserved2 ||
		    e[i].priority > LLMOS_MAX_PRIORITY)
			continue;
		e[i].out_error = llmos_tenant_check(e[i].tenant, &admin);
		if (e[i].out_error)
			continue;
		e[i].out_error = llmos_ms_check_request(e[i].ms_id,
							e[i].prompt_off,
							e[i].prompt_len,
							&ms_len);
		if (e[i].out_error)
			continue;
		e[i].out_error = -ENOMEM;
		kr[i] = llmos_kreq_new(c, e[i].tenant, e[i].priority,
				       e[i].cost, e[i].deadline_ns, e[i].ms_id,
				       ms_len, e[i].prompt_off,
				       e[i].prompt_len);
	}

	for (i = 0; i < cmd->count; i++) {
		if (!kr[i])
			continue;
		e[i].out_error = llmos_kreq_submit(kr[i], &spare,
						   &e[i].out_id);
		if (e[i].out_error)
			llmos_kreq_drop(kr[i]);
		else
			done++;
		kr[i] = NULL;
	}
	kfree(spare);
	for (i = 0; i < cmd->count; i++) {
		void __user *u = uptr + (size_t)i * cmd->entry_size;

		if (put_user(e[i].out_id, (u64 __user *)(u +
			     offsetof(struct llmos_submit_entry, out_id))) ||
		    put_user(e[i].out_error, (s32 __user *)(u +
			     offsetof(struct llmos_submit_entry, out_error))))
			ret = -EFAULT;
	}
	cmd->out_done = done;
	if (!ret)
		ret = llmos_ucmd_respond(ucmd, sizeof(*cmd));
	/* The caller may not know the ids: the requests are taken back. */
	for (i = 0; ret && i < cmd->count; i++)
		if (e[i].out_id)
			llmos_take_back(c, e[i].out_id);
out:
	for (i = 0; kr && i < cmd->count; i++) {
		if (kr[i])
			llmos_kreq_drop(kr[i]);
	}
	kfree(kr);
	kfree(e);
	return ret;
}

/*
 * A user array of @n elements of @elem_size bytes: @n in
 * 1..LLMOS_MAX_DISPATCH, @elem_size from @min to a page, and all of it
 * writable (checked before anything is done that the replies must reach).
 */
static int llmos_uarray_check(u64 uptr, u32 n, u32 elem_size, size_t min)
{
	if (!n || n > LLMOS_MAX_DISPATCH || elem_size < min ||
	    elem_size > PAGE_SIZE)
		return -EINVAL;
	if (clear_user(u64_to_user_ptr(uptr), (size_t)n * elem_size))
		return -EFAULT;
	return 0;
}

/* Whether a kick came since @c's DISPATCH found nothing at @gen. */
static bool llmos_work_changed(u64 gen)
{
	return READ_ONCE(llmos_sched.work_gen) != gen;
}

static void llmos_desc_fill(struct llmos_req_desc *d,
			    const struct llmos_core_req *r)
{
	d->id = r->id;
	d->tenant = r->tenant;
	d->priority = r->prio;
	d->cost = r->cost;
	d->requeues = r->requeues;
	d->deadline_ns = r->deadline_ns;
	d->ms_id = r->ms_id;
	d->prompt_off = r->prompt_off;
	d->prompt_len = r->prompt_len;
	d->submit_ns = r->t_submit;
}

/*
 * A dispatch whose descriptors or count could not be written (read-only
 * memory, or memory that went away under it): its requests go back to the front of their
 * tenants, as when a worker goes, instead of staying with a worker that
 * does not know it has them. Looked up again: cancelled meanwhile, a
 * request is not given back.
 */
static void llmos_dispatch_give_back(struct llmos_client *c,
				     const struct llmos_req_desc *descs, u32 n)
{
	u32 i, back = 0;

	spin_lock(&llmos_sched.lock);
	for (i = 0; i < n; i++) {
		struct llmos_core_req *r = llmos_core_find(&llmos_sched.core,
							   descs[i].id);

		if (r && !llmos_core_give_back(&llmos_sched.core, &c->worker, r))
			back++;
	}
	if (back)
		llmos_kick_workers();
	spin_unlock(&llmos_sched.lock);
}

/**
 * llmos_dispatch_into() - hand a worker what is there for it, now
 * @c: the worker's client
 * @descs_uptr: user array of @max elements of @desc_size bytes, checked
 *	writable by the caller
 * @desc_size: element size (at least sizeof(struct llmos_req_desc))
 * @max: most requests to take
 * @count_uptr: where to write how many were written, or NULL
 *
 * When the descriptors or the count cannot be written, the requests go
 * back to their tenants.
 *
 * Return: requests written (0: none there), or -ENOMEM or -EFAULT.
 */
int llmos_dispatch_into(struct llmos_client *c, u64 descs_uptr, u32 desc_size,
			u32 max, u32 __user *count_uptr)
{
	void __user *uptr = u64_to_user_ptr(descs_uptr);
	struct llmos_core_req **reqs;
	struct llmos_req_desc *descs;
	u32 n, i, want;
	u64 gen, now, seen;
	bool paused;
	int ret;

	reqs = kcalloc(max, sizeof(*reqs), GFP_KERNEL);
	descs = kcalloc(max, sizeof(*descs), GFP_KERNEL);
	if (!reqs || !descs) {
		ret = -ENOMEM;
		goto out;
	}
	spin_lock(&llmos_sched.lock);
	/*
	 * The generation before looking: a kick while looking (an ejected
	 * policy gives its requests back, and kicks) is not taken as seen.
	 */
	gen = llmos_sched.work_gen;
	want = min(max, llmos_worker_room(c));
	now = ktime_get_ns();
	n = llmos_core_dispatch(&llmos_sched.core, &c->worker, reqs, max, now);
	llmos_bpf_check_fault();
	if (!n)
		c->dispatch_gen = gen;
	/*
	 * Short since its last look that got all it could take, while it
	 * kept asking: one that stopped asking for a while (a step longer
	 * than the gap, between looks that wait for nothing) starts again.
	 */
	seen = max(c->t_looked, c->t_asked);
	paused = c->t_short && !c->sleepers && !c->park_dispatch &&
		 now > seen && now - seen > llmos_bpf_asking_gap();
	if (c->t_short && (n >= want || paused)) {
		/* Ended now, or at its last look before the pause. */
		llmos_bpf_count_short(c->t_short, paused ? seen : now);
		c->t_short = 0;
	}
	if (n < want && !c->t_short)
		c->t_short = now;
	c->t_looked = now;
	for (i = 0; i < n; i++) {
		llmos_desc_fill(&descs[i], reqs[i]);
		trace_req_dispatch(reqs[i]->id, c->worker.id,
				   reqs[i]->t_dispatch - reqs[i]->t_submit,
				   reqs[i]->requeues);
	}
	spin_unlock(&llmos_sched.lock);
	ret = llmos_copy_to_uarray(uptr, desc_size, descs, sizeof(*descs), n);
	if (!ret && count_uptr && put_user(n, count_uptr))
		ret = -EFAULT;
	if (ret)
		llmos_dispatch_give_back(c, descs, n);
	else
		ret = n;
out:
	kfree(descs);
	kfree(reqs);
	return ret;
}

/**
 * llmos_dispatch_check() - validate a DISPATCH command
 * @c: the caller's client
 * @cmd: the command
 *
 * Return: 0, -EINVAL, or -EFAULT when the array is not writable (checked
 * now: once dispatched, requests must reach it).
 */
int llmos_dispatch_check(struct llmos_client *c,
			 const struct llmos_dispatch *cmd)
{
	if (cmd->flags & ~LLMOS_NONBLOCK || !c->is_worker)
		return -EINVAL;
	return llmos_uarray_check(cmd->descs_uptr, cmd->max, cmd->desc_size,
				  sizeof(struct llmos_req_desc));
}

/**
 * llmos_dispatch() - LLMOS_IOC_DISPATCH
 * @ucmd: the command, a struct llmos_dispatch
 *
 * Return: 0 with out_count requests written, or a negative errno.
 */
int llmos_dispatch(struct llmos_ucmd *ucmd)
{
	struct llmos_dispatch *cmd = ucmd->cmd;
	struct llmos_client *c = llmos_client(ucmd);
	struct llmos_dispatch __user *u = ucmd->ubuffer;
	u32 __user *count_uptr = &u->out_count;
	long timeout;
	u64 gen;
	int n;

	n = llmos_dispatch_check(c, cmd);
	if (n)
		return n;
	timeout = cmd->timeout_ms ? msecs_to_jiffies(cmd->timeout_ms) :
				    MAX_SCHEDULE_TIMEOUT;
	for (;;) {
		n = llmos_dispatch_into(c, cmd->descs_uptr, cmd->desc_size,
					cmd->max, count_uptr);
		if (n < 0)
			return n;
		if (n)
			return 0; /* out_count is written */
		if (cmd->flags & LLMOS_NONBLOCK)
			return -EAGAIN;
		/*
		 * Queued requests may not be this worker's (another worker's
		 * local queue, a policy holding them back): sleep until a kick,
		 * not while requests are queued.
		 */
		if (signal_pending(current))
			return -EINTR;
		cond_resched();
		spin_lock(&llmos_sched.lock);
		gen = c->dispatch_gen;
		c->sleepers++;
		spin_unlock(&llmos_sched.lock);
		timeout = wait_event_interruptible_timeout(llmos_sched.work_wq,
							   llmos_work_changed(gen),
							   timeout);
		spin_lock(&llmos_sched.lock);
		c->sleepers--;
		c->t_asked = ktime_get_ns();
		spin_unlock(&llmos_sched.lock);
		if (timeout < 0)
			return -EINTR;
		if (!timeout)
			return -ETIMEDOUT;
	}
}

/**
 * llmos_worker_short_since() - how long a policy has kept a worker waiting
 * @w: a registered worker
 * @now: ktime_get_ns() now, read under the lock
 * @gap: longest time between the looks of a worker that polls
 *
 * A worker waits for a policy when its DISPATCHes got fewer requests than
 * they asked for and it had room for, and it still asks: one of its
 * DISPATCHes is waiting (asleep or parked), or it looked within @gap (a
 * worker that polls between its steps). A worker with room that asks for
 * one request at a time and got it, or that stopped asking, does not
 * wait. Under the lock.
 *
 * Return: when it began waiting (ns), or 0 when it does not wait.
 */
u64 llmos_worker_short_since(const struct llmos_core_worker *w, u64 now,
			     u64 gap)
{
	const struct llmos_client *c = container_of(w, struct llmos_client,
						    worker);

	lockdep_assert_held(&llmos_sched.lock);
	if (!c->t_short)
		return 0;
	if (c->sleepers || c->park_dispatch || c->t_looked >= now ||
	    now - c->t_looked <= gap)
		return c->t_short;
	return 0;
}

/**
 * llmos_park_dispatch() - park an io_uring DISPATCH until work comes
 * @c: the worker's client
 * @ioucmd: the command
 * @deadline: jiffies when it completes with -ETIMEDOUT instead (0: never)
 *
 * Return: 0 (parked: llmos_uring_kick() will be called on it), -EBUSY
 * (one is parked already), or -EAGAIN (a kick came since its DISPATCH
 * found nothing: look again now).
 */
int llmos_park_dispatch(struct llmos_client *c, struct io_uring_cmd *ioucmd,
			unsigned long deadline)
{
	int ret = 0;

	spin_lock(&llmos_sched.lock);
	if (c->park_dispatch) {
		ret = -EBUSY;
	} else if (llmos_sched.work_gen != c->dispatch_gen &&
		   llmos_worker_room(c)) {
		/*
		 * Kicked since it found nothing: look again. Not without
		 * room: nothing would come to it, and every SUBMIT or
		 * CANCEL by anyone would make it look again; the kick that
		 * gives it room (with work queued) completes it parked.
		 */
		ret = -EAGAIN;
	} else {
		c->park_dispatch = ioucmd;
		list_add_tail(&c->park_node, &llmos_sched.parked);
		llmos_park_arm(c, 0, deadline);
	}
	spin_unlock(&llmos_sched.lock);
	return ret;
}

/**
 * llmos_unpark() - take back a parked io_uring command (to cancel it)
 * @c: its client
 * @ioucmd: the command
 *
 * Return: whether it was parked (then the caller completes it).
 */
bool llmos_unpark(struct llmos_client *c, struct io_uring_cmd *ioucmd)
{
	bool found = false;

	spin_lock(&llmos_sched.lock);
	if (c->park_dispatch == ioucmd) {
		c->park_dispatch = NULL;
		list_del_init(&c->park_node);
		found = true;
	} else if (c->park_wait == ioucmd) {
		c->park_wait = NULL;
		found = true;
	}
	spin_unlock(&llmos_sched.lock);
	return found;
}

/**
 * llmos_start() - LLMOS_IOC_START
 * @ucmd: the command, a struct llmos_start
 *
 * Return: 0 or a negative errno.
 */
int llmos_start(struct llmos_ucmd *ucmd)
{
	struct llmos_start *cmd = ucmd->cmd;
	struct llmos_client *c = llmos_client(ucmd);
	struct llmos_core_req *r;
	int ret;

	if (cmd->flags || !c->is_worker)
		return -EINVAL;
	spin_lock(&llmos_sched.lock);
	r = llmos_core_find(&llmos_sched.core, cmd->id);
	ret = r ? llmos_core_start(&llmos_sched.core, &c->worker, r,
				   ktime_get_ns()) : -ENOENT;
	if (!ret)
		llmos_bpf_running(r, &c->worker);
	spin_unlock(&llmos_sched.lock);
	return ret;
}

/*
 * COMPLETE of one request by worker @c, or with %LLMOS_COMPLETE_RETURN in
 * @flags its return. Under the lock.
 */
static int llmos_complete_one(struct llmos_client *c, u32 flags, u64 id,
			      s32 status, u32 tokens, u64 result_off,
			      u64 result_len)
{
	struct llmos_core_req *r;
	int ret;

	lockdep_assert_held(&llmos_sched.lock);
	if (status > 0 || status < -MAX_ERRNO)
		return -EINVAL;
	if ((flags & LLMOS_COMPLETE_RETURN) &&
	    (status || tokens || result_off || result_len))
		return -EINVAL;
	r = llmos_core_find(&llmos_sched.core, id);
	if (!r)
		return -ENOENT;
	if (flags & LLMOS_COMPLETE_RETURN)
		return llmos_core_give_back(&llmos_sched.core, &c->worker, r);
	/*
	 * The result lies inside the request's mindspace, if it has one
	 * (asked of a request this worker holds; the core says why another
	 * cannot be completed).
	 */
	if (r->worker == &c->worker && (r->state == LLMOS_REQ_DISPATCHED ||
					r->state == LLMOS_REQ_RUNNING) &&
	    r->ms_id && result_len &&
	    (result_off > llmos_kreq(r)->ms_len ||
	     result_len > llmos_kreq(r)->ms_len - result_off))
		return -EINVAL;
	ret = llmos_core_complete(&llmos_sched.core, &c->worker, r, status,
				  tokens, result_off, result_len,
				  ktime_get_ns());
	if (!ret) {
		llmos_bpf_completed(r);
		llmos_req_notify(llmos_kreq(r));
	}
	return ret;
}

/**
 * llmos_complete() - LLMOS_IOC_COMPLETE
 * @ucmd: the command, a struct llmos_complete
 *
 * Return: 0 or a negative errno.
 */
int llmos_complete(struct llmos_ucmd *ucmd)
{
	struct llmos_complete *cmd = ucmd->cmd;
	struct llmos_client *c = llmos_client(ucmd);
	int ret;

	if ((cmd->flags & ~LLMOS_COMPLETE_RETURN) || !c->is_worker)
		return -EINVAL;
	spin_lock(&llmos_sched.lock);
	ret = llmos_complete_one(c, cmd->flags, cmd->id, cmd->status,
				 cmd->tokens, cmd->result_off, cmd->result_len);
	if (!ret)
		llmos_kick_workers(); /* room again, or work again */
	spin_unlock(&llmos_sched.lock);
	return ret;
}

/**
 * llmos_complete_batch() - LLMOS_IOC_COMPLETE_BATCH
 * @ucmd: the command, a struct llmos_complete_batch
 *
 * Every entry is read and checked before any request is completed. An
 * entry with non-zero bytes past the kernel's struct completes nothing:
 * its out_error is -E2BIG.
 *
 * Return: 0 when every entry was read (each has its out_error), or a
 * negative errno (then no request was completed).
 */
int llmos_complete_batch(struct llmos_ucmd *ucmd)
{
	struct llmos_complete_batch *cmd = ucmd->cmd;
	struct llmos_client *c = llmos_client(ucmd);
	void __user *uptr = u64_to_user_ptr(cmd->entries_uptr);
	struct llmos_complete_entry *e;
	u32 i, done = 0;
	int ret = 0;

	if ((cmd->flags & ~LLMOS_COMPLETE_RETURN) || cmd->__reserved ||
	    !c->is_worker || !cmd->count ||
	    cmd->count > LLMOS_MAX_DISPATCH ||
	    cmd->entry_size < sizeof(*e) || cmd->entry_size > PAGE_SIZE)
		return -EINVAL;
	e = kcalloc(cmd->count, sizeof(*e), GFP_KERNEL);
	if (!e)
		return -ENOMEM;
	for (i = 0; i < cmd->count; i++) {
		void __user *u = uptr + (size_t)i * cmd->entry_size;

		if (copy_from_user(&e[i], u, sizeof(*e))) {
			ret = -EFAULT;
			goto out;
		}
		/* Kept in out_error (which is written, never read). */
		e[i].out_error = llmos_uelem_tail(u, sizeof(*e),
						  cmd->entry_size);
		if (e[i].out_error == -EFAULT) {
			ret = -EFAULT;
			goto out;
		}
	}
	spin_lock(&llmos_sched.lock);
	for (i = 0; i < cmd->count; i++) {
		if (!e[i].out_error)
			e[i].out_error = e[i].__reserved ? -EINVAL :
				llmos_complete_one(c, cmd->flags, e[i].id,
						   e[i].status, e[i].tokens,
						   e[i].result_off,
						   e[i].result_len);
		done += !e[i].out_error;
	}
	if (done)
		llmos_kick_workers();
	spin_unlock(&llmos_sched.lock);
	for (i = 0; i < cmd->count; i++) {
		if (put_user(e[i].out_error, (s32 __user *)(uptr +
			     (size_t)i * cmd->entry_size +
			     offsetof(struct llmos_complete_entry, out_error)))) {
			ret = -EFAULT;
			goto out;
		}
	}
	cmd->out_done = done;
	ret = llmos_ucmd_respond(ucmd, sizeof(*cmd));
out:
	kfree(e);
	return ret;
}

/**
 * llmos_cancel() - LLMOS_IOC_CANCEL
 * @ucmd: the command, a struct llmos_cancel
 *
 * Return: 0 or a negative errno.
 */
int llmos_cancel(struct llmos_ucmd *ucmd)
{
	struct llmos_cancel *cmd = ucmd->cmd;
	struct llmos_client *c = llmos_client(ucmd);
	struct llmos_core_req *r;
	bool admin;
	int ret;

	if (cmd->flags & ~LLMOS_CANCEL_PENDING)
		return -EINVAL;
	if (cmd->flags & LLMOS_CANCEL_PENDING) {
		if (cmd->id)
			return -EINVAL;
		spin_lock(&llmos_sched.lock);
		if (c->park_dispatch) {
			list_del_init(&c->park_node);
			llmos_uring_cancel(c->park_dispatch);
			c->park_dispatch = NULL;
		}
		if (c->park_wait) {
			llmos_uring_cancel(c->park_wait);
			c->park_wait = NULL;
		}
		spin_unlock(&llmos_sched.lock);
		return 0;
	}
	/*
	 * Another client's request needs CAP_SYS_ADMIN, asked outside the
	 * lock (security hooks may sleep); then it is looked up again. To
	 * anyone else it does not exist: ENOENT, as for an id never used, so
	 * that ids cannot be probed (and without an audit record each try).
	 */
	admin = false;
again:
	spin_lock(&llmos_sched.lock);
	r = llmos_core_find(&llmos_sched.core, cmd->id);
	if (r && llmos_kreq(r)->client != c && !admin) {
		spin_unlock(&llmos_sched.lock);
		if (!ns_capable_noaudit(&init_user_ns, CAP_SYS_ADMIN))
			return -ENOENT;
		admin = true;
		goto again;
	}
	if (!r)
		ret = -ENOENT;
	else
		ret = llmos_core_cancel(&llmos_sched.core, r, ktime_get_ns());
	if (!ret) {
		llmos_bpf_check_fault(); /* its dequeue callback ran */
		llmos_req_notify(llmos_kreq(r));
		llmos_kick_workers(); /* its worker, if any, has room */
	}
	spin_unlock(&llmos_sched.lock);
	return ret;
}

/*
 * The finished request WAIT would collect: @id, or the oldest finished.
 * Under the lock. NULL: none yet; ERR_PTR(-ENOENT): @id is not ours, or
 * there is nothing to wait for.
 */
static struct llmos_kreq *llmos_wait_pick(struct llmos_client *c, u64 id)
{
	struct llmos_core_req *r;

	lockdep_assert_held(&llmos_sched.lock);
	if (!id && list_empty(&c->reqs))
		return ERR_PTR(-ENOENT); /* nothing would ever come */
	if (!id)
		return list_first_entry_or_null(&c->done, struct llmos_kreq,
						done_node);
	r = llmos_core_find(&llmos_sched.core, id);
	if (!r || llmos_kreq(r)->client != c)
		return ERR_PTR(-ENOENT);
	/* One another WAIT is copying out is not there yet, or no more. */
	return llmos_req_finished(r) && !llmos_kreq(r)->collecting ?
	       llmos_kreq(r) : NULL;
}

/*
 * Requests of @c came back or went: the waits that looked past them look
 * again. A parked io_uring WAIT completes if it has an answer now (its
 * request, or ENOENT), not with nothing. Under the lock.
 */
static void llmos_wait_recheck(struct llmos_client *c)
{
	lockdep_assert_held(&llmos_sched.lock);
	if (wq_has_sleeper(&c->wq))
		wake_up(&c->wq);
	if (c->park_wait && llmos_wait_pick(c, c->park_wait_id)) {
		llmos_uring_kick(c->park_wait);
		c->park_wait = NULL;
	}
}

/*
 * Take @kr off @c's finished list while a WAIT copies it out, which may
 * fault: it is forgotten only once the caller has it. Under the lock.
 */
static void llmos_wait_claim(struct llmos_kreq *kr)
{
	lockdep_assert_held(&llmos_sched.lock);
	list_del_init(&kr->done_node);
	kr->collecting = true;
}

/*
 * End the collection of the @n requests at @krs: when the caller got them
 * (@delivered) they are forgotten, else finished again, each back in the
 * order they finished. The waits that looked past them look again.
 */
static void llmos_wait_settle(struct llmos_client *c, struct llmos_kreq **krs,
			      u32 n, bool delivered)
{
	u32 i;

	if (!n)
		return;
	spin_lock(&llmos_sched.lock);
	for (i = 0; i < n; i++) {
		struct list_head *at = &c->done;
		struct llmos_kreq *o;

		krs[i]->collecting = false;
		if (delivered) {
			llmos_req_free(krs[i]);
			continue;
		}
		/* Before the first that finished after it (a rare path). */
		list_for_each_entry(o, &c->done, done_node) {
			if (o->done_seq > krs[i]->done_seq) {
				at = &o->done_node;
				break;
			}
		}
		list_add_tail(&krs[i]->done_node, at);
	}
	llmos_wait_recheck(c);
	spin_unlock(&llmos_sched.lock);
}

static bool llmos_wait_ready(struct llmos_client *c, u64 id)
{
	struct llmos_kreq *kr;

	spin_lock(&llmos_sched.lock);
	kr = llmos_wait_pick(c, id);
	spin_unlock(&llmos_sched.lock);
	return kr;
}

/**
 * llmos_wait_collect() - collect a finished request of a client, now
 * @c: the client
 * @id: the request, or 0 for the oldest finished
 * @cmd: its out_* fields are filled
 * @reply: where @cmd goes in userspace
 * @reply_size: how many of its bytes (up to sizeof(*@cmd))
 *
 * The request is forgotten only once @reply is written: when it cannot
 * be, it stays finished, to be collected again.
 *
 * Return: 0, -EAGAIN (not finished yet), -ENOENT or -EFAULT.
 */
int llmos_wait_collect(struct llmos_client *c, u64 id, struct llmos_wait *cmd,
		       void __user *reply, u32 reply_size)
{
	struct llmos_kreq *kr;
	int ret = 0;

	spin_lock(&llmos_sched.lock);
	kr = llmos_wait_pick(c, id);
	if (IS_ERR(kr)) {
		ret = PTR_ERR(kr);
	} else if (!kr) {
		ret = -EAGAIN;
	} else {
		struct llmos_core_req *r = &kr->core;

		cmd->out_state = r->state;
		cmd->out_id = r->id;
		cmd->out_status = r->status;
		cmd->out_tokens = r->tokens;
		cmd->out_result_off = r->result_off;
		cmd->out_result_len = r->result_len;
		cmd->out_submit_ns = r->t_submit;
		cmd->out_dispatch_ns = r->t_dispatch;
		cmd->out_end_ns = r->t_end;
		llmos_wait_claim(kr);
	}
	spin_unlock(&llmos_sched.lock);
	if (ret)
		return ret;
	if (copy_to_user(reply, cmd, min_t(size_t, reply_size, sizeof(*cmd))))
		ret = -EFAULT;
	llmos_wait_settle(c, &kr, 1, !ret);
	return ret;
}

/**
 * llmos_wait_batch_into() - collect up to @max finished requests, now
 * @c: the client
 * @entries_uptr: user array of @max elements of @entry_size bytes, checked
 *	writable by the caller
 * @entry_size: element size (at least sizeof(struct llmos_finished))
 * @max: most to collect
 * @count_uptr: where to write how many were collected (when any were)
 *
 * The requests are forgotten only once they and their count are written:
 * when they cannot be, they stay finished, to be collected again.
 *
 * Return: requests written (0: none finished yet), -ENOENT (nothing
 * outstanding), -ENOMEM or -EFAULT.
 */
int llmos_wait_batch_into(struct llmos_client *c, u64 entries_uptr,
			  u32 entry_size, u32 max, u32 __user *count_uptr)
{
	void __user *uptr = u64_to_user_ptr(entries_uptr);
	struct llmos_kreq *kr, **krs;
	struct llmos_finished *f;
	u32 n = 0;
	int ret;

	f = kcalloc(max, sizeof(*f), GFP_KERNEL);
	krs = kcalloc(max, sizeof(*krs), GFP_KERNEL);
	if (!f || !krs) {
		ret = -ENOMEM;
		goto out;
	}
	spin_lock(&llmos_sched.lock);
	if (list_empty(&c->reqs)) {
		spin_unlock(&llmos_sched.lock);
		ret = -ENOENT; /* nothing would ever come */
		goto out;
	}
	while (n < max && !list_empty(&c->done)) {
		kr = list_first_entry(&c->done, struct llmos_kreq, done_node);
		f[n].id = kr->core.id;
		f[n].state = kr->core.state;
		f[n].status = kr->core.status;
		f[n].tokens = kr->core.tokens;
		f[n].result_off = kr->core.result_off;
		f[n].result_len = kr->core.result_len;
		f[n].submit_ns = kr->core.t_submit;
		f[n].dispatch_ns = kr->core.t_dispatch;
		f[n].end_ns = kr->core.t_end;
		llmos_wait_claim(kr);
		krs[n++] = kr;
	}
	spin_unlock(&llmos_sched.lock);
	ret = llmos_copy_to_uarray(uptr, entry_size, f, sizeof(*f), n);
	if (!ret && n && put_user(n, count_uptr))
		ret = -EFAULT;
	llmos_wait_settle(c, krs, n, !ret);
	if (!ret)
		ret = n;
out:
	kfree(krs);
	kfree(f);
	return ret;
}

/**
 * llmos_wait_batch_check() - validate a WAIT_BATCH command
 * @cmd: the command
 *
 * Return: 0, -EINVAL, or -EFAULT when the array is not writable.
 */
int llmos_wait_batch_check(const struct llmos_wait_batch *cmd)
{
	if (cmd->flags & ~LLMOS_NONBLOCK)
		return -EINVAL;
	return llmos_uarray_check(cmd->entries_uptr, cmd->max, cmd->entry_size,
				  sizeof(struct llmos_finished));
}

/**
 * llmos_wait_batch() - LLMOS_IOC_WAIT_BATCH
 * @ucmd: the command, a struct llmos_wait_batch
 *
 * Return: 0 with out_count requests collected, or a negative errno.
 */
int llmos_wait_batch(struct llmos_ucmd *ucmd)
{
	struct llmos_wait_batch *cmd = ucmd->cmd;
	struct llmos_client *c = llmos_client(ucmd);
	struct llmos_wait_batch __user *u = ucmd->ubuffer;
	long timeout;
	int n;

	n = llmos_wait_batch_check(cmd);
	if (n)
		return n;
	timeout = cmd->timeout_ms ? msecs_to_jiffies(cmd->timeout_ms) :
				    MAX_SCHEDULE_TIMEOUT;
	for (;;) {
		n = llmos_wait_batch_into(c, cmd->entries_uptr, cmd->entry_size,
					  cmd->max, &u->out_count);
		if (n < 0)
			return n;
		if (n)
			break;
		if (cmd->flags & LLMOS_NONBLOCK)
			return -EAGAIN;
		timeout = wait_event_interruptible_timeout(c->wq,
							   llmos_wait_ready(c, 0),
							   timeout);
		if (timeout < 0)
			return -EINTR;
		if (!timeout)
			return -ETIMEDOUT;
	}
	return 0; /* out_count is written */
}

/**
 * llmos_park_wait() - park an io_uring WAIT until a request finishes
 * @c: the client
 * @ioucmd: the command
 * @id: the request it waits for, or 0 for any
 * @deadline: jiffies when it completes with -ETIMEDOUT instead (0: never)
 *
 * Return: 0 (parked), -EBUSY (one is parked already), -EAGAIN (one has
 * finished: collect it now) or -ENOENT (nothing to wait for).
 */
int llmos_park_wait(struct llmos_client *c, struct io_uring_cmd *ioucmd,
		    u64 id, unsigned long deadline)
{
	struct llmos_kreq *kr;
	int ret = 0;

	spin_lock(&llmos_sched.lock);
	kr = llmos_wait_pick(c, id);
	if (IS_ERR(kr)) {
		ret = PTR_ERR(kr);
	} else if (kr) {
		ret = -EAGAIN;
	} else if (c->park_wait) {
		ret = -EBUSY;
	} else {
		c->park_wait = ioucmd;
		c->park_wait_id = id;
		llmos_park_arm(c, 1, deadline);
	}
	spin_unlock(&llmos_sched.lock);
	return ret;
}

/**
 * llmos_wait() - LLMOS_IOC_WAIT
 * @ucmd: the command, a struct llmos_wait
 *
 * Return: 0 with a finished request described, or a negative errno.
 */
int llmos_wait(struct llmos_ucmd *ucmd)
{
	struct llmos_wait *cmd = ucmd->cmd;
	struct llmos_client *c = llmos_client(ucmd);
	long timeout;
	int ret;

	if (cmd->flags & ~LLMOS_NONBLOCK)
		return -EINVAL;
	timeout = cmd->timeout_ms ? msecs_to_jiffies(cmd->timeout_ms) :
				    MAX_SCHEDULE_TIMEOUT;
	for (;;) {
		ret = llmos_wait_collect(c, cmd->id, cmd, ucmd->ubuffer,
					 ucmd->user_size);
		if (ret != -EAGAIN || cmd->flags & LLMOS_NONBLOCK)
			return ret;
		timeout = wait_event_interruptible_timeout(c->wq,
							   llmos_wait_ready(c, cmd->id),
							   timeout);
		if (timeout < 0)
			return -EINTR;
		if (!timeout)
			return -ETIMEDOUT;
	}
}

/**
 * llmos_set_weight() - LLMOS_IOC_SET_WEIGHT
 * @ucmd: the command, a struct llmos_set_weight
 *
 * Return: 0 or a negative errno.
 */
int llmos_set_weight(struct llmos_ucmd *ucmd)
{
	struct llmos_set_weight *cmd = ucmd->cmd;
	struct llmos_core_tenant *spare;
	int ret;

	if (cmd->flags || !cmd->weight || cmd->weight > LLMOS_MAX_WEIGHT)
		return -EINVAL;
	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	spare = llmos_tenant_spare(cmd->tenant);
	spin_lock(&llmos_sched.lock);
	llmos_sched_limits();
	ret = llmos_core_set_weight(&llmos_sched.core, cmd->tenant, cmd->weight,
				    &spare);
	spin_unlock(&llmos_sched.lock);
	kfree(spare);
	return ret;
}

/**
 * llmos_stats() - LLMOS_IOC_STATS
 * @ucmd: the command, a struct llmos_sched_stats
 *
 * Return: 0 or a negative errno.
 */
int llmos_stats(struct llmos_ucmd *ucmd)
{
	struct llmos_sched_stats *cmd = ucmd->cmd;
	void __user *uptr = u64_to_user_ptr(cmd->tenants_uptr);
	const struct llmos_core_stats *st = &llmos_sched.core.stats;
	struct llmos_tenant_stats *ts = NULL;
	struct llmos_core_tenant *t;
	u32 cap = 0, n = 0, i, first, last;
	int ret = 0;

	if (cmd->flags || (cmd->tenant_count &&
			   cmd->tenant_size < sizeof(struct llmos_tenant_stats)))
		return -EINVAL;
	llmos_tenants_seen(&first, &last);
	if (cmd->tenant_count) {
		spin_lock(&llmos_sched.lock);
		cap = llmos_sched.core.tenants.nr;
		spin_unlock(&llmos_sched.lock);
		cap = min(cap, cmd->tenant_count);
		ts = kvcalloc(cap, sizeof(*ts), GFP_KERNEL | __GFP_NOWARN);
		if (cap && !ts)
			return -ENOMEM;
	}

	spin_lock(&llmos_sched.lock);
	BUILD_BUG_ON(ARRAY_SIZE(cmd->out_nr) < LLMOS_REQ_STATE_MAX);
	for (i = 0; i < LLMOS_REQ_STATE_MAX; i++)
		cmd->out_nr[i] = st->nr[i];
	cmd->out_submitted = st->submitted;
	cmd->out_dispatched = st->dispatched;
	cmd->out_completed = st->completed;
	cmd->out_failed = st->failed;
	cmd->out_cancelled = st->cancelled;
	cmd->out_requeued = st->requeued;
	cmd->out_workers = llmos_sched.nr_workers;
	cmd->out_clients = atomic_read(&llmos_sched.nr_clients);
	BUILD_BUG_ON(LLMOS_LAT_BUCKETS != LLMOS_CORE_LAT_BUCKETS);
	memcpy(cmd->out_lat_hist, st->lat_hist, sizeof(cmd->out_lat_hist));
	llmos_bpf_stats(cmd);
	for (t = llmos_core_tenant_next(&llmos_sched.core, NULL); t;
	     t = llmos_core_tenant_next(&llmos_sched.core, t)) {
		if (t->id < first || t->id > last)
			continue; /* not the caller's to see */
		if (n < cap) {
			ts[n].tenant = t->id;
			ts[n].weight = t->weight;
			ts[n].queued = t->queued;
			ts[n].served_reqs = t->served_reqs;
			ts[n].served_tokens = t->served_tokens;
		}
		n++;
	}
	spin_unlock(&llmos_sched.lock);

	ret = llmos_copy_to_uarray(uptr, cmd->tenant_size, ts, sizeof(*ts),
				   min(n, cap));
	if (ret)
		goto out;
	cmd->tenant_count = n;
	ret = llmos_ucmd_respond(ucmd, sizeof(*cmd));
out:
	kvfree(ts);
	return ret;
}

/**
 * llmos_sched_counters_show() - the scheduler's object counters, for the
 *	debugfs counters file
 * @m: the file
 */
void llmos_sched_counters_show(struct seq_file *m)
{
	u32 queues;

	spin_lock(&llmos_sched.lock);
	queues = llmos_sched.core.queues.nr;
	spin_unlock(&llmos_sched.lock);
	seq_printf(m, "requests %ld\nclients %d\npolicy_queues %u\n",
		   atomic_long_read(&llmos_sched.nr_reqs),
		   atomic_read(&llmos_sched.nr_clients), queues);
}

/**
 * llmos_sched_init() - set up the scheduler at module load
 *
 * Return: 0 or -ENOMEM.
 */
int llmos_sched_init(void)
{
	int ret;

	spin_lock_init(&llmos_sched.lock);
	init_waitqueue_head(&llmos_sched.work_wq);
	INIT_LIST_HEAD(&llmos_sched.parked);
	llmos_core_init(&llmos_sched.core);
	llmos_req_cache = KMEM_CACHE(llmos_kreq, SLAB_ACCOUNT);
	if (!llmos_req_cache)
		return -ENOMEM;
	ret = llmos_bpf_init();
	if (ret)
		kmem_cache_destroy(llmos_req_cache);
	return ret;
}

/**
 * llmos_sched_exit() - free the scheduler at module unload
 *
 * No client is left (each holds a module reference): only tenants remain.
 */
void llmos_sched_exit(void)
{
	struct llmos_core_tenant *t;

	llmos_bpf_exit();
	spin_lock(&llmos_sched.lock);
	while ((t = llmos_core_tenant_pop(&llmos_sched.core)))
		kfree(t);
	spin_unlock(&llmos_sched.lock);
	WARN_ON(atomic_long_read(&llmos_sched.nr_reqs) ||
		llmos_core_queued(&llmos_sched.core));
	kmem_cache_destroy(llmos_req_cache);
}
