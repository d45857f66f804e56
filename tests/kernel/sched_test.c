// SPDX-License-Identifier: MIT
/*
 * Request scheduler tests: the lifecycle through the ioctls, blocking and
 * non-blocking dispatch, capacity, cancel in every state, a worker that dies
 * with requests in flight, a client that goes away, weights, and a stress
 * run of 8 clients and 4 workers in threads (its size scaled by
 * LLMOS_TEST_SCALE) where every request must complete exactly once.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/fsuid.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/llmos.h>

#include "kselftest_harness.h"
#include "child.h"
#include "llmos_files.h"

#define OTHER_UID 1000

static int dev_open(void)
{
	return open("/dev/llmos", O_RDWR | O_CLOEXEC);
}

static int reg(int fd, __u32 capacity)
{
	struct llmos_worker_register r = {
		.size = sizeof(r), .capacity = capacity, .numa_node = -1,
	};

	return ioctl(fd, LLMOS_IOC_WORKER_REGISTER, &r) ? -errno : 0;
}

/* The fixture's mindspace, which requests name (1 MiB). */
static __u64 test_ms;

/* An anonymous mindspace of @len bytes with @mode: its fd, *@id set. */
static int ms_make(int dev, __u64 len, __u32 mode, __u64 *id)
{
	struct llmos_ms_create c = {
		.size = sizeof(c), .length = len, .mode = mode,
	};

	if (ioctl(dev, LLMOS_IOC_MS_CREATE, &c))
		return -errno;
	*id = c.out_id;
	return c.out_fd;
}

static long long submit3(int fd, __u32 tenant, __u32 prio, __u32 cost)
{
	struct llmos_submit s = {
		.size = sizeof(s), .tenant = tenant, .priority = prio,
		.cost = cost, .ms_id = test_ms, .prompt_off = 4096,
		.prompt_len = 100,
	};

	return ioctl(fd, LLMOS_IOC_SUBMIT, &s) ? -errno : (long long)s.out_id;
}

static long long submit(int fd, __u32 tenant)
{
	return submit3(fd, tenant, 0, 1);
}

static int dispatch(int fd, struct llmos_req_desc *d, __u32 max, __u32 flags,
		    __u32 timeout_ms)
{
	struct llmos_dispatch c = {
		.size = sizeof(c), .flags = flags,
		.descs_uptr = (__u64)(uintptr_t)d, .desc_size = sizeof(*d),
		.max = max, .timeout_ms = timeout_ms,
	};

	return ioctl(fd, LLMOS_IOC_DISPATCH, &c) ? -errno : (int)c.out_count;
}

static int start(int fd, __u64 id)
{
	struct llmos_start c = { .size = sizeof(c), .id = id };

	return ioctl(fd, LLMOS_IOC_START, &c) ? -errno : 0;
}

static int complete(int fd, __u64 id, __s32 status, __u32 tokens)
{
	struct llmos_complete c = {
		.size = sizeof(c), .id = id, .status = status, .tokens = tokens,
		.result_off = 8192, .result_len = tokens * 4,
	};

	return ioctl(fd, LLMOS_IOC_COMPLETE, &c) ? -errno : 0;
}

/* COMPLETE with a result at [@off, @off + @len) of the mindspace. */
static int complete_at(int fd, __u64 id, __u64 off, __u64 len)
{
	struct llmos_complete c = {
		.size = sizeof(c), .id = id, .result_off = off,
		.result_len = len,
	};

	return ioctl(fd, LLMOS_IOC_COMPLETE, &c) ? -errno : 0;
}

static int cancel(int fd, __u64 id)
{
	struct llmos_cancel c = { .size = sizeof(c), .id = id };

	return ioctl(fd, LLMOS_IOC_CANCEL, &c) ? -errno : 0;
}

static int wait_req(int fd, __u64 id, __u32 flags, __u32 timeout_ms,
		    struct llmos_wait *out)
{
	struct llmos_wait w = {
		.size = sizeof(w), .id = id, .flags = flags,
		.timeout_ms = timeout_ms,
	};
	int ret = ioctl(fd, LLMOS_IOC_WAIT, &w) ? -errno : 0;

	if (out)
		*out = w;
	return ret;
}

static int stats(int fd, struct llmos_sched_stats *st,
		 struct llmos_tenant_stats *ts, __u32 n)
{
	memset(st, 0, sizeof(*st));
	st->size = sizeof(*st);
	st->tenants_uptr = (__u64)(uintptr_t)ts;
	st->tenant_size = sizeof(*ts);
	st->tenant_count = n;
	return ioctl(fd, LLMOS_IOC_STATS, st) ? -errno : 0;
}

static double test_scale(void)
{
	const char *s = getenv("LLMOS_TEST_SCALE");
	double v = s ? atof(s) : 1.0;

	return v > 0 ? v : 1.0;
}

FIXTURE(sched) {
	int client;
	int worker;
	int ms;
	struct llmos_sched_stats st0;
};

FIXTURE_SETUP(sched)
{
	struct llmos_tenant_stats ts;

	self->client = dev_open();
	ASSERT_LE(0, self->client);
	self->worker = dev_open();
	ASSERT_LE(0, self->worker);
	self->ms = ms_make(self->client, 1 << 20, 0600, &test_ms);
	ASSERT_LE(0, self->ms);
	ASSERT_EQ(0, stats(self->client, &self->st0, &ts, 0));
}

FIXTURE_TEARDOWN(sched)
{
	struct llmos_tenant_grant g = {
		.size = sizeof(g), .flags = LLMOS_GRANT_RESET, .uid = OTHER_UID,
	};
	struct llmos_sched_stats st;
	struct llmos_tenant_stats ts;

	/* No grant outlives a test that failed half-way (root only). */
	ioctl(self->client, LLMOS_IOC_TENANT_GRANT, &g);
	close(self->client);
	close(self->worker);
	close(self->ms);
	/* Nothing left queued or in flight by this test. */
	int fd = dev_open();

	ASSERT_LE(0, fd);
	ASSERT_EQ(0, stats(fd, &st, &ts, 0));
	EXPECT_EQ(0, st.out_nr[LLMOS_REQ_QUEUED]);
	EXPECT_EQ(0, st.out_nr[LLMOS_REQ_DISPATCHED]);
	EXPECT_EQ(0, st.out_nr[LLMOS_REQ_RUNNING]);
	EXPECT_EQ(0, st.out_workers);
	close(fd);
}

TEST_F(sched, submit_dispatch_complete_wait)
{
	struct llmos_req_desc d[8];
	struct llmos_wait w;
	struct pollfd pfd = { .fd = self->client, .events = POLLIN };
	long long ids[3];

	ASSERT_EQ(0, reg(self->worker, 4));
	for (int i = 0; i < 3; i++) {
		ids[i] = submit3(self->client, 5, 0, 10 + i);
		ASSERT_LT(0, ids[i]);
	}
	ASSERT_EQ(3, dispatch(self->worker, d, 8, 0, 0));
	for (int i = 0; i < 3; i++) {
		EXPECT_EQ(ids[i], d[i].id);
		EXPECT_EQ(5, d[i].tenant);
		EXPECT_EQ(10 + i, d[i].cost);
		EXPECT_EQ(test_ms, d[i].ms_id);
		EXPECT_EQ(4096, d[i].prompt_off);
		EXPECT_EQ(100, d[i].prompt_len);
		EXPECT_EQ(0, d[i].requeues);
		EXPECT_LT(0, d[i].submit_ns);
	}
	EXPECT_EQ(0, poll(&pfd, 1, 0));
	ASSERT_EQ(0, start(self->worker, d[0].id));
	for (int i = 0; i < 3; i++)
		ASSERT_EQ(0, complete(self->worker, d[i].id, 0, 20 + i));
	EXPECT_EQ(1, poll(&pfd, 1, 0));
	EXPECT_TRUE(pfd.revents & POLLIN);
	for (int i = 0; i < 3; i++) {
		ASSERT_EQ(0, wait_req(self->client, 0, LLMOS_NONBLOCK, 0, &w));
		EXPECT_EQ(ids[i], w.out_id);
		EXPECT_EQ(LLMOS_REQ_COMPLETED, w.out_state);
		EXPECT_EQ(0, w.out_status);
		EXPECT_EQ(20 + i, w.out_tokens);
		EXPECT_EQ(8192, w.out_result_off);
		EXPECT_EQ((20 + i) * 4, w.out_result_len);
		EXPECT_LE(w.out_submit_ns, w.out_dispatch_ns);
		EXPECT_LE(w.out_dispatch_ns, w.out_end_ns);
	}
	/* Collected: the ids are gone, and there is nothing left to wait for. */
	EXPECT_EQ(-ENOENT, wait_req(self->client, ids[0], 0, 0, NULL));
	EXPECT_EQ(-ENOENT, wait_req(self->client, 0, 0, 0, NULL));
}

TEST_F(sched, dispatch_without_work_fails_or_times_out)
{
	struct llmos_req_desc d[1];
	struct timespec a, b;

	ASSERT_EQ(0, reg(self->worker, 1));
	EXPECT_EQ(-EAGAIN, dispatch(self->worker, d, 1, LLMOS_NONBLOCK, 0));
	clock_gettime(CLOCK_MONOTONIC, &a);
	EXPECT_EQ(-ETIMEDOUT, dispatch(self->worker, d, 1, 0, 200));
	clock_gettime(CLOCK_MONOTONIC, &b);
	EXPECT_LE(190, (b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000);
}

TEST_F(sched, dispatch_sleeps_until_a_submit)
{
	struct llmos_req_desc d[1];
	int status;
	pid_t pid;

	ASSERT_EQ(0, reg(self->worker, 1));
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		usleep(200 * 1000);
		_exit(submit(self->client, 1) > 0 ? 0 : 1);
	}
	ASSERT_EQ(1, dispatch(self->worker, d, 1, 0, 20000));
	ASSERT_EQ(0, complete(self->worker, d[0].id, 0, 1));
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	EXPECT_EQ(0, status); /* exited, with 0 (not killed) */
	/* The child's copy of the client is closed; ours collects it. */
	EXPECT_EQ(0, wait_req(self->client, 0, 0, 5000, NULL));
}

struct blocked {
	int worker;
	int got;
	long ms;
};

static void *blocked_dispatch(void *arg)
{
	struct blocked *b = arg;
	struct llmos_req_desc d[1];
	struct timespec a, z;

	clock_gettime(CLOCK_MONOTONIC, &a);
	b->got = dispatch(b->worker, d, 1, 0, 10000);
	clock_gettime(CLOCK_MONOTONIC, &z);
	b->ms = (z.tv_sec - a.tv_sec) * 1000 + (z.tv_nsec - a.tv_nsec) / 1000000;
	if (b->got == 1)
		complete(b->worker, d[0].id, 0, 1);
	return NULL;
}

