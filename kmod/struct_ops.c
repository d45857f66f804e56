// SPDX-License-Identifier: GPL-2.0-only
/*
 * llmos: BPF scheduling policies - the llmos_sched_ops struct_ops type.
 *
 * One policy may be attached at a time (CAP_SYS_ADMIN). While it is
 * active, the core's policy hooks call its enqueue and dispatch callbacks
 * with the scheduler's lock held; the requests it holds sit in queues it
 * created with kfuncs (kfuncs.c). It stops scheduling - is ejected - when
 * it is detached, when it reports an error, when it misuses a kfunc or
 * leaves a request in no queue, or when the watchdog sees a request wait
 * past timeout_ms while a worker asks for work. Ejecting moves every request it
 * held to the built-in policy in submission order, keeps the reason for
 * STATS and calls its exit callback; the struct_ops map stays attached,
 * inert, until it is detached.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/bpf.h>
#include <linux/bpf_verifier.h>
#include <linux/btf.h>
#include <linux/btf_ids.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/timekeeping.h>
#include <linux/workqueue.h>

#include "llmos.h"
#include "llmos_bpf.h"

#define LLMOS_DEFAULT_TIMEOUT_MS 30000
#define LLMOS_MAX_TIMEOUT_MS 600000

static struct {
	/* All under the scheduler's lock. */
	struct llmos_sched_ops *ops;	/* attached, or NULL */
	bool active;			/* ops schedules (not ejected) */
	int in_cb;			/* depth of its callbacks running */
	struct task_struct *cb_task;	/* the task running them */
	atomic_t stray;			/* a kfunc was called outside them */
	u32 fault_kind;			/* reported by a kfunc, not acted on */
	s64 fault_code;
	u64 fault_req;
	struct llmos_exit_info exit;	/* why the last one stopped */
	char name[LLMOS_POLICY_NAME_LEN];
	u64 ejections;
	unsigned long next_scan;	/* jiffies: the watchdog's next scan */
	u64 stall_req;			/* the oldest request it holds */
	u64 stall_ns;			/* how long a worker was short since */
	u64 counted_ns;			/* shortness is counted up to here */
} llmos_bpf;

static struct btf *llmos_bpf_btf;
static struct delayed_work llmos_bpf_watchdog_work;

BTF_ID_LIST_SINGLE(llmos_req_btf_ids, struct, llmos_core_req)
BTF_ID_LIST_SINGLE(llmos_ops_btf_ids, struct, llmos_sched_ops)

/**
 * llmos_bpf_prog_is_policy() - whether @prog is a llmos_sched_ops callback
 * @prog: a struct_ops program
 *
 * The kfuncs are for policies only, not for other struct_ops types.
 *
 * Return: true for one of ours.
 */
bool llmos_bpf_prog_is_policy(const struct bpf_prog *prog)
{
	return llmos_bpf_btf && prog->aux->attach_btf == llmos_bpf_btf &&
	       prog->aux->attach_btf_id == llmos_ops_btf_ids[0];
}

/**
 * llmos_bpf_in_callback() - whether a policy callback is running
 *
 * Return: true inside one (the scheduler's lock is then held).
 */
bool llmos_bpf_in_callback(void)
{
	/*
	 * The task that holds the lock, running a callback: not a bpf_timer
	 * or bpf_wq callback of the policy, which may run meanwhile on
	 * another CPU (or interrupt this one) without the lock.
	 */
	return in_task() && READ_ONCE(llmos_bpf.cb_task) == current;
}

/**
 * llmos_bpf_stray() - a kfunc was called outside the policy's callbacks
 *	(without the lock: nothing else is touched); the policy is ejected at
 *	the next check
 */
void llmos_bpf_stray(void)
{
	atomic_set(&llmos_bpf.stray, 1);
}

/* Around every call into the policy. Under the lock. */
static void llmos_cb_enter(void)
{
	if (!llmos_bpf.in_cb++)
		WRITE_ONCE(llmos_bpf.cb_task, current);
}

static void llmos_cb_exit(void)
{
	if (!--llmos_bpf.in_cb)
		WRITE_ONCE(llmos_bpf.cb_task, NULL);
}

