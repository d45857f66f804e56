// SPDX-License-Identifier: MIT
/*
 * BPF policies against the built-in one, in one guest run:
 *
 * 1. per-request scheduling cost (submit, dispatch, complete, wait by
 *    ioctl, no-op worker) with the built-in policy, fifo and wfq attached;
 * 2. wait of short requests under a mixed load, sjf against fifo: requests
 *    of 1..8 expected tokens arrive steadily, bursts of ten of 100..200
 *    tokens now and then; a worker of
 *    capacity 1 "serves" each for as many virtual time units as its cost,
 *    so waits are measured in that virtual time, the same for both;
 * 3. Jain's fairness index of the tokens served to 4 equally weighted,
 *    always backlogged tenants with mixed costs, under wfq.
 */
#define _GNU_SOURCE
#include <bpf/libbpf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <linux/llmos.h>

struct policy {
	struct bpf_object *obj;
	struct bpf_link *link;
};

static int quiet(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	return level == LIBBPF_WARN ? vfprintf(stderr, fmt, ap) : 0;
}

static int attach(struct policy *p, const char *name)
{
	struct bpf_map *map, *ops = NULL;
	char path[64];

	snprintf(path, sizeof(path), "/bpf/%s.bpf.o", name);
	p->obj = bpf_object__open_file(path, NULL);
	if (!p->obj)
		return -1;
	bpf_object__for_each_map(map, p->obj)
		if (bpf_map__type(map) == BPF_MAP_TYPE_STRUCT_OPS)
			ops = map;
	if (!ops || bpf_object__load(p->obj))
		return -1;
	p->link = bpf_map__attach_struct_ops(ops);
	return p->link ? 0 : -1;
}

