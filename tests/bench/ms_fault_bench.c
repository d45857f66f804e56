// SPDX-License-Identifier: MIT
/*
 * Page-fault cost of a host-backed mindspace against baselines, measured in
 * one run: first touch (write) of every 4 KiB page of a fresh mapping.
 *
 *   anon-private  mmap(MAP_PRIVATE | MAP_ANONYMOUS)   the baseline
 *   anon-shared   mmap(MAP_SHARED | MAP_ANONYMOUS)    shmem
 *   mindspace     a new llmos mindspace, MAP_SHARED   allocation in ->fault
 *   mindspace-2nd a second mapping of the same, already populated mindspace
 *
 * Reports the median over the rounds of ns per page, and each as a ratio to
 * the baseline. Under emulation only the ratios mean anything.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <linux/llmos.h>

#define PAGE 4096UL

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double touch(char *p, size_t pages)
{
	double t0 = now_ns();

	for (size_t i = 0; i < pages; i++)
		p[i * PAGE] = (char)i;
	return (now_ns() - t0) / pages;
}

enum kind { ANON_PRIVATE, ANON_SHARED, MINDSPACE, MINDSPACE_2ND, KINDS };
static const char *const names[KINDS] = {
	"anon-private", "anon-shared", "mindspace", "mindspace-2nd",
};

static double one(int dev, enum kind k, size_t pages)
{
	struct llmos_ms_create c = { .size = sizeof(c), .length = pages * PAGE };
	size_t len = pages * PAGE;
	double ns;
	char *p;

	if (k == ANON_PRIVATE || k == ANON_SHARED) {
		p = mmap(NULL, len, PROT_READ | PROT_WRITE,
			 MAP_ANONYMOUS | (k == ANON_SHARED ? MAP_SHARED : MAP_PRIVATE), -1, 0);
		if (p == MAP_FAILED)
			return -1;
		ns = touch(p, pages);
		munmap(p, len);
		return ns;
	}
	if (ioctl(dev, LLMOS_IOC_MS_CREATE, &c))
		return -1;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, c.out_fd, 0);
	if (p == MAP_FAILED)
		return -1;
	ns = touch(p, pages);
	if (k == MINDSPACE_2ND) {
		char *q = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, c.out_fd, 0);

		if (q == MAP_FAILED)
			return -1;
		ns = touch(q, pages);
		munmap(q, len);
	}
	munmap(p, len);
	close(c.out_fd);
	return ns;
}

int main(int argc, char **argv)
{
	size_t pages = argc > 1 ? strtoul(argv[1], NULL, 0) : 8192;
	int rounds = argc > 2 ? atoi(argv[2]) : 15;
	double res[KINDS][64], med[KINDS];
	int dev = open("/dev/llmos", O_RDWR | O_CLOEXEC);

	if (dev < 0) {
		perror("/dev/llmos");
		return 1;
	}
	if (rounds < 1 || rounds > 64)
		rounds = 15;
	/* Interleave the kinds so that drift hits them alike. */
	for (int r = 0; r < rounds; r++) {
		for (int k = 0; k < KINDS; k++) {
			res[k][r] = one(dev, k, pages);
			if (res[k][r] < 0) {
				perror(names[k]);
				return 1;
			}
		}
	}
	printf("# ms_fault_bench: first write to each 4 KiB page, %zu pages, median of %d rounds\n",
	       pages, rounds);
	printf("# %-14s %10s %10s\n", "mapping", "ns/page", "ratio");
	for (int k = 0; k < KINDS; k++) {
		qsort(res[k], rounds, sizeof(double), cmp_double);
		med[k] = res[k][rounds / 2];
	}
	for (int k = 0; k < KINDS; k++)
		printf("  %-14s %10.0f %10.2f\n", names[k], med[k], med[k] / med[ANON_PRIVATE]);
	close(dev);
	return 0;
}