/**
 * llmos_bpf_fault() - record a policy fault, acted on when its callback
 *	returns
 * @kind: &enum llmos_exit_kind
 * @code: an error code, or 0
 * @req: the request involved, or 0
 */
void llmos_bpf_fault(u32 kind, s64 code, u64 req)
{
	if (llmos_bpf.fault_kind)
		return;
	llmos_bpf.fault_kind = kind;
	llmos_bpf.fault_code = code;
	llmos_bpf.fault_req = req;
}

static const char *llmos_exit_words(u32 kind)
{
	switch (kind) {
	case LLMOS_EXIT_DETACH:
		return "detached";
	case LLMOS_EXIT_ERROR:
		return "the policy reported an error";
	case LLMOS_EXIT_STALL:
		return "a request waited past timeout_ms while a worker asked for work";
	case LLMOS_EXIT_ENQUEUE:
		return "enqueue left a request in no queue";
	case LLMOS_EXIT_MISUSE:
		return "a kfunc was used out of place";
	case LLMOS_EXIT_INIT:
		return "init failed";
	}
	return "unknown";
}

/* Stop the policy: its requests go to the built-in one. Under the lock. */
static void llmos_bpf_eject(u32 kind, s64 code, u64 req)
{
	struct llmos_core_sched *s = llmos_sched_core();
	struct llmos_core_queue *q;

	if (!llmos_bpf.active)
		return;
	llmos_bpf.active = false;
	llmos_core_policy_reset(s);
	llmos_bpf.fault_kind = 0;
	memset(&llmos_bpf.exit, 0, sizeof(llmos_bpf.exit));
	llmos_bpf.exit.kind = kind;
	llmos_bpf.exit.code = code;
	llmos_bpf.exit.req = req;
	if (req)
		snprintf(llmos_bpf.exit.msg, sizeof(llmos_bpf.exit.msg),
			 "%s (request %llu)", llmos_exit_words(kind), req);
	else
		strscpy(llmos_bpf.exit.msg, llmos_exit_words(kind),
			sizeof(llmos_bpf.exit.msg));
	llmos_bpf.ejections++;
	if (llmos_bpf.ops->exit) {
		llmos_cb_enter();
		llmos_bpf.ops->exit(&llmos_bpf.exit);
		llmos_cb_exit();
	}
	/* After exit, which may still have made a queue. */
	while ((q = llmos_core_queue_pop(s)))
		kfree(q);
	atomic_set(&llmos_bpf.stray, 0);
	pr_info("policy %s stopped: %s\n", llmos_bpf.name, llmos_bpf.exit.msg);
	llmos_sched_kick();
}

/**
 * llmos_bpf_check_fault() - eject the policy if it misbehaved in the last
 *	core call
 */
void llmos_bpf_check_fault(void)
{
	struct llmos_core_sched *s = llmos_sched_core();

	if (!llmos_bpf.active)
		return;
	if (llmos_bpf.fault_kind)
		llmos_bpf_eject(llmos_bpf.fault_kind, llmos_bpf.fault_code,
				llmos_bpf.fault_req);
	else if (atomic_read(&llmos_bpf.stray))
		llmos_bpf_eject(LLMOS_EXIT_MISUSE, 0, 0);
	else if (s->policy_fault == LLMOS_CORE_FAULT_ENQUEUE)
		llmos_bpf_eject(LLMOS_EXIT_ENQUEUE, 0, s->policy_fault_req);
	else if (s->policy_fault)
		llmos_bpf_eject(LLMOS_EXIT_MISUSE, 0, s->policy_fault_req);
}

static int llmos_bpf_enqueue(struct llmos_core_sched *s,
			     struct llmos_core_req *r)
{
	int ret;

	llmos_cb_enter();
	ret = llmos_bpf.ops->enqueue(r, 0);
	llmos_cb_exit();
	return ret;
}

static void llmos_bpf_dispatch(struct llmos_core_sched *s,
			       struct llmos_core_worker *w, u32 budget)
{
	llmos_cb_enter();
	llmos_bpf.ops->dispatch(w, budget);
	llmos_cb_exit();
}

static void llmos_bpf_dequeue(struct llmos_core_sched *s,
			      struct llmos_core_req *r)
{
	if (!llmos_bpf.ops->dequeue)
		return;
	llmos_cb_enter();
	llmos_bpf.ops->dequeue(r);
	llmos_cb_exit();
}

