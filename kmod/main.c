// SPDX-License-Identifier: GPL-2.0-only
/*
 * llmos: the /dev/llmos misc device, its ioctl dispatcher and module init.
 *
 * Commands are dispatched through tables indexed by command number, one for
 * /dev/llmos and one for mindspace fds. Each entry names the command's
 * struct and the last member of its first published version: the kernel
 * accepts any user size from that member's end up to a page (E2BIG past
 * it), copies the struct in with copy_struct_from_user() (E2BIG on a
 * non-zero tail it does not know) and copies the reply back for as many
 * bytes as both sides know.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/debugfs.h>
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/nospec.h>
#include <linux/uaccess.h>

#include <linux/llmos.h>

#include "llmos.h"

/**
 * llmos_ucmd_respond() - copy a command's reply back to userspace
 * @ucmd: the command
 * @cmd_len: size of the kernel's struct
 *
 * Return: 0, or -EFAULT when the user's struct is not writable.
 */
int llmos_ucmd_respond(struct llmos_ucmd *ucmd, size_t cmd_len)
{
	if (copy_to_user(ucmd->ubuffer, ucmd->cmd,
			 min_t(size_t, ucmd->user_size, cmd_len)))
		return -EFAULT;
	return 0;
}

/**
 * llmos_copy_to_uarray() - copy elements to a user array
 * @base: the user array
 * @stride: its element size, as the user gave it
 * @src: @n kernel elements of @size bytes
 * @size: the kernel's element size
 * @n: how many
 *
 * Each element gets min(@size, @stride) bytes: a caller built against a
 * shorter struct gets the prefix it knows; bytes past the kernel's are not
 * touched.
 *
 * Return: 0, or -EFAULT.
 */
int llmos_copy_to_uarray(void __user *base, u32 stride, const void *src,
			 size_t size, u32 n)
{
	u32 i;

	for (i = 0; i < n; i++) {
		if (copy_to_user(base + (size_t)i * stride, src + i * size,
				 min_t(size_t, size, stride)))
			return -EFAULT;
	}
	return 0;
}

static int llmos_version(struct llmos_ucmd *ucmd)
{
	struct llmos_version *cmd = ucmd->cmd;

	if (cmd->flags)
		return -EINVAL;
	cmd->out_abi_major = LLMOS_ABI_MAJOR;
	cmd->out_abi_minor = LLMOS_ABI_MINOR;
	cmd->out_features = LLMOS_FEATURES_IMPLEMENTED;
	return llmos_ucmd_respond(ucmd, sizeof(*cmd));
}

union llmos_ucmd_buffer {
	struct llmos_version version;
	struct llmos_ms_create ms_create;
	struct llmos_ms_open ms_open;
	struct llmos_ms_destroy ms_destroy;
	struct llmos_ms_list ms_list;
	struct llmos_ms_query ms_query;
	struct llmos_ms_export ms_export;
	struct llmos_quota quota;
	struct llmos_worker_register worker_register;
	struct llmos_submit submit;
	struct llmos_dispatch dispatch;
	struct llmos_start start;
	struct llmos_complete complete;
	struct llmos_cancel cancel;
	struct llmos_wait wait;
	struct llmos_set_weight set_weight;
	struct llmos_sched_stats stats;
	struct llmos_complete_batch complete_batch;
	struct llmos_wait_batch wait_batch;
	struct llmos_submit_batch submit_batch;
	struct llmos_tenant_grant tenant_grant;
};

struct llmos_ioctl_op {
	unsigned int size;
	unsigned int min_size;
	int (*execute)(struct llmos_ucmd *ucmd);
};

#define LLMOS_IOCTL_OP(_base, _ioctl, _fn, _struct, _last)                  \
	[_IOC_NR(_ioctl) - (_base)] = {                                     \
		.size = sizeof(_struct) +                                   \
			BUILD_BUG_ON_ZERO(sizeof(union llmos_ucmd_buffer) < \
					  sizeof(_struct)),                 \
		.min_size = offsetofend(_struct, _last),                    \
		.execute = _fn,                                             \
	}

