// SPDX-License-Identifier: MIT
/*
 * ABI tests for /dev/llmos that every command must pass: the size/flags
 * contract of the ioctl dispatcher (see the DOC block in
 * include/uapi/linux/llmos.h), plus the VERSION command itself and module
 * unload while the device is open.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/llmos.h>

#include "kselftest_harness.h"

#define LLMOS_DEV "/dev/llmos"

/* A buffer larger than any command struct, to grow sizes into. */
#define ABI_BUF 4096

FIXTURE(abi) {
	int dev;
	int fd; /* the file the command is issued on */
	unsigned char *buf;
};

/*
 * One variant per command: @size is the kernel's struct, @min the first
 * published size, @msfd whether it is a mindspace fd command.
 */
FIXTURE_VARIANT(abi) {
	unsigned long cmd;
	__u32 size;
	__u32 min;
	bool msfd;
	bool impure; /* a successful call changes state: replies differ */
};

FIXTURE_VARIANT_ADD(abi, version) {
	.cmd = LLMOS_IOC_VERSION,
	.size = sizeof(struct llmos_version),
	.min = sizeof(struct llmos_version),
	.msfd = false,
};

FIXTURE_VARIANT_ADD(abi, ms_create) {
	.cmd = LLMOS_IOC_MS_CREATE,
	.size = sizeof(struct llmos_ms_create),
	.min = sizeof(struct llmos_ms_create),
	.msfd = false,
};

FIXTURE_VARIANT_ADD(abi, ms_open) {
	.cmd = LLMOS_IOC_MS_OPEN,
	.size = sizeof(struct llmos_ms_open),
	.min = sizeof(struct llmos_ms_open),
	.msfd = false,
};

FIXTURE_VARIANT_ADD(abi, ms_destroy) {
	.cmd = LLMOS_IOC_MS_DESTROY,
	.size = sizeof(struct llmos_ms_destroy),
	.min = sizeof(struct llmos_ms_destroy),
	.msfd = false,
};

FIXTURE_VARIANT_ADD(abi, ms_list) {
	.cmd = LLMOS_IOC_MS_LIST,
	.size = sizeof(struct llmos_ms_list),
	.min = sizeof(struct llmos_ms_list),
	.msfd = false,
};

FIXTURE_VARIANT_ADD(abi, ms_info) {
	.cmd = LLMOS_IOC_MS_INFO,
	.size = sizeof(struct llmos_ms_query),
	.min = sizeof(struct llmos_ms_query),
	.msfd = false,
};

FIXTURE_VARIANT_ADD(abi, quota) {
	.cmd = LLMOS_IOC_QUOTA,
	.size = sizeof(struct llmos_quota),
	.min = sizeof(struct llmos_quota),
	.msfd = false,
};

FIXTURE_VARIANT_ADD(abi, msfd_info) {
	.cmd = LLMOS_MSFD_IOC_INFO,
	.size = sizeof(struct llmos_ms_query),
	.min = sizeof(struct llmos_ms_query),
	.msfd = true,
};

FIXTURE_VARIANT_ADD(abi, msfd_export) {
	.cmd = LLMOS_MSFD_IOC_EXPORT_DMABUF,
	.size = sizeof(struct llmos_ms_export),
	.min = sizeof(struct llmos_ms_export),
	.msfd = true,
};

FIXTURE_VARIANT_ADD(abi, worker_register) {
	.cmd = LLMOS_IOC_WORKER_REGISTER,
	.size = sizeof(struct llmos_worker_register),
	.min = sizeof(struct llmos_worker_register),
	.msfd = false,
	.impure = true,
};

FIXTURE_VARIANT_ADD(abi, submit) {
	.cmd = LLMOS_IOC_SUBMIT,
	.size = sizeof(struct llmos_submit),
	.min = sizeof(struct llmos_submit),
	.msfd = false,
	.impure = true,
};

