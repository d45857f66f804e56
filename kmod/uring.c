// SPDX-License-Identifier: GPL-2.0-only
/*
 * llmos: io_uring commands (IORING_OP_URING_CMD) on /dev/llmos.
 *
 * The SQE carries the ioctl command number in cmd_op and, in its command
 * area, a pointer to the same argument struct the ioctl takes. SUBMIT,
 * START, COMPLETE and CANCEL run at once, through the ioctl code. DISPATCH
 * and WAIT do not block the ring: when nothing is there they are parked
 * (one of each per file) and completed from the task that owns them, in
 * task work, when a request arrives or finishes: the descriptors are
 * copied into that task's memory. A parked command is cancelled (-ECANCELED)
 * when its ring goes away, and ends with -ETIMEDOUT after its timeout_ms.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/fs.h>
#include <linux/io_uring/cmd.h>
#include <linux/io_uring_types.h>
#include <linux/jiffies.h>
#include <linux/percpu-refcount.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#include <linux/llmos.h>

#include "llmos.h"

/**
 * struct llmos_uring_pdu - what a parked command remembers
 * @arg_uptr: the user's argument struct
 * @descs_uptr: DISPATCH, WAIT_BATCH: the element array
 * @id: WAIT: the request waited for (0: any)
 * @desc_size: DISPATCH, WAIT_BATCH: element size
 * @max: DISPATCH, WAIT_BATCH: most elements to write
 */
struct llmos_uring_pdu {
	u64 arg_uptr;
	u64 descs_uptr;
	u64 id;
	u32 desc_size;
	u32 max;
};

static struct llmos_uring_pdu *llmos_pdu(struct io_uring_cmd *ioucmd)
{
	return io_uring_cmd_to_pdu(ioucmd, struct llmos_uring_pdu);
}

/*
 * Whether a woken command's task work runs for nobody: its task is dying,
 * or its ring was closed since the wake-up (6.12 sets
 * IO_URING_F_TASK_DEAD only for the first). It is cancelled then: what it
 * would have taken stays where it is, for others.
 */
static bool llmos_uring_gone(struct io_uring_cmd *ioucmd,
			     unsigned int issue_flags)
{
	return (issue_flags & IO_URING_F_TASK_DEAD) ||
	       percpu_ref_is_dying(&cmd_to_io_kiocb(ioucmd)->ctx->refs);
}

/*
 * Read an argument struct as the ioctl dispatcher does; the size it
 * checked goes to @sizep when given.
 */
static int llmos_uring_read(u64 uptr, void *kbuf, size_t ksize, size_t min,
			    u32 *sizep)
{
	void __user *u = u64_to_user_ptr(uptr);
	u32 size;

	if (get_user(size, (u32 __user *)u))
		return -EFAULT;
	if (size < min)
		return -EINVAL;
	if (size > PAGE_SIZE)
		return -E2BIG;
	if (sizep)
		*sizep = size;
	return copy_struct_from_user(kbuf, ksize, u, size);
}

static int llmos_uring_park_dispatch(struct io_uring_cmd *ioucmd,
				     unsigned long deadline)
{
	return llmos_park_dispatch(ioucmd->file->private_data, ioucmd,
				   deadline);
}

static int llmos_uring_park_wait(struct io_uring_cmd *ioucmd,
				 unsigned long deadline)
{
	return llmos_park_wait(ioucmd->file->private_data, ioucmd,
			       llmos_pdu(ioucmd)->id, deadline);
}

/*
 * Complete @ioucmd with @ret now, through io_uring_cmd_done(): a command
 * that may be on io_uring's cancel list must leave it, and -EAGAIN
 * returned from ->uring_cmd() would have io_uring issue it again from an
 * io-wq thread.
 */
static int llmos_uring_done(struct io_uring_cmd *ioucmd, int ret,
			    unsigned int issue_flags)
{
	io_uring_cmd_done(ioucmd, ret, 0, issue_flags);
	return -EIOCBQUEUED;
}

/*
 * Reply at once when @reply has something (anything but @nothing) or the
 * command must not wait; otherwise park it with @park, which says -EAGAIN
 * when something arrived meanwhile, for at most @timeout_ms (0: no limit)
 * from now.
 *
 * A command that may park is marked cancelable first: once parked, a kick
 * from another task may complete it at once, and an io-wq issue (no ring
 * lock held) that marked it only then would put a completed command on
 * the cancel list. A cancel that finds it marked but not parked does
 * nothing, and io_uring asks again. Every other outcome completes it
 * through llmos_uring_done().
 */
