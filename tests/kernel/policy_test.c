// SPDX-License-Identifier: MIT
/*
 * BPF policies, loaded with libbpf from /bpf/NAME.bpf.o: each example
 * keeps the order it promises (fifo, prio, sjf, edf, wfq shares through its
 * weights map or the module's weights, and what it gives back of cancelled
 * requests), misbehaving ones are ejected with the right reason and lose
 * nothing, and only root attaches.
 */
#define _GNU_SOURCE
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/llmos.h>

#include "kselftest_harness.h"
#include "child.h"
#include "llmos_files.h"

struct policy {
	struct bpf_object *obj;
	struct bpf_link *link;
};

static int silent(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	return level == LIBBPF_WARN ? vfprintf(stderr, fmt, ap) : 0;
}

/* Load and attach /bpf/@name.bpf.o: 0 or -errno. */
static int attach(struct policy *p, const char *name)
{
	struct bpf_map *map, *ops = NULL;
	char path[64];

	libbpf_set_print(silent);
	snprintf(path, sizeof(path), "/bpf/%s.bpf.o", name);
	p->link = NULL;
	p->obj = bpf_object__open_file(path, NULL);
	if (!p->obj)
		return -errno;
	bpf_object__for_each_map(map, p->obj)
		if (bpf_map__type(map) == BPF_MAP_TYPE_STRUCT_OPS)
			ops = map;
	if (!ops || bpf_object__load(p->obj))
		return -errno ?: -EINVAL;
	p->link = bpf_map__attach_struct_ops(ops);
	return p->link ? 0 : -errno;
}

static void detach(struct policy *p)
{
	bpf_link__destroy(p->link);
	bpf_object__close(p->obj);
	p->link = NULL;
	p->obj = NULL;
}

static long long submit(int fd, __u32 tenant, __u32 prio, __u32 cost,
			__u64 deadline)
{
	struct llmos_submit s = {
		.size = sizeof(s), .tenant = tenant, .priority = prio,
		.cost = cost, .deadline_ns = deadline,
	};

	return ioctl(fd, LLMOS_IOC_SUBMIT, &s) ? -errno : (long long)s.out_id;
}

/* Take one request and complete it: its id, or -errno. */
static long long serve_one(int worker)
{
	struct llmos_req_desc d;
	struct llmos_dispatch c = {
		.size = sizeof(c), .flags = LLMOS_NONBLOCK,
		.descs_uptr = (__u64)(uintptr_t)&d, .desc_size = sizeof(d),
		.max = 1,
	};
	struct llmos_complete done = { .size = sizeof(done) };

	if (ioctl(worker, LLMOS_IOC_DISPATCH, &c))
		return -errno;
	done.id = d.id;
	done.tokens = d.cost;
	if (ioctl(worker, LLMOS_IOC_COMPLETE, &done))
		return -errno;
	return d.id;
}

static void stats(int fd, struct llmos_sched_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->size = sizeof(*st);
	ioctl(fd, LLMOS_IOC_STATS, st);
}

FIXTURE(policy) {
	int client, worker;
	struct policy p;
};

FIXTURE_SETUP(policy)
{
	struct llmos_worker_register r = {
		.size = sizeof(r), .capacity = 1, .numa_node = -1,
	};

	if (access("/bpf/fifo.bpf.o", R_OK))
		SKIP(return, "no BPF policies in this image (/bpf)");
	self->client = open("/dev/llmos", O_RDWR);
	self->worker = open("/dev/llmos", O_RDWR);
	ASSERT_LE(0, self->client);
	ASSERT_LE(0, self->worker);
	ASSERT_EQ(0, ioctl(self->worker, LLMOS_IOC_WORKER_REGISTER, &r));
	memset(&self->p, 0, sizeof(self->p));
}

FIXTURE_TEARDOWN(policy)
{
	if (self->p.obj)
		detach(&self->p);
	close(self->client);
	close(self->worker);
}

/* Submit with the worker full, then serve: the order the policy chose. */
static void order_of(int client, int worker, const __u32 *prio,
		     const __u32 *cost, const __u64 *deadline, int n,
		     long long *ids, long long *served)
{
	long long hold = submit(client, 0, 255, 1, 1);
	struct llmos_req_desc d;
	struct llmos_dispatch c = {
		.size = sizeof(c), .descs_uptr = (__u64)(uintptr_t)&d,
		.desc_size = sizeof(d), .max = 1,
	};
	struct llmos_complete done = { .size = sizeof(done) };

	/* Fill the worker first, so that the others queue up together. */
	ioctl(worker, LLMOS_IOC_DISPATCH, &c);
	for (int i = 0; i < n; i++)
		ids[i] = submit(client, i % 2, prio[i], cost[i], deadline[i]);
	done.id = d.id;
	ioctl(worker, LLMOS_IOC_COMPLETE, &done);
	for (int i = 0; i < n; i++)
		served[i] = serve_one(worker);
	(void)hold;
}

TEST_F(policy, fifo_serves_in_submission_order)
{
	const __u32 prio[4] = { 1, 200, 3, 100 }, cost[4] = { 90, 1, 50, 2 };
	const __u64 dl[4] = { 0, 0, 0, 0 };
	long long ids[4], served[4];

	ASSERT_EQ(0, attach(&self->p, "fifo"));
	order_of(self->client, self->worker, prio, cost, dl, 4, ids, served);
	for (int i = 0; i < 4; i++)
		EXPECT_EQ(ids[i], served[i]);
}

/*
 * Under a policy, a request a worker hands back (or one of a worker that
 * vanished) goes first again, before what the policy holds.
 */
TEST_F(policy, a_request_given_back_goes_before_what_the_policy_holds)
{
	struct llmos_complete back = {
		.size = sizeof(back), .flags = LLMOS_COMPLETE_RETURN,
	};
	struct llmos_req_desc d;
	struct llmos_dispatch c = {
		.size = sizeof(c), .flags = LLMOS_NONBLOCK,
		.descs_uptr = (__u64)(uintptr_t)&d, .desc_size = sizeof(d),
		.max = 1,
	};
	long long first, later[3];

	ASSERT_EQ(0, attach(&self->p, "fifo"));
	first = submit(self->client, 0, 0, 1, 0);
	ASSERT_LT(0, first);
	ASSERT_EQ(0, ioctl(self->worker, LLMOS_IOC_DISPATCH, &c));
	ASSERT_EQ(first, d.id);
	for (int i = 0; i < 3; i++)
		later[i] = submit(self->client, 0, 0, 1, 0);
	back.id = first;
	ASSERT_EQ(0, ioctl(self->worker, LLMOS_IOC_COMPLETE, &back));
	EXPECT_EQ(first, serve_one(self->worker));
	for (int i = 0; i < 3; i++)
		EXPECT_EQ(later[i], serve_one(self->worker));
	EXPECT_EQ(-EAGAIN, serve_one(self->worker));
}

/* A tenant's queued requests count while a policy holds them too. */
TEST_F(policy, a_tenant_s_queued_requests_count_under_a_policy)
{
	static struct llmos_tenant_stats ts[4096]; /* tenants stay till unload */
	struct llmos_sched_stats st = {
		.size = sizeof(st), .tenants_uptr = (__u64)(uintptr_t)ts,
		.tenant_size = sizeof(ts[0]), .tenant_count = 4096,
	};
	__u32 got = ~0u;

	ASSERT_EQ(0, attach(&self->p, "fifo"));
	for (int i = 0; i < 3; i++)
		ASSERT_LT(0, submit(self->client, 4242, 0, 1, 0));
	ASSERT_EQ(0, ioctl(self->client, LLMOS_IOC_STATS, &st));
	for (__u32 i = 0; i < st.tenant_count && i < 4096; i++)
		if (ts[i].tenant == 4242)
			got = ts[i].queued;
	EXPECT_EQ(3, got);
	for (int i = 0; i < 3; i++)
		EXPECT_LT(0, serve_one(self->worker));
	st.tenant_count = 4096;
	ASSERT_EQ(0, ioctl(self->client, LLMOS_IOC_STATS, &st));
	for (__u32 i = 0; i < st.tenant_count && i < 4096; i++)
		if (ts[i].tenant == 4242)
			got = ts[i].queued;
	EXPECT_EQ(0, got);
}

