// SPDX-License-Identifier: MIT
/*
 * The scheduler through io_uring (IORING_OP_URING_CMD): batched submits and
 * completions, DISPATCH and WAIT parked until something happens, their
 * cancellation when the ring goes, bad input, and a threaded stress run
 * where every request completes exactly once.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/llmos.h>

#include "kselftest_harness.h"
#include "child.h"

static int dev_open(void)
{
	return open("/dev/llmos", O_RDWR | O_CLOEXEC);
}

static void prep_cmd(struct io_uring_sqe *sqe, int fd, __u32 op, void *arg,
		     __u64 user_data)
{
	struct llmos_uring_sqe *c;

	memset(sqe, 0, sizeof(*sqe));
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = fd;
	sqe->cmd_op = op;
	c = (struct llmos_uring_sqe *)sqe->cmd;
	c->arg_uptr = (__u64)(uintptr_t)arg;
	sqe->user_data = user_data;
}

static int queue_cmd(struct io_uring *ring, int fd, __u32 op, void *arg,
		     __u64 user_data)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);

	if (!sqe)
		return -EBUSY;
	prep_cmd(sqe, fd, op, arg, user_data);
	return 0;
}

/* The next CQE within @ms, or -ETIME; its res in *res, user_data returned. */
static long long next_cqe(struct io_uring *ring, int ms, int *res)
{
	struct __kernel_timespec ts = {
		.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000LL,
	};
	struct io_uring_cqe *cqe;
	long long ud;
	int ret;

	ret = io_uring_wait_cqe_timeout(ring, &cqe, &ts);
	if (ret)
		return ret;
	*res = cqe->res;
	ud = (long long)cqe->user_data;
	io_uring_cqe_seen(ring, cqe);
	return ud;
}

static int reg(int fd, __u32 capacity)
{
	struct llmos_worker_register r = {
		.size = sizeof(r), .capacity = capacity, .numa_node = -1,
	};

	return ioctl(fd, LLMOS_IOC_WORKER_REGISTER, &r) ? -errno : 0;
}

static long long submit_ioctl(int fd, __u32 tenant)
{
	struct llmos_submit s = { .size = sizeof(s), .tenant = tenant };

	return ioctl(fd, LLMOS_IOC_SUBMIT, &s) ? -errno : (long long)s.out_id;
}

FIXTURE(ring) {
	int client, worker;
	struct io_uring cring, wring;
	bool wring_live;
};

FIXTURE_SETUP(ring)
{
	self->client = dev_open();
	self->worker = dev_open();
	ASSERT_LE(0, self->client);
	ASSERT_LE(0, self->worker);
	ASSERT_EQ(0, io_uring_queue_init(64, &self->cring, 0));
	ASSERT_EQ(0, io_uring_queue_init(64, &self->wring, 0));
	self->wring_live = true;
}

FIXTURE_TEARDOWN(ring)
{
	io_uring_queue_exit(&self->cring);
	if (self->wring_live)
		io_uring_queue_exit(&self->wring);
	close(self->client);
	close(self->worker);
}

TEST_F(ring, batched_submit_dispatch_complete_wait)
{
	struct llmos_submit s[8];
	struct llmos_dispatch d = { .size = sizeof(d) };
	struct llmos_req_desc descs[16];
	struct llmos_complete c[8];
	struct llmos_wait w[8];
	int res, seen = 0;

	for (int i = 0; i < 8; i++) {
		memset(&s[i], 0, sizeof(s[i]));
		s[i].size = sizeof(s[i]);
		s[i].tenant = 4;
		s[i].cost = i + 1;
		ASSERT_EQ(0, queue_cmd(&self->cring, self->client,
				       LLMOS_IOC_SUBMIT, &s[i], i));
	}
	ASSERT_EQ(8, io_uring_submit(&self->cring)); /* one system call */
	for (int i = 0; i < 8; i++) {
		long long ud = next_cqe(&self->cring, 5000, &res);

		ASSERT_LE(0, ud);
		ASSERT_EQ(0, res);
		ASSERT_LT(0, s[ud].out_id);
	}

	ASSERT_EQ(0, reg(self->worker, 16));
	d.descs_uptr = (__u64)(uintptr_t)descs;
	d.desc_size = sizeof(descs[0]);
	d.max = 16;
	ASSERT_EQ(0, queue_cmd(&self->wring, self->worker, LLMOS_IOC_DISPATCH, &d, 100));
	ASSERT_EQ(1, io_uring_submit(&self->wring));
	ASSERT_EQ(100, next_cqe(&self->wring, 5000, &res));
	ASSERT_EQ(8, res);
	EXPECT_EQ(8, d.out_count);
	for (int i = 0; i < 8; i++) {
		EXPECT_EQ(s[i].out_id, descs[i].id);
		memset(&c[i], 0, sizeof(c[i]));
		c[i].size = sizeof(c[i]);
		c[i].id = descs[i].id;
		c[i].tokens = 10 + i;
		ASSERT_EQ(0, queue_cmd(&self->wring, self->worker,
				       LLMOS_IOC_COMPLETE, &c[i], 200 + i));
	}
	ASSERT_EQ(8, io_uring_submit(&self->wring));
	for (int i = 0; i < 8; i++) {
		ASSERT_LE(200, next_cqe(&self->wring, 5000, &res));
		ASSERT_EQ(0, res);
	}
	/* One WAIT at a time may be pending: collect them one by one. */
	for (int i = 0; i < 8; i++) {
		memset(&w[i], 0, sizeof(w[i]));
		w[i].size = sizeof(w[i]);
		ASSERT_EQ(0, queue_cmd(&self->cring, self->client, LLMOS_IOC_WAIT,
				       &w[i], 300 + i));
		ASSERT_EQ(1, io_uring_submit(&self->cring));
		ASSERT_EQ(300 + i, next_cqe(&self->cring, 5000, &res));
		ASSERT_EQ(0, res);
		EXPECT_EQ(LLMOS_REQ_COMPLETED, w[i].out_state);
		for (int k = 0; k < 8; k++)
			seen += w[i].out_id == s[k].out_id && w[i].out_tokens == 10 + k;
	}
	EXPECT_EQ(8, seen);
}