FIXTURE_VARIANT_ADD(abi, dispatch) {
	.cmd = LLMOS_IOC_DISPATCH,
	.size = sizeof(struct llmos_dispatch),
	.min = sizeof(struct llmos_dispatch),
	.msfd = false,
	.impure = false,
};

FIXTURE_VARIANT_ADD(abi, start) {
	.cmd = LLMOS_IOC_START,
	.size = sizeof(struct llmos_start),
	.min = sizeof(struct llmos_start),
	.msfd = false,
	.impure = false,
};

FIXTURE_VARIANT_ADD(abi, complete) {
	.cmd = LLMOS_IOC_COMPLETE,
	.size = sizeof(struct llmos_complete),
	.min = sizeof(struct llmos_complete),
	.msfd = false,
	.impure = false,
};

FIXTURE_VARIANT_ADD(abi, cancel) {
	.cmd = LLMOS_IOC_CANCEL,
	.size = sizeof(struct llmos_cancel),
	.min = sizeof(struct llmos_cancel),
	.msfd = false,
	.impure = false,
};

FIXTURE_VARIANT_ADD(abi, wait) {
	.cmd = LLMOS_IOC_WAIT,
	.size = sizeof(struct llmos_wait),
	.min = sizeof(struct llmos_wait),
	.msfd = false,
	.impure = false,
};

FIXTURE_VARIANT_ADD(abi, set_weight) {
	.cmd = LLMOS_IOC_SET_WEIGHT,
	.size = sizeof(struct llmos_set_weight),
	.min = sizeof(struct llmos_set_weight),
	.msfd = false,
	.impure = false,
};

FIXTURE_VARIANT_ADD(abi, stats) {
	.cmd = LLMOS_IOC_STATS,
	.size = sizeof(struct llmos_sched_stats),
	/* It grew (policy fields): the first published size still works. */
	.min = offsetof(struct llmos_sched_stats, out_lat_hist) +
	       sizeof(((struct llmos_sched_stats *)0)->out_lat_hist),
	.msfd = false,
	.impure = false,
};

FIXTURE_VARIANT_ADD(abi, submit_batch) {
	.cmd = LLMOS_IOC_SUBMIT_BATCH,
	.size = sizeof(struct llmos_submit_batch),
	.min = sizeof(struct llmos_submit_batch),
	.msfd = false,
	.impure = false,
};

FIXTURE_VARIANT_ADD(abi, complete_batch) {
	.cmd = LLMOS_IOC_COMPLETE_BATCH,
	.size = sizeof(struct llmos_complete_batch),
	.min = sizeof(struct llmos_complete_batch),
	.msfd = false,
	.impure = false,
};

FIXTURE_VARIANT_ADD(abi, wait_batch) {
	.cmd = LLMOS_IOC_WAIT_BATCH,
	.size = sizeof(struct llmos_wait_batch),
	.min = sizeof(struct llmos_wait_batch),
	.msfd = false,
	.impure = false,
};

FIXTURE_VARIANT_ADD(abi, tenant_grant) {
	.cmd = LLMOS_IOC_TENANT_GRANT,
	.size = sizeof(struct llmos_tenant_grant),
	.min = sizeof(struct llmos_tenant_grant),
	.msfd = false,
	.impure = false,
};

FIXTURE_SETUP(abi)
{
	self->dev = open(LLMOS_DEV, O_RDWR | O_CLOEXEC);
	ASSERT_LE(0, self->dev) {
		TH_LOG("open %s: %s", LLMOS_DEV, strerror(errno));
	}
	self->fd = self->dev;
	if (variant->msfd) {
		struct llmos_ms_create c = { .size = sizeof(c), .length = 4096 };

		ASSERT_EQ(0, ioctl(self->dev, LLMOS_IOC_MS_CREATE, &c));
		self->fd = c.out_fd;
	}
	self->buf = calloc(1, ABI_BUF);
	ASSERT_NE(NULL, self->buf);
}

FIXTURE_TEARDOWN(abi)
{
	free(self->buf);
	if (self->fd != self->dev)
		close(self->fd);
	close(self->dev);
}