TEST_F(policy, prio_serves_higher_priorities_first)
{
	const __u32 prio[5] = { 1, 9, 5, 9, 3 }, cost[5] = { 1, 1, 1, 1, 1 };
	const __u64 dl[5] = { 0 };
	long long ids[5], served[5];

	ASSERT_EQ(0, attach(&self->p, "prio"));
	order_of(self->client, self->worker, prio, cost, dl, 5, ids, served);
	EXPECT_EQ(ids[1], served[0]);
	EXPECT_EQ(ids[3], served[1]);
	EXPECT_EQ(ids[2], served[2]);
	EXPECT_EQ(ids[4], served[3]);
	EXPECT_EQ(ids[0], served[4]);
}

TEST_F(policy, sjf_serves_the_shortest_first)
{
	const __u32 prio[3] = { 0 }, cost[3] = { 50, 5, 20 };
	const __u64 dl[3] = { 0 };
	long long ids[3], served[3];

	ASSERT_EQ(0, attach(&self->p, "sjf"));
	order_of(self->client, self->worker, prio, cost, dl, 3, ids, served);
	EXPECT_EQ(ids[1], served[0]);
	EXPECT_EQ(ids[2], served[1]);
	EXPECT_EQ(ids[0], served[2]);
}

/* With aging: a short request submitted long enough after does not overtake. */
TEST_F(policy, sjf_does_not_let_a_long_request_starve)
{
	long long longer, shorter, quick;

	ASSERT_EQ(0, attach(&self->p, "sjf"));
	longer = submit(self->client, 0, 0, 3, 0);
	usleep(200 * 1000); /* 200 ms: more than 16 ms per token of cost 3 */
	shorter = submit(self->client, 0, 0, 1, 0);
	quick = submit(self->client, 0, 0, 1, 0);
	EXPECT_EQ(longer, serve_one(self->worker));
	EXPECT_EQ(shorter, serve_one(self->worker));
	EXPECT_EQ(quick, serve_one(self->worker));
}

/*
 * A cost past what a context holds (2^20 tokens) counts as 2^20: such a
 * request is not overtaken by one of 2^20 submitted after it (it would
 * be, unbounded, for 2.3 years).
 */
TEST_F(policy, sjf_bounds_the_cost_a_request_may_claim)
{
	long long huge, large;

	ASSERT_EQ(0, attach(&self->p, "sjf"));
	huge = submit(self->client, 0, 0, 0xffffffff, 0);
	usleep(10 * 1000); /* a later submission time, in sjf's ~ms */
	large = submit(self->client, 0, 0, 1 << 20, 0);
	EXPECT_EQ(huge, serve_one(self->worker));
	EXPECT_EQ(large, serve_one(self->worker));
}

TEST_F(policy, edf_serves_the_earliest_deadline_first)
{
	const __u32 prio[4] = { 0 }, cost[4] = { 1, 1, 1, 1 };
	const __u64 dl[4] = { 3000000000ULL, 1000000000ULL, 0, 2000000000ULL };
	long long ids[4], served[4];

	ASSERT_EQ(0, attach(&self->p, "edf"));
	order_of(self->client, self->worker, prio, cost, dl, 4, ids, served);
	EXPECT_EQ(ids[1], served[0]);
	EXPECT_EQ(ids[3], served[1]);
	EXPECT_EQ(ids[0], served[2]);
	EXPECT_EQ(ids[2], served[3]);
}

/*
 * With @n requests of cost 1 of tenant @a and @n of tenant @b queued (in
 * turn, @a first), how many of the first @n served are @a's (-1 on an
 * error). The rest go with the client.
 */
static int served_of(int client, int worker, __u32 a, __u32 b, int n)
{
	int from_a = 0;

	for (int i = 0; i < n; i++)
		if (submit(client, a, 0, 1, 0) <= 0 ||
		    submit(client, b, 0, 1, 0) <= 0)
			return -1;
	for (int i = 0; i < n; i++) {
		struct llmos_req_desc d;
		struct llmos_dispatch c = {
			.size = sizeof(c), .descs_uptr = (__u64)(uintptr_t)&d,
			.desc_size = sizeof(d), .max = 1,
		};
		struct llmos_complete done = { .size = sizeof(done) };

		if (ioctl(worker, LLMOS_IOC_DISPATCH, &c))
			return -1;
		from_a += d.tenant == a;
		done.id = d.id;
		if (ioctl(worker, LLMOS_IOC_COMPLETE, &done))
			return -1;
	}
	return from_a;
}

static int served_of_200(int client, int worker, __u32 a, __u32 b)
{
	return served_of(client, worker, a, b, 200);
}

static int set_weight(int fd, __u32 tenant, __u32 weight)
{
	struct llmos_set_weight sw = {
		.size = sizeof(sw), .tenant = tenant, .weight = weight,
	};

	return ioctl(fd, LLMOS_IOC_SET_WEIGHT, &sw) ? -errno : 0;
}

TEST_F(policy, wfq_shares_follow_its_weights_map)
{
	__u32 tenant = 31, weight = 300;
	struct bpf_map *weights;
	int from31;

	ASSERT_EQ(0, attach(&self->p, "wfq"));
	weights = bpf_object__find_map_by_name(self->p.obj, "weights");
	ASSERT_NE(NULL, weights);
	ASSERT_EQ(0, bpf_map__update_elem(weights, &tenant, sizeof(tenant),
					  &weight, sizeof(weight), BPF_ANY));
	from31 = served_of_200(self->client, self->worker, 31, 32);
	EXPECT_LE(145, from31); /* three quarters of 200 */
	EXPECT_GE(155, from31);
}

/*
 * Tenants are users' ids: 1 and 4097 are two tenants with a share each,
 * beside 2, and a weight is kept for any id.
 */
TEST_F(policy, wfq_tells_every_tenant_id_apart)
{
	const __u32 tenant[3] = { 1, 4097, 2 };
	__u32 big = 70000, weight = 300;
	int got[3] = { 0 }, from_big;
	struct bpf_map *weights;

	ASSERT_EQ(0, attach(&self->p, "wfq"));
	for (int i = 0; i < 30; i++)
		for (int t = 0; t < 3; t++)
			ASSERT_LT(0, submit(self->client, tenant[t], 0, 1, 0));
	for (int i = 0; i < 45; i++) {
		struct llmos_req_desc d;
		struct llmos_dispatch c = {
			.size = sizeof(c), .descs_uptr = (__u64)(uintptr_t)&d,
			.desc_size = sizeof(d), .max = 1,
		};
		struct llmos_complete done = { .size = sizeof(done) };

		ASSERT_EQ(0, ioctl(self->worker, LLMOS_IOC_DISPATCH, &c));
		for (int t = 0; t < 3; t++)
			got[t] += d.tenant == tenant[t];
		done.id = d.id;
		ASSERT_EQ(0, ioctl(self->worker, LLMOS_IOC_COMPLETE, &done));
	}
	TH_LOG("served of tenants 1, 4097, 2: %d, %d, %d", got[0], got[1],
	       got[2]);
	for (int t = 0; t < 3; t++) {
		EXPECT_LE(14, got[t]);
		EXPECT_GE(16, got[t]);
	}
	while (serve_one(self->worker) > 0)
		;
	weights = bpf_object__find_map_by_name(self->p.obj, "weights");
	ASSERT_NE(NULL, weights);
	ASSERT_EQ(0, bpf_map__update_elem(weights, &big, sizeof(big),
					  &weight, sizeof(weight), BPF_ANY));
	from_big = served_of_200(self->client, self->worker, big, 3);
	EXPECT_LE(145, from_big); /* three quarters of 200 */
	EXPECT_GE(155, from_big);
}

