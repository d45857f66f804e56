// SPDX-License-Identifier: MIT
/*
 * Mindspace tests: creation and its bad input, names, sharing between
 * processes, persistence, permissions, quotas, demand paging, listing, and
 * dma-buf backing (udmabuf and the system dma-heap).
 *
 * Each test checks the module's object counters (debugfs) where it can:
 * what a test creates is gone when it has closed everything.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/dma-heap.h>
#include <linux/llmos.h>
#include <linux/udmabuf.h>

#include "kselftest_harness.h"
#include "child.h"
#include "llmos_files.h"

#define PAGE 4096UL
#define OTHER_UID 1000
#define TOTAL_LIMIT "/sys/module/llmos/parameters/total_limit_bytes"
#define DEBUGFS_LIST "/sys/kernel/debug/llmos/mindspaces"
#define CGROOT "/sys/fs/cgroup"
#define CGTEST CGROOT "/llmos-ms-test"

/* strcpy() into a mapping or a struct, with the terminating NUL. */
static void put_str(char *dst, const char *src)
{
	memcpy(dst, src, strlen(src) + 1);
}

/* Names longer than the field are cut without a NUL, on purpose. */
static void set_name(char *dst, const char *src)
{
	memcpy(dst, src, strnlen(src, LLMOS_NAME_MAX));
}

static int create(int dev, const char *name, __u64 len, __u32 flags,
		  __u32 mode, __u64 *id)
{
	struct llmos_ms_create c = {
		.size = sizeof(c), .flags = flags, .length = len, .mode = mode,
	};

	if (name)
		set_name(c.name, name);
	if (ioctl(dev, LLMOS_IOC_MS_CREATE, &c))
		return -errno;
	if (id)
		*id = c.out_id;
	return c.out_fd;
}

static int create_raw(int dev, struct llmos_ms_create *c)
{
	c->size = sizeof(*c);
	if (ioctl(dev, LLMOS_IOC_MS_CREATE, c))
		return -errno;
	return c->out_fd;
}

static int open_ms(int dev, __u64 id, const char *name, __u32 flags)
{
	struct llmos_ms_open o = { .size = sizeof(o), .flags = flags, .id = id };

	if (name)
		set_name(o.name, name);
	if (ioctl(dev, LLMOS_IOC_MS_OPEN, &o))
		return -errno;
	return o.out_fd;
}

static int destroy(int dev, __u64 id, const char *name)
{
	struct llmos_ms_destroy d = { .size = sizeof(d), .id = id };

	if (name)
		set_name(d.name, name);
	return ioctl(dev, LLMOS_IOC_MS_DESTROY, &d) ? -errno : 0;
}

static int info_fd(int msfd, struct llmos_ms_info *info)
{
	struct llmos_ms_query q = {
		.size = sizeof(q), .info_uptr = (__u64)(uintptr_t)info,
		.info_size = sizeof(*info),
	};

	return ioctl(msfd, LLMOS_MSFD_IOC_INFO, &q) ? -errno : 0;
}

static int info_dev(int dev, __u64 id, const char *name,
		    struct llmos_ms_info *info)
{
	struct llmos_ms_query q = {
		.size = sizeof(q), .id = id,
		.info_uptr = (__u64)(uintptr_t)info, .info_size = sizeof(*info),
	};

	if (name)
		set_name(q.name, name);
	return ioctl(dev, LLMOS_IOC_MS_INFO, &q) ? -errno : 0;
}

static int quota(int dev, __u32 flags, __u32 uid, __u64 limit,
		 struct llmos_quota *out)
{
	struct llmos_quota q = {
		.size = sizeof(q), .flags = flags, .uid = uid, .limit = limit,
	};
	int ret = ioctl(dev, LLMOS_IOC_QUOTA, &q) ? -errno : 0;

	if (out)
		*out = q;
	return ret;
}

/* What as_other_user() runs, in the child. */
static int (*other_user_fn)(int dev, void *arg);

static int as_other_user_child(int dev, __u64 arg)
{
	if (setgid(OTHER_UID) || setuid(OTHER_UID))
		return 99;
	return other_user_fn(dev, (void *)(uintptr_t)arg);
}

/* Run @fn in a child as OTHER_UID; returns the child's exit status. */
static int as_other_user(int (*fn)(int dev, void *arg), int dev, void *arg)
{
	other_user_fn = fn;
	return in_child(as_other_user_child, dev, (uintptr_t)arg);
}

/* The NUMA node of the page at @addr, or -1. */
static int page_node(void *addr)
{
	int node = -1;

	/* get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR) */
	if (syscall(SYS_get_mempolicy, &node, NULL, 0, addr, 3))
		return -1;
	return node;
}

FIXTURE(ms) {
	int dev;
	long ms0, pages0, dmabufs0, charged0;
};

FIXTURE_SETUP(ms)
{
	self->dev = open("/dev/llmos", O_RDWR | O_CLOEXEC);
	ASSERT_LE(0, self->dev);
	self->ms0 = counter("mindspaces");
	self->pages0 = counter("host_pages");
	self->dmabufs0 = counter("dmabufs");
	self->charged0 = counter("charged_bytes");
	ASSERT_LE(0, self->ms0) TH_LOG("cannot read %s", COUNTERS);
}

FIXTURE_TEARDOWN(ms)
{
	/* Everything a test made is gone once it closed what it had. */
	EXPECT_EQ(self->ms0, counter("mindspaces"));
	EXPECT_EQ(self->pages0, counter("host_pages"));
	EXPECT_EQ(self->dmabufs0, counter("dmabufs"));
	EXPECT_EQ(self->charged0, counter("charged_bytes"));
	close(self->dev);
}

