/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * llmos: private declarations shared by the files of the module.
 */
#ifndef _LLMOS_H
#define _LLMOS_H

#include <linux/types.h>
#include <linux/uidgid.h>

#define LLMOS_MODULE_VERSION "0.1.0"

/* Features this build of the module implements (enum llmos_feature). */
#define LLMOS_FEATURES_IMPLEMENTED                                        \
	(LLMOS_FEATURE_VERSION | LLMOS_FEATURE_MINDSPACE |                \
	 LLMOS_FEATURE_MS_DMABUF | LLMOS_FEATURE_SCHED |                  \
	 LLMOS_FEATURE_BPF_POLICY | LLMOS_FEATURE_SCHED_RETURN |          \
	 LLMOS_FEATURE_TENANT_GRANT | LLMOS_FEATURE_WORKER_GRANT)

struct dentry;
struct file;
struct io_uring_cmd;
struct llmos_client;
struct llmos_dispatch;
struct llmos_wait;
struct llmos_wait_batch;
struct inode;
struct poll_table_struct;
struct seq_file;

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
int llmos_copy_to_uarray(void __user *base, u32 stride, const void *src,
			 size_t size, u32 n);
long llmos_ms_fops_ioctl(struct file *filp, unsigned int cmd,
			 unsigned long arg);

/* mindspace.c: commands on /dev/llmos */
int llmos_ms_create(struct llmos_ucmd *ucmd);
int llmos_ms_open(struct llmos_ucmd *ucmd);
int llmos_ms_check_request(u64 id, u64 off, u64 len, u64 *ms_len);
int llmos_ms_destroy(struct llmos_ucmd *ucmd);
int llmos_ms_list(struct llmos_ucmd *ucmd);
int llmos_ms_info(struct llmos_ucmd *ucmd);
int llmos_quota(struct llmos_ucmd *ucmd);
/* mindspace.c: commands on a mindspace fd */
int llmos_msfd_info(struct llmos_ucmd *ucmd);
int llmos_msfd_export_dmabuf(struct llmos_ucmd *ucmd);

void llmos_ms_debugfs_init(struct dentry *dir);
void llmos_ms_exit(void);

/* sched.c: clients (open files of /dev/llmos) and the scheduler commands */
int llmos_client_open(struct inode *inode, struct file *file);
int llmos_client_release(struct inode *inode, struct file *file);
__poll_t llmos_client_poll(struct file *file, struct poll_table_struct *wait);
int llmos_worker_register(struct llmos_ucmd *ucmd);
int llmos_submit(struct llmos_ucmd *ucmd);
int llmos_dispatch(struct llmos_ucmd *ucmd);
int llmos_start(struct llmos_ucmd *ucmd);
int llmos_complete(struct llmos_ucmd *ucmd);
int llmos_cancel(struct llmos_ucmd *ucmd);
int llmos_wait(struct llmos_ucmd *ucmd);
int llmos_set_weight(struct llmos_ucmd *ucmd);
int llmos_stats(struct llmos_ucmd *ucmd);
void llmos_sched_counters_show(struct seq_file *m);
int llmos_dispatch_check(struct llmos_client *c,
			 const struct llmos_dispatch *cmd);
int llmos_dispatch_into(struct llmos_client *c, u64 descs_uptr, u32 desc_size,
			u32 max, u32 __user *count_uptr);
int llmos_park_dispatch(struct llmos_client *c, struct io_uring_cmd *ioucmd,
			unsigned long deadline);
int llmos_wait_collect(struct llmos_client *c, u64 id, struct llmos_wait *cmd,
		       void __user *reply, u32 reply_size);
int llmos_park_wait(struct llmos_client *c, struct io_uring_cmd *ioucmd,
		    u64 id, unsigned long deadline);
int llmos_complete_batch(struct llmos_ucmd *ucmd);
int llmos_submit_batch(struct llmos_ucmd *ucmd);
int llmos_wait_batch(struct llmos_ucmd *ucmd);
int llmos_wait_batch_check(const struct llmos_wait_batch *cmd);
int llmos_wait_batch_into(struct llmos_client *c, u64 entries_uptr,
			  u32 entry_size, u32 max, u32 __user *count_uptr);
bool llmos_unpark(struct llmos_client *c, struct io_uring_cmd *ioucmd);
void llmos_kick_again(void);

/* grant.c: which tenants a caller may name, whether it may be a worker */
kuid_t llmos_caller_uid(void);
int llmos_tenant_check(u32 tenant, int *admin);
int llmos_worker_check(void);
void llmos_tenants_seen(u32 *first, u32 *last);
int llmos_tenant_grant(struct llmos_ucmd *ucmd);
void llmos_grants_debugfs_init(struct dentry *dir);
void llmos_grants_exit(void);

/* uring.c */
int llmos_uring_cmd(struct io_uring_cmd *ioucmd, unsigned int issue_flags);
void llmos_uring_kick(struct io_uring_cmd *ioucmd);
void llmos_uring_cancel(struct io_uring_cmd *ioucmd);
void llmos_uring_timeout(struct io_uring_cmd *ioucmd);
/* main.c: the ioctls of /dev/llmos, for io_uring commands too */
long llmos_dev_ioctl(struct file *filp, unsigned int cmd, unsigned long arg);
int llmos_sched_init(void);
void llmos_sched_exit(void);

#endif /* _LLMOS_H */