TEST_F(ring, dispatch_waits_in_the_ring_until_work_comes)
{
	struct llmos_dispatch d = { .size = sizeof(d) };
	struct llmos_req_desc desc;
	long long id;
	int res;

	ASSERT_EQ(0, reg(self->worker, 4));
	d.descs_uptr = (__u64)(uintptr_t)&desc;
	d.desc_size = sizeof(desc);
	d.max = 1;
	ASSERT_EQ(0, queue_cmd(&self->wring, self->worker, LLMOS_IOC_DISPATCH, &d, 1));
	ASSERT_EQ(1, io_uring_submit(&self->wring));
	EXPECT_EQ(-ETIME, next_cqe(&self->wring, 100, &res)); /* parked */
	id = submit_ioctl(self->client, 1);
	ASSERT_LT(0, id);
	ASSERT_EQ(1, next_cqe(&self->wring, 5000, &res));
	ASSERT_EQ(1, res);
	EXPECT_EQ(id, desc.id);
}

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/*
 * timeout_ms holds through a ring as through the ioctl: a parked DISPATCH
 * or WAIT ends with -ETIMEDOUT, and what it waited for is still there.
 */
TEST_F(ring, parked_commands_end_after_their_timeout_and_lose_nothing)
{
	struct llmos_cancel cp = { .size = sizeof(cp), .flags = LLMOS_CANCEL_PENDING };
	struct llmos_dispatch d = { .size = sizeof(d), .timeout_ms = 300 };
	struct llmos_wait w = { .size = sizeof(w), .timeout_ms = 300 };
	struct llmos_req_desc desc;
	long long t0, id, id2;
	int res;

	ASSERT_EQ(0, reg(self->worker, 4));
	d.descs_uptr = (__u64)(uintptr_t)&desc;
	d.desc_size = sizeof(desc);
	d.max = 1;
	t0 = now_ms();
	ASSERT_EQ(0, queue_cmd(&self->wring, self->worker, LLMOS_IOC_DISPATCH, &d, 1));
	ASSERT_EQ(1, io_uring_submit(&self->wring));
	ASSERT_EQ(1, next_cqe(&self->wring, 20000, &res));
	EXPECT_EQ(-ETIMEDOUT, res);
	EXPECT_LE(300, now_ms() - t0);

	/* A request nobody takes: its WAIT times out, the request stays. */
	id = submit_ioctl(self->client, 1);
	ASSERT_LT(0, id);
	w.id = id;
	t0 = now_ms();
	ASSERT_EQ(0, queue_cmd(&self->cring, self->client, LLMOS_IOC_WAIT, &w, 2));
	ASSERT_EQ(1, io_uring_submit(&self->cring));
	ASSERT_EQ(2, next_cqe(&self->cring, 20000, &res));
	EXPECT_EQ(-ETIMEDOUT, res);
	EXPECT_LE(300, now_ms() - t0);
	d.timeout_ms = 0;
	ASSERT_EQ(0, queue_cmd(&self->wring, self->worker, LLMOS_IOC_DISPATCH, &d, 3));
	ASSERT_EQ(1, io_uring_submit(&self->wring));
	ASSERT_EQ(3, next_cqe(&self->wring, 5000, &res));
	ASSERT_EQ(1, res);
	EXPECT_EQ(id, desc.id);

	/*
	 * A command that got its answer in time leaves no timeout behind for
	 * the next one, which waits with none.
	 */
	d.timeout_ms = 2000; /* room for a slow guest before the submit */
	ASSERT_EQ(0, queue_cmd(&self->wring, self->worker, LLMOS_IOC_DISPATCH, &d, 4));
	ASSERT_EQ(1, io_uring_submit(&self->wring));
	EXPECT_EQ(-ETIME, next_cqe(&self->wring, 50, &res)); /* parked */
	id2 = submit_ioctl(self->client, 1);
	ASSERT_LT(0, id2);
	ASSERT_EQ(4, next_cqe(&self->wring, 5000, &res));
	ASSERT_EQ(1, res);
	EXPECT_EQ(id2, desc.id);
	d.timeout_ms = 0;
	ASSERT_EQ(0, queue_cmd(&self->wring, self->worker, LLMOS_IOC_DISPATCH, &d, 5));
	ASSERT_EQ(1, io_uring_submit(&self->wring));
	EXPECT_EQ(-ETIME, next_cqe(&self->wring, 2500, &res)); /* past 2000 */
	ASSERT_EQ(0, ioctl(self->worker, LLMOS_IOC_CANCEL, &cp));
	ASSERT_EQ(5, next_cqe(&self->wring, 5000, &res));
	EXPECT_EQ(-ECANCELED, res);
}

struct churn {
	int fd;
	atomic_bool stop;
	int rounds;
};

/* SUBMIT and CANCEL on a client of its own, until told to stop. */
static void *churn_requests(void *arg)
{
	struct churn *ch = arg;

	while (!atomic_load(&ch->stop)) {
		long long id = submit_ioctl(ch->fd, 2);
		struct llmos_cancel c = { .size = sizeof(c), .id = id };

		if (id <= 0 || ioctl(ch->fd, LLMOS_IOC_CANCEL, &c))
			break;
		ch->rounds++;
	}
	return NULL;
}