TEST_F(sched, dispatch_wakes_when_its_worker_gets_room)
{
	struct blocked b = { .worker = self->worker };
	struct llmos_req_desc d[1];
	long long id;
	pthread_t t;

	/* Full, with one more queued: the blocked DISPATCH waits for room. */
	ASSERT_EQ(0, reg(self->worker, 1));
	ASSERT_LT(0, submit(self->client, 1));
	ASSERT_EQ(1, dispatch(self->worker, d, 1, LLMOS_NONBLOCK, 0));
	ASSERT_LT(0, submit(self->client, 1));
	ASSERT_EQ(0, pthread_create(&t, NULL, blocked_dispatch, &b));
	usleep(300 * 1000);
	ASSERT_EQ(0, complete(self->worker, d[0].id, 0, 1));
	pthread_join(t, NULL);
	EXPECT_EQ(1, b.got);
	EXPECT_GT(5000, b.ms);

	/* The same when room comes from a cancel. */
	ASSERT_EQ(0, wait_req(self->client, 0, 0, 5000, NULL));
	ASSERT_EQ(0, wait_req(self->client, 0, 0, 5000, NULL));
	id = submit(self->client, 1);
	ASSERT_LT(0, id);
	ASSERT_EQ(1, dispatch(self->worker, d, 1, LLMOS_NONBLOCK, 0));
	ASSERT_LT(0, submit(self->client, 1));
	ASSERT_EQ(0, pthread_create(&t, NULL, blocked_dispatch, &b));
	usleep(300 * 1000);
	ASSERT_EQ(0, cancel(self->client, id));
	pthread_join(t, NULL);
	EXPECT_EQ(1, b.got);
	EXPECT_GT(5000, b.ms);
	ASSERT_EQ(0, wait_req(self->client, 0, 0, 5000, NULL));
	ASSERT_EQ(0, wait_req(self->client, 0, 0, 5000, NULL));
}

TEST_F(sched, worker_arguments_are_checked)
{
	struct llmos_worker_register r = { .size = sizeof(r), .numa_node = -1 };
	struct llmos_dispatch c = { .size = sizeof(c) };
	struct llmos_req_desc d[2];

	EXPECT_EQ(-EINVAL, dispatch(self->worker, d, 1, LLMOS_NONBLOCK, 0));
	EXPECT_EQ(-EINVAL, start(self->worker, 1));
	EXPECT_EQ(-EINVAL, complete(self->worker, 1, 0, 0));
	EXPECT_EQ(-EINVAL, reg(self->worker, 0));
	EXPECT_EQ(-EINVAL, reg(self->worker, LLMOS_MAX_CAPACITY + 1));
	r.capacity = 1;
	r.numa_node = -2;
	EXPECT_EQ(-1, ioctl(self->worker, LLMOS_IOC_WORKER_REGISTER, &r));
	EXPECT_EQ(EINVAL, errno);
	ASSERT_EQ(0, reg(self->worker, 2));
	EXPECT_EQ(-EBUSY, reg(self->worker, 2));
	EXPECT_EQ(-EINVAL, dispatch(self->worker, d, 0, LLMOS_NONBLOCK, 0));
	EXPECT_EQ(-EINVAL, dispatch(self->worker, d, LLMOS_MAX_DISPATCH + 1,
				    LLMOS_NONBLOCK, 0));
	EXPECT_EQ(-EINVAL, dispatch(self->worker, d, 1, 1u << 5, 0));
	c.descs_uptr = (__u64)(uintptr_t)d;
	c.desc_size = sizeof(d[0]) - 1;
	c.max = 1;
	c.flags = LLMOS_NONBLOCK;
	EXPECT_EQ(-1, ioctl(self->worker, LLMOS_IOC_DISPATCH, &c));
	EXPECT_EQ(EINVAL, errno);
	/* A bad array is refused before anything is taken. */
	ASSERT_LT(0, submit(self->client, 1));
	c.desc_size = sizeof(d[0]);
	c.descs_uptr = 16;
	EXPECT_EQ(-1, ioctl(self->worker, LLMOS_IOC_DISPATCH, &c));
	EXPECT_EQ(EFAULT, errno);
	ASSERT_EQ(1, dispatch(self->worker, d, 2, LLMOS_NONBLOCK, 0));
	EXPECT_EQ(0, complete(self->worker, d[0].id, 0, 1));
}

TEST_F(sched, submit_arguments_are_checked)
{
	struct llmos_submit s = { .size = sizeof(s) };

	s.priority = LLMOS_MAX_PRIORITY + 1;
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_SUBMIT, &s));
	EXPECT_EQ(EINVAL, errno);
	s.priority = 0;
	s.__reserved = 1;
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_SUBMIT, &s));
	EXPECT_EQ(EINVAL, errno);
	s.__reserved = 0;
	s.flags = 1;
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_SUBMIT, &s));
	EXPECT_EQ(EINVAL, errno);
	/* The prompt must lie in its mindspace, which must exist. */
	s.flags = 0;
	s.ms_id = test_ms;
	s.prompt_off = (1 << 20) - 10;
	s.prompt_len = 11;
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_SUBMIT, &s));
	EXPECT_EQ(EINVAL, errno);
	s.prompt_off = 1;
	s.prompt_len = UINT64_MAX;
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_SUBMIT, &s));
	EXPECT_EQ(EINVAL, errno);
	s.prompt_len = 0;
	s.ms_id = 1ull << 40;
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_SUBMIT, &s));
	EXPECT_EQ(ENOENT, errno);
	/* An argument that cannot be read submits nothing. */
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_SUBMIT, (void *)16));
	EXPECT_EQ(EFAULT, errno);
	EXPECT_EQ(-ENOENT, wait_req(self->client, 0, LLMOS_NONBLOCK, 0, NULL));
}

struct ro_submit {
	int client, worker;
	atomic_bool stop;
};

/* Serve and collect whatever comes, while read-only SUBMITs race. */
static void *ro_worker(void *arg)
{
	struct ro_submit *r = arg;
	struct llmos_req_desc d[4];

	while (!atomic_load(&r->stop)) {
		int n = dispatch(r->worker, d, 4, 0, 20);

		for (int i = 0; i < n; i++)
			complete(r->worker, d[i].id, 0, 1);
		while (!wait_req(r->client, 0, LLMOS_NONBLOCK, 0, NULL))
			;
		for (int i = 0; i < n; i++)
			cancel(r->client, d[i].id + 1); /* the next one, maybe */
	}
	return NULL;
}

TEST_F(sched, a_reply_that_cannot_be_written_takes_the_request_back)
{
	struct ro_submit r = { .client = self->client, .worker = self->worker };
	struct llmos_sched_stats st;
	struct llmos_tenant_stats ts;
	struct llmos_submit *s;
	pthread_t t;
	int rounds = (int)(500 * test_scale());

	if (rounds < 50)
		rounds = 50; /* a race that does not run cannot fail */

	s = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		 -1, 0);
	ASSERT_NE(MAP_FAILED, s);
	*s = (struct llmos_submit){ .size = sizeof(*s), .cost = 1 };
	ASSERT_EQ(0, mprotect(s, 4096, PROT_READ));
	/* Read, submitted, and its id cannot be written: taken back. */
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_SUBMIT, s));
	EXPECT_EQ(EFAULT, errno);
	EXPECT_EQ(-ENOENT, wait_req(self->client, 0, LLMOS_NONBLOCK, 0, NULL));
	ASSERT_EQ(0, stats(self->client, &st, &ts, 0));
	EXPECT_EQ(self->st0.out_cancelled + 1, st.out_cancelled);

	/*
	 * Meanwhile a worker may finish it, another thread cancel it or
	 * WAIT collect it: taking it back must find it as it is then.
	 */
	ASSERT_EQ(0, reg(self->worker, 4));
	ASSERT_EQ(0, pthread_create(&t, NULL, ro_worker, &r));
	for (int i = 0; i < rounds; i++) {
		EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_SUBMIT, s));
		EXPECT_EQ(EFAULT, errno);
	}
	atomic_store(&r.stop, true);
	pthread_join(t, NULL);
	while (!wait_req(self->client, 0, LLMOS_NONBLOCK, 0, NULL))
		;
	EXPECT_EQ(-ENOENT, wait_req(self->client, 0, LLMOS_NONBLOCK, 0, NULL));
	munmap(s, 4096);
}

/* The same for a batch whose entries cannot be written back: all go back. */
TEST_F(sched, a_batch_whose_ids_cannot_be_written_takes_its_requests_back)
{
	struct llmos_submit_batch sb = {
		.size = sizeof(sb), .entry_size = sizeof(struct llmos_submit_entry),
		.count = 3,
	};
	struct llmos_submit_entry *se;
	struct llmos_sched_stats st;
	struct llmos_tenant_stats ts;

	se = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
		  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, se);
	se[0] = (struct llmos_submit_entry){ .tenant = 1, .cost = 1 };
	se[1] = (struct llmos_submit_entry){ .tenant = 1, .__reserved = 1 };
	se[2] = (struct llmos_submit_entry){ .tenant = 2, .cost = 1 };
	sb.entries_uptr = (__u64)(uintptr_t)se;
	ASSERT_EQ(0, mprotect(se, 4096, PROT_READ));
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_SUBMIT_BATCH, &sb));
	EXPECT_EQ(EFAULT, errno);
	EXPECT_EQ(-ENOENT, wait_req(self->client, 0, LLMOS_NONBLOCK, 0, NULL));
	ASSERT_EQ(0, stats(self->client, &st, &ts, 0));
	EXPECT_EQ(self->st0.out_cancelled + 2, st.out_cancelled);
	EXPECT_EQ(0, st.out_nr[LLMOS_REQ_QUEUED]);
	munmap(se, 4096);
}

/*
 * A DISPATCH whose count cannot be written (its struct is read-only): the
 * requests it took go back to their tenant, ahead of later ones, and the
 * next DISPATCH that can answer gets them, not counted as requeued (the
 * worker never had them).
 */
TEST_F(sched, a_dispatch_that_cannot_answer_gives_its_requests_back)
{
	struct llmos_req_desc descs[2], d[2];
	struct llmos_dispatch *ro;
	long long a, b, later;

	ASSERT_EQ(0, reg(self->worker, 2));
	a = submit(self->client, 3);
	b = submit(self->client, 3);
	ASSERT_LT(0, a);
	ASSERT_LT(0, b);
	ro = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		  -1, 0);
	ASSERT_NE(MAP_FAILED, ro);
	*ro = (struct llmos_dispatch){
		.size = sizeof(*ro), .descs_uptr = (__u64)(uintptr_t)descs,
		.desc_size = sizeof(descs[0]), .max = 2, .flags = LLMOS_NONBLOCK,
	};
	ASSERT_EQ(0, mprotect(ro, 4096, PROT_READ));
	EXPECT_EQ(-1, ioctl(self->worker, LLMOS_IOC_DISPATCH, ro));
	EXPECT_EQ(EFAULT, errno);
	later = submit(self->client, 3);
	ASSERT_LT(0, later);
	/* The worker holds nothing: both come again, before the later one. */
	ASSERT_EQ(2, dispatch(self->worker, d, 2, LLMOS_NONBLOCK, 0));
	EXPECT_EQ(a, d[0].id);
	EXPECT_EQ(b, d[1].id);
	EXPECT_EQ(0, d[0].requeues);
	EXPECT_EQ(0, d[1].requeues);
	ASSERT_EQ(0, complete(self->worker, a, 0, 1));
	ASSERT_EQ(0, complete(self->worker, b, 0, 1));
	ASSERT_EQ(1, dispatch(self->worker, d, 2, LLMOS_NONBLOCK, 0));
	EXPECT_EQ(later, d[0].id);
	munmap(ro, 4096);
}