static int call(int fd, unsigned long cmd, void *arg, __u32 size)
{
	memcpy(arg, &size, sizeof(size));
	return ioctl(fd, cmd, arg) ? -errno : 0;
}

TEST_F(abi, null_pointer_is_efault)
{
	ASSERT_EQ(-1, ioctl(self->fd, variant->cmd, NULL));
	ASSERT_EQ(EFAULT, errno);
}

TEST_F(abi, bad_pointer_is_efault)
{
	ASSERT_EQ(-1, ioctl(self->fd, variant->cmd, (void *)16));
	ASSERT_EQ(EFAULT, errno);
}

TEST_F(abi, size_below_minimum_is_einval)
{
	ASSERT_EQ(-EINVAL, call(self->fd, variant->cmd, self->buf,
				variant->min - 1));
	ASSERT_EQ(-EINVAL, call(self->fd, variant->cmd, self->buf, 0));
	ASSERT_EQ(-EINVAL, call(self->fd, variant->cmd, self->buf, 8));
}

TEST_F(abi, dirty_tail_is_e2big)
{
	self->buf[variant->size] = 1;
	ASSERT_EQ(-E2BIG, call(self->fd, variant->cmd, self->buf,
			       variant->size + 1));
	memset(self->buf, 0, ABI_BUF);
	self->buf[ABI_BUF - 1] = 0x80;
	ASSERT_EQ(-E2BIG, call(self->fd, variant->cmd, self->buf, ABI_BUF));
}

TEST_F(abi, sizes_past_a_page_are_e2big)
{
	/* Refused before anything past the size field is read. */
	ASSERT_EQ(-E2BIG, call(self->fd, variant->cmd, self->buf, ABI_BUF + 1));
	ASSERT_EQ(-E2BIG, call(self->fd, variant->cmd, self->buf, UINT32_MAX));
}

TEST_F(abi, clean_tail_acts_as_exact_size)
{
	unsigned char *exact = calloc(1, ABI_BUF);
	int want, got;

	ASSERT_NE(NULL, exact);
	want = call(self->fd, variant->cmd, exact, variant->size);
	got = call(self->fd, variant->cmd, self->buf, variant->size + 1);
	ASSERT_EQ(want, got);
	/* The reply is the same, and nothing is written past the struct. */
	((__u32 *)self->buf)[0] = variant->size;
	if (!variant->impure)
		ASSERT_EQ(0, memcmp(exact, self->buf, variant->size));
	ASSERT_EQ(0, self->buf[variant->size]);
	memset(self->buf, 0, ABI_BUF);
	got = call(self->fd, variant->cmd, self->buf, ABI_BUF);
	ASSERT_EQ(want, got);
	for (int i = variant->size; i < ABI_BUF; i++)
		ASSERT_EQ(0, self->buf[i]);
	free(exact);
}

TEST_F(abi, unknown_flags_are_einval)
{
	__u32 flags = 1u << 31;

	memcpy(self->buf + 4, &flags, sizeof(flags));
	ASSERT_EQ(-EINVAL, call(self->fd, variant->cmd, self->buf,
				variant->size));
}

TEST_F(abi, wrong_encoding_is_enotty)
{
	unsigned int nr = _IOC_NR(variant->cmd);

	/* Same number, but with direction/size bits or another type. */
	ASSERT_EQ(-ENOTTY, call(self->fd, _IOWR(LLMOS_TYPE, nr, __u64),
				self->buf, variant->size));
	ASSERT_EQ(-ENOTTY, call(self->fd, _IO(LLMOS_TYPE + 1, nr),
				self->buf, variant->size));
}

FIXTURE(dev) {
	int fd;
};

FIXTURE_SETUP(dev)
{
	self->fd = open(LLMOS_DEV, O_RDWR | O_CLOEXEC);
	ASSERT_LE(0, self->fd) {
		TH_LOG("open %s: %s", LLMOS_DEV, strerror(errno));
	}
}

FIXTURE_TEARDOWN(dev)
{
	close(self->fd);
}