/*
 * Weights past 512 keep their shares: 700 against 100 gets 7/8 of the
 * service, 2000 against 100 gets 20/21 (not all of it, nor the same as
 * 1000 against 100).
 */
TEST_F(policy, wfq_shares_follow_large_weights)
{
	const __u32 weight[2] = { 700, 2000 };
	const int ideal[2] = { 175, 190 }; /* 200 * weight / (weight + 100) */
	struct bpf_map *weights;

	ASSERT_EQ(0, attach(&self->p, "wfq"));
	weights = bpf_object__find_map_by_name(self->p.obj, "weights");
	ASSERT_NE(NULL, weights);
	for (int i = 0; i < 2; i++) {
		__u32 tenant = 51 + 2 * i;
		int from;

		ASSERT_EQ(0, bpf_map__update_elem(weights, &tenant,
						  sizeof(tenant), &weight[i],
						  sizeof(weight[i]), BPF_ANY));
		from = served_of_200(self->client, self->worker, tenant,
				     tenant + 1);
		TH_LOG("weight %u against 100: %d of 200 (ideal %d)",
		       weight[i], from, ideal[i]);
		EXPECT_LE(ideal[i] - 4, from);
		EXPECT_GE(ideal[i] + 4, from);
		while (serve_one(self->worker) > 0)
			;
	}
}

/*
 * A tenant's tag stays near the clock: 2000 of the costliest requests at
 * weight 1, queued and then cancelled (those past 2^50 ahead are not
 * given back), leave the policy serving (each advanced the tag 2^52
 * before: 1024 of them passed the 2^62 limit, and the policy stopped
 * itself).
 */
TEST_F(policy, wfq_survives_costly_requests_that_are_cancelled)
{
	const __u32 tenant = 71, one = 1;
	struct llmos_cancel cancel = { .size = sizeof(cancel) };
	struct llmos_sched_stats st;
	struct bpf_map *weights;
	static long long ids[2000];

	ASSERT_EQ(0, attach(&self->p, "wfq"));
	weights = bpf_object__find_map_by_name(self->p.obj, "weights");
	ASSERT_NE(NULL, weights);
	ASSERT_EQ(0, bpf_map__update_elem(weights, &tenant, sizeof(tenant),
					  &one, sizeof(one), BPF_ANY));
	for (int i = 0; i < 2000; i++) {
		ids[i] = submit(self->client, tenant, 0, 0xffffffffu, 0);
		ASSERT_LT(0, ids[i]);
	}
	for (int i = 0; i < 2000; i++) {
		cancel.id = ids[i];
		ASSERT_EQ(0, ioctl(self->client, LLMOS_IOC_CANCEL, &cancel));
	}
	stats(self->client, &st);
	EXPECT_EQ(LLMOS_POLICY_BPF, st.out_policy_state);
	EXPECT_STREQ("wfq", st.out_policy);
	ASSERT_LT(0, submit(self->client, tenant, 0, 1, 0));
	EXPECT_LT(0, serve_one(self->worker));
}

/*
 * A tenant whose queued requests carried its tag ahead is held to 2^50
 * past the clock, and what that forgave is not given back: of 1100
 * costliest requests queued at weight 1 (2^40 each), the last 75 start at
 * 2^50; with the first 1025 cancelled, its next request comes after 1024
 * of another tenant's of that step and those 75 of its own (1100th), not
 * first (the 1025 steps refunded, as if the 75 had not been held at
 * 2^50, would have put it ahead of them and of its share).
 */
TEST_F(policy, wfq_holds_a_tenant_s_tag_near_the_clock)
{
	const __u32 a = 72, b = 73, one = 1;
	struct llmos_cancel cancel = { .size = sizeof(cancel) };
	struct bpf_map *weights;
	static long long ids[1100];
	long long mine = 0;
	int at = -1;

	ASSERT_EQ(0, attach(&self->p, "wfq"));
	weights = bpf_object__find_map_by_name(self->p.obj, "weights");
	ASSERT_NE(NULL, weights);
	ASSERT_EQ(0, bpf_map__update_elem(weights, &a, sizeof(a), &one,
					  sizeof(one), BPF_ANY));
	ASSERT_EQ(0, bpf_map__update_elem(weights, &b, sizeof(b), &one,
					  sizeof(one), BPF_ANY));
	for (int i = 0; i < 1100; i++) {
		ids[i] = submit(self->client, a, 0, 1u << 20, 0);
		ASSERT_LT(0, ids[i]);
	}
	for (int i = 0; i < 1025; i++) {
		cancel.id = ids[i];
		ASSERT_EQ(0, ioctl(self->client, LLMOS_IOC_CANCEL, &cancel));
	}
	mine = submit(self->client, a, 0, 1, 0);
	ASSERT_LT(0, mine);
	for (int i = 0; i < 1100; i++)
		ASSERT_LT(0, submit(self->client, b, 0, 1u << 20, 0));
	for (int i = 0; i < 1101; i++) {
		long long id = serve_one(self->worker);

		ASSERT_LT(0, id);
		if (id == mine)
			at = i;
	}
	TH_LOG("its request was served %dth of 1101", at + 1);
	EXPECT_LE(1098, at);
	EXPECT_GE(1100, at);
}

/* The 0-based turn in which the worker serves request @id of @n served. */
static int turn_of(int worker, long long id, int n)
{
	int at = -1;

	for (int i = 0; i < n; i++) {
		long long got = serve_one(worker);

		if (got <= 0)
			return -1;
		if (got == id)
			at = i;
	}
	return at;
}

/*
 * Cancelled requests cost their tenant nothing: a tenant that queues 100
 * requests of cost 1000 and cancels them (first to last: 99 of them not
 * its last one queued; then last to first) takes turns at once with a
 * tenant of the same weight, half of the first 20 served. Before, the
 * 100000 tokens it never had served put it behind 100000 of the other's
 * cost 1: none of the 20.
 */
TEST_F(policy, wfq_gives_back_the_cost_of_cancelled_requests)
{
	struct llmos_cancel cancel = { .size = sizeof(cancel) };
	long long ids[100];

	ASSERT_EQ(0, attach(&self->p, "wfq"));
	for (int reverse = 0; reverse < 2; reverse++) {
		__u32 a = 81 + 2 * reverse, b = a + 1;
		int from_a;

		for (int i = 0; i < 100; i++) {
			ids[i] = submit(self->client, a, 0, 1000, 0);
			ASSERT_LT(0, ids[i]);
		}
		for (int i = 0; i < 100; i++) {
			cancel.id = ids[reverse ? 99 - i : i];
			ASSERT_EQ(0, ioctl(self->client, LLMOS_IOC_CANCEL,
					   &cancel));
		}
		from_a = served_of(self->client, self->worker, a, b, 20);
		TH_LOG("cancelled %s: %d of the first 20 served",
		       reverse ? "last to first" : "first to last", from_a);
		EXPECT_LE(9, from_a);
		EXPECT_GE(11, from_a);
		while (serve_one(self->worker) > 0)
			;
	}
}

/*
 * A cancelled request queued before others of its tenant is given back
 * too: those keep their place (they wait as if it had been served first),
 * a new one starts where it would have without it, and may pass them.
 * Tenant a queues x (cost 1000) and y (cost 1), cancels x, queues z (cost
 * 1); b then queues 20 of cost 1: z comes second, y last (22nd), behind
 * b's. Before, z came last, behind y.
 */