TEST_F(ms, create_map_write_read_info)
{
	struct llmos_ms_info info;
	__u64 id = 0;
	char *p;
	int fd;

	fd = create(self->dev, NULL, 16 * PAGE, 0, 0, &id);
	ASSERT_LE(0, fd);
	ASSERT_NE(0, id);
	p = mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ASSERT_NE(MAP_FAILED, p);
	for (int i = 0; i < 16; i++)
		ASSERT_EQ(0, p[i * PAGE + 7]); /* zero-filled */
	p[0] = 'a';
	p[5 * PAGE] = 'b';
	ASSERT_EQ(0, info_fd(fd, &info));
	EXPECT_EQ(id, info.id);
	EXPECT_EQ(16 * PAGE, info.length);
	EXPECT_EQ(16 * PAGE, info.resident); /* all 16 were read */
	EXPECT_EQ(0, info.flags);
	EXPECT_EQ(0600, info.mode);
	EXPECT_EQ(getuid(), info.uid);
	EXPECT_EQ(LLMOS_NUMA_ANY, info.numa_node);
	EXPECT_EQ(1, info.map_count);
	EXPECT_EQ(1, info.open_count);
	EXPECT_STREQ("", info.name);
	EXPECT_EQ(self->pages0 + 16, counter("host_pages"));
	EXPECT_EQ(self->charged0 + 16 * PAGE, counter("charged_bytes"));
	ASSERT_EQ(0, munmap(p, 16 * PAGE));
	ASSERT_EQ(0, info_fd(fd, &info));
	EXPECT_EQ(0, info.map_count);
	close(fd);
}

TEST_F(ms, bad_lengths_are_einval)
{
	EXPECT_EQ(-EINVAL, create(self->dev, NULL, 0, 0, 0, NULL));
	EXPECT_EQ(-EINVAL, create(self->dev, NULL, PAGE + 1, 0, 0, NULL));
	EXPECT_EQ(-EINVAL, create(self->dev, NULL, 100, 0, 0, NULL));
	EXPECT_EQ(-EINVAL, create(self->dev, NULL, (1ULL << 44) + PAGE, 0, 0, NULL));
	EXPECT_EQ(-EINVAL, create(self->dev, NULL, ~0ULL & ~(PAGE - 1), 0, 0, NULL));
}

TEST_F(ms, bad_flags_reserved_mode_node_are_einval)
{
	struct llmos_ms_create c;

	memset(&c, 0, sizeof(c));
	c.length = PAGE;
	c.flags = 1u << 31;
	EXPECT_EQ(-EINVAL, create_raw(self->dev, &c));
	memset(&c, 0, sizeof(c));
	c.length = PAGE;
	c.__reserved = 1;
	EXPECT_EQ(-EINVAL, create_raw(self->dev, &c));
	memset(&c, 0, sizeof(c));
	c.length = PAGE;
	c.__reserved2 = 1;
	EXPECT_EQ(-EINVAL, create_raw(self->dev, &c));
	memset(&c, 0, sizeof(c));
	c.length = PAGE;
	c.mode = 01000;
	EXPECT_EQ(-EINVAL, create_raw(self->dev, &c));
	memset(&c, 0, sizeof(c));
	c.length = PAGE;
	c.dmabuf_fd = 3; /* without LLMOS_MS_DMABUF */
	EXPECT_EQ(-EINVAL, create_raw(self->dev, &c));
	memset(&c, 0, sizeof(c));
	c.length = PAGE;
	c.numa_node = 1; /* without LLMOS_MS_NODE */
	EXPECT_EQ(-EINVAL, create_raw(self->dev, &c));
	memset(&c, 0, sizeof(c));
	c.length = PAGE;
	c.flags = LLMOS_MS_NODE;
	c.numa_node = 4096;
	EXPECT_EQ(-EINVAL, create_raw(self->dev, &c));
	c.numa_node = -1;
	EXPECT_EQ(-EINVAL, create_raw(self->dev, &c));
	c.numa_node = 0;
	c.out_fd = -1;
	ASSERT_LE(0, create_raw(self->dev, &c));
	close(c.out_fd);
}

TEST_F(ms, node_is_kept)
{
	struct llmos_ms_create c = { .length = 4 * PAGE, .flags = LLMOS_MS_NODE };
	struct llmos_ms_info info;
	char *p;
	int fd = create_raw(self->dev, &c);

	ASSERT_LE(0, fd);
	p = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ASSERT_NE(MAP_FAILED, p);
	p[0] = 1;
	ASSERT_EQ(0, info_fd(fd, &info));
	EXPECT_EQ(0, info.numa_node);
	EXPECT_EQ(LLMOS_MS_NODE, info.flags);
	munmap(p, 4 * PAGE);
	close(fd);
}

TEST_F(ms, names_are_validated)
{
	static const char * const bad[] = {
		"a/b", "a b", ".hidden", "-x", "x\x01", "é", "a\\b", "123", "0",
		/* Latin-1 letters, which the kernel's isalnum() takes */
		"x\xc0\xc1", "\xd8y",
	};
	char longname[LLMOS_NAME_MAX + 1];
	struct llmos_ms_create c = { .length = PAGE };
	int fd;

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		EXPECT_EQ(-EINVAL, create(self->dev, bad[i], PAGE, 0, 0, NULL)) {
			TH_LOG("name '%s'", bad[i]);
		}
	}
	/* 64 characters: no room for the NUL. */
	memset(c.name, 'x', sizeof(c.name));
	EXPECT_EQ(-EINVAL, create_raw(self->dev, &c));
	/* 63 characters is the longest. */
	memset(longname, 'y', sizeof(longname));
	longname[LLMOS_NAME_MAX - 1] = '\0';
	fd = create(self->dev, longname, PAGE, 0, 0, NULL);
	ASSERT_LE(0, fd);
	close(fd);
	fd = create(self->dev, "model_7.kv:0-1", PAGE, 0, 0, NULL);
	ASSERT_LE(0, fd);
	close(fd);
}

TEST_F(ms, duplicate_name_is_eexist)
{
	int a = create(self->dev, "dup", PAGE, 0, 0, NULL);

	ASSERT_LE(0, a);
	EXPECT_EQ(-EEXIST, create(self->dev, "dup", 2 * PAGE, 0, 0, NULL));
	EXPECT_EQ(self->ms0 + 1, counter("mindspaces"));
	close(a);
	/* The name is free again once the non-persistent one is gone. */
	a = create(self->dev, "dup", PAGE, 0, 0, NULL);
	ASSERT_LE(0, a);
	close(a);
}

/*
 * A create whose reply cannot be written fails with nothing left, and what
 * it made was never there to find: another process looking it up by name
 * all the while never opens it.
 */