static int llmos_uring_reply_or_park(struct io_uring_cmd *ioucmd,
				     unsigned int issue_flags, bool nonblock,
				     u32 timeout_ms, int nothing,
				     int (*reply)(struct io_uring_cmd *ioucmd),
				     int (*park)(struct io_uring_cmd *ioucmd,
						 unsigned long deadline))
{
	unsigned long deadline = 0;
	int ret;

	if (timeout_ms)
		deadline = (jiffies + msecs_to_jiffies(timeout_ms)) ?: 1;
	if (!nonblock)
		io_uring_cmd_mark_cancelable(ioucmd, issue_flags);
	for (;;) {
		ret = reply(ioucmd);
		if (ret != nothing || nonblock)
			break;
		ret = park(ioucmd, deadline);
		if (!ret)
			return -EIOCBQUEUED;
		if (ret != -EAGAIN)
			break;
		/*
		 * Others' kicks may keep it looking (a policy that gives this
		 * worker nothing while work keeps changing): not past its
		 * deadline, nor past a fatal signal.
		 */
		if (deadline && time_after_eq(jiffies, deadline)) {
			ret = -ETIMEDOUT;
			break;
		}
		if (fatal_signal_pending(current)) {
			ret = -EINTR;
			break;
		}
		cond_resched();
	}
	return llmos_uring_done(ioucmd, ret, issue_flags);
}

/*
 * DISPATCH now: the number of descriptors written (0: none), with
 * out_count, or an error (the requests went back).
 */
static int llmos_uring_dispatch_now(struct io_uring_cmd *ioucmd)
{
	struct llmos_uring_pdu *pdu = llmos_pdu(ioucmd);
	struct llmos_dispatch __user *u = u64_to_user_ptr(pdu->arg_uptr);

	return llmos_dispatch_into(ioucmd->file->private_data, pdu->descs_uptr,
				   pdu->desc_size, pdu->max, &u->out_count);
}

static void llmos_uring_dispatch_tw(struct io_uring_cmd *ioucmd,
				    unsigned int issue_flags)
{
	int n = -ECANCELED;

	/*
	 * A kick that finds nothing (another worker was faster, or the policy
	 * gave the requests to another) gives 0.
	 */
	if (!llmos_uring_gone(ioucmd, issue_flags))
		n = llmos_uring_dispatch_now(ioucmd);
	io_uring_cmd_done(ioucmd, n, 0, issue_flags);
	/*
	 * The kick counted this worker's room against what is queued: one
	 * that took nothing because its ring is going or memory ran out (a
	 * copy-out failure gave its requests back, and kicked) passes it on
	 * to the other parked workers.
	 */
	if (n < 0 && n != -EFAULT)
		llmos_kick_again();
}

static int llmos_uring_wait_reply(struct io_uring_cmd *ioucmd)
{
	struct llmos_uring_pdu *pdu = llmos_pdu(ioucmd);
	struct llmos_wait cmd;
	u32 size;
	int ret;

	/* The size checked is the size the reply is written with. */
	ret = llmos_uring_read(pdu->arg_uptr, &cmd, sizeof(cmd),
			       offsetofend(struct llmos_wait, out_end_ns), &size);
	if (ret)
		return ret;
	return llmos_wait_collect(ioucmd->file->private_data, pdu->id, &cmd,
				  u64_to_user_ptr(pdu->arg_uptr), size);
}

static void llmos_uring_wait_tw(struct io_uring_cmd *ioucmd,
				unsigned int issue_flags)
{
	int ret = -ECANCELED;

	if (!llmos_uring_gone(ioucmd, issue_flags))
		ret = llmos_uring_wait_reply(ioucmd);
	io_uring_cmd_done(ioucmd, ret, 0, issue_flags);
}

/* WAIT_BATCH's reply: the number of requests collected, or an error. */
static int llmos_uring_wait_batch_reply(struct io_uring_cmd *ioucmd)
{
	struct llmos_uring_pdu *pdu = llmos_pdu(ioucmd);
	struct llmos_wait_batch __user *u = u64_to_user_ptr(pdu->arg_uptr);
	int n;

	n = llmos_wait_batch_into(ioucmd->file->private_data, pdu->descs_uptr,
				  pdu->desc_size, pdu->max, &u->out_count);
	/* Collected ones wrote their count; none: 0, as the result says. */
	if (!n && put_user(0, &u->out_count))
		return -EFAULT;
	return n;
}

