// SPDX-License-Identifier: GPL-2.0-only
/*
 * llmos: the /dev/llmos misc device, its ioctl dispatcher and module init.
 *
 * Commands are dispatched through one table indexed by command number. Each
 * entry names the command's struct and the last member of its first
 * published version: the kernel accepts any user size from that member's end
 * up, copies the struct in with copy_struct_from_user() (E2BIG on a non-zero
 * tail it does not know) and copies the reply back for as many bytes as both
 * sides know.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
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
};

struct llmos_ioctl_op {
	unsigned int size;
	unsigned int min_size;
	int (*execute)(struct llmos_ucmd *ucmd);
};

#define LLMOS_IOCTL_OP(_ioctl, _fn, _struct, _last)                         \
	[_IOC_NR(_ioctl) - LLMOS_CMD_BASE] = {                              \
		.size = sizeof(_struct) +                                   \
			BUILD_BUG_ON_ZERO(sizeof(union llmos_ucmd_buffer) < \
					  sizeof(_struct)),                 \
		.min_size = offsetofend(_struct, _last),                    \
		.execute = _fn,                                             \
	}

static const struct llmos_ioctl_op llmos_ioctl_ops[] = {
	LLMOS_IOCTL_OP(LLMOS_IOC_VERSION, llmos_version, struct llmos_version,
		       out_features),
};

static long llmos_fops_ioctl(struct file *filp, unsigned int cmd,
			     unsigned long arg)
{
	const struct llmos_ioctl_op *op;
	union llmos_ucmd_buffer buf;
	struct llmos_ucmd ucmd = {};
	unsigned int idx;
	int ret;

	/* Every command is _IO(LLMOS_TYPE, nr): no size or direction bits. */
	if (cmd != _IO(LLMOS_TYPE, _IOC_NR(cmd)))
		return -ENOTTY;
	/* Unsigned: a number below LLMOS_CMD_BASE wraps past the table. */
	idx = _IOC_NR(cmd) - LLMOS_CMD_BASE;
	if (idx >= ARRAY_SIZE(llmos_ioctl_ops))
		return -ENOTTY;
	op = &llmos_ioctl_ops[idx];
	if (!op->execute)
		return -ENOTTY;

	ucmd.file = filp;
	ucmd.ubuffer = (void __user *)arg;
	ret = get_user(ucmd.user_size, (u32 __user *)ucmd.ubuffer);
	if (ret)
		return ret;
	if (ucmd.user_size < op->min_size)
		return -EINVAL;

	ucmd.cmd = &buf;
	ret = copy_struct_from_user(ucmd.cmd, op->size, ucmd.ubuffer,
				    ucmd.user_size);
	if (ret)
		return ret;
	return op->execute(&ucmd);
}

static const struct file_operations llmos_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = llmos_fops_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

static struct miscdevice llmos_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "llmos",
	.fops = &llmos_fops,
};

static int __init llmos_init(void)
{
	int ret;

	ret = misc_register(&llmos_misc);
	if (ret) {
		pr_err("cannot register /dev/llmos: %d\n", ret);
		return ret;
	}
	pr_info("ABI %u.%u, module %s\n", LLMOS_ABI_MAJOR, LLMOS_ABI_MINOR,
		LLMOS_MODULE_VERSION);
	return 0;
}

static void __exit llmos_exit(void)
{
	misc_deregister(&llmos_misc);
}

module_init(llmos_init);
module_exit(llmos_exit);

MODULE_DESCRIPTION("llmos: mindspaces and request scheduling for language models");
MODULE_AUTHOR("The llmos developers");
MODULE_LICENSE("GPL");
MODULE_VERSION(LLMOS_MODULE_VERSION);