/*
 * A WAIT or WAIT_BATCH whose reply cannot be written (its struct is
 * read-only): the finished requests stay, in their order, for the next
 * WAIT that can answer. One whose count could be written answers.
 */
TEST_F(sched, a_wait_that_cannot_answer_leaves_the_request_there)
{
	struct llmos_finished fin[4];
	struct llmos_req_desc d[2];
	struct llmos_wait_batch *wb;
	struct llmos_wait *w;
	struct llmos_wait ok;
	long long a, b;
	void *ro;

	ASSERT_EQ(0, reg(self->worker, 2));
	a = submit(self->client, 1);
	b = submit(self->client, 1);
	ASSERT_EQ(2, dispatch(self->worker, d, 2, 0, 0));
	ASSERT_EQ(0, complete(self->worker, a, 0, 3));
	ASSERT_EQ(0, complete(self->worker, b, 0, 5));
	ro = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
		  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, ro);
	w = ro; /* one for b (the newer), one for any */
	w[0] = (struct llmos_wait){
		.size = sizeof(*w), .flags = LLMOS_NONBLOCK, .id = b,
	};
	w[1] = (struct llmos_wait){ .size = sizeof(*w), .flags = LLMOS_NONBLOCK };
	wb = (void *)((char *)ro + 2048);
	*wb = (struct llmos_wait_batch){
		.size = sizeof(*wb), .flags = LLMOS_NONBLOCK,
		.entries_uptr = (__u64)(uintptr_t)fin,
		.entry_size = sizeof(fin[0]), .max = 4,
	};
	ASSERT_EQ(0, mprotect(ro, 4096, PROT_READ));
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_WAIT, &w[0]));
	EXPECT_EQ(EFAULT, errno);
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_WAIT, &w[1]));
	EXPECT_EQ(EFAULT, errno);
	/* The entries could be written, not the count: none collected. */
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_WAIT_BATCH, wb));
	EXPECT_EQ(EFAULT, errno);
	/* Still there, first the older, as they finished. */
	ASSERT_EQ(0, wait_req(self->client, 0, LLMOS_NONBLOCK, 0, &ok));
	EXPECT_EQ(a, ok.out_id);
	EXPECT_EQ(3, ok.out_tokens);
	munmap(ro, 4096);

	/*
	 * A WAIT_BATCH struct across two pages, its count on the writable
	 * one: the entries and the count are written, the rest need not be.
	 */
	ro = mmap(NULL, 8192, PROT_READ | PROT_WRITE,
		  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, ro);
	wb = (void *)((char *)ro + 4096 -
		      offsetof(struct llmos_wait_batch, out_count));
	*wb = (struct llmos_wait_batch){
		.size = sizeof(*wb), .flags = LLMOS_NONBLOCK,
		.entries_uptr = (__u64)(uintptr_t)fin,
		.entry_size = sizeof(fin[0]), .max = 4,
	};
	ASSERT_EQ(0, mprotect(ro, 4096, PROT_READ));
	ASSERT_EQ(0, ioctl(self->client, LLMOS_IOC_WAIT_BATCH, wb));
	ASSERT_EQ(1, wb->out_count);
	EXPECT_EQ(b, fin[0].id);
	EXPECT_EQ(5, fin[0].tokens);
	EXPECT_EQ(-ENOENT, wait_req(self->client, 0, LLMOS_NONBLOCK, 0, NULL));
	munmap(ro, 8192);
}

TEST_F(sched, capacity_limits_what_a_worker_holds)
{
	struct llmos_req_desc d[10]; /* dispatches at d + 2 may write 8 */

	ASSERT_EQ(0, reg(self->worker, 2));
	for (int i = 0; i < 5; i++)
		ASSERT_LT(0, submit(self->client, 1));
	ASSERT_EQ(2, dispatch(self->worker, d, 8, 0, 0));
	EXPECT_EQ(-EAGAIN, dispatch(self->worker, d + 2, 8, LLMOS_NONBLOCK, 0));
	ASSERT_EQ(0, complete(self->worker, d[0].id, 0, 1));
	ASSERT_EQ(1, dispatch(self->worker, d + 2, 8, LLMOS_NONBLOCK, 0));
	ASSERT_EQ(0, complete(self->worker, d[1].id, 0, 1));
	ASSERT_EQ(0, complete(self->worker, d[2].id, 0, 1));
	ASSERT_EQ(2, dispatch(self->worker, d, 8, LLMOS_NONBLOCK, 0));
	ASSERT_EQ(0, complete(self->worker, d[0].id, 0, 1));
	ASSERT_EQ(0, complete(self->worker, d[1].id, 0, 1));
	for (int i = 0; i < 5; i++)
		ASSERT_EQ(0, wait_req(self->client, 0, 0, 5000, NULL));
}

TEST_F(sched, cancel_in_every_state)
{
	struct llmos_req_desc d[4];
	struct llmos_wait w;
	long long q, disp, run, done;

	ASSERT_EQ(0, reg(self->worker, 4));
	done = submit(self->client, 1);
	run = submit(self->client, 1);
	disp = submit(self->client, 1);
	ASSERT_EQ(3, dispatch(self->worker, d, 3, 0, 0));
	q = submit(self->client, 1);
	ASSERT_EQ(0, start(self->worker, run));
	ASSERT_EQ(0, complete(self->worker, done, 0, 3));
	EXPECT_EQ(0, cancel(self->client, q));
	EXPECT_EQ(0, cancel(self->client, disp));
	EXPECT_EQ(0, cancel(self->client, run));
	EXPECT_EQ(-EALREADY, cancel(self->client, done));
	EXPECT_EQ(-EALREADY, cancel(self->client, q));
	/* The worker learns it lost them. */
	EXPECT_EQ(-ESRCH, complete(self->worker, run, 0, 1));
	EXPECT_EQ(-ESRCH, start(self->worker, disp));
	EXPECT_EQ(-EAGAIN, dispatch(self->worker, d, 4, LLMOS_NONBLOCK, 0));
	ASSERT_EQ(0, wait_req(self->client, done, 0, 0, &w));
	EXPECT_EQ(LLMOS_REQ_COMPLETED, w.out_state);
	for (int i = 0; i < 3; i++) {
		ASSERT_EQ(0, wait_req(self->client, 0, LLMOS_NONBLOCK, 0, &w));
		EXPECT_EQ(LLMOS_REQ_CANCELLED, w.out_state);
	}
	EXPECT_EQ(-ENOENT, cancel(self->client, q)); /* collected */
	EXPECT_EQ(-ENOENT, complete(self->worker, run, 0, 1));
}

/* As another user: may name @open (0666) in a request, not @closed (0600). */
static int other_submits(int client, __u64 open)
{
	const __u64 closed = test_ms;

	struct llmos_submit s = {
		.size = sizeof(s), .tenant = OTHER_UID, .cost = 1,
		.prompt_len = 8,
	};

	if (setgid(OTHER_UID) || setuid(OTHER_UID))
		return 10;
	s.ms_id = closed;
	if (ioctl(client, LLMOS_IOC_SUBMIT, &s) == 0 || errno != EACCES)
		return 11;
	s.ms_id = open;
	if (ioctl(client, LLMOS_IOC_SUBMIT, &s))
		return 12;
	return cancel(client, s.out_id) ? 13 : 0;
}

TEST_F(sched, a_request_names_only_a_mindspace_its_submitter_may_write)
{
	struct llmos_submit_entry e[2] = {
		{ .cost = 1, .ms_id = test_ms, .prompt_len = 8 },
		{ .cost = 1, .ms_id = 1ull << 40 },
	};
	struct llmos_submit_batch b = {
		.size = sizeof(b), .entries_uptr = (__u64)(uintptr_t)e,
		.entry_size = sizeof(e[0]), .count = 2,
	};
	int open_fd;
	__u64 open_id;

	/* Each entry of a batch is checked on its own. */
	ASSERT_EQ(0, ioctl(self->client, LLMOS_IOC_SUBMIT_BATCH, &b));
	EXPECT_EQ(1, b.out_done);
	EXPECT_EQ(0, e[0].out_error);
	EXPECT_EQ(-ENOENT, e[1].out_error);
	EXPECT_EQ(0, cancel(self->client, e[0].out_id));
	if (getuid() != 0)
		SKIP(return, "needs root to switch users");
	open_fd = ms_make(self->client, 4096, 0666, &open_id);
	ASSERT_LE(0, open_fd);
	EXPECT_EQ(0, in_child(other_submits, self->client, open_id));
	close(open_fd);
}

/* TENANT_GRANT: flags, uid, range in; *@out (if any) set; 0 or -errno. */
static int grant(int fd, __u32 flags, __u32 uid, __u32 first, __u32 last,
		 struct llmos_tenant_grant *out)
{
	struct llmos_tenant_grant g = {
		.size = sizeof(g), .flags = flags, .uid = uid, .first = first,
		.last = last,
	};
	int ret = ioctl(fd, LLMOS_IOC_TENANT_GRANT, &g) ? -errno : 0;

	if (out)
		*out = g;
	return ret;
}

/* SUBMIT of one request of @tenant naming @ms, cancelled at once. */
static int submit_as(int client, __u64 ms, __u32 tenant)
{
	struct llmos_submit s = {
		.size = sizeof(s), .tenant = tenant, .cost = 1, .ms_id = ms,
		.prompt_len = 8,
	};

	if (ioctl(client, LLMOS_IOC_SUBMIT, &s))
		return -errno;
	return cancel(client, s.out_id);
}

/*
 * As OTHER_UID, which has no grant: names its own tenant only, alone and
 * in a batch, and changes nothing. Returns the first check that failed.
 */
static int ungranted_names_its_own_tenant(int client, __u64 ms)
{
	struct llmos_submit_entry e[3] = {
		{ .tenant = OTHER_UID, .cost = 1, .ms_id = ms, .prompt_len = 8 },
		{ .tenant = 0, .cost = 1, .ms_id = ms, .prompt_len = 8 },
		{ .tenant = 7, .cost = 1, .ms_id = ms, .prompt_len = 8 },
	};
	struct llmos_submit_batch b = {
		.size = sizeof(b), .entries_uptr = (__u64)(uintptr_t)e,
		.entry_size = sizeof(e[0]), .count = 3,
	};
	struct llmos_tenant_grant g;

	if (setgid(OTHER_UID) || setuid(OTHER_UID))
		return 10;
	if (grant(client, 0, LLMOS_UID_SELF, 0, 0, &g) ||
	    g.out_first != OTHER_UID || g.out_last != OTHER_UID ||
	    g.out_granted || g.out_admin)
		return 11;
	if (submit_as(client, ms, OTHER_UID))
		return 12;
	if (submit_as(client, ms, 0) != -EPERM ||
	    submit_as(client, ms, OTHER_UID + 1) != -EPERM ||
	    submit_as(client, ms, OTHER_UID - 1) != -EPERM)
		return 13;
	if (ioctl(client, LLMOS_IOC_SUBMIT_BATCH, &b) || b.out_done != 1 ||
	    e[0].out_error || e[1].out_error != -EPERM ||
	    e[2].out_error != -EPERM || e[1].out_id || e[2].out_id ||
	    cancel(client, e[0].out_id))
		return 14;
	/* A uid cannot grant itself more, or read another uid's. */
	if (grant(client, LLMOS_GRANT_SET, LLMOS_UID_SELF, 0, 10, NULL) !=
	    -EPERM || grant(client, LLMOS_GRANT_RESET, LLMOS_UID_SELF, 0, 0,
			    NULL) != -EPERM ||
	    grant(client, 0, 0, 0, 0, NULL) != -EPERM)
		return 15;
	return 0;
}

