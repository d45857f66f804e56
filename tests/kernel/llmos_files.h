/* SPDX-License-Identifier: MIT */
/*
 * The kernel tests' access to the module's files: its parameters in
 * /sys/module/llmos/parameters and its debugfs counters and tables.
 */
#ifndef LLMOS_TEST_FILES_H
#define LLMOS_TEST_FILES_H

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define COUNTERS "/sys/kernel/debug/llmos/counters"
#define TENANT_GRANTS "/sys/kernel/debug/llmos/tenant_grants"

/*
 * Write @val to the file at @path, as the shell's ">" does (truncating:
 * tracefs's trace file is cleared so): 0 or -errno.
 */
static inline int write_file(const char *path, const char *val)
{
	int fd = open(path, O_WRONLY | O_TRUNC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = write(fd, val, strlen(val));
	close(fd);
	return n == (ssize_t)strlen(val) ? 0 : -EIO;
}

static inline int write_long(const char *path, long v)
{
	char buf[32];

	snprintf(buf, sizeof(buf), "%ld\n", v);
	return write_file(path, buf);
}

/* The number the file at @path starts with, or -1. */
static inline long read_long(const char *path)
{
	FILE *f = fopen(path, "r");
	long v = -1;

	if (!f)
		return -1;
	if (fscanf(f, "%ld", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

/* The module's debugfs counter @name, or -1. */
static inline long counter(const char *name)
{
	char key[64];
	long val, found = -1;
	FILE *f = fopen(COUNTERS, "r");

	if (!f)
		return -1;
	while (fscanf(f, "%63s %ld", key, &val) == 2) {
		if (!strcmp(key, name))
			found = val;
	}
	fclose(f);
	return found;
}

/* Whether the file at @path has the line @want (newline included). */
static inline int has_line(const char *path, const char *want)
{
	char line[256];
	int found = 0;
	FILE *f = fopen(path, "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		found |= !strcmp(line, want);
	fclose(f);
	return found;
}

#endif /* LLMOS_TEST_FILES_H */