TEST_F(dev, version_reports_abi_1_3)
{
	/* Every part of the ABI this header describes, and nothing else. */
	const __u64 all = LLMOS_FEATURE_VERSION | LLMOS_FEATURE_MINDSPACE |
			  LLMOS_FEATURE_MS_DMABUF | LLMOS_FEATURE_SCHED |
			  LLMOS_FEATURE_BPF_POLICY | LLMOS_FEATURE_SCHED_RETURN |
			  LLMOS_FEATURE_TENANT_GRANT |
			  LLMOS_FEATURE_WORKER_GRANT;

	/* Written whatever the output fields held before. */
	for (__u64 before = 0; before <= 1; before++) {
		struct llmos_version v = { .size = sizeof(v) };

		v.out_features = before ? ~0ull : 0;
		v.out_abi_major = before ? ~0u : 0;
		ASSERT_EQ(0, ioctl(self->fd, LLMOS_IOC_VERSION, &v));
		ASSERT_EQ(LLMOS_ABI_MAJOR, v.out_abi_major);
		ASSERT_EQ(LLMOS_ABI_MINOR, v.out_abi_minor);
		ASSERT_EQ(all, v.out_features);
		ASSERT_EQ(sizeof(v), v.size);
		ASSERT_EQ(0u, v.flags);
	}
}

/*
 * An unknown flag is refused on a command that would succeed without it
 * (an all-zero struct is refused for other reasons by most commands),
 * and the command then still succeeds: the flags are checked, not the
 * other fields alone.
 */
TEST_F(dev, unknown_flags_are_refused_where_the_command_would_succeed)
{
	const __u32 unknown = 1u << 31;
	struct llmos_worker_register reg = {
		.size = sizeof(reg), .flags = unknown, .capacity = 1,
		.numa_node = -1,
	};
	struct llmos_set_weight sw = {
		.size = sizeof(sw), .flags = unknown, .tenant = 7, .weight = 100,
	};
	struct llmos_ms_info info[2];
	struct llmos_ms_list ml = {
		.size = sizeof(ml), .flags = unknown,
		.entries_uptr = (__u64)(uintptr_t)info,
		.entry_size = sizeof(info[0]), .count = 2,
	};
	struct llmos_submit_entry se = { .cost = 1 };
	struct llmos_submit_batch sb = {
		.size = sizeof(sb), .flags = unknown,
		.entries_uptr = (__u64)(uintptr_t)&se,
		.entry_size = sizeof(se), .count = 1,
	};
	struct llmos_req_desc d;
	struct llmos_dispatch dp = {
		.size = sizeof(dp), .flags = LLMOS_NONBLOCK,
		.descs_uptr = (__u64)(uintptr_t)&d, .desc_size = sizeof(d),
		.max = 1,
	};
	struct llmos_start st = { .size = sizeof(st), .flags = unknown };
	struct llmos_complete_entry ce = { .tokens = 1 };
	struct llmos_complete_batch cb = {
		.size = sizeof(cb), .flags = unknown,
		.entries_uptr = (__u64)(uintptr_t)&ce,
		.entry_size = sizeof(ce), .count = 1,
	};
	struct llmos_complete c = {
		.size = sizeof(c), .flags = unknown, .tokens = 1,
	};
	int worker = open(LLMOS_DEV, O_RDWR | O_CLOEXEC);

	ASSERT_LE(0, worker);
	ASSERT_EQ(-1, ioctl(worker, LLMOS_IOC_WORKER_REGISTER, &reg));
	ASSERT_EQ(EINVAL, errno);
	reg.flags = 0;
	ASSERT_EQ(0, ioctl(worker, LLMOS_IOC_WORKER_REGISTER, &reg));
	if (getuid() == 0) { /* SET_WEIGHT is root's */
		ASSERT_EQ(-1, ioctl(self->fd, LLMOS_IOC_SET_WEIGHT, &sw));
		ASSERT_EQ(EINVAL, errno);
		sw.flags = 0;
		ASSERT_EQ(0, ioctl(self->fd, LLMOS_IOC_SET_WEIGHT, &sw));
	}
	ASSERT_EQ(-1, ioctl(self->fd, LLMOS_IOC_MS_LIST, &ml));
	ASSERT_EQ(EINVAL, errno);
	ml.flags = 0;
	ASSERT_EQ(0, ioctl(self->fd, LLMOS_IOC_MS_LIST, &ml));
	se.tenant = getuid();
	ASSERT_EQ(-1, ioctl(self->fd, LLMOS_IOC_SUBMIT_BATCH, &sb));
	ASSERT_EQ(EINVAL, errno);
	sb.flags = 0;
	ASSERT_EQ(0, ioctl(self->fd, LLMOS_IOC_SUBMIT_BATCH, &sb));
	ASSERT_EQ(1u, sb.out_done);
	ASSERT_EQ(0, ioctl(worker, LLMOS_IOC_DISPATCH, &dp));
	ASSERT_EQ(1u, dp.out_count);
	ASSERT_EQ(se.out_id, d.id);
	st.id = d.id;
	ce.id = d.id;
	c.id = d.id;
	ASSERT_EQ(-1, ioctl(worker, LLMOS_IOC_START, &st));
	ASSERT_EQ(EINVAL, errno);
	st.flags = 0;
	ASSERT_EQ(0, ioctl(worker, LLMOS_IOC_START, &st));
	ASSERT_EQ(-1, ioctl(worker, LLMOS_IOC_COMPLETE, &c));
	ASSERT_EQ(EINVAL, errno);
	ASSERT_EQ(-1, ioctl(worker, LLMOS_IOC_COMPLETE_BATCH, &cb));
	ASSERT_EQ(EINVAL, errno);
	cb.flags = 0;
	ASSERT_EQ(0, ioctl(worker, LLMOS_IOC_COMPLETE_BATCH, &cb));
	ASSERT_EQ(1u, cb.out_done);
	ASSERT_EQ(0, ce.out_error);
	close(worker);
}

