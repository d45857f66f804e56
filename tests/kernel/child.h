/* SPDX-License-Identifier: MIT */
/*
 * The kernel tests' way to act as another process (another user, a worker
 * that crashes): a function run in a forked child, its result its exit
 * status.
 */
#ifndef LLMOS_TEST_CHILD_H
#define LLMOS_TEST_CHILD_H

#include <linux/types.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/*
 * Runs @fn(@fd, @arg) in a child process (which shares @fd's file): its
 * exit status, 128 + the number of the signal that ended it, or -1 when it
 * could not run. A child's @fn returns 0 when all it checked held, else
 * which check failed.
 */
static inline int in_child(int (*fn)(int fd, __u64 arg), int fd, __u64 arg)
{
	int status;
	pid_t pid = fork();

	if (pid < 0)
		return -1;
	if (pid == 0)
		_exit(fn(fd, arg));
	if (waitpid(pid, &status, 0) != pid)
		return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) :
				   128 + WTERMSIG(status);
}

#endif /* LLMOS_TEST_CHILD_H */
