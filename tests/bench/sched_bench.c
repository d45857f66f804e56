// SPDX-License-Identifier: MIT
/*
 * Scheduler path cost with a no-op worker, in one run: one ioctl per step
 * (SUBMIT, DISPATCH, COMPLETE, WAIT: four system calls per request) against
 * io_uring commands, 32 requests per round trip: 32 SUBMITs and a DISPATCH
 * in one io_uring_enter, then a COMPLETE_BATCH and a WAIT_BATCH in another;
 * and the same with one SUBMIT_BATCH for the 32 SUBMITs. One
 * thread plays client and worker, so no cross-CPU wake-up is measured: only
 * the cost of the path. Reports requests/s and the dispatch latency
 * (submission to dispatch) mean and p99, and the ratio to the ioctl path.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <linux/llmos.h>

#define BATCH 32

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp_u64(const void *a, const void *b)
{
	unsigned long long x = *(const unsigned long long *)a;
	unsigned long long y = *(const unsigned long long *)b;

	return (x > y) - (x < y);
}

struct result {
	double rate;
	double mean_us;
	double p99_us;
};

static void summarize(struct result *r, unsigned long long *lat, int n,
		      double secs)
{
	double sum = 0;

	qsort(lat, n, sizeof(*lat), cmp_u64);
	for (int i = 0; i < n; i++)
		sum += lat[i];
	r->rate = n / secs;
	r->mean_us = sum / n / 1000;
	r->p99_us = lat[(int)(n * 0.99)] / 1000.0;
}

static int run_ioctl(int client, int worker, int n, struct result *r)
{
	unsigned long long *lat = calloc(n, sizeof(*lat));
	struct llmos_req_desc desc;
	double t0 = now_s();

	for (int i = 0; i < n; i++) {
		struct llmos_submit s = { .size = sizeof(s), .tenant = i % 4 };
		struct llmos_dispatch d = {
			.size = sizeof(d), .flags = LLMOS_NONBLOCK,
			.descs_uptr = (__u64)(uintptr_t)&desc,
			.desc_size = sizeof(desc), .max = 1,
		};
		struct llmos_complete c = { .size = sizeof(c) };
		struct llmos_wait w = { .size = sizeof(w), .flags = LLMOS_NONBLOCK };

		if (ioctl(client, LLMOS_IOC_SUBMIT, &s) ||
		    ioctl(worker, LLMOS_IOC_DISPATCH, &d) || d.out_count != 1)
			return -1;
		c.id = desc.id;
		if (ioctl(worker, LLMOS_IOC_COMPLETE, &c) ||
		    ioctl(client, LLMOS_IOC_WAIT, &w))
			return -1;
		lat[i] = w.out_dispatch_ns - w.out_submit_ns;
	}
	summarize(r, lat, n, now_s() - t0);
	free(lat);
	return 0;
}

static void prep(struct io_uring *ring, int fd, __u32 op, void *arg)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
	struct llmos_uring_sqe *c;

	if (!sqe) /* the ring holds 4 batches: cannot happen */
		abort();
	memset(sqe, 0, sizeof(*sqe));
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = fd;
	sqe->cmd_op = op;
	c = (struct llmos_uring_sqe *)sqe->cmd;
	c->arg_uptr = (__u64)(uintptr_t)arg;
}

/* Submit what is queued and reap @n CQEs; returns the last res or -1. */
static int reap(struct io_uring *ring, int n)
{
	struct io_uring_cqe *cqe;
	int res = 0;

	if (io_uring_submit_and_wait(ring, n) < 0)
		return -1;
	for (int i = 0; i < n; i++) {
		if (io_uring_wait_cqe(ring, &cqe))
			return -1;
		if (cqe->res < 0)
			res = -1;
		else if (res >= 0)
			res = cqe->res;
		io_uring_cqe_seen(ring, cqe);
	}
	return res;
}