TEST_F(policy, wfq_gives_back_a_request_cancelled_before_others)
{
	struct llmos_cancel cancel = { .size = sizeof(cancel) };
	const __u32 a = 85, b = 86;
	long long y, z;

	ASSERT_EQ(0, attach(&self->p, "wfq"));
	cancel.id = submit(self->client, a, 0, 1000, 0);
	ASSERT_LT(0, (long long)cancel.id);
	y = submit(self->client, a, 0, 1, 0);
	ASSERT_LT(0, y);
	ASSERT_EQ(0, ioctl(self->client, LLMOS_IOC_CANCEL, &cancel));
	z = submit(self->client, a, 0, 1, 0);
	ASSERT_LT(0, z);
	for (int i = 0; i < 20; i++)
		ASSERT_LT(0, submit(self->client, b, 0, 1, 0));
	EXPECT_EQ(1, turn_of(self->worker, z, 1 + 20));
	EXPECT_EQ(0, turn_of(self->worker, y, 1));
}

/*
 * Only a request cancelled in the queue is given back: one a worker took
 * moved the clock and stays paid. Tenant a's request of cost 1000 is
 * taken, then cancelled; a's next one comes after 20 of b's of cost 1
 * queued with it (b starts at the clock, a 1000 tokens past it).
 */
TEST_F(policy, wfq_does_not_give_back_a_request_a_worker_took)
{
	struct llmos_cancel cancel = { .size = sizeof(cancel) };
	struct llmos_req_desc d;
	struct llmos_dispatch c = {
		.size = sizeof(c), .flags = LLMOS_NONBLOCK,
		.descs_uptr = (__u64)(uintptr_t)&d, .desc_size = sizeof(d),
		.max = 1,
	};
	const __u32 a = 87, b = 88;
	long long x, z;

	ASSERT_EQ(0, attach(&self->p, "wfq"));
	x = submit(self->client, a, 0, 1000, 0);
	ASSERT_LT(0, x);
	ASSERT_EQ(0, ioctl(self->worker, LLMOS_IOC_DISPATCH, &c));
	ASSERT_EQ(1, c.out_count);
	ASSERT_EQ(x, (long long)d.id);
	cancel.id = x;
	ASSERT_EQ(0, ioctl(self->client, LLMOS_IOC_CANCEL, &cancel));
	z = submit(self->client, a, 0, 1, 0);
	ASSERT_LT(0, z);
	for (int i = 0; i < 20; i++)
		ASSERT_LT(0, submit(self->client, b, 0, 1, 0));
	EXPECT_EQ(20, turn_of(self->worker, z, 21));
}

/*
 * A cancel gives back the step its request added, at the weight it had
 * then, not more: tenant a queues x (cost 1000) and y (cost 1) at weight
 * 100, goes to weight 1 (its steps 100 times longer), cancels y and
 * queues z. z starts where x ends, after x and 101 of b's of cost 10
 * (103rd); y's step taken again at weight 1 would have put it 10 of b's
 * sooner.
 */
TEST_F(policy, wfq_gives_back_no_more_than_a_cancelled_request_added)
{
	struct llmos_cancel cancel = { .size = sizeof(cancel) };
	const __u32 a = 89, b = 90, hundred = 100, one = 1;
	struct bpf_map *weights;
	long long x, z;

	ASSERT_EQ(0, attach(&self->p, "wfq"));
	weights = bpf_object__find_map_by_name(self->p.obj, "weights");
	ASSERT_NE(NULL, weights);
	ASSERT_EQ(0, bpf_map__update_elem(weights, &a, sizeof(a), &hundred,
					  sizeof(hundred), BPF_ANY));
	ASSERT_EQ(0, bpf_map__update_elem(weights, &b, sizeof(b), &hundred,
					  sizeof(hundred), BPF_ANY));
	x = submit(self->client, a, 0, 1000, 0);
	ASSERT_LT(0, x);
	cancel.id = submit(self->client, a, 0, 1, 0);
	ASSERT_LT(0, (long long)cancel.id);
	ASSERT_EQ(0, bpf_map__update_elem(weights, &a, sizeof(a), &one,
					  sizeof(one), BPF_ANY));
	ASSERT_EQ(0, ioctl(self->client, LLMOS_IOC_CANCEL, &cancel));
	z = submit(self->client, a, 0, 1, 0);
	ASSERT_LT(0, z);
	for (int i = 0; i < 110; i++)
		ASSERT_LT(0, submit(self->client, b, 0, 10, 0));
	EXPECT_EQ(0, turn_of(self->worker, x, 1));
	EXPECT_EQ(101, turn_of(self->worker, z, 110));
	while (serve_one(self->worker) > 0)
		;
}

/*
 * A worker that takes four at once: the virtual clock follows the last
 * of them, so a tenant that comes then starts there and takes turns with
 * the one served, instead of going first for a batch of its own.
 */
TEST_F(policy, wfq_starts_a_new_tenant_at_the_last_request_handed_out)
{
	struct llmos_worker_register r = {
		.size = sizeof(r), .capacity = 4, .numa_node = -1,
	};
	struct llmos_req_desc d[4];
	struct llmos_dispatch c = {
		.size = sizeof(c), .flags = LLMOS_NONBLOCK,
		.descs_uptr = (__u64)(uintptr_t)d, .desc_size = sizeof(d[0]),
		.max = 4,
	};
	const __u32 want[8] = { 62, 61, 62, 61, 62, 61, 62, 61 };
	struct llmos_complete done = { .size = sizeof(done) };
	int four = open("/dev/llmos", O_RDWR);

	ASSERT_LE(0, four);
	ASSERT_EQ(0, ioctl(four, LLMOS_IOC_WORKER_REGISTER, &r));
	ASSERT_EQ(0, attach(&self->p, "wfq"));
	for (int i = 0; i < 8; i++)
		ASSERT_LT(0, submit(self->client, 61, 0, 1, 0));
	ASSERT_EQ(0, ioctl(four, LLMOS_IOC_DISPATCH, &c));
	ASSERT_EQ(4, c.out_count);
	for (int i = 0; i < 4; i++)
		ASSERT_LT(0, submit(self->client, 62, 0, 1, 0));
	for (int i = 0; i < 4; i++) {
		EXPECT_EQ(61, d[i].tenant);
		done.id = d[i].id;
		ASSERT_EQ(0, ioctl(four, LLMOS_IOC_COMPLETE, &done));
	}
	c.max = 1;
	for (int i = 0; i < 8; i++) {
		ASSERT_EQ(0, ioctl(four, LLMOS_IOC_DISPATCH, &c));
		ASSERT_EQ(1, c.out_count);
		EXPECT_EQ(want[i], d[0].tenant) {
			TH_LOG("request %d of tenant %u", i, d[0].tenant);
		}
		done.id = d[0].id;
		ASSERT_EQ(0, ioctl(four, LLMOS_IOC_COMPLETE, &done));
	}
	close(four);
}

/*
 * Where its map says nothing, wfq takes the module's weight of the tenant
 * (llmosctl sched weight); where it does, the map's.
 */
TEST_F(policy, wfq_takes_the_module_s_weights_where_its_map_has_none)
{
	__u32 tenant = 33, weight = 100;
	struct bpf_map *weights;
	int from33;

	ASSERT_EQ(0, set_weight(self->client, 33, 300));
	ASSERT_EQ(0, attach(&self->p, "wfq"));
	from33 = served_of_200(self->client, self->worker, 33, 34);
	EXPECT_LE(145, from33);
	EXPECT_GE(155, from33);
	while (serve_one(self->worker) > 0)
		;
	weights = bpf_object__find_map_by_name(self->p.obj, "weights");
	ASSERT_NE(NULL, weights);
	ASSERT_EQ(0, bpf_map__update_elem(weights, &tenant, sizeof(tenant),
					  &weight, sizeof(weight), BPF_ANY));
	from33 = served_of_200(self->client, self->worker, 33, 34);
	EXPECT_LE(95, from33); /* the map's 100 against the default 100 */
	EXPECT_GE(105, from33);
	EXPECT_EQ(0, set_weight(self->client, 33, 100));
}