static const struct llmos_core_policy llmos_bpf_policy = {
	.enqueue = llmos_bpf_enqueue,
	.dispatch = llmos_bpf_dispatch,
	.dequeue = llmos_bpf_dequeue,
};

/**
 * llmos_bpf_running() - tell the policy a request started
 * @r: the request
 * @w: its worker
 *
 * A fault the policy reports in its callback ejects it at once.
 */
void llmos_bpf_running(struct llmos_core_req *r, struct llmos_core_worker *w)
{
	if (!llmos_bpf.active || !llmos_bpf.ops->running)
		return;
	llmos_cb_enter();
	llmos_bpf.ops->running(r, w);
	llmos_cb_exit();
	llmos_bpf_check_fault();
}

/**
 * llmos_bpf_completed() - tell the policy a request finished
 * @r: the request
 *
 * A fault the policy reports in its callback ejects it at once.
 */
void llmos_bpf_completed(struct llmos_core_req *r)
{
	if (!llmos_bpf.active || !llmos_bpf.ops->completed)
		return;
	llmos_cb_enter();
	llmos_bpf.ops->completed(r, r->status, r->t_end - r->t_dispatch,
				 r->tokens);
	llmos_cb_exit();
	llmos_bpf_check_fault();
}

/**
 * llmos_bpf_worker() - tell the policy a worker came or went
 * @w: the worker
 * @online: it came
 *
 * A fault the policy reports in its callback ejects it at once.
 */
void llmos_bpf_worker(struct llmos_core_worker *w, bool online)
{
	void (*cb)(struct llmos_core_worker *w);

	if (!llmos_bpf.active)
		return;
	cb = online ? llmos_bpf.ops->worker_online :
		      llmos_bpf.ops->worker_offline;
	if (!cb)
		return;
	llmos_cb_enter();
	cb(w);
	llmos_cb_exit();
	llmos_bpf_check_fault();
}

/*
 * At attach, after init: the workers registered already come online to
 * the policy, as later ones will (and all go offline to it). Stops at the
 * first fault, which the caller acts on. Under the lock.
 */
static void llmos_bpf_worker_replay(struct llmos_core_sched *s)
{
	struct llmos_tnode *n;

	if (!llmos_bpf.ops->worker_online)
		return;
	for (n = llmos_treap_first(&s->workers); n; n = llmos_treap_next(n)) {
		if (llmos_bpf.fault_kind || s->policy_fault ||
		    atomic_read(&llmos_bpf.stray))
			break;
		llmos_cb_enter();
		llmos_bpf.ops->worker_online(container_of(n,
							  struct llmos_core_worker,
							  id_node));
		llmos_cb_exit();
	}
}

/**
 * llmos_bpf_stats() - the policy part of STATS
 * @st: filled
 */
void llmos_bpf_stats(struct llmos_sched_stats *st)
{
	st->out_policy_state = llmos_bpf.active ? LLMOS_POLICY_BPF :
			       llmos_bpf.ops ? LLMOS_POLICY_EJECTED :
			       LLMOS_POLICY_BUILTIN;
	st->out_exit_kind = llmos_bpf.exit.kind;
	st->out_exit_code = llmos_bpf.exit.code;
	st->out_exit_req = llmos_bpf.exit.req;
	st->out_ejections = llmos_bpf.ejections;
	strscpy(st->out_policy, llmos_bpf.name, sizeof(st->out_policy));
	strscpy(st->out_exit_msg, llmos_bpf.exit.msg, sizeof(st->out_exit_msg));
}

/*
 * Since when the policy has kept a worker waiting (the earliest such
 * worker), or 0 when it keeps none waiting.
 */
static u64 llmos_short_since(struct llmos_core_sched *s, u64 now, u64 gap)
{
	struct llmos_tnode *n;
	u64 since = 0;

	for (n = llmos_treap_first(&s->workers); n; n = llmos_treap_next(n)) {
		struct llmos_core_worker *w =
			container_of(n, struct llmos_core_worker, id_node);
		u64 t = llmos_worker_short_since(w, now, gap);

		if (t && (!since || t < since))
			since = t;
	}
	return since;
}