TEST_F(ring, a_full_worker_s_dispatch_waits_for_room_and_work)
{
	struct llmos_dispatch d = { .size = sizeof(d) };
	struct churn ch = { .fd = dev_open() };
	struct llmos_complete c = { .size = sizeof(c) };
	struct llmos_req_desc desc;
	long long held, next;
	pthread_t t;
	int res;

	ASSERT_LE(0, ch.fd);
	ASSERT_EQ(0, reg(self->worker, 1));
	d.descs_uptr = (__u64)(uintptr_t)&desc;
	d.desc_size = sizeof(desc);
	d.max = 1;
	held = submit_ioctl(self->client, 1);
	ASSERT_LT(0, held);
	ASSERT_EQ(0, queue_cmd(&self->wring, self->worker, LLMOS_IOC_DISPATCH, &d, 1));
	ASSERT_EQ(1, io_uring_submit(&self->wring));
	ASSERT_EQ(1, next_cqe(&self->wring, 5000, &res));
	ASSERT_EQ(1, res);
	ASSERT_EQ(held, desc.id);

	/* Full: its next DISPATCH parks, whatever others submit and cancel. */
	ASSERT_EQ(0, pthread_create(&t, NULL, churn_requests, &ch));
	usleep(20000);
	ASSERT_EQ(0, queue_cmd(&self->wring, self->worker, LLMOS_IOC_DISPATCH, &d, 2));
	ASSERT_EQ(1, io_uring_submit(&self->wring));
	EXPECT_EQ(-ETIME, next_cqe(&self->wring, 200, &res));
	atomic_store(&ch.stop, true);
	pthread_join(t, NULL);
	EXPECT_LT(0, ch.rounds);
	close(ch.fd);
	/* Room, but nothing queued: still parked. */
	c.id = held;
	ASSERT_EQ(0, ioctl(self->worker, LLMOS_IOC_COMPLETE, &c));
	EXPECT_EQ(-ETIME, next_cqe(&self->wring, 100, &res));
	/* Room and work: it completes with the request. */
	next = submit_ioctl(self->client, 1);
	ASSERT_LT(0, next);
	ASSERT_EQ(2, next_cqe(&self->wring, 5000, &res));
	ASSERT_EQ(1, res);
	EXPECT_EQ(next, desc.id);
}

/*
 * As uid 1000, through a ring of its own: SUBMIT and SUBMIT_BATCH name its
 * own tenant, and another gets EPERM, as with the ioctl.
 */
static int ring_submits_as_another_user(int client, __u64 unused)
{
	struct llmos_submit s[2] = {
		{ .size = sizeof(s[0]), .tenant = 1000 },
		{ .size = sizeof(s[0]), .tenant = 0 },
	};
	struct llmos_submit_entry e[2] = { { .tenant = 7 }, { .tenant = 1000 } };
	struct llmos_submit_batch b = {
		.size = sizeof(b), .entries_uptr = (__u64)(uintptr_t)e,
		.entry_size = sizeof(e[0]), .count = 2,
	};
	struct io_uring ring;
	int res[3] = { 1, 1, 1 }, r;

	if (setgid(1000) || setuid(1000))
		return 10;
	if (io_uring_queue_init(8, &ring, 0))
		return 11;
	if (queue_cmd(&ring, client, LLMOS_IOC_SUBMIT, &s[0], 0) ||
	    queue_cmd(&ring, client, LLMOS_IOC_SUBMIT, &s[1], 1) ||
	    queue_cmd(&ring, client, LLMOS_IOC_SUBMIT_BATCH, &b, 2) ||
	    io_uring_submit(&ring) != 3)
		return 12;
	for (int i = 0; i < 3; i++) {
		long long ud = next_cqe(&ring, 5000, &r);

		if (ud < 0 || ud > 2)
			return 13;
		res[ud] = r;
	}
	io_uring_queue_exit(&ring);
	if (res[0] || s[0].out_id == 0 || res[1] != -EPERM)
		return 14;
	if (res[2] || b.out_done != 1 || e[0].out_error != -EPERM ||
	    e[1].out_error || !e[1].out_id)
		return 15;
	return 0;
}

TEST_F(ring, a_user_submits_through_a_ring_as_its_own_tenant_only)
{
	if (getuid() != 0)
		SKIP(return, "needs root to switch users");
	EXPECT_EQ(0, in_child(ring_submits_as_another_user, self->client, 0));
}

TEST_F(ring, one_parked_dispatch_per_worker)
{
	struct llmos_dispatch d = { .size = sizeof(d) }, d2;
	struct llmos_req_desc desc[2];
	int res;

	ASSERT_EQ(0, reg(self->worker, 4));
	d.descs_uptr = (__u64)(uintptr_t)&desc[0];
	d.desc_size = sizeof(desc[0]);
	d.max = 1;
	d2 = d;
	d2.descs_uptr = (__u64)(uintptr_t)&desc[1];
	ASSERT_EQ(0, queue_cmd(&self->wring, self->worker, LLMOS_IOC_DISPATCH, &d, 1));
	ASSERT_EQ(0, queue_cmd(&self->wring, self->worker, LLMOS_IOC_DISPATCH, &d2, 2));
	ASSERT_EQ(2, io_uring_submit(&self->wring));
	ASSERT_EQ(2, next_cqe(&self->wring, 5000, &res));
	EXPECT_EQ(-EBUSY, res);
	/* LLMOS_NONBLOCK through the ring: 0 at once. */
	d2.flags = LLMOS_NONBLOCK;
	ASSERT_EQ(0, queue_cmd(&self->wring, self->worker, LLMOS_IOC_DISPATCH, &d2, 3));
	ASSERT_EQ(1, io_uring_submit(&self->wring));
	ASSERT_EQ(3, next_cqe(&self->wring, 5000, &res));
	EXPECT_EQ(0, res);
}

