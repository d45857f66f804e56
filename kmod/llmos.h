/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * llmos: private declarations shared by the files of the module.
 */
#ifndef _LLMOS_H
#define _LLMOS_H

#include <linux/types.h>

#define LLMOS_MODULE_VERSION "0.1.0"

/* Features this build of the module implements (enum llmos_feature). */
#define LLMOS_FEATURES_IMPLEMENTED \
	(LLMOS_FEATURE_VERSION | LLMOS_FEATURE_MINDSPACE | LLMOS_FEATURE_MS_DMABUF)

struct dentry;
struct file;

/**
 * struct llmos_ucmd - one ioctl being executed
 * @file: the file it was issued on (/dev/llmos or a mindspace fd)
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
long llmos_ms_fops_ioctl(struct file *filp, unsigned int cmd,
			 unsigned long arg);

/* mindspace.c: commands on /dev/llmos */
int llmos_ms_create(struct llmos_ucmd *ucmd);
int llmos_ms_open(struct llmos_ucmd *ucmd);
int llmos_ms_destroy(struct llmos_ucmd *ucmd);
int llmos_ms_list(struct llmos_ucmd *ucmd);
int llmos_ms_info(struct llmos_ucmd *ucmd);
int llmos_quota(struct llmos_ucmd *ucmd);
/* mindspace.c: commands on a mindspace fd */
int llmos_msfd_info(struct llmos_ucmd *ucmd);
int llmos_msfd_export_dmabuf(struct llmos_ucmd *ucmd);

void llmos_ms_debugfs_init(struct dentry *dir);
void llmos_ms_exit(void);

#endif /* _LLMOS_H */