static int run_uring(int client, int worker, int n, bool batch_submit,
		     struct result *r)
{
	unsigned long long *lat = calloc(n, sizeof(*lat));
	struct llmos_submit s[BATCH];
	struct llmos_submit_entry se[BATCH];
	struct llmos_submit_batch sb = {
		.size = sizeof(sb), .entries_uptr = (__u64)(uintptr_t)se,
		.entry_size = sizeof(se[0]),
	};
	struct llmos_req_desc desc[BATCH];
	struct llmos_complete_entry ce[BATCH];
	struct llmos_finished fin[BATCH];
	struct llmos_dispatch d = {
		.size = sizeof(d), .flags = LLMOS_NONBLOCK,
		.descs_uptr = (__u64)(uintptr_t)desc, .desc_size = sizeof(desc[0]),
		.max = BATCH,
	};
	struct llmos_complete_batch cb = {
		.size = sizeof(cb), .entries_uptr = (__u64)(uintptr_t)ce,
		.entry_size = sizeof(ce[0]),
	};
	struct llmos_wait_batch wb = {
		.size = sizeof(wb), .flags = LLMOS_NONBLOCK,
		.entries_uptr = (__u64)(uintptr_t)fin, .entry_size = sizeof(fin[0]),
		.max = BATCH,
	};
	struct io_uring ring;
	double t0;
	int done = 0;

	if (io_uring_queue_init(4 * BATCH, &ring, 0))
		return -1;
	t0 = now_s();
	while (done < n) {
		int k = n - done < BATCH ? n - done : BATCH, got;

		if (batch_submit) {
			memset(se, 0, sizeof(se));
			for (int i = 0; i < k; i++)
				se[i].tenant = i % 4;
			sb.count = k;
			prep(&ring, client, LLMOS_IOC_SUBMIT_BATCH, &sb);
		} else {
			for (int i = 0; i < k; i++) {
				memset(&s[i], 0, sizeof(s[i]));
				s[i].size = sizeof(s[i]);
				s[i].tenant = i % 4;
				prep(&ring, client, LLMOS_IOC_SUBMIT, &s[i]);
			}
		}
		prep(&ring, worker, LLMOS_IOC_DISPATCH, &d);
		/* Submissions run inline, in order, before the DISPATCH. */
		got = reap(&ring, (batch_submit ? 1 : k) + 1);
		if (got != k)
			return -1;
		memset(ce, 0, sizeof(ce));
		for (int i = 0; i < k; i++)
			ce[i].id = desc[i].id;
		cb.count = k;
		prep(&ring, worker, LLMOS_IOC_COMPLETE_BATCH, &cb);
		prep(&ring, client, LLMOS_IOC_WAIT_BATCH, &wb);
		if (reap(&ring, 2) != k || cb.out_done != (__u32)k)
			return -1;
		for (int i = 0; i < k; i++)
			lat[done + i] = fin[i].dispatch_ns - fin[i].submit_ns;
		done += k;
	}
	summarize(r, lat, n, now_s() - t0);
	io_uring_queue_exit(&ring);
	free(lat);
	return 0;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 20000, rounds = 3;
	struct result res[3][3];
	static const char *const names[3] = {
		"ioctl per step", "io_uring, per request", "io_uring, batch cmds",
	};
	struct llmos_worker_register reg = {
		.size = sizeof(reg), .capacity = BATCH, .numa_node = -1,
	};
	int client = open("/dev/llmos", O_RDWR), worker = open("/dev/llmos", O_RDWR);

	if (client < 0 || worker < 0 ||
	    ioctl(worker, LLMOS_IOC_WORKER_REGISTER, &reg)) {
		perror("/dev/llmos");
		return 1;
	}
	/* Interleave the paths so that drift hits them alike. */
	for (int i = 0; i < rounds; i++) {
		if (run_ioctl(client, worker, n, &res[0][i]) ||
		    run_uring(client, worker, n, false, &res[1][i]) ||
		    run_uring(client, worker, n, true, &res[2][i])) {
			fprintf(stderr, "sched_bench: a step failed: %s\n", strerror(errno));
			return 1;
		}
	}
	printf("# sched_bench: no-op worker, %d requests x %d rounds (best round), one thread\n",
	       n, rounds);
	printf("# %-22s %12s %10s %12s %12s\n", "path", "requests/s", "ratio",
	       "mean us", "p99 us");
	for (int p = 0; p < 3; p++) {
		for (int i = 1; i < rounds; i++)
			if (res[p][i].rate > res[p][0].rate)
				res[p][0] = res[p][i];
		printf("  %-22s %12.0f %10.2f %12.1f %12.1f\n", names[p], res[p][0].rate,
		       res[p][0].rate / res[0][0].rate, res[p][0].mean_us, res[p][0].p99_us);
	}
	close(worker);
	close(client);
	return 0;
}
