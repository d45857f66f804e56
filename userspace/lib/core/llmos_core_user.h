/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * What kmod/core/ needs from the kernel, for its userspace build.
 */
#ifndef _LLMOS_CORE_USER_H
#define _LLMOS_CORE_USER_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef uint8_t u8;
typedef uint32_t u32;
typedef int32_t s32;
typedef uint64_t u64;

#ifndef BIT_ULL
#define BIT_ULL(n) (1ull << (n))
#endif

#ifndef likely
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#endif

#endif /* _LLMOS_CORE_USER_H */