static void llmos_uring_wait_batch_tw(struct io_uring_cmd *ioucmd,
				      unsigned int issue_flags)
{
	int n = -ECANCELED;

	if (!llmos_uring_gone(ioucmd, issue_flags))
		n = llmos_uring_wait_batch_reply(ioucmd);
	io_uring_cmd_done(ioucmd, n, 0, issue_flags);
}

/**
 * llmos_uring_kick() - complete a parked command in its task
 * @ioucmd: a command llmos_park_dispatch() or llmos_park_wait() parked
 *
 * Called with the scheduler's spinlock held.
 */
void llmos_uring_kick(struct io_uring_cmd *ioucmd)
{
	switch (ioucmd->cmd_op) {
	case LLMOS_IOC_WAIT:
		io_uring_cmd_complete_in_task(ioucmd, llmos_uring_wait_tw);
		break;
	case LLMOS_IOC_WAIT_BATCH:
		io_uring_cmd_complete_in_task(ioucmd, llmos_uring_wait_batch_tw);
		break;
	default:
		io_uring_cmd_complete_in_task(ioucmd, llmos_uring_dispatch_tw);
		break;
	}
}

static int llmos_uring_wait_batch(struct io_uring_cmd *ioucmd, u64 arg_uptr,
				  unsigned int issue_flags)
{
	struct llmos_uring_pdu *pdu = llmos_pdu(ioucmd);
	struct llmos_wait_batch cmd;
	int ret;

	ret = llmos_uring_read(arg_uptr, &cmd, sizeof(cmd),
			       offsetofend(struct llmos_wait_batch, out_count), NULL);
	if (ret)
		return ret;
	ret = llmos_wait_batch_check(&cmd);
	if (ret)
		return ret;
	pdu->arg_uptr = arg_uptr;
	pdu->descs_uptr = cmd.entries_uptr;
	pdu->desc_size = cmd.entry_size;
	pdu->max = cmd.max;
	pdu->id = 0;
	return llmos_uring_reply_or_park(ioucmd, issue_flags,
					 cmd.flags & LLMOS_NONBLOCK,
					 cmd.timeout_ms, 0,
					 llmos_uring_wait_batch_reply,
					 llmos_uring_park_wait);
}

static void llmos_uring_cancel_tw(struct io_uring_cmd *ioucmd,
				  unsigned int issue_flags)
{
	io_uring_cmd_done(ioucmd, -ECANCELED, 0, issue_flags);
}

static void llmos_uring_timeout_tw(struct io_uring_cmd *ioucmd,
				   unsigned int issue_flags)
{
	io_uring_cmd_done(ioucmd, -ETIMEDOUT, 0, issue_flags);
}

/**
 * llmos_uring_timeout() - complete a parked command with -ETIMEDOUT, in its
 *	task
 * @ioucmd: a command whose timeout_ms passed, taken back from its parking
 *	place
 *
 * Called with the scheduler's spinlock held.
 */
void llmos_uring_timeout(struct io_uring_cmd *ioucmd)
{
	io_uring_cmd_complete_in_task(ioucmd, llmos_uring_timeout_tw);
}

/**
 * llmos_uring_cancel() - complete a parked command with -ECANCELED, in its
 *	task
 * @ioucmd: a command taken back from its parking place
 *
 * Called with the scheduler's spinlock held.
 */
void llmos_uring_cancel(struct io_uring_cmd *ioucmd)
{
	io_uring_cmd_complete_in_task(ioucmd, llmos_uring_cancel_tw);
}

static int llmos_uring_dispatch(struct io_uring_cmd *ioucmd, u64 arg_uptr,
				unsigned int issue_flags)
{
	struct llmos_client *c = ioucmd->file->private_data;
	struct llmos_uring_pdu *pdu = llmos_pdu(ioucmd);
	struct llmos_dispatch cmd;
	int ret;

	ret = llmos_uring_read(arg_uptr, &cmd, sizeof(cmd),
			       offsetofend(struct llmos_dispatch, out_count), NULL);
	if (ret)
		return ret;
	ret = llmos_dispatch_check(c, &cmd);
	if (ret)
		return ret;
	pdu->arg_uptr = arg_uptr;
	pdu->descs_uptr = cmd.descs_uptr;
	pdu->desc_size = cmd.desc_size;
	pdu->max = cmd.max;
	/* Through io_uring, LLMOS_NONBLOCK with nothing there is 0. */
	return llmos_uring_reply_or_park(ioucmd, issue_flags,
					 cmd.flags & LLMOS_NONBLOCK,
					 cmd.timeout_ms, 0,
					 llmos_uring_dispatch_now,
					 llmos_uring_park_dispatch);
}