/* As OTHER_UID granted tenants 100 to 199: those, and only those. */
static int granted_names_its_range(int client, __u64 ms)
{
	struct llmos_tenant_grant g;

	if (setgid(OTHER_UID) || setuid(OTHER_UID))
		return 10;
	if (grant(client, 0, LLMOS_UID_SELF, 0, 0, &g) ||
	    g.out_first != 100 || g.out_last != 199 || g.out_granted != 1)
		return 11;
	if (submit_as(client, ms, 100) || submit_as(client, ms, 150) ||
	    submit_as(client, ms, 199))
		return 12;
	if (submit_as(client, ms, 99) != -EPERM ||
	    submit_as(client, ms, 200) != -EPERM ||
	    submit_as(client, ms, OTHER_UID) != -EPERM)
		return 13; /* the range replaces its own tenant */
	return 0;
}

/*
 * With euid OTHER_UID + 1 and fsuid OTHER_UID: the fsuid's tenant is its
 * own, the euid's is not.
 */
static int fsuid_names_the_tenant(int client, __u64 ms)
{
	if (setresgid(OTHER_UID, OTHER_UID, OTHER_UID) ||
	    setresuid(OTHER_UID, OTHER_UID + 1, OTHER_UID))
		return 10;
	setfsuid(OTHER_UID);
	if ((int)setfsuid(-1) != OTHER_UID || geteuid() != OTHER_UID + 1)
		return 11;
	if (submit_as(client, ms, OTHER_UID))
		return 12;
	if (submit_as(client, ms, OTHER_UID + 1) != -EPERM)
		return 13;
	return 0;
}

TEST_F(sched, a_uid_names_its_own_tenant_or_the_ones_granted_to_it)
{
	struct llmos_tenant_grant g;
	int open_fd;
	__u64 open_id;

	/* An admin names any tenant, granted or not. */
	ASSERT_EQ(0, submit_as(self->client, test_ms, 4000000000u));
	/* Bad commands change nothing. */
	EXPECT_EQ(-EINVAL, grant(self->client, LLMOS_GRANT_SET |
				 LLMOS_GRANT_RESET, OTHER_UID, 1, 2, NULL));
	EXPECT_EQ(-EINVAL, grant(self->client, LLMOS_GRANT_SET, OTHER_UID,
				 5, 4, NULL));
	EXPECT_EQ(-EINVAL, grant(self->client, 0, OTHER_UID, 0, 4, NULL));
	EXPECT_EQ(-EINVAL, grant(self->client, LLMOS_GRANT_RESET, OTHER_UID,
				 3, 0, NULL));
	EXPECT_EQ(-EINVAL, grant(self->client, 1u << 3, OTHER_UID, 0, 0,
				 NULL));
	EXPECT_EQ(-EINVAL, grant(self->client, LLMOS_GRANT_WORKER, OTHER_UID,
				 0, 0, NULL));
	EXPECT_EQ(-EINVAL, grant(self->client, LLMOS_GRANT_WORKER |
				 LLMOS_GRANT_RESET, OTHER_UID, 0, 0, NULL));
	{
		/* out_worker was a reserved field: its input is ignored. */
		struct llmos_tenant_grant r = {
			.size = sizeof(r), .uid = OTHER_UID, .out_worker = 1,
		};

		EXPECT_EQ(0, ioctl(self->client, LLMOS_IOC_TENANT_GRANT, &r));
		EXPECT_EQ(0, r.out_worker);
	}
	ASSERT_EQ(0, grant(self->client, 0, OTHER_UID, 0, 0, &g));
	EXPECT_EQ(OTHER_UID, g.out_first);
	EXPECT_EQ(OTHER_UID, g.out_last);
	EXPECT_EQ(0, g.out_granted);
	EXPECT_EQ(0, g.out_worker);
	EXPECT_EQ(1, g.out_admin); /* the caller's, whatever the uid */
	if (getuid() != 0)
		SKIP(return, "needs root to switch users");
	open_fd = ms_make(self->client, 4096, 0666, &open_id);
	ASSERT_LE(0, open_fd);

	EXPECT_EQ(0, in_child(ungranted_names_its_own_tenant, self->client,
			      open_id));
	EXPECT_EQ(0, in_child(fsuid_names_the_tenant, self->client, open_id));
	ASSERT_EQ(0, grant(self->client, LLMOS_GRANT_SET, OTHER_UID, 100, 199,
			   &g));
	EXPECT_EQ(100, g.out_first);
	EXPECT_EQ(199, g.out_last);
	EXPECT_EQ(1, g.out_granted);
	EXPECT_EQ(0, g.out_worker);
	EXPECT_EQ(1, has_line(TENANT_GRANTS, "1000\t100\t199\t0\n"));
	EXPECT_EQ(0, in_child(granted_names_its_range, self->client, open_id));
	/* Set again: the new range replaces the old one. */
	ASSERT_EQ(0, grant(self->client, LLMOS_GRANT_SET, OTHER_UID, 0,
			   0xffffffffu, &g));
	EXPECT_EQ(0, g.out_first);
	EXPECT_EQ(0xffffffffu, g.out_last);
	/* Reset: back to its own tenant. */
	ASSERT_EQ(0, grant(self->client, LLMOS_GRANT_RESET, OTHER_UID, 0, 0,
			   &g));
	EXPECT_EQ(OTHER_UID, g.out_first);
	EXPECT_EQ(OTHER_UID, g.out_last);
	EXPECT_EQ(0, g.out_granted);
	EXPECT_EQ(0, has_line(TENANT_GRANTS, "1000\t0\t4294967295\t0\n"));
	EXPECT_EQ(0, in_child(ungranted_names_its_own_tenant, self->client,
			      open_id));
	close(open_fd);
}

/*
 * As OTHER_UID, on a file of its own opened before: WORKER_REGISTER
 * succeeds when @may, else fails with EPERM and leaves the file a client.
 */
static int other_registers(int unused, __u64 may)
{
	struct llmos_req_desc d[1];
	int fd = dev_open(), ret;

	(void)unused;
	if (fd < 0)
		return 9;
	if (setgid(OTHER_UID) || setuid(OTHER_UID))
		return 10;
	ret = reg(fd, 1);
	if (may ? ret : ret != -EPERM)
		return 11;
	/* Not a worker when refused: DISPATCH says so (EINVAL). */
	if (!may && dispatch(fd, d, 1, LLMOS_NONBLOCK, 0) != -EINVAL)
		return 12;
	close(fd);
	return 0;
}

TEST_F(sched, registering_a_worker_needs_privilege_or_a_worker_grant)
{
	struct llmos_tenant_grant g;

	if (getuid() != 0)
		SKIP(return, "needs root to switch users");
	/* No grant: refused. A range alone does not make a worker. */
	EXPECT_EQ(0, in_child(other_registers, 0, 0));
	ASSERT_EQ(0, grant(self->client, LLMOS_GRANT_SET, OTHER_UID, 5, 6, &g));
	EXPECT_EQ(0, g.out_worker);
	EXPECT_EQ(0, in_child(other_registers, 0, 0));
	/* Granted with LLMOS_GRANT_WORKER: it registers. */
	ASSERT_EQ(0, grant(self->client, LLMOS_GRANT_SET | LLMOS_GRANT_WORKER,
			   OTHER_UID, 5, 6, &g));
	EXPECT_EQ(1, g.out_worker);
	EXPECT_EQ(1, g.out_granted);
	EXPECT_EQ(1, has_line(TENANT_GRANTS, "1000\t5\t6\t1\n"));
	ASSERT_EQ(0, grant(self->client, 0, OTHER_UID, 0, 0, &g));
	EXPECT_EQ(1, g.out_worker);
	EXPECT_EQ(0, in_child(other_registers, 0, 1));
	/* A SET without the flag takes the right away; so does a reset. */
	ASSERT_EQ(0, grant(self->client, LLMOS_GRANT_SET, OTHER_UID, 5, 6, &g));
	EXPECT_EQ(0, g.out_worker);
	EXPECT_EQ(0, in_child(other_registers, 0, 0));
	ASSERT_EQ(0, grant(self->client, LLMOS_GRANT_SET | LLMOS_GRANT_WORKER,
			   OTHER_UID, 5, 6, &g));
	ASSERT_EQ(0, grant(self->client, LLMOS_GRANT_RESET, OTHER_UID, 0, 0,
			   &g));
	EXPECT_EQ(0, g.out_worker);
	EXPECT_EQ(0, in_child(other_registers, 0, 0));
}

/*
 * As OTHER_UID: STATS lists the tenants it may name, and only those; the
 * totals are everyone's. @range: granted 5 to 6 (else its own tenant).
 */
static int other_sees_its_tenants(int client, __u64 range)
{
	struct llmos_tenant_stats ts[64];
	struct llmos_sched_stats st;
	__u32 seen = 0;

	if (setgid(OTHER_UID) || setuid(OTHER_UID))
		return 10;
	if (stats(client, &st, ts, 64) || st.tenant_count > 64)
		return 11;
	for (__u32 i = 0; i < st.tenant_count; i++) {
		if (range ? ts[i].tenant < 5 || ts[i].tenant > 6 :
			    ts[i].tenant != OTHER_UID)
			return 12;
		seen |= 1u << (ts[i].tenant == OTHER_UID ? 0 : ts[i].tenant);
	}
	if (seen != (range ? 1u << 5 | 1u << 6 : 1u))
		return 13; /* each tenant it may name that has requests */
	if (st.out_nr[LLMOS_REQ_QUEUED] < 4)
		return 14; /* the totals count the others' too */
	return 0;
}

TEST_F(sched, stats_show_a_user_the_tenants_it_may_name)
{
	struct llmos_tenant_stats ts[64];
	struct llmos_sched_stats st;
	long long ids[4];
	__u32 seen = 0;

	if (getuid() != 0)
		SKIP(return, "needs root to switch users");
	ids[0] = submit(self->client, 4);
	ids[1] = submit(self->client, 5);
	ids[2] = submit(self->client, 6);
	ids[3] = submit(self->client, OTHER_UID);
	for (int i = 0; i < 4; i++)
		ASSERT_LT(0, ids[i]);
	/* An administrator sees every tenant. */
	ASSERT_EQ(0, stats(self->client, &st, ts, 64));
	for (__u32 i = 0; i < st.tenant_count && i < 64; i++)
		seen |= ts[i].tenant == 4 ? 1 : ts[i].tenant == OTHER_UID ? 2 : 0;
	EXPECT_EQ(3u, seen);
	EXPECT_EQ(0, in_child(other_sees_its_tenants, self->client, 0));
	ASSERT_EQ(0, grant(self->client, LLMOS_GRANT_SET, OTHER_UID, 5, 6, NULL));
	EXPECT_EQ(0, in_child(other_sees_its_tenants, self->client, 1));
	for (int i = 0; i < 4; i++)
		EXPECT_EQ(0, cancel(self->client, ids[i]));
}