#define LLMOS_DEV_OP(...) LLMOS_IOCTL_OP(LLMOS_CMD_BASE, __VA_ARGS__)
#define LLMOS_MSFD_OP(...) LLMOS_IOCTL_OP(LLMOS_MSFD_CMD_BASE, __VA_ARGS__)

static const struct llmos_ioctl_op llmos_dev_ops[] = {
	LLMOS_DEV_OP(LLMOS_IOC_VERSION, llmos_version, struct llmos_version,
		     out_features),
	LLMOS_DEV_OP(LLMOS_IOC_MS_CREATE, llmos_ms_create,
		     struct llmos_ms_create, __reserved2),
	LLMOS_DEV_OP(LLMOS_IOC_MS_OPEN, llmos_ms_open, struct llmos_ms_open,
		     __reserved),
	LLMOS_DEV_OP(LLMOS_IOC_MS_DESTROY, llmos_ms_destroy,
		     struct llmos_ms_destroy, name),
	LLMOS_DEV_OP(LLMOS_IOC_MS_LIST, llmos_ms_list, struct llmos_ms_list,
		     count),
	LLMOS_DEV_OP(LLMOS_IOC_MS_INFO, llmos_ms_info, struct llmos_ms_query,
		     __reserved),
	LLMOS_DEV_OP(LLMOS_IOC_QUOTA, llmos_quota, struct llmos_quota,
		     out_limit),
	LLMOS_DEV_OP(LLMOS_IOC_WORKER_REGISTER, llmos_worker_register,
		     struct llmos_worker_register, out_worker_id),
	LLMOS_DEV_OP(LLMOS_IOC_SUBMIT, llmos_submit, struct llmos_submit,
		     out_id),
	LLMOS_DEV_OP(LLMOS_IOC_DISPATCH, llmos_dispatch, struct llmos_dispatch,
		     out_count),
	LLMOS_DEV_OP(LLMOS_IOC_START, llmos_start, struct llmos_start, id),
	LLMOS_DEV_OP(LLMOS_IOC_COMPLETE, llmos_complete, struct llmos_complete,
		     result_len),
	LLMOS_DEV_OP(LLMOS_IOC_CANCEL, llmos_cancel, struct llmos_cancel, id),
	LLMOS_DEV_OP(LLMOS_IOC_WAIT, llmos_wait, struct llmos_wait, out_end_ns),
	LLMOS_DEV_OP(LLMOS_IOC_SET_WEIGHT, llmos_set_weight,
		     struct llmos_set_weight, weight),
	LLMOS_DEV_OP(LLMOS_IOC_STATS, llmos_stats, struct llmos_sched_stats,
		     out_lat_hist),
	LLMOS_DEV_OP(LLMOS_IOC_COMPLETE_BATCH, llmos_complete_batch,
		     struct llmos_complete_batch, __reserved),
	LLMOS_DEV_OP(LLMOS_IOC_WAIT_BATCH, llmos_wait_batch,
		     struct llmos_wait_batch, out_count),
	LLMOS_DEV_OP(LLMOS_IOC_SUBMIT_BATCH, llmos_submit_batch,
		     struct llmos_submit_batch, __reserved),
	LLMOS_DEV_OP(LLMOS_IOC_TENANT_GRANT, llmos_tenant_grant,
		     struct llmos_tenant_grant, out_worker),
};

static const struct llmos_ioctl_op llmos_msfd_ops[] = {
	LLMOS_MSFD_OP(LLMOS_MSFD_IOC_INFO, llmos_msfd_info,
		      struct llmos_ms_query, __reserved),
	LLMOS_MSFD_OP(LLMOS_MSFD_IOC_EXPORT_DMABUF, llmos_msfd_export_dmabuf,
		      struct llmos_ms_export, __reserved),
};