TEST_F(ring, closing_the_ring_cancels_what_is_parked)
{
	struct llmos_dispatch d = { .size = sizeof(d) };
	struct llmos_wait w = { .size = sizeof(w) };
	struct llmos_req_desc desc;
	struct llmos_dispatch nd = { .size = sizeof(nd) };

	ASSERT_EQ(0, reg(self->worker, 4));
	ASSERT_LT(0, submit_ioctl(self->worker, 9)); /* something to WAIT for */
	d.descs_uptr = (__u64)(uintptr_t)&desc;
	d.desc_size = sizeof(desc);
	d.max = 1;
	/* Parked: the request above went nowhere yet? It is queued: take it. */
	nd = d;
	nd.flags = LLMOS_NONBLOCK;
	ASSERT_EQ(0, ioctl(self->worker, LLMOS_IOC_DISPATCH, &nd));
	ASSERT_EQ(1, nd.out_count);
	ASSERT_EQ(0, queue_cmd(&self->wring, self->worker, LLMOS_IOC_DISPATCH, &d, 1));
	ASSERT_EQ(0, queue_cmd(&self->wring, self->worker, LLMOS_IOC_WAIT, &w, 2));
	ASSERT_EQ(2, io_uring_submit(&self->wring));
	usleep(50 * 1000);
	io_uring_queue_exit(&self->wring); /* must not hang */
	self->wring_live = false;
	/* Nothing is left parked: a new request is not eaten by a ghost. */
	ASSERT_LT(0, submit_ioctl(self->client, 1));
	ASSERT_EQ(0, ioctl(self->worker, LLMOS_IOC_DISPATCH, &nd));
	EXPECT_EQ(1, nd.out_count);
}

/*
 * A kick spent on a parked DISPATCH that takes nothing because its ring
 * went away first (its task work runs as the ring dies) is passed on: the
 * other parked worker gets the request. Worker A's ring defers its task
 * work until A waits on it, which A never does: it closes it instead.
 */
TEST_F(ring, a_kicked_dispatch_whose_ring_goes_passes_the_kick_on)
{
	struct llmos_dispatch da = { .size = sizeof(da) }, db;
	struct llmos_req_desc desc[2];
	struct io_uring aring;
	long long id;
	int a, res;

	a = dev_open();
	ASSERT_LE(0, a);
	ASSERT_EQ(0, reg(a, 1));
	ASSERT_EQ(0, reg(self->worker, 1));
	ASSERT_EQ(0, io_uring_queue_init(8, &aring, IORING_SETUP_SINGLE_ISSUER |
					 IORING_SETUP_DEFER_TASKRUN));
	da.descs_uptr = (__u64)(uintptr_t)&desc[0];
	da.desc_size = sizeof(desc[0]);
	da.max = 1;
	db = da;
	db.descs_uptr = (__u64)(uintptr_t)&desc[1];
	/* A parks first, so the one request's kick goes to A. */
	ASSERT_EQ(0, queue_cmd(&aring, a, LLMOS_IOC_DISPATCH, &da, 1));
	ASSERT_EQ(1, io_uring_submit(&aring));
	ASSERT_EQ(0, queue_cmd(&self->wring, self->worker, LLMOS_IOC_DISPATCH, &db, 2));
	ASSERT_EQ(1, io_uring_submit(&self->wring));
	EXPECT_EQ(-ETIME, next_cqe(&self->wring, 50, &res)); /* parked */
	id = submit_ioctl(self->client, 1);
	ASSERT_LT(0, id);
	io_uring_queue_exit(&aring);
	ASSERT_EQ(2, next_cqe(&self->wring, 5000, &res));
	ASSERT_EQ(1, res);
	EXPECT_EQ(id, desc[1].id);
	close(a);
}

TEST_F(ring, async_cancel_of_a_parked_dispatch)
{
	struct llmos_dispatch d = { .size = sizeof(d) };
	struct llmos_req_desc desc;
	struct io_uring_sqe *sqe;
	int res, got = 0, dispatch_res = 1, cancel_res = 1;

	ASSERT_EQ(0, reg(self->worker, 4));
	d.descs_uptr = (__u64)(uintptr_t)&desc;
	d.desc_size = sizeof(desc);
	d.max = 1;
	ASSERT_EQ(0, queue_cmd(&self->wring, self->worker, LLMOS_IOC_DISPATCH, &d, 1));
	ASSERT_EQ(1, io_uring_submit(&self->wring));
	sqe = io_uring_get_sqe(&self->wring);
	ASSERT_NE(NULL, sqe);
	io_uring_prep_cancel64(sqe, 1, 0);
	sqe->user_data = 2;
	ASSERT_EQ(1, io_uring_submit(&self->wring));
	for (int i = 0; i < 2; i++) {
		long long ud = next_cqe(&self->wring, 2000, &res);

		if (ud == 1) {
			dispatch_res = res;
			got++;
		} else if (ud == 2) {
			cancel_res = res;
			got++;
		}
	}
	/*
	 * IORING_OP_ASYNC_CANCEL does not reach driver commands in this
	 * kernel (only ring exit does): the cancel finds nothing, and the
	 * DISPATCH stays parked until work comes.
	 */
	TH_LOG("ASYNC_CANCEL of a parked uring_cmd: %d", cancel_res);
	if (cancel_res == 0) {
		EXPECT_EQ(2, got);
		EXPECT_EQ(-ECANCELED, dispatch_res);
	} else {
		EXPECT_EQ(-ENOENT, cancel_res);
		ASSERT_LT(0, submit_ioctl(self->client, 1));
		ASSERT_EQ(1, next_cqe(&self->wring, 5000, &res));
		EXPECT_EQ(1, res);
	}
}

