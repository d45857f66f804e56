/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * llmos: the BPF scheduling policy interface (struct_ops llmos_sched_ops)
 * and what the rest of the module calls of it. BPF programs see these types
 * through the module's BTF.
 */
#ifndef _LLMOS_BPF_H
#define _LLMOS_BPF_H

#include <linux/llmos.h>
#include <linux/types.h>

#include "core/llmos_core.h"

struct bpf_prog;

/**
 * struct llmos_exit_info - why a BPF policy stopped, passed to its exit
 * @kind: &enum llmos_exit_kind
 * @__pad: 0
 * @code: the code given to llmos_policy_error(), or 0
 * @req: the request involved, or 0
 * @msg: what happened, in words
 */
struct llmos_exit_info {
	s32 kind;
	s32 __pad;
	s64 code;
	u64 req;
	char msg[LLMOS_EXIT_MSG_LEN];
};

/**
 * struct llmos_sched_ops - a request-scheduling policy in BPF
 * @init: called once when attached; a non-zero return refuses the attach
 *	(with that errno, or EINVAL for what is not one)
 * @exit: called once when it stops (detached or ejected), with the reason
 * @enqueue: place a new request in one of the policy's queues
 *	(llmos_queue_insert*()); 0 on success. A request left nowhere ejects
 *	the policy (and goes to the built-in one).
 * @dispatch: a worker has room for @budget requests: move them from the
 *	policy's queues (llmos_queue_move_to_worker())
 * @running: a worker started a request; again if it was given back
 *	(%LLMOS_COMPLETE_RETURN, or its worker vanished) and dispatched again:
 *	a give-back has no callback of its own
 * @completed: a request finished (runtime from dispatch to completion);
 *	not called for one cancelled while its worker held it. Its tenant
 *	(req->ten) is NULL by then: a finished request holds none
 * @dequeue: a request left the policy's queues (cancelled)
 * @worker_online: a worker registered
 * @worker_offline: a worker went away (its requests go back to the front
 *	of their tenants, under the built-in policy)
 * @timeout_ms: longest a request may wait in the policy's queues while a
 *	worker asks for work and gets less than it has room for, before the
 *	watchdog ejects the policy (0: 30000; at most 600000, or the attach
 *	fails with EINVAL)
 * @flags: must be 0
 * @name: the policy's name, NUL-terminated
 *
 * All callbacks run with the scheduler's lock held: they must not sleep.
 */
struct llmos_sched_ops {
	s32 (*init)(void);
	void (*exit)(struct llmos_exit_info *ei);
	s32 (*enqueue)(struct llmos_core_req *req, u64 enq_flags);
	void (*dispatch)(struct llmos_core_worker *w, u32 budget);
	void (*running)(struct llmos_core_req *req, struct llmos_core_worker *w);
	void (*completed)(struct llmos_core_req *req, s32 status, u64 runtime_ns,
			  u32 tokens);
	void (*dequeue)(struct llmos_core_req *req);
	void (*worker_online)(struct llmos_core_worker *w);
	void (*worker_offline)(struct llmos_core_worker *w);
	u32 timeout_ms;
	u32 flags;
	char name[LLMOS_POLICY_NAME_LEN];
};

/*
 * struct_ops.c; all called with the scheduler's lock held but init/exit,
 * llmos_bpf_in_callback() and llmos_bpf_stray() (anywhere)
 */
int llmos_bpf_init(void);
void llmos_bpf_exit(void);
void llmos_bpf_check_fault(void);
void llmos_bpf_running(struct llmos_core_req *r, struct llmos_core_worker *w);
void llmos_bpf_completed(struct llmos_core_req *r);
void llmos_bpf_worker(struct llmos_core_worker *w, bool online);
void llmos_bpf_stats(struct llmos_sched_stats *st);
bool llmos_bpf_in_callback(void);
void llmos_bpf_stray(void);
bool llmos_bpf_prog_is_policy(const struct bpf_prog *prog);
void llmos_bpf_fault(u32 kind, s64 code, u64 req);
u64 llmos_bpf_asking_gap(void);
void llmos_bpf_count_short(u64 from, u64 to);

/* kfuncs.c */
int llmos_kfuncs_init(void);

/* sched.c: the scheduler the policy plugs into */
struct llmos_core_sched *llmos_sched_core(void);
void llmos_sched_limits(void);
void llmos_sched_lock(void);
void llmos_sched_unlock(void);
void llmos_sched_kick(void);
u64 llmos_worker_short_since(const struct llmos_core_worker *w, u64 now,
			     u64 gap);

#endif /* _LLMOS_BPF_H */