TEST_F(dev, unknown_command_is_enotty)
{
	struct llmos_version v = { .size = sizeof(v) };

	ASSERT_EQ(-1, ioctl(self->fd, _IO(LLMOS_TYPE, 0xff), &v));
	ASSERT_EQ(ENOTTY, errno);
	ASSERT_EQ(-1, ioctl(self->fd, _IO(LLMOS_TYPE, LLMOS_CMD_BASE - 1), &v));
	ASSERT_EQ(ENOTTY, errno);
	ASSERT_EQ(-1, ioctl(self->fd, TCGETS, &v));
	ASSERT_EQ(ENOTTY, errno);
}

TEST_F(dev, many_opens_are_independent)
{
	struct llmos_version v = { .size = sizeof(v) };
	int fds[64];

	for (int i = 0; i < 64; i++) {
		fds[i] = open(LLMOS_DEV, O_RDWR | O_CLOEXEC);
		ASSERT_LE(0, fds[i]);
	}
	for (int i = 0; i < 64; i++) {
		ASSERT_EQ(0, ioctl(fds[i], LLMOS_IOC_VERSION, &v));
		ASSERT_EQ(0, close(fds[i]));
	}
}

/*
 * The open file holds a module reference: unloading must be refused (not
 * crash, not leave a dangling device) while it is open.
 */
TEST_F(dev, unload_refused_while_open)
{
	struct llmos_version v = { .size = sizeof(v) };
	long ret;

	if (geteuid() != 0)
		SKIP(return, "needs root to call delete_module");
	ret = syscall(SYS_delete_module, "llmos", O_NONBLOCK);
	ASSERT_EQ(-1, ret);
	ASSERT_TRUE(errno == EWOULDBLOCK || errno == EBUSY) {
		TH_LOG("delete_module: %s", strerror(errno));
	}
	ASSERT_EQ(0, ioctl(self->fd, LLMOS_IOC_VERSION, &v));
	ASSERT_EQ(1u, v.out_abi_major);
}

TEST_HARNESS_MAIN