TEST_F(ring, cancel_pending_completes_parked_commands)
{
	struct llmos_dispatch d = { .size = sizeof(d) };
	struct llmos_wait w = { .size = sizeof(w) };
	struct llmos_cancel c = { .size = sizeof(c), .flags = LLMOS_CANCEL_PENDING };
	struct llmos_req_desc desc;
	int res, seen = 0;

	ASSERT_EQ(0, reg(self->worker, 4));
	ASSERT_LT(0, submit_ioctl(self->worker, 9)); /* its own, to WAIT for */
	d.descs_uptr = (__u64)(uintptr_t)&desc;
	d.desc_size = sizeof(desc);
	d.max = 1;
	d.flags = LLMOS_NONBLOCK;
	ASSERT_EQ(0, ioctl(self->worker, LLMOS_IOC_DISPATCH, &d)); /* take it */
	d.flags = 0;
	ASSERT_EQ(0, queue_cmd(&self->wring, self->worker, LLMOS_IOC_DISPATCH, &d, 1));
	ASSERT_EQ(0, queue_cmd(&self->wring, self->worker, LLMOS_IOC_WAIT, &w, 2));
	ASSERT_EQ(2, io_uring_submit(&self->wring));
	EXPECT_EQ(-ETIME, next_cqe(&self->wring, 100, &res));
	c.id = 5;
	EXPECT_EQ(-1, ioctl(self->worker, LLMOS_IOC_CANCEL, &c));
	EXPECT_EQ(EINVAL, errno);
	c.id = 0;
	ASSERT_EQ(0, ioctl(self->worker, LLMOS_IOC_CANCEL, &c));
	for (int i = 0; i < 2; i++) {
		long long ud = next_cqe(&self->wring, 5000, &res);

		EXPECT_TRUE(ud == 1 || ud == 2);
		EXPECT_EQ(-ECANCELED, res);
		seen++;
	}
	EXPECT_EQ(2, seen);
	/* Nothing is parked any more: a new DISPATCH parks again. */
	ASSERT_EQ(0, queue_cmd(&self->wring, self->worker, LLMOS_IOC_DISPATCH, &d, 3));
	ASSERT_EQ(1, io_uring_submit(&self->wring));
	EXPECT_EQ(-ETIME, next_cqe(&self->wring, 100, &res));
	ASSERT_LT(0, submit_ioctl(self->client, 1));
	ASSERT_EQ(3, next_cqe(&self->wring, 5000, &res));
	EXPECT_EQ(1, res);
}

TEST_F(ring, parked_wait_completes_when_a_request_finishes)
{
	struct llmos_wait w = { .size = sizeof(w) };
	struct llmos_complete c = { .size = sizeof(c) };
	struct llmos_dispatch nd = { .size = sizeof(nd) };
	struct llmos_req_desc desc;
	long long id;
	int res;

	ASSERT_EQ(0, reg(self->worker, 4));
	id = submit_ioctl(self->client, 2);
	ASSERT_LT(0, id);
	ASSERT_EQ(0, queue_cmd(&self->cring, self->client, LLMOS_IOC_WAIT, &w, 7));
	ASSERT_EQ(1, io_uring_submit(&self->cring));
	EXPECT_EQ(-ETIME, next_cqe(&self->cring, 100, &res));
	nd.descs_uptr = (__u64)(uintptr_t)&desc;
	nd.desc_size = sizeof(desc);
	nd.max = 1;
	ASSERT_EQ(0, ioctl(self->worker, LLMOS_IOC_DISPATCH, &nd));
	c.id = id;
	c.tokens = 5;
	ASSERT_EQ(0, ioctl(self->worker, LLMOS_IOC_COMPLETE, &c));
	ASSERT_EQ(7, next_cqe(&self->cring, 5000, &res));
	ASSERT_EQ(0, res);
	EXPECT_EQ(id, w.out_id);
	EXPECT_EQ(5, w.out_tokens);
	/* Nothing left: a WAIT now fails at once. */
	ASSERT_EQ(0, queue_cmd(&self->cring, self->client, LLMOS_IOC_WAIT, &w, 8));
	ASSERT_EQ(1, io_uring_submit(&self->cring));
	ASSERT_EQ(8, next_cqe(&self->cring, 5000, &res));
	EXPECT_EQ(-ENOENT, res);
}

/*
 * A parked WAIT whose struct turned out read-only when its request
 * finished: it fails with EFAULT and the request stays, to be collected.
 */
TEST_F(ring, a_wait_that_cannot_answer_leaves_the_request_there)
{
	struct llmos_wait ok = { .size = sizeof(ok), .flags = LLMOS_NONBLOCK };
	struct llmos_complete c = { .size = sizeof(c), .tokens = 6 };
	struct llmos_dispatch nd = { .size = sizeof(nd) };
	struct llmos_req_desc desc;
	struct llmos_wait *w;
	int res;

	ASSERT_EQ(0, reg(self->worker, 4));
	c.id = submit_ioctl(self->client, 2);
	ASSERT_LT(0, (long long)c.id);
	w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		 -1, 0);
	ASSERT_NE(MAP_FAILED, w);
	*w = (struct llmos_wait){ .size = sizeof(*w) };
	ASSERT_EQ(0, mprotect(w, 4096, PROT_READ));
	ASSERT_EQ(0, queue_cmd(&self->cring, self->client, LLMOS_IOC_WAIT, w, 9));
	ASSERT_EQ(1, io_uring_submit(&self->cring));
	EXPECT_EQ(-ETIME, next_cqe(&self->cring, 100, &res)); /* parked */
	nd.descs_uptr = (__u64)(uintptr_t)&desc;
	nd.desc_size = sizeof(desc);
	nd.max = 1;
	ASSERT_EQ(0, ioctl(self->worker, LLMOS_IOC_DISPATCH, &nd));
	ASSERT_EQ(0, ioctl(self->worker, LLMOS_IOC_COMPLETE, &c));
	ASSERT_EQ(9, next_cqe(&self->cring, 5000, &res));
	EXPECT_EQ(-EFAULT, res);
	ASSERT_EQ(0, ioctl(self->client, LLMOS_IOC_WAIT, &ok));
	EXPECT_EQ(c.id, ok.out_id);
	EXPECT_EQ(6, ok.out_tokens);
	munmap(w, 4096);
}

