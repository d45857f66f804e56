// SPDX-License-Identifier: GPL-2.0-only
/*
 * llmos: which tenants a uid may name in its requests, and whether it may
 * register workers.
 *
 * A uid names its own tenant (the one numbered as the uid) unless
 * TENANT_GRANT gave it a range instead, and registers no worker unless the
 * grant says it may; a caller with CAP_SYS_ADMIN does both freely. The
 * grants live in an xarray keyed by the global uid; SUBMIT and
 * WORKER_REGISTER read them under RCU, so a grant changed meanwhile is seen
 * whole or not at all.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/capability.h>
#include <linux/cred.h>
#include <linux/debugfs.h>
#include <linux/rcupdate.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/uidgid.h>
#include <linux/user_namespace.h>
#include <linux/xarray.h>

#include <linux/llmos.h>

#include "llmos.h"

/**
 * struct llmos_grant - what one uid was granted
 * @first: first tenant it may name
 * @last: last tenant
 * @worker: it may register workers
 * @rcu: freed after the readers that may see it
 */
struct llmos_grant {
	u32 first;
	u32 last;
	bool worker;
	struct rcu_head rcu;
};

/* uid (global) -> struct llmos_grant; changed under its own lock. */
static DEFINE_XARRAY(llmos_grants);

/*
 * @uid's tenants into *@first and *@last, and whether it may register
 * workers into *@worker; true when granted.
 */
static bool llmos_grant_get(kuid_t uid, u32 *first, u32 *last, bool *worker)
{
	const struct llmos_grant *g;
	bool granted = false;

	*first = __kuid_val(uid);
	*last = __kuid_val(uid);
	*worker = false;
	rcu_read_lock();
	g = xa_load(&llmos_grants, __kuid_val(uid));
	if (g) {
		/* A grant is never changed once published: replaced whole. */
		*first = g->first;
		*last = g->last;
		*worker = g->worker;
		granted = true;
	}
	rcu_read_unlock();
	return granted;
}

/**
 * llmos_caller_uid() - who the caller is to the scheduler
 *
 * Its fsuid, or, inside a user namespace, the user who made the outermost
 * one: whose tenants, worker right, request count and mindspace quota it
 * has. A user with a range of subordinate uids (/etc/subuid) would
 * otherwise be as many users, and tenants, as it maps, each with a share
 * of its own. A namespace root made is not root's: it holds a container's
 * users, each its own (as root in it has none of root's rights outside),
 * so its members are their fsuids.
 *
 * Return: the uid.
 */
kuid_t llmos_caller_uid(void)
{
	const struct user_namespace *ns = current_user_ns();

	if (ns == &init_user_ns)
		return current_fsuid();
	while (ns->parent != &init_user_ns)
		ns = ns->parent;
	return uid_eq(ns->owner, GLOBAL_ROOT_UID) ? current_fsuid() : ns->owner;
}

/**
 * llmos_tenant_check() - whether the caller may name @tenant in a request
 * @tenant: the tenant
 * @admin: in: -1 when the caller's CAP_SYS_ADMIN was not asked yet, else
 *	the answer; out: the answer, when it had to be asked
 *
 * Process context: the capability check may sleep in security hooks.
 *
 * Return: 0 or -EPERM.
 */
int llmos_tenant_check(u32 tenant, int *admin)
{
	u32 first, last;
	bool worker;

	llmos_grant_get(llmos_caller_uid(), &first, &last, &worker);
	if (tenant >= first && tenant <= last)
		return 0;
	if (*admin < 0)
		*admin = capable(CAP_SYS_ADMIN);
	return *admin ? 0 : -EPERM;
}

/**
 * llmos_tenants_seen() - the tenants whose counters STATS shows the caller
 * @first: out: the first
 * @last: out: the last
 *
 * Those it may name: every one for a caller with CAP_SYS_ADMIN (asked
 * quietly: STATS is polled), else its own or its granted range.
 */
void llmos_tenants_seen(u32 *first, u32 *last)
{
	bool worker;

	if (ns_capable_noaudit(&init_user_ns, CAP_SYS_ADMIN)) {
		*first = 0;
		*last = U32_MAX;
		return;
	}
	llmos_grant_get(llmos_caller_uid(), first, last, &worker);
}