static int other_cancels(int client, __u64 id)
{
	if (setgid(OTHER_UID) || setuid(OTHER_UID))
		return 10;
	/* Not one of its requests: to it, none at all. */
	return cancel(client, id) == -ENOENT ? 0 : 11;
}

/* Writes @text to /proc/@pid/@file; 0 or -errno. */
static int write_proc(pid_t pid, const char *file, const char *text)
{
	char path[64];
	int fd, ret = 0;

	snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, file);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (write(fd, text, strlen(text)) != (ssize_t)strlen(text))
		ret = -errno;
	close(fd);
	return ret;
}

#define NS_BASE 300000

/* Who made the namespace: root, or a user with subordinate uids. */
#define NS_MAKER 4242

static int quota_used(int fd, __u32 uid, __u64 *used)
{
	struct llmos_quota q = { .size = sizeof(q), .uid = uid };

	if (ioctl(fd, LLMOS_IOC_QUOTA, &q))
		return -errno;
	*used = q.out_used;
	return 0;
}

/*
 * In a user namespace that maps 100 uids from NS_BASE on, as uid 7 in it
 * (global NS_BASE + 7): submits as the tenant of @user, the user the
 * scheduler should take it for, and not as the others; makes a 1 MiB
 * mindspace, says so on @done_fd and waits on @go_fd for the parent to
 * have read the quotas. Returns 0 when it checked out, else which check
 * failed.
 */
static int ns_member(int client, __u32 user, int go_fd, int done_fd)
{
	__u32 others[] = { 0, NS_MAKER, NS_BASE + 7 };
	__u64 id, used;
	char c;
	int ms;

	if (read(go_fd, &c, 1) != 1)
		return 10;
	if (setresgid(7, 7, 7) || setresuid(7, 7, 7))
		return 11;
	test_ms = 0; /* root's mindspace is not its to use: none */
	for (size_t i = 0; i < ARRAY_SIZE(others); ++i)
		if (others[i] != user && submit(client, others[i]) != -EPERM)
			return 12 + i;
	if (submit(client, user) <= 0)
		return 15;
	ms = ms_make(client, 1 << 20, 0600, &id);
	if (ms < 0)
		return 16;
	/* Its own quota is that user's. */
	if (quota_used(client, LLMOS_UID_SELF, &used) || used < 1 << 20)
		return 17;
	if (write(done_fd, "d", 1) != 1 || read(go_fd, &c, 1) != 1)
		return 18;
	close(ms);
	return 0;
}

/*
 * Makes a user namespace as @maker (0: root) mapping 100 uids from
 * NS_BASE on, runs ns_member() in it, and checks whose quota its
 * mindspace was charged to: the maker's, or, in one root made, the
 * member's own. 0, or which check failed (-1: no user namespace for an
 * unprivileged user here).
 */
static int in_user_namespace(int client, __u32 maker)
{
	const __u32 user = maker ? maker : NS_BASE + 7;
	int ready[2], go[2], done[2], status, ret = 0;
	__u64 used = 0, other_used = 0;
	char map[64], c;
	pid_t pid;

	if (pipe(ready) || pipe(go) || pipe(done))
		return 1;
	pid = fork();
	if (pid < 0)
		return 2;
	if (pid == 0) {
		close(ready[0]);
		close(go[1]);
		close(done[0]);
		if (maker && (setresgid(maker, maker, maker) ||
			      setresuid(maker, maker, maker)))
			_exit(8);
		if (unshare(CLONE_NEWUSER))
			_exit(9);
		if (write(ready[1], "r", 1) != 1)
			_exit(8);
		_exit(ns_member(client, user, go[0], done[1]));
	}
	close(ready[1]);
	close(go[0]);
	close(done[1]);
	if (read(ready[0], &c, 1) == 1) {
		snprintf(map, sizeof(map), "0 %d 100\n", NS_BASE);
		if (write_proc(pid, "uid_map", map) ||
		    write_proc(pid, "gid_map", map))
			ret = 3;
		if (write(go[1], "g", 1) != 1)
			ret = 4;
		/* Charged to the user the scheduler takes it for. */
		if (read(done[0], &c, 1) == 1 &&
		    (quota_used(client, user, &used) ||
		     quota_used(client, NS_BASE + 7, &other_used) ||
		     used < 1 << 20 || (maker && other_used)))
			ret = 5;
		if (write(go[1], "g", 1) != 1)
			ret = 4;
	}
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
		ret = 6;
	else if (WEXITSTATUS(status) == 9 && maker)
		ret = -1;
	else if (WEXITSTATUS(status))
		ret = 100 + WEXITSTATUS(status);
	close(ready[0]);
	close(go[1]);
	close(done[0]);
	return ret;
}

/*
 * A user with a range of subordinate uids is one user to the scheduler:
 * inside a user namespace it made, a caller's tenants and mindspace quota
 * are the maker's, not one per uid it maps (which could fill max_tenants,
 * each with a fair share of its own, and multiply its quota).
 */
TEST_F(sched, a_user_namespace_member_is_its_maker_to_the_scheduler)
{
	int ret;

	if (getuid() != 0)
		SKIP(return, "needs root to map a range of uids");
	ret = in_user_namespace(self->client, NS_MAKER);
	if (ret == -1)
		SKIP(return, "unprivileged users may not make user namespaces here");
	EXPECT_EQ(0, ret);
}

/*
 * A namespace root made is a container's: its members are their own
 * users (as root in it has none of root's rights outside), never root's
 * tenant, grants or quota.
 */
TEST_F(sched, a_member_of_a_namespace_root_made_is_its_own_user)
{
	if (getuid() != 0)
		SKIP(return, "needs root to map a range of uids");
	EXPECT_EQ(0, in_user_namespace(self->client, 0));
}

TEST_F(sched, only_the_owner_or_an_admin_cancels)
{
	int other = dev_open();
	long long id;

	ASSERT_LE(0, other);
	id = submit(self->client, 1);
	ASSERT_LT(0, id);
	if (getuid() == 0)
		EXPECT_EQ(0, in_child(other_cancels, other, id));
	/* An administrator may. */
	EXPECT_EQ(0, cancel(other, id));
	EXPECT_EQ(0, wait_req(self->client, id, 0, 0, NULL));
	close(other);
}

TEST_F(sched, worker_checks_on_complete_and_start)
{
	struct llmos_req_desc d[2];
	struct llmos_wait w;
	int other = dev_open();
	long long id;

	ASSERT_LE(0, other);
	ASSERT_EQ(0, reg(self->worker, 2));
	ASSERT_EQ(0, reg(other, 2));
	id = submit(self->client, 1);
	EXPECT_EQ(-ESRCH, start(self->worker, id)); /* queued */
	ASSERT_EQ(1, dispatch(self->worker, d, 2, 0, 0));
	EXPECT_EQ(-ESRCH, complete(other, id, 0, 1));
	EXPECT_EQ(-ESRCH, start(other, id));
	EXPECT_EQ(-ENOENT, complete(self->worker, id + 1000000, 0, 1));
	EXPECT_EQ(-EINVAL, complete(self->worker, id, 5, 1)); /* status > 0 */
	/* A result outside the request's mindspace (1 MiB), or wrapping. */
	EXPECT_EQ(-EINVAL, complete_at(self->worker, id, 1 << 20, 1));
	EXPECT_EQ(-EINVAL, complete_at(self->worker, id, 4096, 1 << 20));
	EXPECT_EQ(-EINVAL, complete_at(self->worker, id, ~0ULL - 10, 20));
	EXPECT_EQ(-ESRCH, complete_at(other, id, ~0ULL - 10, 20)); /* not its */
	ASSERT_EQ(0, start(self->worker, id));
	EXPECT_EQ(-EINVAL, start(self->worker, id));
	ASSERT_EQ(0, complete(self->worker, id, -EIO, 0));
	EXPECT_EQ(-ESRCH, complete(self->worker, id, 0, 1));
	ASSERT_EQ(0, wait_req(self->client, id, 0, 0, &w));
	EXPECT_EQ(LLMOS_REQ_FAILED, w.out_state);
	EXPECT_EQ(-EIO, w.out_status);
	/* The last byte of the mindspace is inside. */
	id = submit(self->client, 1);
	ASSERT_EQ(1, dispatch(self->worker, d, 2, 0, 0));
	ASSERT_EQ(0, complete_at(self->worker, id, (1 << 20) - 1, 1));
	ASSERT_EQ(0, wait_req(self->client, id, 0, 0, &w));
	EXPECT_EQ((1 << 20) - 1, w.out_result_off);
	close(other);
}

/* COMPLETE with LLMOS_COMPLETE_RETURN by @fd: 0 or -errno. */
static int give_back(int fd, __u64 id, __s32 status, __u32 flags)
{
	struct llmos_complete c = {
		.size = sizeof(c), .flags = flags, .id = id, .status = status,
	};

	return ioctl(fd, LLMOS_IOC_COMPLETE, &c) ? -errno : 0;
}

/*
 * A worker hands back what it will not finish: the requests go back to
 * the front of their tenant, ahead of later ones, for any worker, with
 * their requeues as they were; it has room again at once.
 */
TEST_F(sched, a_worker_hands_back_what_it_will_not_finish)
{
	struct llmos_complete_entry ce[2];
	struct llmos_complete_batch cb = {
		.size = sizeof(cb), .flags = LLMOS_COMPLETE_RETURN,
		.entries_uptr = (__u64)(uintptr_t)ce,
		.entry_size = sizeof(ce[0]), .count = 2,
	};
	struct llmos_sched_stats st;
	struct llmos_tenant_stats ts;
	struct llmos_req_desc d[4];
	int other = dev_open();
	long long a, b, later;
	struct llmos_wait w;

	ASSERT_LE(0, other);
	ASSERT_EQ(0, reg(self->worker, 2));
	ASSERT_EQ(0, reg(other, 4));
	a = submit(self->client, 1);
	b = submit(self->client, 1);
	ASSERT_EQ(2, dispatch(self->worker, d, 2, 0, 0));
	ASSERT_EQ(0, start(self->worker, b)); /* RUNNING goes back too */
	later = submit(self->client, 1);
	/* Checked: a foreign, unknown or bad hand-back changes nothing. */
	EXPECT_EQ(-ESRCH, give_back(other, a, 0, LLMOS_COMPLETE_RETURN));
	EXPECT_EQ(-ENOENT, give_back(self->worker, a + 1000000, 0,
				     LLMOS_COMPLETE_RETURN));
	EXPECT_EQ(-EINVAL, give_back(self->worker, a, -EIO,
				     LLMOS_COMPLETE_RETURN));
	EXPECT_EQ(-EINVAL, give_back(self->worker, a, 0, 1u << 1));
	EXPECT_EQ(-EINVAL, give_back(self->client, a, 0,
				     LLMOS_COMPLETE_RETURN)); /* not a worker */
	ASSERT_EQ(0, give_back(self->worker, b, 0, LLMOS_COMPLETE_RETURN));
	EXPECT_EQ(-ESRCH, give_back(self->worker, b, 0, LLMOS_COMPLETE_RETURN));
	EXPECT_EQ(-ESRCH, complete(self->worker, b, 0, 1)); /* not its now */
	ASSERT_EQ(0, stats(self->client, &st, &ts, 0));
	EXPECT_EQ(self->st0.out_requeued + 1, st.out_requeued);
	EXPECT_EQ(1, st.out_nr[LLMOS_REQ_DISPATCHED]);
	EXPECT_EQ(2, st.out_nr[LLMOS_REQ_QUEUED]);
	EXPECT_EQ(0, st.out_nr[LLMOS_REQ_RUNNING]);
	/* Its room is back: it takes the one it gave back, before later. */
	ASSERT_EQ(1, dispatch(self->worker, d, 2, LLMOS_NONBLOCK, 0));
	EXPECT_EQ(b, d[0].id);
	EXPECT_EQ(0, d[0].requeues);
	/* A batch hands back both; another worker takes them, in order. */
	memset(ce, 0, sizeof(ce));
	ce[0].id = a;
	ce[1].id = b;
	ASSERT_EQ(0, ioctl(self->worker, LLMOS_IOC_COMPLETE_BATCH, &cb));
	EXPECT_EQ(2, cb.out_done);
	EXPECT_EQ(0, ce[0].out_error);
	EXPECT_EQ(0, ce[1].out_error);
	ASSERT_EQ(3, dispatch(other, d, 4, LLMOS_NONBLOCK, 0));
	EXPECT_EQ(a, d[0].id);
	EXPECT_EQ(b, d[1].id);
	EXPECT_EQ(later, d[2].id);
	for (int i = 0; i < 3; i++) {
		EXPECT_EQ(0, d[i].requeues);
		ASSERT_EQ(0, complete(other, d[i].id, 0, 1));
	}
	/* A finished request cannot be handed back. */
	EXPECT_EQ(-ESRCH, give_back(other, a, 0, LLMOS_COMPLETE_RETURN));
	for (int i = 0; i < 3; i++) {
		ASSERT_EQ(0, wait_req(self->client, d[i].id, 0, 0, &w));
		EXPECT_EQ(LLMOS_REQ_COMPLETED, w.out_state);
	}
	close(other);
}