/**
 * llmos_bpf_count_short() - count a spell of a worker's DISPATCHes coming
 *	up short toward the stall of the policy's oldest request
 * @from: when the spell began (ns)
 * @to: when it ended (now, or the worker's last look before it stopped
 *	asking), or now for one the watchdog finds going on
 *
 * A request's stalled time is the union of the workers' shortness while it
 * is the oldest the policy holds: each spell counted when it ends, and the
 * one going on at each watchdog scan up to then, what lies before
 * counted_ns left out (already counted). So a request stranded while the
 * others flow, which keeps a worker short between them and never for
 * timeout_ms at once, adds up to a stall. Under the lock.
 */
void llmos_bpf_count_short(u64 from, u64 to)
{
	struct llmos_core_req *r;

	if (!llmos_bpf.active)
		return;
	r = llmos_core_policy_oldest(llmos_sched_core());
	if (!r || r->id != llmos_bpf.stall_req) {
		llmos_bpf.stall_req = r ? r->id : 0;
		llmos_bpf.stall_ns = 0;
	}
	if (!r)
		return;
	from = max3(from, r->t_submit, llmos_bpf.counted_ns);
	if (to > from) {
		llmos_bpf.stall_ns += to - from;
		llmos_bpf.counted_ns = to;
	}
}

/*
 * While a policy schedules: every period (timeout_ms / 4, 50 ms to 1 s),
 * eject it when a request waited in its queues past timeout_ms, in all,
 * while a worker asked for work and got less than it had room for; and,
 * while requests are queued and a worker waits, kick the workers every
 * LLMOS_BPF_POLL_MS, since a policy may hold requests back for a time
 * (locality does) and tells nobody when that ends. A worker that takes
 * one request at a time and gets it, or has stopped asking, does not
 * wait: requests queued meanwhile are no stall.
 */
#define LLMOS_BPF_POLL_MS 10
#define LLMOS_ASKING_MIN_MS 100

static u64 llmos_bpf_timeout_ns(void)
{
	u32 ms = llmos_bpf.ops ? llmos_bpf.ops->timeout_ms : 0;

	return (u64)(ms ?: LLMOS_DEFAULT_TIMEOUT_MS) * NSEC_PER_MSEC;
}

/**
 * llmos_bpf_asking_gap() - the longest time between the looks of a worker
 *	that still asks for work (one that polls between its steps): half the
 *	policy's timeout, 100 ms at least. Under the lock.
 *
 * Return: the gap, ns.
 */
u64 llmos_bpf_asking_gap(void)
{
	return max_t(u64, llmos_bpf_timeout_ns() / 2,
		     LLMOS_ASKING_MIN_MS * NSEC_PER_MSEC);
}

static void llmos_bpf_watchdog(struct work_struct *work)
{
	struct llmos_core_sched *s = llmos_sched_core();
	struct llmos_core_req *r;
	unsigned long next = 0, period, now;
	u64 timeout_ns, since, now_ns;

	llmos_sched_lock();
	/* Under the lock: no stamp the lock guards is later. */
	now = jiffies;
	now_ns = ktime_get_ns();
	llmos_bpf_check_fault(); /* a kfunc called outside a callback */
	if (!llmos_bpf.active)
		goto out;
	timeout_ns = llmos_bpf_timeout_ns();
	period = msecs_to_jiffies(clamp_t(u64, timeout_ns / NSEC_PER_MSEC / 4,
					  50, 1000));
	since = llmos_short_since(s, now_ns, llmos_bpf_asking_gap());
	if (time_after_eq(now, llmos_bpf.next_scan)) {
		llmos_bpf.next_scan = now + period;
		/* The shortness going on now counts up to now. */
		llmos_bpf_count_short(since ?: now_ns, now_ns);
		r = llmos_core_policy_oldest(s);
		if (r && llmos_bpf.stall_ns > timeout_ns)
			llmos_bpf_eject(LLMOS_EXIT_STALL, 0, r->id);
		if (!llmos_bpf.active)
			goto out;
	}
	/* At least a jiffy: the watchdog must not stop while a policy runs. */
	next = max(llmos_bpf.next_scan - now, 1UL);
	if (since && llmos_core_queued(s)) {
		llmos_sched_kick();
		next = clamp(msecs_to_jiffies(LLMOS_BPF_POLL_MS), 1UL, next);
	}
out:
	llmos_sched_unlock();
	if (next)
		schedule_delayed_work(&llmos_bpf_watchdog_work, next);
}