struct ro_submitter {
	int client;
	atomic_bool stop;
};

/* SUBMITs whose reply cannot be written: each is taken back at once. */
static void *ro_submits(void *arg)
{
	struct ro_submitter *r = arg;
	struct llmos_submit *s;

	s = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (s == MAP_FAILED)
		return NULL;
	*s = (struct llmos_submit){ .size = sizeof(*s), .cost = 1 };
	mprotect(s, 4096, PROT_READ);
	while (!atomic_load(&r->stop))
		ioctl(r->client, LLMOS_IOC_SUBMIT, s);
	munmap(s, 4096);
	return NULL;
}

/*
 * A ring WAIT for any that parks while a SUBMIT's request exists, which
 * the SUBMIT then takes back (its reply could not be written): it ends
 * with ENOENT (nothing to wait for), not never.
 */
TEST_F(ring, a_parked_wait_ends_when_a_submit_takes_its_request_back)
{
	struct ro_submitter r = { .client = self->client };
	struct llmos_wait w = { .size = sizeof(w) };
	const char *scale = getenv("LLMOS_TEST_SCALE");
	int rounds = (int)(2000 * (scale ? atof(scale) : 1.0)), res;
	pthread_t t;

	if (rounds < 200)
		rounds = 200; /* a race that does not run cannot fail */
	ASSERT_EQ(0, pthread_create(&t, NULL, ro_submits, &r));
	for (int i = 0; i < rounds; i++) {
		ASSERT_EQ(0, queue_cmd(&self->cring, self->client,
				       LLMOS_IOC_WAIT, &w, 500 + i));
		ASSERT_EQ(1, io_uring_submit(&self->cring));
		ASSERT_EQ(500 + i, next_cqe(&self->cring, 5000, &res)) {
			TH_LOG("round %d: a parked WAIT did not end", i);
		}
		/* Nothing to wait for, or (kicked as a new one came) nothing yet. */
		EXPECT_TRUE(res == -ENOENT || res == -EAGAIN) {
			TH_LOG("round %d: %d", i, res);
		}
	}
	atomic_store(&r.stop, true);
	pthread_join(t, NULL);
}

TEST_F(ring, parked_wait_batch_collects_what_finished)
{
	struct llmos_finished fin[4];
	struct llmos_wait_batch wb = {
		.size = sizeof(wb), .entries_uptr = (__u64)(uintptr_t)fin,
		.entry_size = sizeof(fin[0]), .max = 4,
	};
	struct llmos_complete c = { .size = sizeof(c) };
	struct llmos_dispatch nd = { .size = sizeof(nd) };
	struct llmos_req_desc desc;
	long long id;
	int res;

	ASSERT_EQ(0, reg(self->worker, 4));
	id = submit_ioctl(self->client, 2);
	ASSERT_LT(0, id);
	ASSERT_EQ(0, queue_cmd(&self->cring, self->client, LLMOS_IOC_WAIT_BATCH, &wb, 9));
	ASSERT_EQ(1, io_uring_submit(&self->cring));
	EXPECT_EQ(-ETIME, next_cqe(&self->cring, 100, &res));
	nd.descs_uptr = (__u64)(uintptr_t)&desc;
	nd.desc_size = sizeof(desc);
	nd.max = 1;
	ASSERT_EQ(0, ioctl(self->worker, LLMOS_IOC_DISPATCH, &nd));
	c.id = id;
	ASSERT_EQ(0, ioctl(self->worker, LLMOS_IOC_COMPLETE, &c));
	ASSERT_EQ(9, next_cqe(&self->cring, 5000, &res));
	ASSERT_EQ(1, res);
	EXPECT_EQ(1, wb.out_count);
	EXPECT_EQ(id, fin[0].id);
}

/* How many of this process's threads are io_uring's io-wq workers. */
static int iowq_threads(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d))) {
		char path[300], comm[32];
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
		f = fopen(path, "re");
		if (!f)
			continue;
		if (fgets(comm, sizeof(comm), f) && !strncmp(comm, "iou-wrk-", 8))
			n++;
		fclose(f);
	}
	closedir(d);
	return n;
}

/*
 * -EAGAIN (a WAIT with LLMOS_NONBLOCK and nothing finished) completes in
 * the ring at once: returned from ->uring_cmd() it would have io_uring
 * issue the command a second time from an io-wq thread.
 */
TEST_F(ring, nonblocking_commands_complete_where_they_were_issued)
{
	struct llmos_wait w = { .size = sizeof(w), .flags = LLMOS_NONBLOCK };
	int res;

	ASSERT_LT(0, submit_ioctl(self->client, 1)); /* outstanding, not done */
	for (int i = 0; i < 32; i++)
		ASSERT_EQ(0, queue_cmd(&self->cring, self->client, LLMOS_IOC_WAIT,
				       &w, 100 + i));
	ASSERT_EQ(32, io_uring_submit(&self->cring));
	for (int i = 0; i < 32; i++) {
		ASSERT_EQ(100 + i, next_cqe(&self->cring, 5000, &res));
		EXPECT_EQ(-EAGAIN, res);
	}
	EXPECT_EQ(0, iowq_threads());
}