TEST_F(sched, wait_checks_the_id)
{
	int other = dev_open();
	long long mine, theirs;

	ASSERT_LE(0, other);
	mine = submit(self->client, 1);
	theirs = submit(other, 1);
	EXPECT_EQ(-ENOENT, wait_req(self->client, theirs, LLMOS_NONBLOCK, 0, NULL));
	EXPECT_EQ(-EAGAIN, wait_req(self->client, mine, LLMOS_NONBLOCK, 0, NULL));
	EXPECT_EQ(-ETIMEDOUT, wait_req(self->client, 0, 0, 100, NULL));
	EXPECT_EQ(-EINVAL, wait_req(self->client, 0, 1u << 4, 0, NULL));
	close(other); /* its request is cancelled and freed */
}

/* A worker process that takes three requests, starts one, and dies. */
static int crashing_worker(int unused, __u64 unused2)
{
	struct llmos_req_desc d[3];
	int fd = dev_open();

	if (fd < 0 || reg(fd, 4))
		return 1;
	if (dispatch(fd, d, 3, 0, 5000) != 3)
		return 2;
	if (start(fd, d[0].id))
		return 3;
	_exit(0); /* no COMPLETE: the module must give them back */
}

TEST_F(sched, a_dead_workers_requests_complete_exactly_once)
{
	struct llmos_sched_stats st;
	struct llmos_tenant_stats ts;
	struct llmos_req_desc d[8];
	long long ids[5];
	int seen[5] = { 0 };

	for (int i = 0; i < 5; i++)
		ids[i] = submit(self->client, 3);
	ASSERT_EQ(0, in_child(crashing_worker, -1, 0));

	ASSERT_EQ(0, stats(self->client, &st, &ts, 0));
	EXPECT_EQ(self->st0.out_requeued + 3, st.out_requeued);
	ASSERT_EQ(0, reg(self->worker, 8));
	ASSERT_EQ(5, dispatch(self->worker, d, 8, 0, 0));
	/* The three it held come first, in submission order, marked. */
	for (int i = 0; i < 5; i++) {
		EXPECT_EQ(ids[i], d[i].id);
		EXPECT_EQ(i < 3 ? 1 : 0, d[i].requeues);
		ASSERT_EQ(0, complete(self->worker, d[i].id, 0, 1));
	}
	for (int i = 0; i < 5; i++) {
		struct llmos_wait w;

		ASSERT_EQ(0, wait_req(self->client, 0, LLMOS_NONBLOCK, 0, &w));
		EXPECT_EQ(LLMOS_REQ_COMPLETED, w.out_state);
		for (int k = 0; k < 5; k++)
			seen[k] += w.out_id == (__u64)ids[k];
	}
	for (int k = 0; k < 5; k++)
		EXPECT_EQ(1, seen[k]);
	EXPECT_EQ(-ENOENT, wait_req(self->client, 0, LLMOS_NONBLOCK, 0, NULL));
}

/*
 * The dispatch time WAIT reports is that of the worker holding the request
 * as it ended: one cancelled back in its queue reports 0 (no worker will
 * write for it), even though a worker had it once.
 */
TEST_F(sched, a_request_cancelled_after_its_worker_vanished_has_no_dispatch_time)
{
	struct llmos_req_desc d[1];
	struct llmos_wait w;
	long long id = submit(self->client, 3), held;
	int other = dev_open();

	ASSERT_LE(0, id);
	ASSERT_LE(0, other);
	ASSERT_EQ(0, reg(other, 1));
	ASSERT_EQ(1, dispatch(other, d, 1, 0, 0));
	ASSERT_EQ(id, (long long)d[0].id);
	close(other); /* back to its queue */
	ASSERT_EQ(0, cancel(self->client, id));
	ASSERT_EQ(0, wait_req(self->client, id, LLMOS_NONBLOCK, 0, &w));
	EXPECT_EQ(LLMOS_REQ_CANCELLED, w.out_state);
	EXPECT_EQ(0, w.out_dispatch_ns);
	/* Cancelled while a worker holds it: that worker's time. */
	held = submit(self->client, 3);
	ASSERT_LE(0, held);
	ASSERT_EQ(0, reg(self->worker, 1));
	ASSERT_EQ(1, dispatch(self->worker, d, 1, 0, 0));
	ASSERT_EQ(0, cancel(self->client, held));
	ASSERT_EQ(0, wait_req(self->client, held, LLMOS_NONBLOCK, 0, &w));
	EXPECT_EQ(LLMOS_REQ_CANCELLED, w.out_state);
	EXPECT_LE(w.out_submit_ns, w.out_dispatch_ns);
	EXPECT_LE(w.out_dispatch_ns, w.out_end_ns);
	EXPECT_NE(0, w.out_dispatch_ns);
}

TEST_F(sched, a_closed_clients_requests_are_cancelled)
{
	struct llmos_req_desc d[4];
	int gone = dev_open();

	ASSERT_LE(0, gone);
	ASSERT_EQ(0, reg(self->worker, 4));
	for (int i = 0; i < 4; i++)
		ASSERT_LT(0, submit(gone, 9));
	ASSERT_EQ(2, dispatch(self->worker, d, 2, 0, 0));
	close(gone);
	EXPECT_EQ(-ENOENT, complete(self->worker, d[0].id, 0, 1));
	EXPECT_EQ(-ENOENT, start(self->worker, d[1].id));
	EXPECT_EQ(-EAGAIN, dispatch(self->worker, d, 4, LLMOS_NONBLOCK, 0));
}

TEST_F(sched, weights_divide_the_service)
{
	struct llmos_set_weight sw = { .size = sizeof(sw), .tenant = 21, .weight = 300 };
	struct llmos_tenant_stats ts[64];
	struct llmos_sched_stats st;
	struct llmos_req_desc d[1];
	int from22 = 0;
	bool found = false;

	if (getuid() != 0)
		SKIP(return, "needs CAP_SYS_ADMIN to set weights");
	ASSERT_EQ(0, ioctl(self->client, LLMOS_IOC_SET_WEIGHT, &sw));
	sw.tenant = 22;
	sw.weight = 100;
	ASSERT_EQ(0, ioctl(self->client, LLMOS_IOC_SET_WEIGHT, &sw));
	sw.weight = 0;
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_SET_WEIGHT, &sw));
	EXPECT_EQ(EINVAL, errno);
	sw.weight = LLMOS_MAX_WEIGHT + 1;
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_SET_WEIGHT, &sw));
	EXPECT_EQ(EINVAL, errno);
	for (int i = 0; i < 200; i++) {
		ASSERT_LT(0, submit(self->client, 21));
		ASSERT_LT(0, submit(self->client, 22));
	}
	ASSERT_EQ(0, reg(self->worker, 1));
	for (int i = 0; i < 200; i++) {
		ASSERT_EQ(1, dispatch(self->worker, d, 1, 0, 0));
		from22 += d[0].tenant == 22;
		ASSERT_EQ(0, complete(self->worker, d[0].id, 0, 1));
	}
	EXPECT_LE(47, from22); /* a quarter of 200 */
	EXPECT_GE(53, from22);
	ASSERT_EQ(0, stats(self->client, &st, ts, 64));
	for (__u32 i = 0; i < st.tenant_count && i < 64; i++) {
		if (ts[i].tenant == 21) {
			EXPECT_EQ(300, ts[i].weight);
			found = true;
		}
	}
	EXPECT_TRUE(found);
	/* The rest go when the client closes (teardown checks). */
}

static int other_sets_weight(int fd, __u64 unused)
{
	struct llmos_set_weight sw = { .size = sizeof(sw), .tenant = 1, .weight = 5 };

	if (setgid(OTHER_UID) || setuid(OTHER_UID))
		return 10;
	if (ioctl(fd, LLMOS_IOC_SET_WEIGHT, &sw) == 0 || errno != EPERM)
		return 11;
	return 0;
}

TEST_F(sched, setting_weights_needs_privilege)
{
	if (getuid() != 0)
		SKIP(return, "needs root to switch users");
	EXPECT_EQ(0, in_child(other_sets_weight, self->client, 0));
}