TEST_F(policy, a_misusing_policy_is_ejected_and_loses_nothing)
{
	struct llmos_worker_register r = {
		.size = sizeof(r), .capacity = 4, .numa_node = -1,
	};
	struct llmos_sched_stats st;
	int other = open("/dev/llmos", O_RDWR);

	ASSERT_LE(0, other);
	/*
	 * The fixture's worker comes online to it at attach, and its
	 * worker_online misuses a kfunc: refused.
	 */
	ASSERT_EQ(-EINVAL, attach(&self->p, "bad_worker"));
	detach(&self->p);
	stats(self->client, &st);
	EXPECT_EQ(LLMOS_POLICY_BUILTIN, st.out_policy_state);
	EXPECT_EQ(LLMOS_EXIT_MISUSE, st.out_exit_kind);
	/* With no worker at attach: ejected when the first one comes. */
	close(self->worker);
	self->worker = other;
	ASSERT_EQ(0, attach(&self->p, "bad_worker"));
	for (int i = 0; i < 3; i++)
		ASSERT_LT(0, submit(self->client, 1, 0, 1, 0));
	ASSERT_EQ(0, ioctl(other, LLMOS_IOC_WORKER_REGISTER, &r));
	stats(self->client, &st);
	EXPECT_EQ(LLMOS_POLICY_EJECTED, st.out_policy_state);
	EXPECT_EQ(LLMOS_EXIT_MISUSE, st.out_exit_kind);
	EXPECT_STREQ("bad_worker", st.out_policy);
	for (int i = 0; i < 3; i++)
		EXPECT_LT(0, serve_one(self->worker));
}

/* counts[@key] of the count_workers policy. */
static long long worker_count(struct policy *p, __u32 key)
{
	struct bpf_map *m = bpf_object__find_map_by_name(p->obj, "counts");
	long long v = -1000;

	if (!m || bpf_map__lookup_elem(m, &key, sizeof(key), &v, sizeof(v), 0))
		return -1000;
	return v;
}

TEST_F(policy, workers_registered_before_the_policy_come_online_to_it)
{
	struct llmos_worker_register r = {
		.size = sizeof(r), .capacity = 2, .numa_node = -1,
	};
	struct llmos_sched_stats st;
	int other = open("/dev/llmos", O_RDWR);

	ASSERT_LE(0, other);
	ASSERT_EQ(0, ioctl(other, LLMOS_IOC_WORKER_REGISTER, &r));
	ASSERT_EQ(0, attach(&self->p, "count_workers"));
	stats(self->client, &st);
	ASSERT_EQ(LLMOS_POLICY_BPF, st.out_policy_state);
	/* The fixture's worker and this one: each told once. */
	EXPECT_EQ(2, st.out_workers);
	EXPECT_EQ(st.out_workers, worker_count(&self->p, 0));
	EXPECT_EQ(st.out_workers, worker_count(&self->p, 1));
	close(other);
	EXPECT_EQ(1, worker_count(&self->p, 0)); /* offline */
	/* It schedules: a request is served. */
	ASSERT_LT(0, submit(self->client, 1, 0, 1, 0));
	EXPECT_LT(0, serve_one(self->worker));
}

/* A mindspace for requests to name (they must name real ones): its id. */
static __u64 ms_new(int dev, int *fd)
{
	struct llmos_ms_create c = { .size = sizeof(c), .length = 4096 };

	*fd = ioctl(dev, LLMOS_IOC_MS_CREATE, &c) ? -1 : c.out_fd;
	return c.out_id;
}

static long long submit_ms(int fd, __u64 ms)
{
	struct llmos_submit s = { .size = sizeof(s), .cost = 1, .ms_id = ms };

	return ioctl(fd, LLMOS_IOC_SUBMIT, &s) ? -errno : (long long)s.out_id;
}

static long long take_start_complete(int worker, int flags)
{
	struct llmos_req_desc d;
	struct llmos_dispatch c = {
		.size = sizeof(c), .flags = flags,
		.descs_uptr = (__u64)(uintptr_t)&d, .desc_size = sizeof(d),
		.max = 1, .timeout_ms = 5000,
	};
	struct llmos_start st = { .size = sizeof(st) };
	struct llmos_complete done = { .size = sizeof(done) };

	if (ioctl(worker, LLMOS_IOC_DISPATCH, &c))
		return -errno;
	st.id = d.id;
	done.id = d.id;
	if (ioctl(worker, LLMOS_IOC_START, &st) ||
	    ioctl(worker, LLMOS_IOC_COMPLETE, &done))
		return -errno;
	return d.id;
}

static double ms_since(clockid_t clock, const struct timespec *a)
{
	struct timespec z;

	clock_gettime(clock, &z);
	return (z.tv_sec - a->tv_sec) * 1e3 + (z.tv_nsec - a->tv_nsec) / 1e6;
}

TEST_F(policy, locality_prefers_the_worker_that_ran_the_mindspace)
{
	struct llmos_worker_register r = {
		.size = sizeof(r), .capacity = 1, .numa_node = -1,
	};
	struct llmos_sched_stats st;
	long long r1, r2, r3, got;
	struct timespec t;
	int b, fd7, fd8;
	__u64 ms7 = ms_new(self->client, &fd7), ms8 = ms_new(self->client, &fd8);

	ASSERT_LE(0, fd7);
	ASSERT_LE(0, fd8);
	ASSERT_EQ(0, attach(&self->p, "locality"));
	b = open("/dev/llmos", O_RDWR);
	ASSERT_LE(0, b);
	ASSERT_EQ(0, ioctl(b, LLMOS_IOC_WORKER_REGISTER, &r));
	r1 = submit_ms(self->client, ms7);
	ASSERT_EQ(r1, take_start_complete(self->worker, 0)); /* A runs ms7 */
	/*
	 * B asks first, but r2 waits for A, whose cache holds ms7. Checked
	 * where B asked within 150 ms of the SUBMIT: the emulated machine
	 * may pause near steal_after_ns, and B may then; five tries.
	 */
	for (int tries = 0, checked = 0; !checked; tries++) {
		ASSERT_LT(tries, 5) {
			TH_LOG("SUBMIT to B's DISPATCH took 150 ms or more five times");
		}
		clock_gettime(CLOCK_MONOTONIC, &t);
		r2 = submit_ms(self->client, ms7);
		got = take_start_complete(b, LLMOS_NONBLOCK);
		checked = ms_since(CLOCK_MONOTONIC, &t) < 150;
		if (checked) {
			EXPECT_EQ(-EAGAIN, got);
			EXPECT_EQ(r2, take_start_complete(self->worker, 0));
		} else {
			TH_LOG("%.0f ms from SUBMIT to B's DISPATCH: again",
			       ms_since(CLOCK_MONOTONIC, &t));
			if (got == -EAGAIN)
				got = take_start_complete(self->worker, 0);
			EXPECT_EQ(r2, got);
			/* A runs ms7 again (past steal_after_ns, if B did). */
			r1 = submit_ms(self->client, ms7);
			ASSERT_EQ(r1, take_start_complete(self->worker, 0));
		}
	}
	/* Past steal_after_ns, B may take A's request. */
	r3 = submit_ms(self->client, ms7);
	usleep(400 * 1000);
	EXPECT_EQ(r3, take_start_complete(b, LLMOS_NONBLOCK));
	/* A new mindspace goes to whoever asks. */
	EXPECT_LT(0, submit_ms(self->client, ms8));
	EXPECT_LT(0, take_start_complete(b, 0));
	stats(self->client, &st);
	EXPECT_EQ(LLMOS_POLICY_BPF, st.out_policy_state);
	close(b);
	close(fd7);
	close(fd8);
}

/*
 * After many workers came and went (more than it tracks at once), a
 * mindspace whose worker went away goes to whoever asks, at once.
 */