static int llmos_uring_wait(struct io_uring_cmd *ioucmd, u64 arg_uptr,
			    unsigned int issue_flags)
{
	struct llmos_uring_pdu *pdu = llmos_pdu(ioucmd);
	struct llmos_wait cmd;
	int ret;

	ret = llmos_uring_read(arg_uptr, &cmd, sizeof(cmd),
			       offsetofend(struct llmos_wait, out_end_ns), NULL);
	if (ret)
		return ret;
	if (cmd.flags & ~LLMOS_NONBLOCK)
		return -EINVAL;
	pdu->arg_uptr = arg_uptr;
	pdu->id = cmd.id;
	return llmos_uring_reply_or_park(ioucmd, issue_flags,
					 cmd.flags & LLMOS_NONBLOCK,
					 cmd.timeout_ms, -EAGAIN,
					 llmos_uring_wait_reply,
					 llmos_uring_park_wait);
}

/*
 * Whether SQE fields the command does not use are set: addr, len, the
 * registered-buffer flag, and with SQE128 the command area past struct
 * llmos_uring_sqe. They must be zero, so that they can be given a meaning
 * later.
 */
static bool llmos_uring_sqe_unused(struct io_uring_cmd *ioucmd,
				   unsigned int issue_flags)
{
	const struct io_uring_sqe *sqe = ioucmd->sqe;
	const u8 *extra = (const u8 *)io_uring_sqe_cmd(sqe) +
			  sizeof(struct llmos_uring_sqe);

	/* No command takes a registered buffer: its flag is refused too. */
	if (READ_ONCE(sqe->addr) || READ_ONCE(sqe->len) ||
	    ioucmd->flags & IORING_URING_CMD_FIXED)
		return true;
	return (issue_flags & IO_URING_F_SQE128) &&
	       memchr_inv(extra, 0, 2 * sizeof(*sqe) -
			  offsetof(struct io_uring_sqe, cmd) -
			  sizeof(struct llmos_uring_sqe));
}

/**
 * llmos_uring_cmd() - file_operations.uring_cmd of /dev/llmos
 * @ioucmd: the command
 * @issue_flags: IO_URING_F_*
 *
 * Return: the result to post, or -EIOCBQUEUED when parked or completed
 * through io_uring_cmd_done().
 */
int llmos_uring_cmd(struct io_uring_cmd *ioucmd, unsigned int issue_flags)
{
	const struct llmos_uring_sqe *sqe;
	u64 arg;

	if (issue_flags & IO_URING_F_CANCEL) {
		if (llmos_unpark(ioucmd->file->private_data, ioucmd))
			io_uring_cmd_done(ioucmd, -ECANCELED, 0, issue_flags);
		return 0;
	}
	/*
	 * Issued inline, the SQE is still in the ring, which userspace may
	 * rewrite meanwhile: each field is read once.
	 */
	sqe = io_uring_sqe_cmd(ioucmd->sqe);
	if (READ_ONCE(sqe->__reserved) || llmos_uring_sqe_unused(ioucmd, issue_flags))
		return -EINVAL;
	arg = READ_ONCE(sqe->arg_uptr);
	switch (ioucmd->cmd_op) {
	case LLMOS_IOC_SUBMIT:
	case LLMOS_IOC_SUBMIT_BATCH:
	case LLMOS_IOC_START:
	case LLMOS_IOC_COMPLETE:
	case LLMOS_IOC_COMPLETE_BATCH:
	case LLMOS_IOC_CANCEL:
		return llmos_uring_done(ioucmd,
					llmos_dev_ioctl(ioucmd->file,
							ioucmd->cmd_op, arg),
					issue_flags);
	case LLMOS_IOC_DISPATCH:
		return llmos_uring_dispatch(ioucmd, arg, issue_flags);
	case LLMOS_IOC_WAIT:
		return llmos_uring_wait(ioucmd, arg, issue_flags);
	case LLMOS_IOC_WAIT_BATCH:
		return llmos_uring_wait_batch(ioucmd, arg, issue_flags);
	default:
		return -EOPNOTSUPP;
	}
}