static void detach(struct policy *p)
{
	if (p->obj) {
		bpf_link__destroy(p->link);
		bpf_object__close(p->obj);
	}
	memset(p, 0, sizeof(*p));
	usleep(200 * 1000); /* the old map goes after an RCU grace period */
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long long submit(int fd, __u32 tenant, __u32 cost)
{
	struct llmos_submit s = {
		.size = sizeof(s), .tenant = tenant, .cost = cost,
	};

	return ioctl(fd, LLMOS_IOC_SUBMIT, &s) ? -1 : (long long)s.out_id;
}

static int take(int worker, struct llmos_req_desc *d)
{
	struct llmos_dispatch c = {
		.size = sizeof(c), .flags = LLMOS_NONBLOCK,
		.descs_uptr = (__u64)(uintptr_t)d, .desc_size = sizeof(*d),
		.max = 1,
	};

	return ioctl(worker, LLMOS_IOC_DISPATCH, &c) ? -1 : 0;
}

static int finish(int worker, int client, __u64 id, __u32 tokens)
{
	struct llmos_complete c = { .size = sizeof(c), .id = id, .tokens = tokens };
	struct llmos_wait w = { .size = sizeof(w), .flags = LLMOS_NONBLOCK };

	if (ioctl(worker, LLMOS_IOC_COMPLETE, &c))
		return -1;
	return ioctl(client, LLMOS_IOC_WAIT, &w);
}

/* Requests per second through one client and one no-op worker. */
static double path_rate(int client, int worker, int n)
{
	struct llmos_req_desc d;
	double t0 = now_s();

	for (int i = 0; i < n; i++) {
		if (submit(client, i % 4, 1) < 0 || take(worker, &d) ||
		    finish(worker, client, d.id, 1))
			return -1;
	}
	return n / (now_s() - t0);
}

static int cmp_ll(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;

	return (x > y) - (x < y);
}

/*
 * Mixed load in virtual time: every 16 time units a short (1..8) request
 * arrives; every 3000 a burst of 10 long (100..200) ones. The p99 wait of
 * the short ones.
 */
static long long short_p99(int client, int worker, int n_short)
{
	long long *waits = calloc(n_short, sizeof(*waits)), clock = 0, p99;
	long long *arrive = calloc(8 * n_short, sizeof(*arrive));
	int *is_short = calloc(8 * n_short, sizeof(*is_short));
	long long first = -1, next_short = 0, next_long = 0;
	int shorts = 0, done_short = 0;
	unsigned int seed = 7;

	while (done_short < n_short) {
		struct llmos_req_desc d;

		/* Arrivals up to now. */
		while (shorts < n_short && next_short <= clock) {
			long long id = submit(client, 0, 1 + rand_r(&seed) % 8);

			if (first < 0)
				first = id;
			arrive[id - first] = next_short;
			is_short[id - first] = 1;
			shorts++;
			next_short += 16;
		}
		while (next_long <= clock) {
			for (int k = 0; k < 10; k++) {
				long long id = submit(client, 0, 100 + rand_r(&seed) % 100);

				if (first < 0)
					first = id;
				arrive[id - first] = next_long;
			}
			next_long += 3000;
		}
		if (take(worker, &d)) {
			clock = next_short < next_long ? next_short : next_long;
			continue;
		}
		if (is_short[d.id - first])
			waits[done_short++] = clock - arrive[d.id - first];
		clock += d.cost;
		finish(worker, client, d.id, d.cost);
	}
	/* Drain what is left. */
	for (struct llmos_req_desc d; !take(worker, &d);)
		finish(worker, client, d.id, d.cost);
	qsort(waits, n_short, sizeof(*waits), cmp_ll);
	p99 = waits[(int)(n_short * 0.99)];
	free(waits);
	free(arrive);
	free(is_short);
	return p99;
}

static double jain_wfq(int client, int worker, int n)
{
	double tokens[4] = { 0 }, sum = 0, sq = 0;
	struct llmos_req_desc d;
	unsigned int seed = 3;

	for (int i = 0; i < 2 * n; i++)
		submit(client, i % 4, 1 + rand_r(&seed) % 32);
	for (int i = 0; i < n; i++) {
		if (take(worker, &d))
			break;
		tokens[d.tenant % 4] += d.cost;
		finish(worker, client, d.id, d.cost);
	}
	for (struct llmos_req_desc e; !take(worker, &e);)
		finish(worker, client, e.id, e.cost);
	for (int t = 0; t < 4; t++) {
		sum += tokens[t];
		sq += tokens[t] * tokens[t];
	}
	return sum * sum / (4 * sq);
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 20000;
	struct llmos_worker_register r = {
		.size = sizeof(r), .capacity = 1, .numa_node = -1,
	};
	int client = open("/dev/llmos", O_RDWR), worker = open("/dev/llmos", O_RDWR);
	double builtin = 0, fifo = 0, wfq = 0;
	struct policy p = { 0 };
	long long p99_fifo, p99_sjf;

	libbpf_set_print(quiet);
	if (client < 0 || worker < 0 || ioctl(worker, LLMOS_IOC_WORKER_REGISTER, &r)) {
		perror("/dev/llmos");
		return 1;
	}
	if (access("/bpf/fifo.bpf.o", R_OK)) {
		printf("# policy_bench: no /bpf policies in this image, skipped\n");
		return 0;
	}
	/* Best of three, interleaved. */
	for (int round = 0; round < 3; round++) {
		double b, f, w;

		b = path_rate(client, worker, n);
		if (attach(&p, "fifo"))
			return 1;
		f = path_rate(client, worker, n);
		detach(&p);
		if (attach(&p, "wfq"))
			return 1;
		w = path_rate(client, worker, n);
		detach(&p);
		builtin = b > builtin ? b : builtin;
		fifo = f > fifo ? f : fifo;
		wfq = w > wfq ? w : wfq;
	}
	if (attach(&p, "fifo"))
		return 1;
	p99_fifo = short_p99(client, worker, 2000);
	detach(&p);
	if (attach(&p, "sjf"))
		return 1;
	p99_sjf = short_p99(client, worker, 2000);
	detach(&p);
	if (attach(&p, "wfq"))
		return 1;
	double jain = jain_wfq(client, worker, 4000);

	detach(&p);
	printf("# policy_bench: %d requests per path, best of 3, no-op worker\n", n);
	printf("# %-22s %12s %14s\n", "policy", "requests/s", "cost vs built-in");
	printf("  %-22s %12.0f %14.2f\n", "built-in", builtin, 1.0);
	printf("  %-22s %12.0f %14.2f\n", "bpf fifo", fifo, builtin / fifo);
	printf("  %-22s %12.0f %14.2f\n", "bpf wfq", wfq, builtin / wfq);
	printf("# p99 wait (virtual time) of short requests among long bursts\n");
	printf("  %-22s %12lld\n  %-22s %12lld   (%.1fx lower)\n", "fifo", p99_fifo, "sjf",
	       p99_sjf, p99_sjf ? (double)p99_fifo / p99_sjf : 0.0);
	printf("# Jain's fairness index, tokens served to 4 equal tenants under wfq: %.4f\n", jain);
	return 0;
}
