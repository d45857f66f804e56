/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * llmos: private declarations shared by the files of the module.
 */
#ifndef _LLMOS_H
#define _LLMOS_H

#include <linux/types.h>

#define LLMOS_MODULE_VERSION "0.1.0"

/* Features this build of the module implements (enum llmos_feature). */
#define LLMOS_FEATURES_IMPLEMENTED LLMOS_FEATURE_VERSION

struct file;

/**
 * struct llmos_ucmd - one ioctl being executed
 * @file: the /dev/llmos file it was issued on
 * @ubuffer: the user's argument struct
 * @user_size: its size, as the user gave it
 * @cmd: the kernel's copy of the struct, zero-extended or truncated to the
 *	size the kernel knows
 */
struct llmos_ucmd {
	struct file *file;
	void __user *ubuffer;
	u32 user_size;
	void *cmd;
};

int llmos_ucmd_respond(struct llmos_ucmd *ucmd, size_t cmd_len);

#endif /* _LLMOS_H */