static long llmos_ioctl_dispatch(struct file *filp, unsigned int cmd,
				 unsigned long arg,
				 const struct llmos_ioctl_op *ops,
				 unsigned int nr_ops, unsigned int base)
{
	const struct llmos_ioctl_op *op;
	union llmos_ucmd_buffer buf;
	struct llmos_ucmd ucmd = {};
	unsigned int idx;
	int ret;

	/* Every command is _IO(LLMOS_TYPE, nr): no size or direction bits. */
	if (cmd != _IO(LLMOS_TYPE, _IOC_NR(cmd)))
		return -ENOTTY;
	/* Unsigned: a number below the base wraps past the table. */
	idx = _IOC_NR(cmd) - base;
	if (idx >= nr_ops)
		return -ENOTTY;
	idx = array_index_nospec(idx, nr_ops);
	op = &ops[idx];
	if (!op->execute)
		return -ENOTTY;

	ucmd.file = filp;
	ucmd.ubuffer = (void __user *)arg;
	ret = get_user(ucmd.user_size, (u32 __user *)ucmd.ubuffer);
	if (ret)
		return ret;
	if (ucmd.user_size < op->min_size)
		return -EINVAL;
	if (ucmd.user_size > PAGE_SIZE)
		return -E2BIG; /* no struct will grow that far */

	ucmd.cmd = &buf;
	ret = copy_struct_from_user(ucmd.cmd, op->size, ucmd.ubuffer,
				    ucmd.user_size);
	if (ret)
		return ret;
	return op->execute(&ucmd);
}

/**
 * llmos_dev_ioctl() - ioctl() on /dev/llmos
 * @filp: the file
 * @cmd: command
 * @arg: user pointer to the command's struct
 *
 * Return: 0 or a negative errno.
 */
long llmos_dev_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	return llmos_ioctl_dispatch(filp, cmd, arg, llmos_dev_ops,
				    ARRAY_SIZE(llmos_dev_ops), LLMOS_CMD_BASE);
}

/**
 * llmos_ms_fops_ioctl() - ioctl() on a mindspace fd
 * @filp: the mindspace file
 * @cmd: command
 * @arg: user pointer to the command's struct
 *
 * Return: 0 or a negative errno.
 */
long llmos_ms_fops_ioctl(struct file *filp, unsigned int cmd,
			 unsigned long arg)
{
	return llmos_ioctl_dispatch(filp, cmd, arg, llmos_msfd_ops,
				    ARRAY_SIZE(llmos_msfd_ops),
				    LLMOS_MSFD_CMD_BASE);
}

static const struct file_operations llmos_fops = {
	.owner = THIS_MODULE,
	.open = llmos_client_open,
	.release = llmos_client_release,
	.poll = llmos_client_poll,
	.unlocked_ioctl = llmos_dev_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.uring_cmd = llmos_uring_cmd,
};

static struct miscdevice llmos_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "llmos",
	.fops = &llmos_fops,
};

static struct dentry *llmos_debugfs;

static int __init llmos_init(void)
{
	int ret;

	ret = llmos_sched_init();
	if (ret)
		return ret;
	llmos_debugfs = debugfs_create_dir("llmos", NULL);
	llmos_ms_debugfs_init(llmos_debugfs);
	llmos_grants_debugfs_init(llmos_debugfs);

	ret = misc_register(&llmos_misc);
	if (ret) {
		pr_err("cannot register /dev/llmos: %d\n", ret);
		goto err_debugfs;
	}
	pr_info("ABI %u.%u, module %s\n", LLMOS_ABI_MAJOR, LLMOS_ABI_MINOR,
		LLMOS_MODULE_VERSION);
	return 0;

err_debugfs:
	debugfs_remove_recursive(llmos_debugfs);
	llmos_grants_exit();
	llmos_sched_exit();
	return ret;
}

static void __exit llmos_exit(void)
{
	misc_deregister(&llmos_misc);
	debugfs_remove_recursive(llmos_debugfs);
	llmos_ms_exit();
	llmos_grants_exit();
	llmos_sched_exit();
}

module_init(llmos_init);
module_exit(llmos_exit);

MODULE_DESCRIPTION("llmos: mindspaces and request scheduling for language models");
MODULE_AUTHOR("The llmos developers");
MODULE_LICENSE("GPL");
MODULE_VERSION(LLMOS_MODULE_VERSION);
MODULE_IMPORT_NS(DMA_BUF);