static int llmos_bpf_ops_init(struct btf *btf)
{
	llmos_bpf_btf = btf;
	return 0;
}

static int llmos_bpf_check_member(const struct btf_type *t,
				  const struct btf_member *member,
				  const struct bpf_prog *prog)
{
	/* Every callback runs under a spinlock. */
	return prog->sleepable ? -EINVAL : 0;
}

static int llmos_bpf_init_member(const struct btf_type *t,
				 const struct btf_member *member,
				 void *kdata, const void *udata)
{
	const struct llmos_sched_ops *uops = udata;
	struct llmos_sched_ops *ops = kdata;
	u32 moff = __btf_member_bit_offset(t, member) / 8;

	switch (moff) {
	case offsetof(struct llmos_sched_ops, timeout_ms):
		/* Far longer would switch the watchdog off. */
		if (uops->timeout_ms > LLMOS_MAX_TIMEOUT_MS)
			return -EINVAL;
		ops->timeout_ms = uops->timeout_ms;
		return 1;
	case offsetof(struct llmos_sched_ops, flags):
		if (uops->flags)
			return -EINVAL;
		ops->flags = 0;
		return 1;
	case offsetof(struct llmos_sched_ops, name):
		if (strnlen(uops->name, sizeof(uops->name)) == sizeof(uops->name))
			return -EINVAL;
		strscpy(ops->name, uops->name, sizeof(ops->name));
		return 1;
	}
	return 0;
}

static bool llmos_bpf_is_valid_access(int off, int size,
				      enum bpf_access_type type,
				      const struct bpf_prog *prog,
				      struct bpf_insn_access_aux *info)
{
	return bpf_tracing_btf_ctx_access(off, size, type, prog, info);
}

/* A policy may write one field: the request's policy_data. */
static int llmos_bpf_btf_struct_access(struct bpf_verifier_log *log,
				       const struct bpf_reg_state *reg,
				       int off, int size)
{
	if (reg->btf == llmos_bpf_btf && reg->btf_id == llmos_req_btf_ids[0] &&
	    off == offsetof(struct llmos_core_req, policy_data) &&
	    size == sizeof(u64))
		return NOT_INIT;
	bpf_log(log, "llmos: a policy may only write a request's policy_data\n");
	return -EACCES;
}

static const struct bpf_verifier_ops llmos_bpf_verifier_ops = {
	.get_func_proto = bpf_base_func_proto,
	.is_valid_access = llmos_bpf_is_valid_access,
	.btf_struct_access = llmos_bpf_btf_struct_access,
};

static int llmos_bpf_reg(void *kdata, struct bpf_link *link)
{
	struct llmos_sched_ops *ops = kdata;
	struct llmos_core_sched *s = llmos_sched_core();
	int ret = 0;

	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	/*
	 * Only through a link (".struct_ops.link"): one attached by a map
	 * update outlives its loader with no link to pin, nor to detach.
	 */
	if (!link)
		return -EOPNOTSUPP;
	if (!ops->enqueue || !ops->dispatch)
		return -EINVAL;
	llmos_sched_lock();
	if (llmos_bpf.ops) {
		ret = -EBUSY;
		goto out_unlock;
	}
	llmos_bpf.ops = ops;
	llmos_bpf.active = true;
	llmos_bpf.fault_kind = 0;
	atomic_set(&llmos_bpf.stray, 0);
	llmos_bpf.next_scan = jiffies;
	llmos_bpf.stall_req = 0;
	llmos_bpf.stall_ns = 0;
	llmos_bpf.counted_ns = 0;
	strscpy(llmos_bpf.name, ops->name[0] ? ops->name : "unnamed",
		sizeof(llmos_bpf.name));
	memset(&llmos_bpf.exit, 0, sizeof(llmos_bpf.exit));
	s->policy_fault = LLMOS_CORE_FAULT_NONE;
	s->policy = &llmos_bpf_policy;
	if (ops->init) {
		llmos_cb_enter();
		ret = ops->init();
		llmos_cb_exit();
		if (ret) {
			llmos_bpf_eject(LLMOS_EXIT_INIT, ret, 0);
			llmos_bpf.ops = NULL;
			/*
			 * The link's creation returns what reg() does: only an
			 * errno may go there (a positive value would reach the
			 * loader as a file descriptor).
			 */
			if (ret > 0 || ret < -MAX_ERRNO)
				ret = -EINVAL;
			goto out_unlock;
		}
	}
	llmos_bpf_worker_replay(s);
	llmos_bpf_check_fault();
	if (!llmos_bpf.active) {
		/*
		 * init returned 0, or worker_online did, but misused a kfunc or
		 * reported an error
		 */
		llmos_bpf.ops = NULL;
		ret = -EINVAL;
		goto out_unlock;
	}
	pr_info("policy %s attached\n", llmos_bpf.name);
out_unlock:
	llmos_sched_unlock();
	if (!ret)
		schedule_delayed_work(&llmos_bpf_watchdog_work,
				      msecs_to_jiffies(50));
	return ret;
}