TEST_F(sched, batch_commands_report_each_entry)
{
	struct llmos_submit_entry se[4] = {
		{ .tenant = 1, .cost = 2 },
		{ .tenant = 1, .priority = LLMOS_MAX_PRIORITY + 1 }, /* bad */
		{ .tenant = 2, .cost = 3 },
		{ .tenant = 1, .__reserved = 1 }, /* bad */
	};
	struct llmos_submit_batch sb = {
		.size = sizeof(sb), .entries_uptr = (__u64)(uintptr_t)se,
		.entry_size = sizeof(se[0]), .count = 4,
	};
	struct llmos_complete_entry ce[3];
	struct llmos_complete_batch cb = {
		.size = sizeof(cb), .entries_uptr = (__u64)(uintptr_t)ce,
		.entry_size = sizeof(ce[0]), .count = 3,
	};
	struct llmos_finished fin[8];
	struct llmos_wait_batch wb = {
		.size = sizeof(wb), .entries_uptr = (__u64)(uintptr_t)fin,
		.entry_size = sizeof(fin[0]), .max = 8, .flags = LLMOS_NONBLOCK,
	};
	struct llmos_req_desc d[4];

	/* Nothing outstanding yet: nothing to wait for. */
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_WAIT_BATCH, &wb));
	EXPECT_EQ(ENOENT, errno);
	ASSERT_EQ(0, ioctl(self->client, LLMOS_IOC_SUBMIT_BATCH, &sb));
	EXPECT_EQ(2, sb.out_done);
	EXPECT_EQ(0, se[0].out_error);
	EXPECT_EQ(-EINVAL, se[1].out_error);
	EXPECT_EQ(0, se[2].out_error);
	EXPECT_EQ(-EINVAL, se[3].out_error);
	EXPECT_EQ(0, se[1].out_id);
	EXPECT_LT(se[0].out_id, se[2].out_id);
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_WAIT_BATCH, &wb));
	EXPECT_EQ(EAGAIN, errno);

	ASSERT_EQ(0, reg(self->worker, 4));
	ASSERT_EQ(2, dispatch(self->worker, d, 4, 0, 0));
	memset(ce, 0, sizeof(ce));
	ce[0].id = se[0].out_id;
	ce[0].tokens = 11;
	ce[1].id = se[2].out_id + 1000000; /* not there */
	ce[2].id = se[2].out_id;
	ce[2].status = -EIO;
	ASSERT_EQ(0, ioctl(self->worker, LLMOS_IOC_COMPLETE_BATCH, &cb));
	EXPECT_EQ(2, cb.out_done);
	EXPECT_EQ(0, ce[0].out_error);
	EXPECT_EQ(-ENOENT, ce[1].out_error);
	EXPECT_EQ(0, ce[2].out_error);

	ASSERT_EQ(0, ioctl(self->client, LLMOS_IOC_WAIT_BATCH, &wb));
	ASSERT_EQ(2, wb.out_count);
	EXPECT_EQ(se[0].out_id, fin[0].id);
	EXPECT_EQ(LLMOS_REQ_COMPLETED, fin[0].state);
	EXPECT_EQ(11, fin[0].tokens);
	EXPECT_EQ(se[2].out_id, fin[1].id);
	EXPECT_EQ(LLMOS_REQ_FAILED, fin[1].state);
	EXPECT_EQ(-EIO, fin[1].status);

	/* Sizes and counts are checked. */
	sb.count = 0;
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_SUBMIT_BATCH, &sb));
	EXPECT_EQ(EINVAL, errno);
	sb.count = LLMOS_MAX_DISPATCH + 1;
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_SUBMIT_BATCH, &sb));
	EXPECT_EQ(EINVAL, errno);
	sb.count = 1;
	sb.entry_size = sizeof(se[0]) - 1;
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_SUBMIT_BATCH, &sb));
	EXPECT_EQ(EINVAL, errno);
	sb.entry_size = sizeof(se[0]);
	sb.entries_uptr = 16;
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_SUBMIT_BATCH, &sb));
	EXPECT_EQ(EFAULT, errno);
	cb.entries_uptr = 16;
	EXPECT_EQ(-1, ioctl(self->worker, LLMOS_IOC_COMPLETE_BATCH, &cb));
	EXPECT_EQ(EFAULT, errno);
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_COMPLETE_BATCH, &cb));
	EXPECT_EQ(EINVAL, errno); /* not a worker */
	wb.entry_size = sizeof(fin[0]) - 1;
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_WAIT_BATCH, &wb));
	EXPECT_EQ(EINVAL, errno);
	wb.entry_size = sizeof(fin[0]);
	wb.entries_uptr = 16;
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_WAIT_BATCH, &wb));
	EXPECT_EQ(EFAULT, errno);
}

/*
 * Batch entries larger than the kernel's struct: a clean tail is as the
 * exact size; non-zero bytes there fail that entry alone with E2BIG (as
 * SUBMIT or COMPLETE would fail) and the others go through.
 */
TEST_F(sched, batch_entries_past_the_kernel_s_struct_need_a_zero_tail)
{
	struct big_submit {
		struct llmos_submit_entry e;
		__u64 tail;
	} se[3];
	struct big_complete {
		struct llmos_complete_entry e;
		__u64 tail;
	} ce[2];
	struct llmos_submit_batch sb = {
		.size = sizeof(sb), .entries_uptr = (__u64)(uintptr_t)se,
		.entry_size = sizeof(se[0]), .count = 3,
	};
	struct llmos_complete_batch cb = {
		.size = sizeof(cb), .entries_uptr = (__u64)(uintptr_t)ce,
		.entry_size = sizeof(ce[0]), .count = 2,
	};
	/* One byte more than the kernel knows, unaligned. */
	unsigned char odd[2 * (sizeof(struct llmos_submit_entry) + 1)];
	const size_t stride = sizeof(struct llmos_submit_entry) + 1;
	struct llmos_submit_entry one = { .tenant = 1, .cost = 1 };
	struct llmos_req_desc d[4];
	char *page;

	memset(se, 0, sizeof(se));
	for (int i = 0; i < 3; i++)
		se[i].e = (struct llmos_submit_entry){ .tenant = 1, .cost = 1 };
	se[1].tail = 1ULL << 60;
	ASSERT_EQ(0, ioctl(self->client, LLMOS_IOC_SUBMIT_BATCH, &sb));
	EXPECT_EQ(2, sb.out_done);
	EXPECT_EQ(0, se[0].e.out_error);
	EXPECT_EQ(-E2BIG, se[1].e.out_error);
	EXPECT_EQ(0, se[1].e.out_id);
	EXPECT_EQ(0, se[2].e.out_error);
	EXPECT_LT(se[0].e.out_id, se[2].e.out_id);

	memset(odd, 0, sizeof(odd));
	memcpy(odd, &one, sizeof(one));
	memcpy(odd + stride, &one, sizeof(one));
	odd[2 * stride - 1] = 1;
	sb.entries_uptr = (__u64)(uintptr_t)odd;
	sb.entry_size = stride;
	sb.count = 2;
	ASSERT_EQ(0, ioctl(self->client, LLMOS_IOC_SUBMIT_BATCH, &sb));
	EXPECT_EQ(1, sb.out_done);
	memcpy(&one, odd, sizeof(one));
	EXPECT_EQ(0, one.out_error);
	EXPECT_LT(0, one.out_id);
	EXPECT_EQ(0, cancel(self->client, one.out_id));
	EXPECT_EQ(0, wait_req(self->client, one.out_id, 0, 0, NULL));
	memcpy(&one, odd + stride, sizeof(one));
	EXPECT_EQ(-E2BIG, one.out_error);
	EXPECT_EQ(0, one.out_id);

	ASSERT_EQ(0, reg(self->worker, 4));
	ASSERT_EQ(2, dispatch(self->worker, d, 4, LLMOS_NONBLOCK, 0));
	memset(ce, 0, sizeof(ce));
	ce[0].e.id = se[0].e.out_id;
	ce[1].e.id = se[2].e.out_id;
	ce[1].tail = 1;
	ASSERT_EQ(0, ioctl(self->worker, LLMOS_IOC_COMPLETE_BATCH, &cb));
	EXPECT_EQ(1, cb.out_done);
	EXPECT_EQ(0, ce[0].e.out_error);
	EXPECT_EQ(-E2BIG, ce[1].e.out_error);
	/* Not completed: the worker still holds it. */
	EXPECT_EQ(0, complete(self->worker, se[2].e.out_id, 0, 1));
	/* A tail that cannot be read fails the command: nothing submitted. */
	page = mmap(NULL, 8192, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, page);
	ASSERT_EQ(0, mprotect(page + 4096, 4096, PROT_NONE));
	one = (struct llmos_submit_entry){ .tenant = 1, .cost = 1 };
	memcpy(page + 4096 - sizeof(one), &one, sizeof(one));
	sb.entries_uptr = (__u64)(uintptr_t)(page + 4096 - sizeof(one));
	sb.entry_size = 2 * sizeof(one);
	sb.count = 1;
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_SUBMIT_BATCH, &sb));
	EXPECT_EQ(EFAULT, errno);
	munmap(page, 8192);
	/* Only the two completed ones are there to collect. */
	EXPECT_EQ(0, wait_req(self->client, se[0].e.out_id, 0, 0, NULL));
	EXPECT_EQ(0, wait_req(self->client, se[2].e.out_id, 0, 0, NULL));
	EXPECT_EQ(-ENOENT, wait_req(self->client, 0, LLMOS_NONBLOCK, 0, NULL));
}

TEST_F(sched, tracepoints_record_the_lifecycle)
{
	const char *tr = "/sys/kernel/tracing";
	char path[128], want[4][96], *buf;
	struct llmos_req_desc d[1];
	bool found[4] = { false };
	long long id;
	FILE *f;

	snprintf(path, sizeof(path), "%s/events", tr);
	if (access(path, W_OK))
		SKIP(return, "no tracefs at %s", tr);
	/* With tracefs there, a missing llmos system is the module's fault. */
	snprintf(path, sizeof(path), "%s/events/llmos/enable", tr);
	ASSERT_EQ(0, access(path, W_OK)) {
		TH_LOG("%s: %s", path, strerror(errno));
	}
	snprintf(path, sizeof(path), "%s/trace", tr);
	ASSERT_EQ(0, write_file(path, ""));
	snprintf(path, sizeof(path), "%s/events/llmos/enable", tr);
	ASSERT_EQ(0, write_file(path, "1"));
	ASSERT_EQ(0, reg(self->worker, 1));
	id = submit3(self->client, 42, 3, 7);
	ASSERT_EQ(1, dispatch(self->worker, d, 1, 0, 0));
	ASSERT_EQ(0, complete(self->worker, id, 0, 9));
	ASSERT_EQ(0, write_file(path, "0"));

	snprintf(want[0], sizeof(want[0]), "req_submit: id=%lld tenant=42 prio=3 cost=7", id);
	snprintf(want[1], sizeof(want[1]), "req_dispatch: id=%lld worker=", id);
	snprintf(want[2], sizeof(want[2]), "req_complete: id=%lld state=%d status=0 tokens=9",
		 id, LLMOS_REQ_COMPLETED);
	snprintf(want[3], sizeof(want[3]), "sched_worker: worker=");
	snprintf(path, sizeof(path), "%s/trace", tr);
	f = fopen(path, "r");
	ASSERT_NE(NULL, f);
	buf = malloc(4096);
	ASSERT_NE(NULL, buf);
	while (fgets(buf, 4096, f)) {
		for (int i = 0; i < 4; i++)
			found[i] |= !!strstr(buf, want[i]);
	}
	fclose(f);
	free(buf);
	for (int i = 0; i < 4; i++) {
		EXPECT_TRUE(found[i]) {
			TH_LOG("no '%s' in the trace", want[i]);
		}
	}
	EXPECT_EQ(0, wait_req(self->client, id, 0, 0, NULL));
}

/* The stress run: 8 clients, 4 workers, every request exactly once. */
#define CLIENTS 8
#define WORKERS 4

struct stress {
	int per_client;
	atomic_int stop;
	atomic_long completions;
	atomic_int errors;
};

static void *stress_worker(void *arg)
{
	struct stress *s = arg;
	struct llmos_req_desc d[16];
	int fd = dev_open();

	if (fd < 0 || reg(fd, 16)) {
		s->errors++;
		return NULL;
	}
	while (!s->stop) {
		int n = dispatch(fd, d, 16, 0, 50);

		if (n == -ETIMEDOUT)
			continue;
		if (n < 0) {
			s->errors++;
			break;
		}
		for (int i = 0; i < n; i++) {
			if (complete(fd, d[i].id, 0, 1))
				s->errors++;
			s->completions++;
		}
	}
	close(fd);
	return NULL;
}