TEST_F(ms, a_create_that_cannot_answer_was_never_there)
{
	struct llmos_ms_create *c;
	int rounds = 2000, opened = 0, i, status;
	int pipefd[2];
	pid_t pid;

	c = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, c);
	memset(c, 0, sizeof(*c));
	c->size = sizeof(*c);
	c->length = PAGE;
	c->flags = LLMOS_MS_PERSISTENT;
	c->mode = 0666;
	set_name(c->name, "unanswered");
	ASSERT_EQ(0, mprotect(c, PAGE, PROT_READ));

	ASSERT_EQ(0, pipe(pipefd));
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		/* Look it up until the parent closes its end of the pipe. */
		int dev = open("/dev/llmos", O_RDWR | O_CLOEXEC), n = 0, fd;
		char byte;

		close(pipefd[1]);
		fcntl(pipefd[0], F_SETFL, O_NONBLOCK);
		while (read(pipefd[0], &byte, 1) < 0 && errno == EAGAIN) {
			fd = open_ms(dev, 0, "unanswered", 0);
			if (fd >= 0) {
				n++;
				close(fd);
			}
		}
		_exit(n > 100 ? 100 : n);
	}
	close(pipefd[0]);
	for (i = 0; i < rounds; i++) {
		ASSERT_EQ(-1, ioctl(self->dev, LLMOS_IOC_MS_CREATE, c));
		ASSERT_EQ(EFAULT, errno);
	}
	close(pipefd[1]);
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFEXITED(status));
	opened = WEXITSTATUS(status);
	EXPECT_EQ(0, opened) TH_LOG("opened %d times", opened);
	EXPECT_EQ(-ENOENT, open_ms(self->dev, 0, "unanswered", 0));
	EXPECT_EQ(self->ms0, counter("mindspaces"));
	munmap(c, PAGE);
}

TEST_F(ms, two_processes_share_bytes)
{
	int status, fd;
	char *p;
	pid_t pid;

	fd = create(self->dev, "shared", 8 * PAGE, 0, 0, NULL);
	ASSERT_LE(0, fd);
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		/* Another process, its own fd, a mapping of pages 3..4 only. */
		int cfd = open_ms(self->dev, 0, "shared", 0);
		char *q;

		if (cfd < 0)
			_exit(1);
		q = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED,
			 cfd, 3 * PAGE);
		if (q == MAP_FAILED)
			_exit(2);
		put_str(q + 10, "hello from the child");
		_exit(0);
	}
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_EQ(0, status); /* exited, with 0 (not killed) */
	p = mmap(NULL, 8 * PAGE, PROT_READ, MAP_SHARED, fd, 0);
	ASSERT_NE(MAP_FAILED, p);
	EXPECT_STREQ("hello from the child", p + 3 * PAGE + 10);
	munmap(p, 8 * PAGE);
	close(fd);
}

TEST_F(ms, fork_shares_the_mapping)
{
	struct llmos_ms_info info;
	int status, fd;
	char *p;
	pid_t pid;

	fd = create(self->dev, NULL, PAGE, 0, 0, NULL);
	ASSERT_LE(0, fd);
	p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ASSERT_NE(MAP_FAILED, p);
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		p[1] = 'c';
		_exit(info_fd(fd, &info) || info.map_count != 2);
	}
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	EXPECT_EQ(0, status); /* exited, with 0 (not killed) */
	EXPECT_EQ('c', p[1]);
	ASSERT_EQ(0, info_fd(fd, &info));
	EXPECT_EQ(1, info.map_count);
	munmap(p, PAGE);
	close(fd);
}

TEST_F(ms, persistent_survives_its_fds)
{
	struct llmos_ms_info info;
	__u64 id;
	char *p;
	int fd;

	fd = create(self->dev, "keep", 4 * PAGE, LLMOS_MS_PERSISTENT, 0, &id);
	ASSERT_LE(0, fd);
	p = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ASSERT_NE(MAP_FAILED, p);
	put_str(p + 2 * PAGE, "remember me");
	munmap(p, 4 * PAGE);
	close(fd);

	/* Nothing is open, yet it is there with its bytes. */
	ASSERT_EQ(0, info_dev(self->dev, 0, "keep", &info));
	EXPECT_EQ(id, info.id);
	EXPECT_EQ(0, info.open_count);
	EXPECT_EQ(PAGE, info.resident);
	EXPECT_EQ(LLMOS_MS_PERSISTENT, info.flags);
	fd = open_ms(self->dev, 0, "keep", LLMOS_MS_OPEN_RDONLY);
	ASSERT_LE(0, fd);
	p = mmap(NULL, 4 * PAGE, PROT_READ, MAP_SHARED, fd, 0);
	ASSERT_NE(MAP_FAILED, p);
	EXPECT_STREQ("remember me", p + 2 * PAGE);
	munmap(p, 4 * PAGE);
	close(fd);
	fd = open_ms(self->dev, id, NULL, 0);
	ASSERT_LE(0, fd);
	close(fd);

	ASSERT_EQ(0, destroy(self->dev, 0, "keep"));
	EXPECT_EQ(-ENOENT, open_ms(self->dev, 0, "keep", 0));
	EXPECT_EQ(-ENOENT, open_ms(self->dev, id, NULL, 0));
	EXPECT_EQ(-ENOENT, destroy(self->dev, 0, "keep"));
}

TEST_F(ms, non_persistent_goes_with_its_last_fd)
{
	__u64 id;
	int fd, fd2;

	fd = create(self->dev, "brief", PAGE, 0, 0, &id);
	ASSERT_LE(0, fd);
	fd2 = open_ms(self->dev, id, NULL, 0);
	ASSERT_LE(0, fd2);
	close(fd);
	/* Still there: fd2 holds it. */
	EXPECT_EQ(self->ms0 + 1, counter("mindspaces"));
	close(fd2);
	EXPECT_EQ(self->ms0, counter("mindspaces"));
	EXPECT_EQ(-ENOENT, open_ms(self->dev, 0, "brief", 0));
	EXPECT_EQ(-ENOENT, open_ms(self->dev, id, NULL, 0));
}

