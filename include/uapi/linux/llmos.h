/* SPDX-License-Identifier: (GPL-2.0 WITH Linux-syscall-note) OR MIT */
/*
 * llmos: an operating-system layer for running language models.
 *
 * The userspace ABI of /dev/llmos.
 */
#ifndef _UAPI_LINUX_LLMOS_H
#define _UAPI_LINUX_LLMOS_H

#include <linux/ioctl.h>
#include <linux/types.h>

/**
 * DOC: General ioctl format
 *
 * Every command is ``_IO(LLMOS_TYPE, LLMOS_CMD_BASE + n)``: the argument is
 * a pointer to a command struct whose first two members are ``__u32 size``
 * and ``__u32 flags``. The size, not the command number, carries the length
 * of the struct, so a struct can grow without a new command number.
 *
 * The kernel accepts any ``size`` from the length of the struct as first
 * published. Bytes past the end of the struct the kernel knows must be zero.
 * Output fields (named ``out_*``) are written back for as many bytes as both
 * sides know.
 *
 * Errors common to all commands:
 *
 * - ENOTTY: unknown command.
 * - EFAULT: the argument pointer (or a pointer in the struct) is not
 *   readable or writable.
 * - EINVAL: ``size`` smaller than the first published struct, an unknown
 *   bit in ``flags``, or a non-zero ``__reserved`` field.
 * - E2BIG: ``size`` larger than the struct the kernel knows, with non-zero
 *   bytes in the part it does not know.
 *
 * Errors specific to a command are listed with it.
 */

/* Unused in Documentation/userspace-api/ioctl/ioctl-number.rst (6.12). */
#define LLMOS_TYPE 0xB9
#define LLMOS_CMD_BASE 0x00

/* Version of this ABI; minor grows with compatible additions. */
#define LLMOS_ABI_MAJOR 1
#define LLMOS_ABI_MINOR 0

enum {
	LLMOS_CMD_VERSION = LLMOS_CMD_BASE,
};

/**
 * enum llmos_feature - capabilities reported by %LLMOS_IOC_VERSION
 * @LLMOS_FEATURE_VERSION: the VERSION command itself; always set.
 *
 * A bit is set only when the module implements that part of the ABI.
 */
enum llmos_feature {
	LLMOS_FEATURE_VERSION = 1 << 0,
};

/**
 * struct llmos_version - ioctl(LLMOS_IOC_VERSION)
 * @size: sizeof(struct llmos_version)
 * @flags: must be 0
 * @out_abi_major: ABI major version (%LLMOS_ABI_MAJOR); a change means an
 *	incompatible ABI
 * @out_abi_minor: ABI minor version (%LLMOS_ABI_MINOR)
 * @out_features: bit mask of &enum llmos_feature
 *
 * Reports the ABI version and the features the loaded module implements.
 * Needs no privilege. No errors beyond the common ones.
 */
struct llmos_version {
	__u32 size;
	__u32 flags;
	__u32 out_abi_major;
	__u32 out_abi_minor;
	__aligned_u64 out_features;
};

#define LLMOS_IOC_VERSION _IO(LLMOS_TYPE, LLMOS_CMD_VERSION)

#endif /* _UAPI_LINUX_LLMOS_H */