/**
 * llmos_worker_check() - whether the caller may register a worker
 *
 * Process context, as llmos_tenant_check().
 *
 * Return: 0 or -EPERM.
 */
int llmos_worker_check(void)
{
	u32 first, last;
	bool worker;

	llmos_grant_get(llmos_caller_uid(), &first, &last, &worker);
	if (worker || capable(CAP_SYS_ADMIN))
		return 0;
	return -EPERM;
}

static int llmos_grant_set(kuid_t uid, u32 first, u32 last, bool worker)
{
	struct llmos_grant *g, *old;

	g = kmalloc(sizeof(*g), GFP_KERNEL_ACCOUNT);
	if (!g)
		return -ENOMEM;
	g->first = first;
	g->last = last;
	g->worker = worker;
	old = xa_store(&llmos_grants, __kuid_val(uid), g, GFP_KERNEL_ACCOUNT);
	if (xa_is_err(old)) {
		kfree(g);
		return xa_err(old);
	}
	if (old)
		kfree_rcu(old, rcu);
	return 0;
}

static void llmos_grant_reset(kuid_t uid)
{
	struct llmos_grant *old = xa_erase(&llmos_grants, __kuid_val(uid));

	if (old)
		kfree_rcu(old, rcu);
}

/**
 * llmos_tenant_grant() - LLMOS_IOC_TENANT_GRANT
 * @ucmd: the command, a struct llmos_tenant_grant
 *
 * Return: 0 or a negative errno.
 */
int llmos_tenant_grant(struct llmos_ucmd *ucmd)
{
	struct llmos_tenant_grant *cmd = ucmd->cmd;
	bool set = cmd->flags & LLMOS_GRANT_SET;
	bool reset = cmd->flags & LLMOS_GRANT_RESET;
	bool worker = cmd->flags & LLMOS_GRANT_WORKER;
	kuid_t uid;
	int ret;

	if (cmd->flags & ~(LLMOS_GRANT_SET | LLMOS_GRANT_RESET |
			   LLMOS_GRANT_WORKER) ||
	    (set && reset) || (worker && !set) ||
	    (set && cmd->first > cmd->last) ||
	    (!set && (cmd->first || cmd->last)))
		return -EINVAL;
	uid = cmd->uid == LLMOS_UID_SELF ? llmos_caller_uid() :
		make_kuid(current_user_ns(), cmd->uid);
	if (!uid_valid(uid))
		return -EINVAL;
	if ((set || reset || !uid_eq(uid, llmos_caller_uid())) &&
	    !capable(CAP_SYS_ADMIN))
		return -EPERM;

	if (set) {
		ret = llmos_grant_set(uid, cmd->first, cmd->last, worker);
		if (ret)
			return ret;
	} else if (reset) {
		llmos_grant_reset(uid);
	}
	cmd->out_granted = llmos_grant_get(uid, &cmd->out_first,
					   &cmd->out_last, &worker);
	cmd->out_worker = worker;
	/* What the caller is, not the uid: asked quietly (no audit). */
	cmd->out_admin = ns_capable_noaudit(&init_user_ns, CAP_SYS_ADMIN);
	return llmos_ucmd_respond(ucmd, sizeof(*cmd));
}

static int llmos_grants_show(struct seq_file *m, void *unused)
{
	const struct llmos_grant *g;
	unsigned long uid;

	seq_puts(m, "uid\tfirst\tlast\tworker\n");
	rcu_read_lock();
	xa_for_each(&llmos_grants, uid, g)
		seq_printf(m, "%lu\t%u\t%u\t%d\n", uid, g->first, g->last,
			   g->worker);
	rcu_read_unlock();
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(llmos_grants);

/**
 * llmos_grants_debugfs_init() - create the debugfs view of the grants
 * @dir: the module's debugfs folder
 */
void llmos_grants_debugfs_init(struct dentry *dir)
{
	debugfs_create_file("tenant_grants", 0400, dir, NULL,
			    &llmos_grants_fops);
}

/**
 * llmos_grants_exit() - forget every grant at module unload
 */
void llmos_grants_exit(void)
{
	struct llmos_grant *g;
	unsigned long uid;

	xa_for_each(&llmos_grants, uid, g) {
		xa_erase(&llmos_grants, uid);
		kfree_rcu(g, rcu);
	}
	xa_destroy(&llmos_grants);
}