TEST_F(ms, destroy_while_mapped_frees_at_unmap)
{
	struct llmos_ms_info info;
	__u64 id;
	char *p;
	int fd, again;

	fd = create(self->dev, "mapped", 2 * PAGE, LLMOS_MS_PERSISTENT, 0, &id);
	ASSERT_LE(0, fd);
	p = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ASSERT_NE(MAP_FAILED, p);
	ASSERT_EQ(0, info_fd(fd, &info));
	EXPECT_EQ(LLMOS_MS_PERSISTENT, info.flags & LLMOS_MS_PERSISTENT);
	ASSERT_EQ(0, destroy(self->dev, id, NULL));
	/* Destroyed, it is no longer persistent (it goes with its last user). */
	ASSERT_EQ(0, info_fd(fd, &info));
	EXPECT_EQ(0, info.flags & LLMOS_MS_PERSISTENT);
	EXPECT_EQ(0, info.name[0]);
	close(fd);
	munmap(p, 2 * PAGE);
	fd = create(self->dev, "mapped", 2 * PAGE, LLMOS_MS_PERSISTENT, 0, &id);
	ASSERT_LE(0, fd);
	p = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ASSERT_NE(MAP_FAILED, p);
	close(fd);
	p[0] = 'x';
	ASSERT_EQ(0, destroy(self->dev, id, NULL));
	/* The name is free at once; the memory lives while mapped. */
	again = create(self->dev, "mapped", PAGE, 0, 0, NULL);
	ASSERT_LE(0, again);
	close(again);
	EXPECT_EQ('x', p[0]);
	EXPECT_EQ(self->ms0 + 1, counter("mindspaces"));
	munmap(p, 2 * PAGE);
	EXPECT_EQ(self->ms0, counter("mindspaces"));
}

TEST_F(ms, destroy_of_non_persistent_is_einval)
{
	__u64 id;
	int fd = create(self->dev, "plain", PAGE, 0, 0, &id);

	ASSERT_LE(0, fd);
	EXPECT_EQ(-EINVAL, destroy(self->dev, id, NULL));
	EXPECT_EQ(-EINVAL, destroy(self->dev, id, "plain")); /* both */
	EXPECT_EQ(-EINVAL, destroy(self->dev, 0, NULL)); /* neither */
	EXPECT_EQ(-ENOENT, destroy(self->dev, 0, "nosuch"));
	EXPECT_EQ(-ENOENT, destroy(self->dev, ~0ULL, NULL));
	close(fd);
}

static int other_opens(int dev, void *arg)
{
	const char *name = arg;
	struct llmos_ms_info info;
	struct llmos_ms_list l = { .size = sizeof(l), .entry_size = sizeof(info) };
	int fd;
	char *p;

	if (open_ms(dev, 0, name, 0) != -EACCES)
		return 10;
	if (open_ms(dev, 0, name, LLMOS_MS_OPEN_RDONLY) != -EACCES)
		return 11;
	if (info_dev(dev, 0, name, &info) != -EACCES)
		return 12;
	if (destroy(dev, 0, name) != -EPERM)
		return 13;
	/* Not listed either. */
	if (ioctl(dev, LLMOS_IOC_MS_LIST, &l) || l.count != 0)
		return 14;
	(void)fd;
	(void)p;
	return 0;
}

static int other_reads(int dev, void *arg)
{
	const char *name = arg;
	char *p;
	int fd;

	if (open_ms(dev, 0, name, 0) != -EACCES)
		return 20;
	fd = open_ms(dev, 0, name, LLMOS_MS_OPEN_RDONLY);
	if (fd < 0)
		return 21;
	p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p != MAP_FAILED || errno != EACCES)
		return 22;
	p = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return 23;
	if (strcmp(p, "root's"))
		return 24;
	if (mprotect(p, PAGE, PROT_READ | PROT_WRITE) == 0)
		return 25;
	return 0;
}

TEST_F(ms, permissions_follow_the_mode)
{
	char *p;
	int fd;

	if (getuid() != 0)
		SKIP(return, "needs root to switch users");
	fd = create(self->dev, "private", PAGE, LLMOS_MS_PERSISTENT, 0600, NULL);
	ASSERT_LE(0, fd);
	close(fd);
	EXPECT_EQ(0, as_other_user(other_opens, self->dev, "private"));
	ASSERT_EQ(0, destroy(self->dev, 0, "private"));

	fd = create(self->dev, "readable", PAGE, LLMOS_MS_PERSISTENT, 0644, NULL);
	ASSERT_LE(0, fd);
	p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ASSERT_NE(MAP_FAILED, p);
	put_str(p, "root's");
	munmap(p, PAGE);
	close(fd);
	EXPECT_EQ(0, as_other_user(other_reads, self->dev, "readable"));
	ASSERT_EQ(0, destroy(self->dev, 0, "readable"));
}

static int other_quota(int dev, void *arg)
{
	struct llmos_quota q;
	int a, b;

	(void)arg;
	if (quota(dev, 0, LLMOS_UID_SELF, 0, &q) || q.out_limit != 16 * PAGE ||
	    q.out_used != 0)
		return 30;
	a = create(dev, NULL, 12 * PAGE, 0, 0, NULL);
	if (a < 0)
		return 31;
	if (create(dev, NULL, 8 * PAGE, 0, 0, NULL) != -EDQUOT)
		return 32;
	if (quota(dev, 0, LLMOS_UID_SELF, 0, &q) || q.out_used != 12 * PAGE)
		return 33;
	b = create(dev, NULL, 4 * PAGE, 0, 0, NULL);
	if (b < 0)
		return 34;
	close(a);
	close(b);
	a = create(dev, NULL, 16 * PAGE, 0, 0, NULL);
	if (a < 0)
		return 35;
	close(a);
	/* Setting, or reading someone else's, needs CAP_SYS_ADMIN. */
	if (quota(dev, LLMOS_QUOTA_SET, LLMOS_UID_SELF, 1 << 30, NULL) != -EPERM)
		return 36;
	if (quota(dev, 0, 0, 0, NULL) != -EPERM)
		return 37;
	return 0;
}

TEST_F(ms, quota_is_edquot_and_leaks_nothing)
{
	struct llmos_quota q;

	if (getuid() != 0)
		SKIP(return, "needs root to set quotas");
	ASSERT_EQ(0, quota(self->dev, LLMOS_QUOTA_SET, OTHER_UID, 16 * PAGE, &q));
	EXPECT_EQ(16 * PAGE, q.out_limit);
	EXPECT_EQ(0, as_other_user(other_quota, self->dev, NULL));
	ASSERT_EQ(0, quota(self->dev, 0, OTHER_UID, 0, &q));
	EXPECT_EQ(0, q.out_used);
	/* Back to the default: unlimited. */
	ASSERT_EQ(0, quota(self->dev, LLMOS_QUOTA_SET, OTHER_UID, 0, &q));
	EXPECT_EQ(LLMOS_QUOTA_UNLIMITED, q.out_limit);
	/* limit without SET, unknown flags, reserved: EINVAL. */
	EXPECT_EQ(-EINVAL, quota(self->dev, 0, OTHER_UID, 5, NULL));
	EXPECT_EQ(-EINVAL, quota(self->dev, 1u << 7, OTHER_UID, 0, NULL));
}