TEST_F(policy, locality_sends_a_departed_worker_s_mindspace_to_the_others)
{
	struct llmos_worker_register r = {
		.size = sizeof(r), .capacity = 1, .numa_node = -1,
	};
	long long r1, r2;
	int a, fd7;
	__u64 ms7 = ms_new(self->client, &fd7);

	ASSERT_LE(0, fd7);
	ASSERT_EQ(0, attach(&self->p, "locality"));
	for (int i = 0; i < 70; i++) {
		int w = open("/dev/llmos", O_RDWR);

		ASSERT_LE(0, w);
		ASSERT_EQ(0, ioctl(w, LLMOS_IOC_WORKER_REGISTER, &r));
		close(w);
	}
	a = open("/dev/llmos", O_RDWR);
	ASSERT_LE(0, a);
	ASSERT_EQ(0, ioctl(a, LLMOS_IOC_WORKER_REGISTER, &r));
	r1 = submit_ms(self->client, ms7);
	ASSERT_EQ(r1, take_start_complete(a, 0)); /* a runs ms7 */
	close(a);
	r2 = submit_ms(self->client, ms7);
	EXPECT_EQ(r2, take_start_complete(self->worker, LLMOS_NONBLOCK));
	close(fd7);
}

/*
 * locality tracks 64 workers: one past them gets no request in a queue of
 * its own (only its own dispatch would look there), so when it goes, the
 * next request of its mindspace is there for the others at once; and one
 * that had no slot takes one freed later, at its next dispatch.
 */
TEST_F(policy, locality_strands_nothing_with_a_worker_it_does_not_track)
{
	struct llmos_worker_register r = {
		.size = sizeof(r), .capacity = 1, .numa_node = -1,
	};
	long long r1, r2, r3, r4;
	int many[64], x, fd7, fd8;
	__u64 ms7 = ms_new(self->client, &fd7), ms8 = ms_new(self->client, &fd8);

	ASSERT_LE(0, fd7);
	ASSERT_LE(0, fd8);
	ASSERT_EQ(0, attach(&self->p, "locality"));
	/* The fixture's worker takes a slot at its first dispatch. */
	EXPECT_EQ(-EAGAIN, take_start_complete(self->worker, LLMOS_NONBLOCK));
	/* 63 of these take the other slots; many[63] and x have none. */
	for (int i = 0; i < 64; i++) {
		many[i] = open("/dev/llmos", O_RDWR);
		ASSERT_LE(0, many[i]);
		ASSERT_EQ(0, ioctl(many[i], LLMOS_IOC_WORKER_REGISTER, &r));
	}
	x = open("/dev/llmos", O_RDWR);
	ASSERT_LE(0, x);
	ASSERT_EQ(0, ioctl(x, LLMOS_IOC_WORKER_REGISTER, &r));
	r1 = submit_ms(self->client, ms7);
	ASSERT_EQ(r1, take_start_complete(x, 0)); /* x runs ms7 */
	r2 = submit_ms(self->client, ms7);
	ASSERT_LT(0, r2);
	close(x);
	EXPECT_EQ(r2, take_start_complete(self->worker, LLMOS_NONBLOCK));
	/* A slot comes free: many[63] takes it when it next asks. */
	close(many[0]);
	EXPECT_EQ(-EAGAIN, take_start_complete(many[63], LLMOS_NONBLOCK));
	r3 = submit_ms(self->client, ms8);
	ASSERT_EQ(r3, take_start_complete(many[63], 0)); /* it runs ms8 */
	r4 = submit_ms(self->client, ms8);
	ASSERT_LT(0, r4);
	EXPECT_EQ(-EAGAIN, take_start_complete(self->worker, LLMOS_NONBLOCK));
	EXPECT_EQ(r4, take_start_complete(many[63], LLMOS_NONBLOCK));
	for (int i = 1; i < 64; i++)
		close(many[i]);
	close(fd7);
	close(fd8);
}

/*
 * locality makes a queue per worker: one that goes takes its queue along,
 * at once when it is empty, or once the others served what it held.
 */
TEST_F(policy, locality_lets_the_queues_of_departed_workers_go)
{
	struct llmos_worker_register r = {
		.size = sizeof(r), .capacity = 1, .numa_node = -1,
	};
	long q0;
	int a, fd7;
	__u64 ms7 = ms_new(self->client, &fd7);

	ASSERT_LE(0, fd7);
	ASSERT_EQ(0, attach(&self->p, "locality"));
	/* The fixture's worker gets its queue at its first dispatch. */
	EXPECT_EQ(-EAGAIN, take_start_complete(self->worker, LLMOS_NONBLOCK));
	q0 = counter("policy_queues");
	ASSERT_LE(2, q0); /* the shared one and the worker's */
	for (int i = 0; i < 200; i++) {
		int w = open("/dev/llmos", O_RDWR);

		ASSERT_LE(0, w);
		ASSERT_EQ(0, ioctl(w, LLMOS_IOC_WORKER_REGISTER, &r));
		close(w);
	}
	EXPECT_EQ(q0, counter("policy_queues"));
	/* a runs ms7; the next request of ms7 waits in a's queue. */
	a = open("/dev/llmos", O_RDWR);
	ASSERT_LE(0, a);
	ASSERT_EQ(0, ioctl(a, LLMOS_IOC_WORKER_REGISTER, &r));
	ASSERT_LT(0, submit_ms(self->client, ms7));
	ASSERT_LT(0, take_start_complete(a, 0));
	ASSERT_LT(0, submit_ms(self->client, ms7));
	EXPECT_EQ(q0 + 1, counter("policy_queues"));
	/* a goes: its queue stays until the request in it is served. */
	close(a);
	EXPECT_EQ(q0 + 1, counter("policy_queues"));
	EXPECT_LT(0, take_start_complete(self->worker, LLMOS_NONBLOCK));
	EXPECT_EQ(q0, counter("policy_queues"));
	close(fd7);
}

TEST_F(policy, a_worker_waits_for_held_requests_without_spinning)
{
	struct llmos_worker_register r = {
		.size = sizeof(r), .capacity = 1, .numa_node = -1,
	};
	struct timespec wall, cpu;
	double wall_ms, cpu_ms;
	long long r1, r2;
	int b, fd9;
	__u64 ms9 = ms_new(self->client, &fd9);

	ASSERT_LE(0, fd9);
	ASSERT_EQ(0, attach(&self->p, "locality"));
	b = open("/dev/llmos", O_RDWR);
	ASSERT_LE(0, b);
	ASSERT_EQ(0, ioctl(b, LLMOS_IOC_WORKER_REGISTER, &r));
	r1 = submit_ms(self->client, ms9);
	ASSERT_EQ(r1, take_start_complete(self->worker, 0)); /* A runs ms9 */
	/*
	 * r2 is held for A (200 ms): B, with room and a request queued that
	 * is not for it yet, sleeps in DISPATCH until the policy lets go.
	 */
	/* (The hold starts in SUBMIT: the clocks before it.) */
	clock_gettime(CLOCK_MONOTONIC, &wall);
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu);
	r2 = submit_ms(self->client, ms9);
	EXPECT_EQ(r2, take_start_complete(b, 0));
	cpu_ms = ms_since(CLOCK_THREAD_CPUTIME_ID, &cpu);
	wall_ms = ms_since(CLOCK_MONOTONIC, &wall);
	TH_LOG("B waited %.0f ms, on the CPU %.0f ms", wall_ms, cpu_ms);
	EXPECT_LE(150, wall_ms);
	EXPECT_GT(800, wall_ms); /* woken every 10 ms, not at the next scan */
	EXPECT_GT(wall_ms / 2, cpu_ms);
	close(b);
	close(fd9);
}

/*
 * A stall is a request held while a worker asks for work: not while the
 * worker is busy or away. never_dispatch holds everything (timeout 500 ms).
 */