static void *stress_client(void *arg)
{
	struct stress *s = arg;
	int fd = dev_open(), n = s->per_client;
	unsigned char *seen = calloc(n, 1);
	long long *ids = calloc(n, sizeof(*ids));

	if (fd < 0 || !seen || !ids) {
		s->errors++;
		return NULL;
	}
	for (int i = 0; i < n; i++) {
		ids[i] = submit3(fd, i % 3, i % 2, 1);
		if (ids[i] <= 0)
			s->errors++;
	}
	for (int i = 0; i < n; i++) {
		struct llmos_wait w;

		if (wait_req(fd, 0, 0, 60000, &w) || w.out_state != LLMOS_REQ_COMPLETED) {
			s->errors++;
			break;
		}
		/* A client's ids increase: find this one by bisection. */
		{
			int lo = 0, hi = n - 1;

			while (lo < hi) {
				int mid = (lo + hi) / 2;

				if (ids[mid] < (long long)w.out_id)
					lo = mid + 1;
				else
					hi = mid;
			}
			if (ids[lo] != (long long)w.out_id || seen[lo]++)
				s->errors++;
		}
	}
	for (int i = 0; i < n; i++)
		if (seen[i] != 1)
			s->errors++;
	free(seen);
	free(ids);
	close(fd);
	return NULL;
}

TEST_F_TIMEOUT(sched, stress_every_request_completes_exactly_once, 900)
{
	struct stress s = { .per_client = (int)(10000 * test_scale()) };
	pthread_t w[WORKERS], c[CLIENTS];

	if (s.per_client < 10)
		s.per_client = 10;
	for (int i = 0; i < WORKERS; i++)
		ASSERT_EQ(0, pthread_create(&w[i], NULL, stress_worker, &s));
	for (int i = 0; i < CLIENTS; i++)
		ASSERT_EQ(0, pthread_create(&c[i], NULL, stress_client, &s));
	for (int i = 0; i < CLIENTS; i++)
		pthread_join(c[i], NULL);
	s.stop = 1;
	for (int i = 0; i < WORKERS; i++)
		pthread_join(w[i], NULL);
	EXPECT_EQ(0, s.errors);
	EXPECT_EQ((long)CLIENTS * s.per_client, s.completions);
	TH_LOG("%d clients x %d requests, %d workers", CLIENTS, s.per_client, WORKERS);
}

struct finisher {
	int worker;
	atomic_int stop;
	atomic_long done;
};

/* Takes and completes requests until told to stop. */
static void *finish_requests(void *arg)
{
	struct finisher *f = arg;
	struct llmos_req_desc d[64];

	while (!atomic_load(&f->stop)) {
		int n = dispatch(f->worker, d, 64, 0, 20);

		for (int i = 0; i < n; i++)
			f->done += !complete(f->worker, d[i].id, 0, 1);
	}
	return NULL;
}

/*
 * A file closing with thousands of requests lets go of them in batches,
 * the scheduler's lock dropped between them, while a worker finishes
 * some of them: each goes once, finished or cancelled, and nothing of the
 * file is left (the guest's slub debugging watches the lists).
 */
TEST_F(sched, a_file_closing_with_many_requests_lets_them_go_in_batches)
{
	struct finisher f = { .worker = self->worker };
	struct llmos_sched_stats st;
	int c = dev_open();
	pthread_t t;

	ASSERT_LE(0, c);
	ASSERT_EQ(0, reg(self->worker, 64));
	for (int i = 0; i < 3000; i++)
		ASSERT_LT(0, submit(c, 1));
	ASSERT_EQ(0, pthread_create(&t, NULL, finish_requests, &f));
	/* Close while it works: once it finished some (5 s at most). */
	for (int i = 0; i < 500 && !atomic_load(&f.done); i++)
		usleep(10000);
	close(c);
	usleep(20000);
	atomic_store(&f.stop, 1);
	pthread_join(t, NULL);
	EXPECT_LT(0, f.done);
	ASSERT_EQ(0, stats(self->client, &st, NULL, 0));
	EXPECT_EQ(0, st.out_nr[LLMOS_REQ_QUEUED]);
	EXPECT_EQ(0, st.out_nr[LLMOS_REQ_DISPATCHED]);
	EXPECT_EQ(0, st.out_nr[LLMOS_REQ_RUNNING]);
}

#define MAX_USER_REQUESTS "/sys/module/llmos/parameters/max_user_requests"

/* The per-user request limit, lowered for the test and put back after it. */
FIXTURE(user_limit) {
	int a, b;
	long saved;
};

FIXTURE_SETUP(user_limit)
{
	self->saved = -1;
	self->a = dev_open();
	self->b = dev_open();
	ASSERT_LE(0, self->a);
	ASSERT_LE(0, self->b);
	if (getuid() != 0)
		SKIP(return, "needs root to change the module's max_user_requests");
	self->saved = read_long(MAX_USER_REQUESTS);
	ASSERT_LE(0, self->saved);
	test_ms = 0; /* requests without a mindspace: only the counts matter */
}

FIXTURE_TEARDOWN(user_limit)
{
	if (self->a >= 0)
		close(self->a);
	close(self->b);
	if (self->saved >= 0)
		ASSERT_EQ(0, write_long(MAX_USER_REQUESTS, self->saved));
}

/*
 * One user's files together hold at most max_user_requests unfinished
 * and uncollected requests (EAGAIN past it, as at a file's own limit):
 * opening more files is no way round it. Collecting one makes room, and
 * so does closing a file.
 */
TEST_F(user_limit, a_user_s_files_share_one_request_limit)
{
	long long r0, r1;

	ASSERT_EQ(0, write_long(MAX_USER_REQUESTS, 3));
	r0 = submit(self->a, 1);
	r1 = submit(self->a, 1);
	ASSERT_LT(0, r0);
	ASSERT_LT(0, r1);
	ASSERT_LT(0, submit(self->b, 1));
	EXPECT_EQ(-EAGAIN, submit(self->b, 1));
	EXPECT_EQ(-EAGAIN, submit(self->a, 1));
	/* Cancelled but not collected: still counted. */
	ASSERT_EQ(0, cancel(self->a, r0));
	EXPECT_EQ(-EAGAIN, submit(self->b, 1));
	ASSERT_EQ(0, wait_req(self->a, r0, 0, 0, NULL));
	EXPECT_LT(0, submit(self->b, 1));
	EXPECT_EQ(-EAGAIN, submit(self->b, 1));
	/* A closed file's requests go with it. */
	close(self->a);
	self->a = -1;
	EXPECT_LT(0, submit(self->b, 1));
	/* 0: no limit. */
	ASSERT_EQ(0, write_long(MAX_USER_REQUESTS, 0));
	for (int i = 0; i < 8; i++)
		EXPECT_LT(0, submit(self->b, 1));
}

#define MAX_TENANTS "/sys/module/llmos/parameters/max_tenants"

/* Whether the scheduler keeps tenant @id. */
static bool has_tenant(int fd, __u32 id)
{
	struct llmos_tenant_stats *ts;
	struct llmos_sched_stats st;
	bool found = false;
	__u32 n;

	if (stats(fd, &st, NULL, 0))
		return false;
	n = st.tenant_count + 16;
	ts = calloc(n, sizeof(*ts));
	if (ts && !stats(fd, &st, ts, n))
		for (__u32 i = 0; i < st.tenant_count && i < n; i++)
			found |= ts[i].tenant == id;
	free(ts);
	return found;
}

/* The tenant limit, lowered for the test and put back after it. */
FIXTURE(tenant_limit) {
	int client;
	int ms;
	long saved;
};

FIXTURE_SETUP(tenant_limit)
{
	self->saved = -1;
	self->client = dev_open();
	ASSERT_LE(0, self->client);
	self->ms = ms_make(self->client, 1 << 20, 0600, &test_ms);
	ASSERT_LE(0, self->ms);
	if (getuid() != 0)
		SKIP(return, "needs root to change the module's max_tenants");
	self->saved = read_long(MAX_TENANTS);
	ASSERT_LE(0, self->saved);
}

FIXTURE_TEARDOWN(tenant_limit)
{
	close(self->client);
	close(self->ms);
	if (self->saved >= 0)
		ASSERT_EQ(0, write_long(MAX_TENANTS, self->saved));
}

TEST_F(tenant_limit, a_new_tenant_takes_an_idle_ones_place_or_is_refused)
{
	/* Ids no other test uses, far above theirs. */
	const __u32 base = 0xfff00000;
	struct llmos_tenant_stats ts, *all;
	struct llmos_sched_stats st;
	struct llmos_set_weight sw = {
		.size = sizeof(sw), .tenant = base, .weight = 300,
	};
	long long a, id = 0;
	__u32 next = base + 2, limit;
	int i;

	/* Room for two more tenants than there are. */
	ASSERT_EQ(0, stats(self->client, &st, &ts, 0));
	limit = st.tenant_count + 2;
	ASSERT_EQ(0, write_long(MAX_TENANTS, limit));
	/* A weight keeps its tenant; a live request keeps its tenant. */
	ASSERT_EQ(0, ioctl(self->client, LLMOS_IOC_SET_WEIGHT, &sw));
	a = submit(self->client, base + 1);
	ASSERT_LT(0, a);
	/*
	 * New tenants with a request each: the idle tenants of earlier tests
	 * give their places, then there is no room.
	 */
	for (i = 0; i <= (int)limit; i++) {
		id = submit(self->client, next);
		if (id < 0)
			break;
		next++;
	}
	EXPECT_EQ(-ENOSPC, id);
	/* Every tenant listed, whatever room the caller says it has. */
	all = calloc(limit + 1, sizeof(*all));
	ASSERT_NE(NULL, all);
	EXPECT_EQ(0, stats(self->client, &st, all, UINT32_MAX));
	free(all);
	EXPECT_EQ(limit, st.tenant_count);
	EXPECT_EQ(-ENOSPC, submit(self->client, next));
	sw.tenant = next;
	EXPECT_EQ(-1, ioctl(self->client, LLMOS_IOC_SET_WEIGHT, &sw));
	EXPECT_EQ(ENOSPC, errno);
	EXPECT_TRUE(has_tenant(self->client, base));
	EXPECT_TRUE(has_tenant(self->client, base + 1));
	/* The first request finishes: its tenant makes room for a new one. */
	ASSERT_EQ(0, cancel(self->client, a));
	EXPECT_LT(0, submit(self->client, next));
	EXPECT_FALSE(has_tenant(self->client, base + 1));
	EXPECT_TRUE(has_tenant(self->client, base));
	EXPECT_TRUE(has_tenant(self->client, next));
	/* The finished request is still there to collect. */
	EXPECT_EQ(0, wait_req(self->client, a, 0, 0, NULL));
	/* Back to the default weight, the weighted tenant may go too. */
	sw.tenant = base;
	sw.weight = 100;
	ASSERT_EQ(0, ioctl(self->client, LLMOS_IOC_SET_WEIGHT, &sw));
	EXPECT_LT(0, submit(self->client, next + 1));
	EXPECT_FALSE(has_tenant(self->client, base));
	/* What is queued goes when the client closes (teardown). */
}

TEST_HARNESS_MAIN