TEST_F(ms, total_limit_is_enospc)
{
	int fd;

	int ret;

	if (getuid() != 0)
		SKIP(return, "%s is root's to write", TOTAL_LIMIT);
	/* A parameter root cannot set is the module's failure, not a skip. */
	ASSERT_EQ(0, write_file(TOTAL_LIMIT, "1048576"));
	ret = create(self->dev, NULL, 2 << 20, 0, 0, NULL);
	fd = create(self->dev, NULL, 1 << 20, 0, 0, NULL);
	/* Set back before any check can end the test. */
	EXPECT_EQ(-ENOSPC, create(self->dev, NULL, PAGE, 0, 0, NULL));
	if (fd >= 0)
		close(fd);
	if (ret >= 0)
		close(ret);
	ASSERT_EQ(0, write_file(TOTAL_LIMIT, "0"));
	EXPECT_EQ(-ENOSPC, ret);
	EXPECT_LE(0, fd);
}

TEST_F(ms, demand_paging_touches_only_what_is_used)
{
	const unsigned long len = 1UL << 30;
	struct llmos_ms_info info;
	char *p;
	int fd;

	fd = create(self->dev, NULL, len, 0, 0, NULL);
	ASSERT_LE(0, fd);
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ASSERT_NE(MAP_FAILED, p);
	p[0] = 1;
	p[len / 2] = 2;
	p[len - 1] = 3;
	ASSERT_EQ(0, info_fd(fd, &info));
	EXPECT_EQ(len, info.length);
	EXPECT_EQ(3 * PAGE, info.resident);
	EXPECT_EQ(self->pages0 + 3, counter("host_pages"));
	munmap(p, len);
	close(fd);
}

TEST_F(ms, mappings_must_be_shared_and_inside)
{
	char *p;
	int fd = create(self->dev, NULL, 4 * PAGE, 0, 0, NULL);

	ASSERT_LE(0, fd);
	EXPECT_EQ(MAP_FAILED, mmap(NULL, 5 * PAGE, PROT_READ, MAP_SHARED, fd, 0));
	EXPECT_EQ(EINVAL, errno);
	EXPECT_EQ(MAP_FAILED, mmap(NULL, 2 * PAGE, PROT_READ, MAP_SHARED, fd, 3 * PAGE));
	EXPECT_EQ(EINVAL, errno);
	EXPECT_EQ(MAP_FAILED, mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, 4 * PAGE));
	EXPECT_EQ(EINVAL, errno);
	EXPECT_EQ(MAP_FAILED, mmap(NULL, PAGE, PROT_READ, MAP_PRIVATE, fd, 0));
	EXPECT_EQ(EINVAL, errno);
	p = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 2 * PAGE);
	ASSERT_NE(MAP_FAILED, p);
	p[2 * PAGE - 1] = 9;
	/* It cannot grow past the mindspace. */
	EXPECT_EQ(MAP_FAILED, mremap(p, 2 * PAGE, 3 * PAGE, MREMAP_MAYMOVE));
	munmap(p, 2 * PAGE);
	close(fd);
}

TEST_F(ms, list_reports_visible_mindspaces_in_id_order)
{
	struct llmos_ms_list l = { .size = sizeof(l) };
	unsigned char *buf;
	__u64 ids[3];
	int fds[3], found = 0;
	const size_t stride = 256;

	for (int i = 0; i < 3; i++) {
		char name[16];

		snprintf(name, sizeof(name), "list%d", i);
		fds[i] = create(self->dev, name, (i + 1) * PAGE, 0, 0, &ids[i]);
		ASSERT_LE(0, fds[i]);
	}
	l.entry_size = sizeof(struct llmos_ms_info);
	l.count = 0;
	ASSERT_EQ(-1, ioctl(self->dev, LLMOS_IOC_MS_LIST, &l));
	ASSERT_EQ(EOVERFLOW, errno);
	ASSERT_LE(3, l.count);

	/* A larger element than the kernel knows: the tail is left alone. */
	buf = malloc(stride * (l.count + 4));
	ASSERT_NE(NULL, buf);
	memset(buf, 0xAA, stride * (l.count + 4));
	l.entry_size = stride;
	l.count += 4;
	l.entries_uptr = (__u64)(uintptr_t)buf;
	ASSERT_EQ(0, ioctl(self->dev, LLMOS_IOC_MS_LIST, &l));
	for (__u32 i = 0; i < l.count; i++) {
		struct llmos_ms_info *e = (void *)(buf + i * stride);

		if (i)
			EXPECT_LT(((struct llmos_ms_info *)(buf + (i - 1) * stride))->id,
				  e->id);
		for (int k = 0; k < 3; k++) {
			if (e->id != ids[k])
				continue;
			found++;
			EXPECT_EQ((k + 1) * PAGE, e->length);
			EXPECT_EQ('l', e->name[0]);
		}
		EXPECT_EQ(0xAA, buf[i * stride + sizeof(*e)]);
	}
	EXPECT_EQ(3, found);

	l.entry_size = sizeof(struct llmos_ms_info) - 1;
	EXPECT_EQ(-1, ioctl(self->dev, LLMOS_IOC_MS_LIST, &l));
	EXPECT_EQ(EINVAL, errno);
	l.entry_size = stride;
	l.entries_uptr = 8;
	EXPECT_EQ(-1, ioctl(self->dev, LLMOS_IOC_MS_LIST, &l));
	EXPECT_EQ(EFAULT, errno);
	free(buf);
	for (int i = 0; i < 3; i++)
		close(fds[i]);
}