TEST_F(policy, a_request_queued_while_no_worker_asks_is_no_stall)
{
	struct llmos_req_desc d;
	struct llmos_dispatch c = {
		.size = sizeof(c), .descs_uptr = (__u64)(uintptr_t)&d,
		.desc_size = sizeof(d), .max = 1, .timeout_ms = 5000,
	};
	struct llmos_complete done = { .size = sizeof(done) };
	struct llmos_sched_stats st;
	struct timespec t;
	long long id;
	double ms;

	ASSERT_EQ(0, attach(&self->p, "never_dispatch"));
	id = submit(self->client, 0, 0, 1, 0);
	ASSERT_LT(0, id);
	/* The worker has room but does not ask: three timeouts pass. */
	usleep(1500 * 1000);
	stats(self->client, &st);
	EXPECT_EQ(LLMOS_POLICY_BPF, st.out_policy_state);
	/* It asks: the policy is ejected 500 ms on, and the request comes. */
	clock_gettime(CLOCK_MONOTONIC, &t);
	ASSERT_EQ(0, ioctl(self->worker, LLMOS_IOC_DISPATCH, &c));
	ms = ms_since(CLOCK_MONOTONIC, &t);
	TH_LOG("the worker waited %.0f ms", ms);
	ASSERT_EQ(1, c.out_count);
	EXPECT_EQ(id, (long long)d.id);
	EXPECT_LE(450, ms);
	EXPECT_GT(3000, ms);
	stats(self->client, &st);
	EXPECT_EQ(LLMOS_POLICY_EJECTED, st.out_policy_state);
	EXPECT_EQ(LLMOS_EXIT_STALL, st.out_exit_kind);
	EXPECT_EQ(id, (long long)st.out_exit_req);
	done.id = d.id;
	EXPECT_EQ(0, ioctl(self->worker, LLMOS_IOC_COMPLETE, &done));
}

/*
 * A worker that asked (and got nothing), then went away for a step longer
 * than half the timeout, starts waiting again when it comes back: the
 * time it was away is no stall, even for a request queued meanwhile.
 */
/*
 * Polls @worker (LLMOS_NONBLOCK) every @gap_ms until it serves a request,
 * 5 s at most: how long that took (ms); the request's id, or -errno, in
 * *@got.
 */
static double poll_until_served(int worker, unsigned int gap_ms, long long *got)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	while ((*got = serve_one(worker)) == -EAGAIN &&
	       ms_since(CLOCK_MONOTONIC, &t) < 5000)
		usleep(gap_ms * 1000);
	return ms_since(CLOCK_MONOTONIC, &t);
}

TEST_F(policy, a_worker_back_from_a_long_step_waits_from_its_return)
{
	struct llmos_sched_stats st;
	long long id, got;
	double ms;

	ASSERT_EQ(0, attach(&self->p, "never_dispatch"));
	ASSERT_EQ(-EAGAIN, serve_one(self->worker)); /* it asked: nothing */
	usleep(100 * 1000);
	id = submit(self->client, 0, 0, 1, 0);
	ASSERT_LT(0, id);
	usleep(1400 * 1000); /* away, past the timeout */
	stats(self->client, &st);
	EXPECT_EQ(LLMOS_POLICY_BPF, st.out_policy_state);
	/* Back, it polls: the policy is ejected no sooner than 500 ms on. */
	ms = poll_until_served(self->worker, 20, &got);
	TH_LOG("the request came %.0f ms after the worker's return", ms);
	EXPECT_EQ(id, got);
	EXPECT_LE(450, ms);
	stats(self->client, &st);
	EXPECT_EQ(LLMOS_POLICY_EJECTED, st.out_policy_state);
	EXPECT_EQ(LLMOS_EXIT_STALL, st.out_exit_kind);
}

/*
 * A worker that polls between its steps (LLMOS_NONBLOCK, 100 ms apart:
 * well under half of never_dispatch's 500 ms timeout, with room for the
 * emulated machine's pauses) asks all along: the policy that gives it
 * nothing is ejected, and the request comes.
 */
TEST_F(policy, a_worker_that_polls_between_its_steps_is_asking)
{
	struct llmos_sched_stats st;
	long long id, got;
	double ms;

	ASSERT_EQ(0, attach(&self->p, "never_dispatch"));
	id = submit(self->client, 0, 0, 1, 0);
	ASSERT_LT(0, id);
	ms = poll_until_served(self->worker, 100, &got);
	TH_LOG("the request came after %.0f ms of polling", ms);
	EXPECT_EQ(id, got);
	EXPECT_LE(450, ms);
	stats(self->client, &st);
	EXPECT_EQ(LLMOS_POLICY_EJECTED, st.out_policy_state);
	EXPECT_EQ(LLMOS_EXIT_STALL, st.out_exit_kind);
}

/*
 * A request stranded while the others flow: the worker polls every 20 ms
 * and gets one of the others every 60 ms, so it is short most of the
 * time but never for strand_tenant's 500 ms at once, nor for the
 * watchdog's period (125 ms). Shortness adds up: the policy is ejected
 * and the stranded request comes.
 */
TEST_F(policy, a_request_stranded_while_others_flow_is_a_stall)
{
	struct llmos_sched_stats st;
	long long id, got, flowed = 0;
	struct timespec t, last;
	double ms;

	ASSERT_EQ(0, attach(&self->p, "strand_tenant"));
	id = submit(self->client, 7, 0, 1, 0);
	ASSERT_LT(0, id);
	clock_gettime(CLOCK_MONOTONIC, &t);
	last = t;
	ASSERT_LT(0, submit(self->client, 0, 0, 1, 0));
	while ((got = serve_one(self->worker)) != id &&
	       ms_since(CLOCK_MONOTONIC, &t) < 8000) {
		ASSERT_TRUE(got > 0 || got == -EAGAIN);
		flowed += got > 0;
		if (ms_since(CLOCK_MONOTONIC, &last) >= 60) {
			clock_gettime(CLOCK_MONOTONIC, &last);
			ASSERT_LT(0, submit(self->client, 0, 0, 1, 0));
		}
		usleep(20 * 1000);
	}
	ms = ms_since(CLOCK_MONOTONIC, &t);
	TH_LOG("stranded for %.0f ms while %lld others were served", ms,
	       flowed);
	ASSERT_EQ(id, got);
	EXPECT_LE(450, ms);
	/* About 500 ms of shortness at some 70% of the time, not 4 s. */
	EXPECT_GT(3000, ms);
	EXPECT_LE(2, flowed);
	stats(self->client, &st);
	EXPECT_EQ(LLMOS_POLICY_EJECTED, st.out_policy_state);
	EXPECT_EQ(LLMOS_EXIT_STALL, st.out_exit_kind);
	EXPECT_EQ(id, (long long)st.out_exit_req);
	/* What is left of the others is served by the built-in policy. */
	while (serve_one(self->worker) > 0)
		;
	stats(self->client, &st);
	EXPECT_EQ(0, st.out_nr[LLMOS_REQ_QUEUED]);
}

TEST_F(policy, a_kfunc_called_from_a_timer_callback_ejects_the_policy)
{
	struct llmos_sched_stats st;
	int i;

	/* Its bpf_timer fires 20 ms after init and calls a kfunc there. */
	ASSERT_EQ(0, attach(&self->p, "timer_kfunc"));
	/* Nothing else happens: the watchdog ejects it (within its second). */
	for (i = 0; i < 60; i++) {
		stats(self->client, &st);
		if (st.out_policy_state != LLMOS_POLICY_BPF)
			break;
		usleep(50 * 1000);
	}
	EXPECT_EQ(LLMOS_POLICY_EJECTED, st.out_policy_state);
	EXPECT_EQ(LLMOS_EXIT_MISUSE, st.out_exit_kind);
	EXPECT_STREQ("timer_kfunc", st.out_policy);
	/* And the built-in policy serves. */
	ASSERT_LT(0, submit(self->client, 1, 0, 1, 0));
	EXPECT_LT(0, serve_one(self->worker));
}