/*
 * Commands issued from io-wq (IOSQE_ASYNC: no ring lock held) park and
 * are kicked from other tasks while the issuing one goes on: each one
 * completes once, with its request, and closing the ring afterwards finds
 * nothing stale on its cancel list.
 */
TEST_F(ring, commands_issued_from_io_wq_park_and_complete_once)
{
	struct llmos_dispatch d = { .size = sizeof(d) };
	struct llmos_complete c = { .size = sizeof(c) };
	struct llmos_req_desc desc;
	struct io_uring_sqe *sqe;
	int res, rounds = 200;

	ASSERT_EQ(0, reg(self->worker, 1));
	d.descs_uptr = (__u64)(uintptr_t)&desc;
	d.desc_size = sizeof(desc);
	d.max = 1;
	for (int i = 0; i < rounds; i++) {
		long long id;

		sqe = io_uring_get_sqe(&self->wring);
		ASSERT_NE(NULL, sqe);
		prep_cmd(sqe, self->worker, LLMOS_IOC_DISPATCH, &d, 1000 + i);
		sqe->flags |= IOSQE_ASYNC;
		ASSERT_EQ(1, io_uring_submit(&self->wring));
		/* Sometimes at once (the window the park is in), else later. */
		if (i % 3)
			usleep(i % 7 * 100);
		id = submit_ioctl(self->client, 1);
		ASSERT_LT(0, id);
		ASSERT_EQ(1000 + i, next_cqe(&self->wring, 5000, &res));
		ASSERT_EQ(1, res);
		ASSERT_EQ(id, desc.id);
		c.id = id;
		ASSERT_EQ(0, ioctl(self->worker, LLMOS_IOC_COMPLETE, &c));
	}
	/* And one left parked, cancelled by the ring's end. */
	sqe = io_uring_get_sqe(&self->wring);
	ASSERT_NE(NULL, sqe);
	prep_cmd(sqe, self->worker, LLMOS_IOC_DISPATCH, &d, 1);
	sqe->flags |= IOSQE_ASYNC;
	ASSERT_EQ(1, io_uring_submit(&self->wring));
	usleep(20 * 1000);
	io_uring_queue_exit(&self->wring);
	self->wring_live = false;
}

/* A ring DISPATCH that cannot write its count gives the request back. */
TEST_F(ring, a_dispatch_that_cannot_answer_gives_its_request_back)
{
	struct llmos_dispatch nd = { .size = sizeof(nd), .flags = LLMOS_NONBLOCK };
	struct llmos_req_desc desc, got;
	struct llmos_dispatch *ro;
	long long id;
	int res;

	ASSERT_EQ(0, reg(self->worker, 1));
	id = submit_ioctl(self->client, 4);
	ASSERT_LT(0, id);
	ro = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		  -1, 0);
	ASSERT_NE(MAP_FAILED, ro);
	*ro = (struct llmos_dispatch){
		.size = sizeof(*ro), .descs_uptr = (__u64)(uintptr_t)&desc,
		.desc_size = sizeof(desc), .max = 1,
	};
	ASSERT_EQ(0, mprotect(ro, 4096, PROT_READ));
	ASSERT_EQ(0, queue_cmd(&self->wring, self->worker, LLMOS_IOC_DISPATCH, ro, 1));
	ASSERT_EQ(1, io_uring_submit(&self->wring));
	ASSERT_EQ(1, next_cqe(&self->wring, 5000, &res));
	EXPECT_EQ(-EFAULT, res);
	nd.descs_uptr = (__u64)(uintptr_t)&got;
	nd.desc_size = sizeof(got);
	nd.max = 1;
	ASSERT_EQ(0, ioctl(self->worker, LLMOS_IOC_DISPATCH, &nd));
	ASSERT_EQ(1, nd.out_count);
	EXPECT_EQ(id, got.id);
	EXPECT_EQ(0, got.requeues); /* the worker never had it */
	munmap(ro, 4096);
}

TEST_F(ring, bad_commands_are_refused)
{
	struct llmos_version v = { .size = sizeof(v) };
	struct llmos_submit s = { .size = sizeof(s) };
	struct llmos_submit good = { .size = sizeof(good) };
	struct llmos_wait w = { .size = 8192, .flags = LLMOS_NONBLOCK };
	struct llmos_dispatch d = { .size = 8192, .flags = LLMOS_NONBLOCK };
	static char fixed[4096];
	struct iovec iov = { .iov_base = fixed, .iov_len = sizeof(fixed) };
	struct io_uring_sqe *sqe;
	int res;

	/* A registered buffer, for an SQE to name (no command takes one). */
	ASSERT_EQ(0, io_uring_register_buffers(&self->cring, &iov, 1));
	ASSERT_EQ(0, queue_cmd(&self->cring, self->client, LLMOS_IOC_VERSION, &v, 1));
	ASSERT_EQ(0, queue_cmd(&self->cring, self->client, LLMOS_IOC_SUBMIT, (void *)16, 2));
	sqe = io_uring_get_sqe(&self->cring);
	prep_cmd(sqe, self->client, LLMOS_IOC_SUBMIT, &s, 3);
	((struct llmos_uring_sqe *)sqe->cmd)->__reserved = 1;
	s.size = 4;
	ASSERT_EQ(0, queue_cmd(&self->cring, self->client, LLMOS_IOC_SUBMIT, &s, 4));
	/* Sizes past a page, whatever lies beyond the struct. */
	ASSERT_EQ(0, queue_cmd(&self->cring, self->client, LLMOS_IOC_WAIT, &w, 5));
	ASSERT_EQ(0, queue_cmd(&self->cring, self->worker, LLMOS_IOC_DISPATCH, &d, 6));
	/* SQE fields the commands do not use must be 0. */
	sqe = io_uring_get_sqe(&self->cring);
	ASSERT_NE(NULL, sqe);
	prep_cmd(sqe, self->client, LLMOS_IOC_SUBMIT, &good, 7);
	sqe->addr = 1;
	sqe = io_uring_get_sqe(&self->cring);
	ASSERT_NE(NULL, sqe);
	prep_cmd(sqe, self->client, LLMOS_IOC_SUBMIT, &good, 8);
	sqe->len = 1;
	sqe = io_uring_get_sqe(&self->cring);
	ASSERT_NE(NULL, sqe);
	prep_cmd(sqe, self->client, LLMOS_IOC_SUBMIT, &good, 9);
	sqe->uring_cmd_flags = IORING_URING_CMD_FIXED;
	sqe->buf_index = 0;
	ASSERT_EQ(9, io_uring_submit(&self->cring));
	for (int i = 0; i < 9; i++) {
		long long ud = next_cqe(&self->cring, 5000, &res);

		switch (ud) {
		case 1:
			EXPECT_EQ(-EOPNOTSUPP, res);
			break;
		case 2:
			EXPECT_EQ(-EFAULT, res);
			break;
		case 3:
		case 4:
		case 7:
		case 8:
		case 9:
			EXPECT_EQ(-EINVAL, res);
			break;
		case 5:
		case 6:
			EXPECT_EQ(-E2BIG, res);
			break;
		default:
			ASSERT_TRUE(false);
		}
	}
}