TEST_F(ms, info_by_id_or_name)
{
	struct llmos_ms_info info;
	struct llmos_ms_query q = { .size = sizeof(q) };
	__u64 id;
	int fd = create(self->dev, "info", 2 * PAGE, 0, 0644, &id);

	ASSERT_LE(0, fd);
	ASSERT_EQ(0, info_dev(self->dev, id, NULL, &info));
	EXPECT_STREQ("info", info.name);
	EXPECT_EQ(0644, info.mode);
	ASSERT_EQ(0, info_dev(self->dev, 0, "info", &info));
	EXPECT_EQ(id, info.id);
	EXPECT_EQ(-EINVAL, info_dev(self->dev, id, "info", &info));
	EXPECT_EQ(-EINVAL, info_dev(self->dev, 0, NULL, &info));
	EXPECT_EQ(-ENOENT, info_dev(self->dev, 0, "nope", &info));
	EXPECT_EQ(-ENOENT, info_dev(self->dev, id + 1000000, NULL, &info));
	/* On the mindspace fd, no id or name may be given. */
	q.id = id;
	q.info_uptr = (__u64)(uintptr_t)&info;
	q.info_size = sizeof(info);
	EXPECT_EQ(-1, ioctl(fd, LLMOS_MSFD_IOC_INFO, &q));
	EXPECT_EQ(EINVAL, errno);
	q.id = 0;
	q.info_size = sizeof(info) - 1;
	EXPECT_EQ(-1, ioctl(fd, LLMOS_MSFD_IOC_INFO, &q));
	EXPECT_EQ(EINVAL, errno);
	q.info_size = sizeof(info);
	q.__reserved = 1;
	EXPECT_EQ(-1, ioctl(fd, LLMOS_MSFD_IOC_INFO, &q));
	EXPECT_EQ(EINVAL, errno);
	q.__reserved = 0;
	q.info_uptr = 8;
	EXPECT_EQ(-1, ioctl(fd, LLMOS_MSFD_IOC_INFO, &q));
	EXPECT_EQ(EFAULT, errno);
	/* Device commands are not mindspace fd commands, and back. */
	EXPECT_EQ(-1, ioctl(fd, LLMOS_IOC_MS_INFO, &q));
	EXPECT_EQ(ENOTTY, errno);
	EXPECT_EQ(-1, ioctl(self->dev, LLMOS_MSFD_IOC_INFO, &q));
	EXPECT_EQ(ENOTTY, errno);
	close(fd);
}

TEST_F(ms, open_checks_its_arguments)
{
	struct llmos_ms_open o = { .size = sizeof(o) };
	__u64 id;
	int fd = create(self->dev, "opener", PAGE, 0, 0, &id);

	ASSERT_LE(0, fd);
	o.id = id;
	o.flags = 1u << 9;
	EXPECT_EQ(-1, ioctl(self->dev, LLMOS_IOC_MS_OPEN, &o));
	EXPECT_EQ(EINVAL, errno);
	o.flags = 0;
	o.__reserved = 1;
	EXPECT_EQ(-1, ioctl(self->dev, LLMOS_IOC_MS_OPEN, &o));
	EXPECT_EQ(EINVAL, errno);
	EXPECT_EQ(-EINVAL, open_ms(self->dev, 0, "bad/name", 0));
	close(fd);
}

/* A udmabuf of @len bytes over a sealed memfd, returned in *memfd. */
static int make_udmabuf(size_t len, int *memfd)
{
	struct udmabuf_create c = { .flags = UDMABUF_FLAGS_CLOEXEC, .size = len };
	int dev, buf;

	*memfd = memfd_create("llmos-test", MFD_ALLOW_SEALING);
	if (*memfd < 0 || ftruncate(*memfd, len) ||
	    fcntl(*memfd, F_ADD_SEALS, F_SEAL_SHRINK))
		return -errno;
	dev = open("/dev/udmabuf", O_RDWR);
	if (dev < 0)
		return -errno;
	c.memfd = *memfd;
	buf = ioctl(dev, UDMABUF_CREATE, &c);
	close(dev);
	return buf < 0 ? -errno : buf;
}