TEST_F(policy, a_fault_in_completed_ejects_at_that_complete)
{
	struct llmos_sched_stats st;

	ASSERT_EQ(0, attach(&self->p, "error_completed"));
	ASSERT_LT(0, submit(self->client, 1, 0, 1, 0));
	ASSERT_LT(0, submit(self->client, 1, 0, 1, 0));
	EXPECT_LT(0, serve_one(self->worker)); /* its completed callback errs */
	stats(self->client, &st);
	EXPECT_EQ(LLMOS_POLICY_EJECTED, st.out_policy_state);
	EXPECT_EQ(LLMOS_EXIT_ERROR, st.out_exit_kind);
	EXPECT_EQ(7, st.out_exit_code);
	EXPECT_LT(0, serve_one(self->worker)); /* the built-in policy has it */
}

TEST_F(policy, a_worker_gets_what_a_policy_ejected_in_its_dispatch_gave_back)
{
	struct llmos_sched_stats st;
	struct timespec wall;
	long long id;

	ASSERT_EQ(0, attach(&self->p, "bad_dispatch"));
	id = submit(self->client, 1, 0, 1, 0);
	ASSERT_LT(0, id);
	/* A blocking DISPATCH: the policy is ejected inside it. */
	clock_gettime(CLOCK_MONOTONIC, &wall);
	EXPECT_EQ(id, take_start_complete(self->worker, 0));
	EXPECT_GT(2000, ms_since(CLOCK_MONOTONIC, &wall));
	stats(self->client, &st);
	EXPECT_EQ(LLMOS_POLICY_EJECTED, st.out_policy_state);
	EXPECT_EQ(LLMOS_EXIT_MISUSE, st.out_exit_kind);
}

TEST_F(policy, only_policy_data_is_writable)
{
	/* The verifier refuses a write to any other request field. */
	EXPECT_NE(0, attach(&self->p, "write_field"));
	EXPECT_EQ(NULL, self->p.link);
}

struct flow {
	int client, worker;
	atomic_int stop;
	long submitted, completed, errors;
};

/* Requests flow through one client and one worker while policies change. */
static void *flow_run(void *arg)
{
	struct flow *f = arg;

	while (!f->stop) {
		struct llmos_wait w = { .size = sizeof(w), .timeout_ms = 10000 };
		long long got;

		if (submit(f->client, f->submitted % 3, 0, 1, 0) < 0) {
			f->errors++;
			break;
		}
		f->submitted++;
		/* The worker may find it only once the policy released it. */
		do {
			got = serve_one(f->worker);
		} while (got == -EAGAIN && !f->stop);
		if (got < 0 && got != -EAGAIN)
			f->errors++;
		if (ioctl(f->client, LLMOS_IOC_WAIT, &w) || w.out_state != LLMOS_REQ_COMPLETED)
			f->errors++;
		else
			f->completed++;
	}
	return NULL;
}

TEST_F_TIMEOUT(policy, attach_detach_cycles_under_load_lose_nothing, 900)
{
	const char *scale = getenv("LLMOS_TEST_SCALE");
	int cycles = (int)(1000 * (scale && atof(scale) > 0 ? atof(scale) : 1));
	struct flow f = { .client = self->client, .worker = self->worker };
	struct bpf_map *map, *ops = NULL;
	struct llmos_sched_stats st;
	pthread_t t;

	if (cycles < 20)
		cycles = 20; /* a race that does not run cannot fail */
	libbpf_set_print(silent);
	self->p.obj = bpf_object__open_file("/bpf/fifo.bpf.o", NULL);
	ASSERT_NE(NULL, self->p.obj);
	bpf_object__for_each_map(map, self->p.obj)
		if (bpf_map__type(map) == BPF_MAP_TYPE_STRUCT_OPS)
			ops = map;
	ASSERT_NE(NULL, ops);
	ASSERT_EQ(0, bpf_object__load(self->p.obj));
	ASSERT_EQ(0, pthread_create(&t, NULL, flow_run, &f));
	for (int i = 0; i < cycles; i++) {
		struct bpf_link *link = bpf_map__attach_struct_ops(ops);

		/* The previous one may still be on its way out (RCU). */
		for (int k = 0; !link && errno == EBUSY && k < 100; k++) {
			usleep(10 * 1000);
			link = bpf_map__attach_struct_ops(ops);
		}
		ASSERT_NE(NULL, link) {
			TH_LOG("cycle %d: %s", i, strerror(errno));
		}
		bpf_link__destroy(link);
	}
	f.stop = 1;
	pthread_join(t, NULL);
	self->p.link = NULL;
	EXPECT_EQ(0, f.errors);
	EXPECT_EQ(f.submitted, f.completed);
	EXPECT_LT(0, f.completed);
	stats(self->client, &st);
	EXPECT_EQ(0, st.out_nr[LLMOS_REQ_QUEUED]);
	TH_LOG("%d attach/detach cycles, %ld requests through them", cycles, f.completed);
}

/*
 * An init that reports an error (or misuses a kfunc) but returns 0 does
 * not attach: the built-in policy stays, the exit info says why.
 */
TEST_F(policy, an_init_that_reports_an_error_does_not_attach)
{
	struct llmos_sched_stats st;

	EXPECT_EQ(-EINVAL, attach(&self->p, "error_init"));
	EXPECT_EQ(NULL, self->p.link);
	stats(self->client, &st);
	EXPECT_EQ(LLMOS_POLICY_BUILTIN, st.out_policy_state);
	EXPECT_EQ(LLMOS_EXIT_ERROR, st.out_exit_kind);
	EXPECT_EQ(11, st.out_exit_code);
	/* Nothing stays attached: another policy attaches, and serves. */
	detach(&self->p);
	ASSERT_EQ(0, attach(&self->p, "fifo"));
	ASSERT_LT(0, submit(self->client, 0, 0, 1, 0));
	EXPECT_LT(0, serve_one(self->worker));
}

/*
 * An init that returns something other than 0 or an errno does not
 * attach, and the loader gets EINVAL (not a number it would take for a
 * file descriptor); the exit info keeps what init returned.
 */
TEST_F(policy, an_init_that_returns_a_positive_value_does_not_attach)
{
	struct llmos_sched_stats st;

	EXPECT_EQ(-EINVAL, attach(&self->p, "init_positive"));
	EXPECT_EQ(NULL, self->p.link);
	stats(self->client, &st);
	EXPECT_EQ(LLMOS_POLICY_BUILTIN, st.out_policy_state);
	EXPECT_EQ(LLMOS_EXIT_INIT, st.out_exit_kind);
	EXPECT_EQ(1, st.out_exit_code);
	/* Standard output is still this program's. */
	EXPECT_EQ(0, fflush(stdout));
	EXPECT_NE(-1, fcntl(1, F_GETFD));
	detach(&self->p);
}

/* A watchdog limit past the most allowed is refused at attach. */
TEST_F(policy, a_watchdog_limit_past_ten_minutes_is_refused)
{
	struct llmos_sched_stats st;

	EXPECT_EQ(-EINVAL, attach(&self->p, "long_timeout"));
	EXPECT_EQ(NULL, self->p.link);
	stats(self->client, &st);
	EXPECT_EQ(LLMOS_POLICY_BUILTIN, st.out_policy_state);
	detach(&self->p);
	ASSERT_EQ(0, attach(&self->p, "fifo"));
}

/* A policy attached by a map update has no link: refused. */
TEST_F(policy, a_policy_without_a_link_is_refused)
{
	struct llmos_sched_stats st;

	EXPECT_EQ(-EOPNOTSUPP, attach(&self->p, "unlinked"));
	stats(self->client, &st);
	EXPECT_EQ(LLMOS_POLICY_BUILTIN, st.out_policy_state);
}

static int unprivileged_attach(int unused, __u64 unused2)
{
	struct policy p;

	if (setgid(1000) || setuid(1000))
		return 10;
	return attach(&p, "fifo") == -EPERM ? 0 : 11;
}

TEST_F(policy, only_root_attaches)
{
	EXPECT_EQ(0, in_child(unprivileged_attach, -1, 0));
}

TEST_HARNESS_MAIN