/* Stress: workers and clients all on rings; every request exactly once. */
struct ring_stress {
	int per_client;
	atomic_int stop;
	atomic_long done;
	atomic_int errors;
};

static void *ring_worker(void *arg)
{
	struct ring_stress *s = arg;
	struct llmos_dispatch d = { .size = sizeof(d) };
	struct llmos_req_desc descs[32];
	struct llmos_complete c[32];
	struct io_uring ring;
	int fd = dev_open(), res, n;

	if (fd < 0 || reg(fd, 32) || io_uring_queue_init(128, &ring, 0)) {
		s->errors++;
		return NULL;
	}
	d.descs_uptr = (__u64)(uintptr_t)descs;
	d.desc_size = sizeof(descs[0]);
	d.max = 32;
	while (!s->stop) {
		long long ud;

		queue_cmd(&ring, fd, LLMOS_IOC_DISPATCH, &d, 1);
		io_uring_submit(&ring);
		do {
			ud = next_cqe(&ring, 50, &res);
		} while (ud == -ETIME && !s->stop);
		if (ud == -ETIME)
			break; /* stopping with the DISPATCH parked: ring exit cancels it */
		if (ud != 1 || res < 0) {
			s->errors++;
			break;
		}
		n = res; /* 0: another worker was faster */
		for (int i = 0; i < n; i++) {
			memset(&c[i], 0, sizeof(c[i]));
			c[i].size = sizeof(c[i]);
			c[i].id = descs[i].id;
			queue_cmd(&ring, fd, LLMOS_IOC_COMPLETE, &c[i], 2);
		}
		if (n && io_uring_submit(&ring) != n)
			s->errors++;
		for (int i = 0; i < n; i++) {
			if (next_cqe(&ring, 5000, &res) != 2 || res) {
				s->errors++;
				break;
			}
			s->done++;
		}
	}
	io_uring_queue_exit(&ring);
	close(fd);
	return NULL;
}

static void *ring_client(void *arg)
{
	struct ring_stress *s = arg;
	struct llmos_submit sub[32];
	struct io_uring ring;
	int fd = dev_open(), left = s->per_client, res;

	if (fd < 0 || io_uring_queue_init(64, &ring, 0)) {
		s->errors++;
		return NULL;
	}
	while (left > 0) {
		int n = left < 32 ? left : 32;

		for (int i = 0; i < n; i++) {
			memset(&sub[i], 0, sizeof(sub[i]));
			sub[i].size = sizeof(sub[i]);
			sub[i].tenant = i % 4;
			queue_cmd(&ring, fd, LLMOS_IOC_SUBMIT, &sub[i], i);
		}
		if (io_uring_submit(&ring) != n)
			s->errors++;
		for (int i = 0; i < n; i++)
			if (next_cqe(&ring, 5000, &res) < 0 || res)
				s->errors++;
		/* Collect this batch before the next (bounded memory). */
		for (int i = 0; i < n; i++) {
			struct llmos_wait w = { .size = sizeof(w), .timeout_ms = 60000 };

			if (ioctl(fd, LLMOS_IOC_WAIT, &w) || w.out_state != LLMOS_REQ_COMPLETED)
				s->errors++;
		}
		left -= n;
	}
	io_uring_queue_exit(&ring);
	close(fd);
	return NULL;
}

TEST_F_TIMEOUT(ring, stress_through_rings_every_request_once, 900)
{
	const char *scale = getenv("LLMOS_TEST_SCALE");
	struct ring_stress s = { .per_client = 10000 };
	pthread_t w[4], c[4];

	if (scale && atof(scale) > 0)
		s.per_client = (int)(10000 * atof(scale));
	if (s.per_client < 32)
		s.per_client = 32;
	for (int i = 0; i < 4; i++)
		ASSERT_EQ(0, pthread_create(&w[i], NULL, ring_worker, &s));
	for (int i = 0; i < 4; i++)
		ASSERT_EQ(0, pthread_create(&c[i], NULL, ring_client, &s));
	for (int i = 0; i < 4; i++)
		pthread_join(c[i], NULL);
	s.stop = 1;
	for (int i = 0; i < 4; i++)
		pthread_join(w[i], NULL);
	EXPECT_EQ(0, s.errors);
	EXPECT_EQ(4L * s.per_client, s.done);
}

TEST_HARNESS_MAIN