TEST_F(ms, dmabuf_from_udmabuf)
{
	struct llmos_ms_create c = { .flags = LLMOS_MS_DMABUF };
	struct llmos_ms_export e = { .size = sizeof(e) };
	struct llmos_ms_info info;
	int memfd, buf, fd;
	char *mem, *p, *q;

	buf = make_udmabuf(8 * PAGE, &memfd);
	if (buf == -ENOENT)
		SKIP(return, "no /dev/udmabuf in this kernel");
	ASSERT_LE(0, buf);
	mem = mmap(NULL, 8 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	ASSERT_NE(MAP_FAILED, mem);
	put_str(mem + PAGE, "in the memfd");

	c.dmabuf_fd = buf;
	c.length = 4 * PAGE; /* must match the dma-buf */
	EXPECT_EQ(-EINVAL, create_raw(self->dev, &c));
	c.length = 0;
	put_str(c.name, "gpu-like");
	fd = create_raw(self->dev, &c);
	ASSERT_LE(0, fd);
	close(buf); /* the mindspace keeps its own reference */
	EXPECT_EQ(self->dmabufs0 + 1, counter("dmabufs"));

	ASSERT_EQ(0, info_fd(fd, &info));
	EXPECT_EQ(8 * PAGE, info.length);
	EXPECT_EQ(8 * PAGE, info.resident);
	EXPECT_EQ(LLMOS_MS_DMABUF, info.flags);

	p = mmap(NULL, 8 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ASSERT_NE(MAP_FAILED, p);
	EXPECT_STREQ("in the memfd", p + PAGE);
	put_str(p + 5 * PAGE, "through the mindspace");
	EXPECT_STREQ("through the mindspace", mem + 5 * PAGE);

	/* Export: another fd to the same memory. */
	ASSERT_EQ(0, ioctl(fd, LLMOS_MSFD_IOC_EXPORT_DMABUF, &e));
	ASSERT_LE(0, e.out_fd);
	q = mmap(NULL, 8 * PAGE, PROT_READ, MAP_SHARED, e.out_fd, 0);
	ASSERT_NE(MAP_FAILED, q);
	EXPECT_STREQ("through the mindspace", q + 5 * PAGE);
	munmap(q, 8 * PAGE);
	close(e.out_fd);
	e.flags = 1;
	EXPECT_EQ(-1, ioctl(fd, LLMOS_MSFD_IOC_EXPORT_DMABUF, &e));
	EXPECT_EQ(EINVAL, errno);

	munmap(p, 8 * PAGE);
	close(fd);
	munmap(mem, 8 * PAGE);
	close(memfd);
}

/*
 * A dma-buf of @len bytes from the system heap, opened with @mode (O_RDWR,
 * O_RDONLY or O_WRONLY): its fd, -ENOENT without the heap, or another
 * -errno.
 */
static int heap_dmabuf(size_t len, int mode)
{
	struct dma_heap_allocation_data a = {
		.len = len, .fd_flags = mode | O_CLOEXEC,
	};
	int heap, ret;

	heap = open("/dev/dma_heap/system", O_RDWR);
	if (heap < 0)
		return -errno;
	ret = ioctl(heap, DMA_HEAP_IOCTL_ALLOC, &a) ? -errno : (int)a.fd;
	close(heap);
	return ret;
}

TEST_F(ms, dmabuf_from_system_heap)
{
	struct llmos_ms_create c = { .flags = LLMOS_MS_DMABUF };
	int buf, fd;
	char *p;

	buf = heap_dmabuf(16 * PAGE, O_RDWR);
	if (buf == -ENOENT)
		SKIP(return, "no /dev/dma_heap/system in this kernel");
	ASSERT_LE(0, buf);
	c.dmabuf_fd = buf;
	c.length = 16 * PAGE;
	fd = create_raw(self->dev, &c);
	ASSERT_LE(0, fd);
	close(buf);
	p = mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ASSERT_NE(MAP_FAILED, p);
	memset(p, 0x5a, 16 * PAGE);
	EXPECT_EQ(0x5a, p[16 * PAGE - 1]);
	munmap(p, 16 * PAGE);
	close(fd);
}

TEST_F(ms, a_read_only_or_write_only_dmabuf_is_refused)
{
	struct llmos_ms_create c = { .flags = LLMOS_MS_DMABUF };
	int buf;

	buf = heap_dmabuf(4 * PAGE, O_RDONLY);
	if (buf == -ENOENT)
		SKIP(return, "no /dev/dma_heap/system in this kernel");
	ASSERT_LE(0, buf);
	/* Shared read-only: a mindspace over it would map it writable. */
	c.dmabuf_fd = buf;
	EXPECT_EQ(-EACCES, create_raw(self->dev, &c));
	close(buf);
	/* Write-only (its own mmap is refused): nor may it become readable. */
	buf = heap_dmabuf(4 * PAGE, O_WRONLY);
	ASSERT_LE(0, buf);
	EXPECT_EQ(MAP_FAILED, mmap(NULL, 4 * PAGE, PROT_WRITE, MAP_SHARED, buf, 0));
	c.dmabuf_fd = buf;
	EXPECT_EQ(-EACCES, create_raw(self->dev, &c));
	close(buf);
}

TEST_F(ms, bad_dmabuf_fds)
{
	struct llmos_ms_create c = { .flags = LLMOS_MS_DMABUF };
	int pipefd[2];

	ASSERT_EQ(0, pipe(pipefd));
	c.dmabuf_fd = pipefd[0];
	EXPECT_EQ(-EINVAL, create_raw(self->dev, &c));
	c.dmabuf_fd = self->dev; /* our own device is no dma-buf */
	EXPECT_EQ(-EINVAL, create_raw(self->dev, &c));
	close(pipefd[0]);
	close(pipefd[1]);
	c.dmabuf_fd = pipefd[0]; /* closed now */
	EXPECT_EQ(-EBADF, create_raw(self->dev, &c));
	c.dmabuf_fd = -1;
	EXPECT_EQ(-EBADF, create_raw(self->dev, &c));
	c.dmabuf_fd = 1 << 20;
	EXPECT_EQ(-EBADF, create_raw(self->dev, &c));
	/* A NUMA node makes no sense for a dma-buf. */
	c.flags = LLMOS_MS_DMABUF | LLMOS_MS_NODE;
	c.dmabuf_fd = 0;
	EXPECT_EQ(-EINVAL, create_raw(self->dev, &c));
}

TEST_F(ms, export_needs_dmabuf_and_write_access)
{
	struct llmos_ms_export e = { .size = sizeof(e) };
	__u64 id;
	int fd, ro;

	fd = create(self->dev, NULL, PAGE, 0, 0, &id);
	ASSERT_LE(0, fd);
	EXPECT_EQ(-1, ioctl(fd, LLMOS_MSFD_IOC_EXPORT_DMABUF, &e));
	EXPECT_EQ(EOPNOTSUPP, errno);
	close(fd);

	{
		int memfd, buf = make_udmabuf(PAGE, &memfd);
		struct llmos_ms_create c = { .flags = LLMOS_MS_DMABUF };

		if (buf == -ENOENT)
			SKIP(return, "no /dev/udmabuf in this kernel");
		ASSERT_LE(0, buf);
		c.dmabuf_fd = buf;
		fd = create_raw(self->dev, &c);
		ASSERT_LE(0, fd);
		ro = open_ms(self->dev, c.out_id, NULL, LLMOS_MS_OPEN_RDONLY);
		ASSERT_LE(0, ro);
		EXPECT_EQ(-1, ioctl(ro, LLMOS_MSFD_IOC_EXPORT_DMABUF, &e));
		EXPECT_EQ(EACCES, errno);
		close(ro);
		close(fd);
		close(buf);
		close(memfd);
	}
}

TEST_F(ms, many_mindspaces_and_fds)
{
	enum { N = 200 };
	int fds[N];

	for (int i = 0; i < N; i++) {
		char name[32];

		snprintf(name, sizeof(name), "many-%d", i);
		fds[i] = create(self->dev, i % 2 ? name : NULL, PAGE,
				i % 3 ? 0 : LLMOS_MS_PERSISTENT, 0, NULL);
		ASSERT_LE(0, fds[i]);
	}
	EXPECT_EQ(self->ms0 + N, counter("mindspaces"));
	for (int i = 0; i < N; i++) {
		struct llmos_ms_info info;

		ASSERT_EQ(0, info_fd(fds[i], &info));
		if (i % 3 == 0)
			ASSERT_EQ(0, destroy(self->dev, info.id, NULL));
		close(fds[i]);
	}
}

TEST_F(ms, pages_go_to_the_requested_node)
{
	struct llmos_ms_create c = { .length = 4 * PAGE, .flags = LLMOS_MS_NODE };

	if (access("/sys/devices/system/node/node1", F_OK))
		SKIP(return, "the guest has one NUMA node (boot it with two)");
	for (int node = 0; node < 2; node++) {
		char *p;
		int fd;

		c.numa_node = node;
		fd = create_raw(self->dev, &c);
		ASSERT_LE(0, fd);
		p = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		ASSERT_NE(MAP_FAILED, p);
		for (int i = 0; i < 4; i++) {
			p[i * PAGE] = 1;
			EXPECT_EQ(node, page_node(p + i * PAGE));
		}
		munmap(p, 4 * PAGE);
		close(fd);
	}
}

/* In a new memory cgroup, touching 2 MiB of a mindspace charges it. */
static int touch_in_cgroup(int dev, __u64 unused)
{
	const size_t len = 8 << 20, touch = 2 << 20;
	char pid[32];
	long before, after;
	char *p;
	int fd;

	snprintf(pid, sizeof(pid), "%d", getpid());
	if (write_file(CGTEST "/cgroup.procs", pid))
		return 40;
	fd = create(dev, NULL, len, 0, 0, NULL);
	if (fd < 0)
		return 41;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return 42;
	before = read_long(CGTEST "/memory.current");
	for (size_t off = 0; off < touch; off += PAGE)
		p[off] = 1;
	after = read_long(CGTEST "/memory.current");
	if (before < 0 || after - before < (long)touch)
		return 43;
	munmap(p, len);
	close(fd);
	return 0;
}

TEST_F(ms, pages_are_charged_to_the_memcg_of_the_toucher)
{
	if (access(CGROOT "/cgroup.controllers", F_OK) ||
	    write_file(CGROOT "/cgroup.subtree_control", "+memory"))
		SKIP(return, "no cgroup2 memory controller");
	rmdir(CGTEST);
	ASSERT_EQ(0, mkdir(CGTEST, 0755));
	EXPECT_EQ(0, in_child(touch_in_cgroup, self->dev, 0));
	/* Freed pages are uncharged: the cgroup can go. */
	EXPECT_EQ(0, rmdir(CGTEST));
}

TEST_F(ms, debugfs_lists_live_mindspaces)
{
	char line[512], want[128];
	bool found = false;
	__u64 id;
	char *p;
	FILE *f;
	int fd;

	fd = create(self->dev, "debugfs-view", 4 * PAGE, 0, 0640, &id);
	ASSERT_LE(0, fd);
	p = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ASSERT_NE(MAP_FAILED, p);
	p[0] = 1;
	f = fopen(DEBUGFS_LIST, "r");
	ASSERT_NE(NULL, f);
	/* id name uid gid mode length resident backing node maps fds persistent */
	snprintf(want, sizeof(want),
		 "%llu\tdebugfs-view\t0\t0\t0640\t16384\t4096\thost\t-1\t1\t1\t0\n",
		 (unsigned long long)id);
	while (fgets(line, sizeof(line), f))
		found |= !strcmp(line, want);
	fclose(f);
	EXPECT_TRUE(found);
	munmap(p, 4 * PAGE);
	close(fd);
}

TEST_F(ms, lseek_finds_touched_pages_without_allocating)
{
	struct llmos_ms_info info;
	char *p;
	int fd;

	fd = create(self->dev, NULL, 64 * PAGE, 0, 0, NULL);
	ASSERT_LE(0, fd);
	EXPECT_EQ(-1, lseek(fd, 0, SEEK_DATA)); /* nothing touched yet */
	EXPECT_EQ(ENXIO, errno);
	EXPECT_EQ(0, lseek(fd, 0, SEEK_HOLE));
	p = mmap(NULL, 64 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ASSERT_NE(MAP_FAILED, p);
	p[3 * PAGE] = 1;
	p[4 * PAGE] = 1;
	p[10 * PAGE] = 1;
	p[63 * PAGE] = 1;
	EXPECT_EQ(3 * PAGE, lseek(fd, 0, SEEK_DATA));
	EXPECT_EQ(3 * PAGE + 5, lseek(fd, 3 * PAGE + 5, SEEK_DATA));
	EXPECT_EQ(5 * PAGE, lseek(fd, 3 * PAGE, SEEK_HOLE));
	EXPECT_EQ(10 * PAGE, lseek(fd, 5 * PAGE, SEEK_DATA));
	EXPECT_EQ(11 * PAGE, lseek(fd, 10 * PAGE, SEEK_HOLE));
	EXPECT_EQ(63 * PAGE, lseek(fd, 11 * PAGE, SEEK_DATA));
	EXPECT_EQ(64 * PAGE, lseek(fd, 63 * PAGE, SEEK_HOLE));
	EXPECT_EQ(-1, lseek(fd, 64 * PAGE, SEEK_DATA));
	EXPECT_EQ(ENXIO, errno);
	EXPECT_EQ(-1, lseek(fd, -1, SEEK_HOLE));
	EXPECT_EQ(ENXIO, errno);
	EXPECT_EQ(64 * PAGE, lseek(fd, 0, SEEK_END));
	EXPECT_EQ(100, lseek(fd, 100, SEEK_SET));
	EXPECT_EQ(-1, lseek(fd, 1, SEEK_END));
	EXPECT_EQ(EINVAL, errno);
	ASSERT_EQ(0, info_fd(fd, &info));
	EXPECT_EQ(4 * PAGE, info.resident);
	munmap(p, 64 * PAGE);
	close(fd);
}

TEST_F(ms, lseek_finds_a_hole_past_many_touched_pages)
{
	const size_t pages = 10000; /* past the module's batches of 4096 */
	char *p;
	int fd;

	fd = create(self->dev, NULL, pages * PAGE, 0, 0, NULL);
	ASSERT_LE(0, fd);
	p = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ASSERT_NE(MAP_FAILED, p);
	for (size_t i = 0; i < pages; i++)
		if (i != 8191 && i != 9000)
			p[i * PAGE] = 1;
	EXPECT_EQ(8191 * PAGE, lseek(fd, 0, SEEK_HOLE));
	EXPECT_EQ(8191 * PAGE, lseek(fd, 4096 * PAGE, SEEK_HOLE));
	EXPECT_EQ(9000 * PAGE, lseek(fd, 8192 * PAGE, SEEK_HOLE));
	EXPECT_EQ(pages * PAGE, lseek(fd, 9001 * PAGE, SEEK_HOLE));
	EXPECT_EQ(8192 * PAGE, lseek(fd, 8191 * PAGE, SEEK_DATA));
	munmap(p, pages * PAGE);
	close(fd);
}

TEST_HARNESS_MAIN