static void llmos_bpf_unreg(void *kdata, struct bpf_link *link)
{
	llmos_sched_lock();
	if (llmos_bpf.ops == kdata) {
		llmos_bpf_eject(LLMOS_EXIT_DETACH, 0, 0);
		llmos_bpf.ops = NULL;
	}
	llmos_sched_unlock();
	/*
	 * The watchdog is not cancelled here: it finds no active policy under
	 * the lock and stops by itself, while a cancel could land on the one
	 * the next policy's reg() has just started. Module exit cancels it.
	 */
}

static s32 llmos_bpf_stub_init(void)
{
	return 0;
}

static void llmos_bpf_stub_exit(struct llmos_exit_info *ei)
{
}

static s32 llmos_bpf_stub_enqueue(struct llmos_core_req *req, u64 enq_flags)
{
	return 0;
}

static void llmos_bpf_stub_dispatch(struct llmos_core_worker *w, u32 budget)
{
}

static void llmos_bpf_stub_running(struct llmos_core_req *req,
				   struct llmos_core_worker *w)
{
}

static void llmos_bpf_stub_completed(struct llmos_core_req *req, s32 status,
				     u64 runtime_ns, u32 tokens)
{
}

static void llmos_bpf_stub_req(struct llmos_core_req *req)
{
}

static void llmos_bpf_stub_worker(struct llmos_core_worker *w)
{
}

static struct llmos_sched_ops llmos_bpf_cfi_stubs = {
	.init = llmos_bpf_stub_init,
	.exit = llmos_bpf_stub_exit,
	.enqueue = llmos_bpf_stub_enqueue,
	.dispatch = llmos_bpf_stub_dispatch,
	.running = llmos_bpf_stub_running,
	.completed = llmos_bpf_stub_completed,
	.dequeue = llmos_bpf_stub_req,
	.worker_online = llmos_bpf_stub_worker,
	.worker_offline = llmos_bpf_stub_worker,
};

static struct bpf_struct_ops llmos_bpf_st_ops = {
	.verifier_ops = &llmos_bpf_verifier_ops,
	.init = llmos_bpf_ops_init,
	.check_member = llmos_bpf_check_member,
	.init_member = llmos_bpf_init_member,
	.reg = llmos_bpf_reg,
	.unreg = llmos_bpf_unreg,
	.name = "llmos_sched_ops",
	.cfi_stubs = &llmos_bpf_cfi_stubs,
	.owner = THIS_MODULE,
};

/**
 * llmos_bpf_init() - register the kfuncs and the struct_ops type
 *
 * Return: 0 or a negative errno.
 */
int llmos_bpf_init(void)
{
	int ret;

	INIT_DELAYED_WORK(&llmos_bpf_watchdog_work, llmos_bpf_watchdog);
	ret = llmos_kfuncs_init();
	if (ret) {
		pr_err("cannot register the kfuncs: %d\n", ret);
		return ret;
	}
	ret = register_bpf_struct_ops(&llmos_bpf_st_ops, llmos_sched_ops);
	if (ret)
		pr_err("cannot register struct_ops llmos_sched_ops: %d\n", ret);
	return ret;
}

/**
 * llmos_bpf_exit() - at module unload (no policy can be attached: it would
 *	hold a module reference)
 */
void llmos_bpf_exit(void)
{
	cancel_delayed_work_sync(&llmos_bpf_watchdog_work);
}
