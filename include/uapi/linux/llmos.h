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
 *   bytes in the part it does not know, or larger than a page (4 KiB on
 *   x86-64) whatever it holds.
 *
 * Errors specific to a command are listed with it.
 */

/* Unused in Documentation/userspace-api/ioctl/ioctl-number.rst (6.12). */
#define LLMOS_TYPE 0xB9
#define LLMOS_CMD_BASE 0x00

/* Version of this ABI; minor grows with compatible additions. */
#define LLMOS_ABI_MAJOR 1
#define LLMOS_ABI_MINOR 3

enum {
	LLMOS_CMD_VERSION = LLMOS_CMD_BASE,
	LLMOS_CMD_MS_CREATE,
	LLMOS_CMD_MS_OPEN,
	LLMOS_CMD_MS_DESTROY,
	LLMOS_CMD_MS_LIST,
	LLMOS_CMD_MS_INFO,
	LLMOS_CMD_QUOTA,
	LLMOS_CMD_WORKER_REGISTER,
	LLMOS_CMD_SUBMIT,
	LLMOS_CMD_DISPATCH,
	LLMOS_CMD_START,
	LLMOS_CMD_COMPLETE,
	LLMOS_CMD_CANCEL,
	LLMOS_CMD_WAIT,
	LLMOS_CMD_SET_WEIGHT,
	LLMOS_CMD_STATS,
	LLMOS_CMD_COMPLETE_BATCH,
	LLMOS_CMD_WAIT_BATCH,
	LLMOS_CMD_SUBMIT_BATCH,
	LLMOS_CMD_TENANT_GRANT,
};

/* Commands on a mindspace fd (the fd MS_CREATE and MS_OPEN return). */
#define LLMOS_MSFD_CMD_BASE 0x40

enum {
	LLMOS_CMD_MSFD_INFO = LLMOS_MSFD_CMD_BASE,
	LLMOS_CMD_MSFD_EXPORT_DMABUF,
};

/**
 * enum llmos_feature - capabilities reported by %LLMOS_IOC_VERSION
 * @LLMOS_FEATURE_VERSION: the VERSION command itself; always set.
 * @LLMOS_FEATURE_MINDSPACE: host-backed mindspaces: MS_CREATE, MS_OPEN,
 *	MS_DESTROY, MS_LIST, MS_INFO, QUOTA and the mindspace fd commands.
 * @LLMOS_FEATURE_MS_DMABUF: mindspaces backed by an imported dma-buf
 *	(%LLMOS_MS_DMABUF) and EXPORT_DMABUF.
 * @LLMOS_FEATURE_BPF_POLICY: BPF scheduling policies (struct_ops
 *	llmos_sched_ops) can be attached.
 * @LLMOS_FEATURE_SCHED_RETURN: COMPLETE and COMPLETE_BATCH take
 *	%LLMOS_COMPLETE_RETURN (ABI 1.1).
 * @LLMOS_FEATURE_TENANT_GRANT: SUBMIT checks the caller may name the
 *	tenant; TENANT_GRANT (ABI 1.2).
 * @LLMOS_FEATURE_WORKER_GRANT: WORKER_REGISTER needs %CAP_SYS_ADMIN or
 *	a grant with %LLMOS_GRANT_WORKER (ABI 1.3).
 * @LLMOS_FEATURE_SCHED: the request scheduler: WORKER_REGISTER, SUBMIT,
 *	DISPATCH, START, COMPLETE, CANCEL, WAIT, SET_WEIGHT, STATS,
 *	SUBMIT_BATCH, COMPLETE_BATCH and WAIT_BATCH, also as io_uring
 *	commands.
 *
 * A bit is set only when the module implements that part of the ABI.
 */
enum llmos_feature {
	LLMOS_FEATURE_VERSION = 1 << 0,
	LLMOS_FEATURE_MINDSPACE = 1 << 1,
	LLMOS_FEATURE_MS_DMABUF = 1 << 2,
	LLMOS_FEATURE_SCHED = 1 << 3,
	LLMOS_FEATURE_BPF_POLICY = 1 << 4,
	LLMOS_FEATURE_SCHED_RETURN = 1 << 5,
	LLMOS_FEATURE_TENANT_GRANT = 1 << 6,
	LLMOS_FEATURE_WORKER_GRANT = 1 << 7,
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

/**
 * DOC: Mindspaces
 *
 * A mindspace is a named, permission-checked, mmap-able memory region that
 * holds a model's or an agent's working state. It is reached through a
 * mindspace fd (an anonymous inode) that MS_CREATE and MS_OPEN return:
 * mmap() it with %MAP_SHARED at any page-aligned offset and length inside
 * the mindspace; its own commands are %LLMOS_MSFD_IOC_INFO and
 * %LLMOS_MSFD_IOC_EXPORT_DMABUF. lseek() on it works as on a sparse file of
 * the mindspace's length: %SEEK_DATA and %SEEK_HOLE find the pages that
 * have been touched and those that have not, without allocating any (so a
 * large, mostly empty mindspace can be saved without touching its holes).
 *
 * A mindspace is host-backed (pages allocated on first touch, on the
 * requested NUMA node, charged to the memory cgroup of the task that
 * touches them) or backed by an imported dma-buf (%LLMOS_MS_DMABUF).
 *
 * Lifetime: a mindspace lives while a mindspace fd or a mapping of it
 * exists. A %LLMOS_MS_PERSISTENT one also lives with no fd at all, until
 * MS_DESTROY (or module unload); its memory is freed once the last fd and
 * mapping are gone, and stays charged to its owner until then, whoever
 * holds it. A dma-buf mindspace's mappings are the exporter's (mmap hands
 * them to the dma-buf): they keep the dma-buf's memory, not the mindspace,
 * which goes with its last fd unless it is persistent.
 *
 * Ids are never reused while the module is loaded. Names are unique
 * (one namespace for the whole system), 1 to %LLMOS_NAME_MAX - 1
 * characters of ``[A-Za-z0-9._:-]``, starting with a letter, digit or
 * ``_``, not all digits (tools take a number for an id), NUL-terminated;
 * an empty name means an anonymous mindspace.
 *
 * Permissions follow SysV IPC: owner uid/gid (the creator's fsuid/fsgid)
 * and a mode (``0777`` bits); opening checks read (and write, unless
 * %LLMOS_MS_OPEN_RDONLY) permission; %CAP_SYS_ADMIN overrides. Only the
 * owner or %CAP_SYS_ADMIN may destroy.
 *
 * Limits: the bytes of all mindspaces a user created are bounded by its
 * quota (%LLMOS_IOC_QUOTA; default: module parameter ``user_quota_bytes``,
 * 0 = unlimited), the user being the creator's fsuid, or, inside a user
 * namespace, the user the scheduler takes it for (see the scheduler's
 * tenants below: a user's subordinate uids share its quota), and all
 * mindspaces together by the module parameter
 * ``total_limit_bytes`` (0 = unlimited). Both are charged at creation for
 * the full length, so a mindspace never fails on a later page fault
 * because of them.
 *
 * Errors of the mindspace commands, beyond the common ones:
 *
 * - EINVAL: zero, unaligned or too large a length; a bad name; a mode with
 *   bits outside ``0777``; a NUMA node that is not online (or one given
 *   with %LLMOS_MS_DMABUF); both or neither of id and name given where one
 *   is needed;
 *   MS_DESTROY of a mindspace that is not persistent.
 * - EEXIST: the name is taken.
 * - ENOENT: no mindspace with that id or name.
 * - EACCES: the mode does not grant the access asked for; MS_CREATE with
 *   %LLMOS_MS_DMABUF of a dma-buf fd that was not opened read-write.
 * - EPERM: MS_DESTROY by someone other than the owner; QUOTA set, or read
 *   for another uid, without %CAP_SYS_ADMIN.
 * - EDQUOT: the owner's quota would be exceeded.
 * - ENOSPC: the total limit would be exceeded.
 * - EBADF: %LLMOS_MS_DMABUF with a dmabuf_fd that is not open.
 * - EOVERFLOW: MS_LIST with too small a buffer (the count is still
 *   written back).
 * - EOPNOTSUPP: EXPORT_DMABUF of a host-backed mindspace.
 * - ENOMEM: out of kernel memory.
 */

#define LLMOS_NAME_MAX 64
#define LLMOS_NUMA_ANY (-1)

/**
 * enum llmos_ms_flags - flags of MS_CREATE, reported by MS_INFO
 * @LLMOS_MS_PERSISTENT: the mindspace outlives its last fd, until
 *	MS_DESTROY or module unload
 * @LLMOS_MS_DMABUF: back the mindspace with the dma-buf given in
 *	&llmos_ms_create.dmabuf_fd instead of host pages
 * @LLMOS_MS_NODE: allocate host pages on &llmos_ms_create.numa_node
 *	(preferred, not strict); without it, on the node of the task that
 *	touches them
 */
enum llmos_ms_flags {
	LLMOS_MS_PERSISTENT = 1 << 0,
	LLMOS_MS_DMABUF = 1 << 1,
	LLMOS_MS_NODE = 1 << 2,
};

/**
 * struct llmos_ms_create - ioctl(LLMOS_IOC_MS_CREATE)
 * @size: sizeof(struct llmos_ms_create)
 * @flags: &enum llmos_ms_flags
 * @length: size in bytes, a non-zero multiple of the page size. With
 *	%LLMOS_MS_DMABUF, 0 takes the dma-buf's size; otherwise it must equal
 *	the dma-buf's size.
 * @numa_node: with %LLMOS_MS_NODE (host-backed only), the online NUMA
 *	node to allocate pages on; otherwise must be 0
 * @mode: permission bits (``0777``); 0 means ``0600``
 * @dmabuf_fd: with %LLMOS_MS_DMABUF, the dma-buf to import (the mindspace
 *	keeps its own reference; the caller may close the fd); otherwise
 *	must be 0
 * @__reserved: must be 0
 * @name: NUL-terminated name, or empty for an anonymous mindspace
 * @out_id: the new mindspace's id
 * @out_fd: a mindspace fd (read-write, close-on-exec)
 * @__reserved2: must be 0
 */
struct llmos_ms_create {
	__u32 size;
	__u32 flags;
	__aligned_u64 length;
	__s32 numa_node;
	__u32 mode;
	__s32 dmabuf_fd;
	__u32 __reserved;
	char name[LLMOS_NAME_MAX];
	__aligned_u64 out_id;
	__s32 out_fd;
	__u32 __reserved2;
};

#define LLMOS_IOC_MS_CREATE _IO(LLMOS_TYPE, LLMOS_CMD_MS_CREATE)

/**
 * enum llmos_ms_open_flags - flags of MS_OPEN
 * @LLMOS_MS_OPEN_RDONLY: open read-only: needs read permission only; the
 *	fd cannot be mapped writable
 */
enum llmos_ms_open_flags {
	LLMOS_MS_OPEN_RDONLY = 1 << 0,
};

/**
 * struct llmos_ms_open - ioctl(LLMOS_IOC_MS_OPEN)
 * @size: sizeof(struct llmos_ms_open)
 * @flags: &enum llmos_ms_open_flags
 * @id: the mindspace's id, or 0 to open by @name
 * @name: the mindspace's name, or empty to open by @id
 * @out_fd: a mindspace fd (close-on-exec)
 * @__reserved: must be 0
 */
struct llmos_ms_open {
	__u32 size;
	__u32 flags;
	__aligned_u64 id;
	char name[LLMOS_NAME_MAX];
	__s32 out_fd;
	__u32 __reserved;
};

#define LLMOS_IOC_MS_OPEN _IO(LLMOS_TYPE, LLMOS_CMD_MS_OPEN)

/**
 * struct llmos_ms_destroy - ioctl(LLMOS_IOC_MS_DESTROY)
 * @size: sizeof(struct llmos_ms_destroy)
 * @flags: must be 0
 * @id: the mindspace's id, or 0 to name it by @name
 * @name: the mindspace's name, or empty to name it by @id
 *
 * Ends a persistent mindspace: its name is free at once, its memory is
 * freed when the last fd and mapping of it are gone.
 */
struct llmos_ms_destroy {
	__u32 size;
	__u32 flags;
	__aligned_u64 id;
	char name[LLMOS_NAME_MAX];
};

#define LLMOS_IOC_MS_DESTROY _IO(LLMOS_TYPE, LLMOS_CMD_MS_DESTROY)

/**
 * struct llmos_ms_info - what MS_INFO, MS_LIST and MSFD_INFO report
 * @id: the mindspace's id
 * @length: size in bytes
 * @resident: bytes of host memory allocated (touched) so far; for a
 *	dma-buf mindspace, its whole length
 * @created_ns: creation time, CLOCK_REALTIME nanoseconds
 * @flags: &enum llmos_ms_flags
 * @mode: permission bits
 * @uid: owner uid (in the reader's user namespace)
 * @gid: owner gid (in the reader's user namespace)
 * @numa_node: requested NUMA node or %LLMOS_NUMA_ANY
 * @map_count: mappings (VMAs) of it that exist now (host-backed; a
 *	mapping of a dma-buf mindspace is a mapping of the dma-buf itself)
 * @open_count: mindspace fds (open files) that exist now
 * @__reserved: 0
 * @name: its name, empty if anonymous or destroyed
 *
 * Read through a user pointer with an element size: a caller built
 * against a shorter version of this struct gets the prefix it knows.
 */
struct llmos_ms_info {
	__aligned_u64 id;
	__aligned_u64 length;
	__aligned_u64 resident;
	__aligned_u64 created_ns;
	__u32 flags;
	__u32 mode;
	__u32 uid;
	__u32 gid;
	__s32 numa_node;
	__u32 map_count;
	__u32 open_count;
	__u32 __reserved;
	char name[LLMOS_NAME_MAX];
};

/**
 * struct llmos_ms_list - ioctl(LLMOS_IOC_MS_LIST)
 * @size: sizeof(struct llmos_ms_list)
 * @flags: must be 0
 * @entries_uptr: user array of @count elements of @entry_size bytes each
 * @entry_size: size of one element, at least 128 (the first published
 *	struct llmos_ms_info)
 * @count: in: capacity of the array; out: number of mindspaces visible to
 *	the caller. When the capacity is smaller, the first ones (by id) are
 *	written and the ioctl fails with EOVERFLOW (also when mindspaces
 *	keep coming while it counts: call it again).
 *
 * Lists, in id order, the mindspaces the caller may read and the ones it
 * owns whatever their mode, so that it can find them to change or destroy
 * (all of them with %CAP_SYS_ADMIN).
 */
struct llmos_ms_list {
	__u32 size;
	__u32 flags;
	__aligned_u64 entries_uptr;
	__u32 entry_size;
	__u32 count;
};

#define LLMOS_IOC_MS_LIST _IO(LLMOS_TYPE, LLMOS_CMD_MS_LIST)

/**
 * struct llmos_ms_query - ioctl(LLMOS_IOC_MS_INFO) and
 *	ioctl(LLMOS_MSFD_IOC_INFO)
 * @size: sizeof(struct llmos_ms_query)
 * @flags: must be 0
 * @id: on /dev/llmos: the mindspace's id, or 0 to name it by @name; on a
 *	mindspace fd: must be 0
 * @name: on /dev/llmos: its name, or empty; on a mindspace fd: empty
 * @info_uptr: user pointer to a struct llmos_ms_info
 * @info_size: its size, at least 128
 * @__reserved: must be 0
 *
 * On /dev/llmos, needs read permission on the mindspace.
 */
struct llmos_ms_query {
	__u32 size;
	__u32 flags;
	__aligned_u64 id;
	char name[LLMOS_NAME_MAX];
	__aligned_u64 info_uptr;
	__u32 info_size;
	__u32 __reserved;
};

#define LLMOS_IOC_MS_INFO _IO(LLMOS_TYPE, LLMOS_CMD_MS_INFO)
#define LLMOS_MSFD_IOC_INFO _IO(LLMOS_TYPE, LLMOS_CMD_MSFD_INFO)

/**
 * struct llmos_ms_export - ioctl(LLMOS_MSFD_IOC_EXPORT_DMABUF)
 * @size: sizeof(struct llmos_ms_export)
 * @flags: must be 0
 * @out_fd: a dma-buf fd (read-write, close-on-exec) for the mindspace's
 *	memory, for another process or a peer device
 * @__reserved: must be 0
 *
 * Only for dma-buf-backed mindspaces (EOPNOTSUPP otherwise); needs a
 * mindspace fd opened read-write (EACCES otherwise).
 */
struct llmos_ms_export {
	__u32 size;
	__u32 flags;
	__s32 out_fd;
	__u32 __reserved;
};

#define LLMOS_MSFD_IOC_EXPORT_DMABUF \
	_IO(LLMOS_TYPE, LLMOS_CMD_MSFD_EXPORT_DMABUF)

#define LLMOS_UID_SELF ((__u32)-1)
#define LLMOS_QUOTA_UNLIMITED ((__u64)-1)

/**
 * enum llmos_quota_flags - flags of QUOTA
 * @LLMOS_QUOTA_SET: set the limit of @uid to &llmos_quota.limit
 *	(needs %CAP_SYS_ADMIN)
 */
enum llmos_quota_flags {
	LLMOS_QUOTA_SET = 1 << 0,
};

/**
 * struct llmos_quota - ioctl(LLMOS_IOC_QUOTA)
 * @size: sizeof(struct llmos_quota)
 * @flags: &enum llmos_quota_flags
 * @uid: the uid, or %LLMOS_UID_SELF for the caller's (inside a user
 *	namespace, the user the scheduler takes the caller for); another uid
 *	than that needs %CAP_SYS_ADMIN
 * @__reserved: must be 0
 * @limit: with %LLMOS_QUOTA_SET: the new limit in bytes; 0 returns to
 *	the module default, %LLMOS_QUOTA_UNLIMITED lifts it; otherwise
 *	must be 0
 * @out_used: bytes of the mindspaces charged to the uid
 * @out_limit: the limit in force (%LLMOS_QUOTA_UNLIMITED for none)
 */
struct llmos_quota {
	__u32 size;
	__u32 flags;
	__u32 uid;
	__u32 __reserved;
	__aligned_u64 limit;
	__aligned_u64 out_used;
	__aligned_u64 out_limit;
};

#define LLMOS_IOC_QUOTA _IO(LLMOS_TYPE, LLMOS_CMD_QUOTA)

/**
 * enum llmos_req_state - the life of a request
 * @LLMOS_REQ_QUEUED: submitted, waiting in the scheduler (or in a worker's
 *	local queue)
 * @LLMOS_REQ_DISPATCHED: handed to a worker
 * @LLMOS_REQ_RUNNING: the worker said it started
 * @LLMOS_REQ_COMPLETED: done, with a result
 * @LLMOS_REQ_CANCELLED: cancelled before it completed
 * @LLMOS_REQ_FAILED: the worker reported a failure
 * @LLMOS_REQ_STATE_MAX: number of states plus one
 *
 * QUEUED -> DISPATCHED -> RUNNING -> COMPLETED or FAILED; any state before
 * those -> CANCELLED. A worker that goes away puts what it held back to
 * QUEUED, at the front of its tenant.
 */
enum llmos_req_state {
	LLMOS_REQ_QUEUED = 1,
	LLMOS_REQ_DISPATCHED,
	LLMOS_REQ_RUNNING,
	LLMOS_REQ_COMPLETED,
	LLMOS_REQ_CANCELLED,
	LLMOS_REQ_FAILED,
	LLMOS_REQ_STATE_MAX,
};

/**
 * DOC: Request scheduler
 *
 * Every inference request goes through one system-wide scheduler. An open
 * /dev/llmos is a *client*: it submits requests (SUBMIT), which it owns,
 * and collects them when they finish (WAIT; poll() reports POLLIN while a
 * finished request waits). A client that registers (WORKER_REGISTER)
 * is also a *worker*: it takes requests (DISPATCH), may say it started one
 * (START) and reports each finished (COMPLETE). When a worker's file is
 * closed (the process exits or crashes), every request it held goes back
 * to the front of its tenant, in submission order: nothing is lost and
 * nothing completes twice. When a client's file is closed, its unfinished
 * requests are cancelled.
 *
 * The built-in policy is weighted fair queuing across tenants on expected
 * tokens (weights: SET_WEIGHT), priority order then FIFO within a tenant.
 *
 * A tenant is a share of the machine, so not every caller may name every
 * tenant. A caller with %CAP_SYS_ADMIN may name any. Any other may name the
 * tenants of its fsuid (as the initial user namespace numbers it): the one
 * tenant whose number is that uid, unless TENANT_GRANT gave the uid a range
 * of tenants instead (a service submitting for many tenants, such as an
 * HTTP server, gets one). Inside a user namespace, the uid is that of the
 * user who made the outermost one, whatever uid the caller has in it: one
 * user with many subordinate uids is one user here, for tenants, the
 * worker right and mindspace quotas alike. A namespace root made (a
 * container's) is the exception: its members are their own fsuids, not
 * root. Through io_uring, the credentials are those the
 * command is issued with: the ring creator's under SQPOLL, a registered
 * personality's when the SQE names one.
 *
 * A worker answers other clients' requests, so not every caller may be
 * one either: WORKER_REGISTER needs %CAP_SYS_ADMIN, or a TENANT_GRANT with
 * %LLMOS_GRANT_WORKER for the caller's fsuid. A right lost later does not
 * end a worker registered already.
 *
 * Errors of the scheduler commands, beyond the common ones:
 *
 * - EINVAL: a capacity, priority, weight, count or element size out of
 *   range; DISPATCH, START or COMPLETE on a file that is not a worker;
 *   SUBMIT of a prompt (prompt_off, prompt_len) not inside its mindspace.
 * - EBUSY: WORKER_REGISTER on a file that is a worker already.
 * - ENOENT: no request with that id (or not one of the caller's, for
 *   WAIT, and for CANCEL without %CAP_SYS_ADMIN); WAIT for any request by
 *   a client that has none outstanding;
 *   SUBMIT naming a mindspace (ms_id) that does not exist.
 * - EACCES: SUBMIT naming a mindspace the caller may not open read-write
 *   (its worker will read the prompt there and write the output).
 * - ESRCH: START or COMPLETE of a request the calling worker does not hold.
 * - EALREADY: CANCEL of a finished request.
 * - EPERM: SET_WEIGHT, SUBMIT naming a tenant the caller may not name, or
 *   WORKER_REGISTER by a uid not granted %LLMOS_GRANT_WORKER, without
 *   %CAP_SYS_ADMIN.
 * - EAGAIN: nothing ready with %LLMOS_NONBLOCK; SUBMIT past the per-client
 *   limit of unfinished and uncollected requests (module parameter
 *   ``max_client_requests``), or past the limit of those of all the files
 *   the opener's user opened (``max_user_requests``; the user as for
 *   tenants).
 * - ENOSPC: SUBMIT or SET_WEIGHT naming a new tenant when the scheduler
 *   keeps as many as it may (module parameter ``max_tenants``, 65536 by
 *   default) and none is idle. A tenant is idle when it has no unfinished
 *   request and the default weight; the one idle the longest gives its
 *   place (and its counters) to a new one.
 * - ETIMEDOUT: DISPATCH or WAIT waited timeout_ms for nothing.
 * - EINTR: a signal interrupted a wait.
 */

/* Wait for nothing: fail with EAGAIN instead (DISPATCH, WAIT). */
#define LLMOS_NONBLOCK (1U << 0)

#define LLMOS_MAX_CAPACITY 4096
#define LLMOS_MAX_PRIORITY 255
#define LLMOS_MAX_WEIGHT 10000
#define LLMOS_MAX_DISPATCH 256
#define LLMOS_LAT_BUCKETS 32

/**
 * struct llmos_worker_register - ioctl(LLMOS_IOC_WORKER_REGISTER)
 * @size: sizeof(struct llmos_worker_register)
 * @flags: must be 0
 * @capacity: requests it may hold at once (1..%LLMOS_MAX_CAPACITY)
 * @numa_node: its NUMA node, or -1
 * @model: the model it serves (0: any), for policies
 * @out_worker_id: its id
 *
 * Makes the calling file a worker, until it is closed. The caller needs
 * %CAP_SYS_ADMIN or a grant with %LLMOS_GRANT_WORKER (EPERM).
 */
struct llmos_worker_register {
	__u32 size;
	__u32 flags;
	__u32 capacity;
	__s32 numa_node;
	__aligned_u64 model;
	__aligned_u64 out_worker_id;
};

/**
 * struct llmos_submit - ioctl(LLMOS_IOC_SUBMIT)
 * @size: sizeof(struct llmos_submit)
 * @flags: must be 0
 * @tenant: tenant id
 * @priority: 0..%LLMOS_MAX_PRIORITY, higher first within the tenant
 * @cost: expected tokens (0 counts as 1)
 * @__reserved: must be 0
 * @deadline_ns: absolute CLOCK_MONOTONIC deadline, 0 for none
 * @ms_id: mindspace holding the prompt (and, later, the result), 0 for
 *	none; the caller must be able to open it read-write
 * @prompt_off: prompt offset in it
 * @prompt_len: prompt length
 * @out_id: the request's id
 */
struct llmos_submit {
	__u32 size;
	__u32 flags;
	__u32 tenant;
	__u32 priority;
	__u32 cost;
	__u32 __reserved;
	__aligned_u64 deadline_ns;
	__aligned_u64 ms_id;
	__aligned_u64 prompt_off;
	__aligned_u64 prompt_len;
	__aligned_u64 out_id;
};

/**
 * struct llmos_req_desc - a request, as DISPATCH hands it to a worker
 * @id: request id
 * @tenant: tenant id
 * @priority: priority
 * @cost: expected tokens
 * @requeues: times a worker vanished (closed its file) while holding it:
 *	a request that keeps doing so may be crashing its workers. A request
 *	handed back with %LLMOS_COMPLETE_RETURN, or that a DISPATCH could not
 *	write out, does not count.
 * @deadline_ns: deadline, 0 for none
 * @ms_id: mindspace holding the prompt
 * @prompt_off: prompt offset
 * @prompt_len: prompt length
 * @submit_ns: submission time, CLOCK_MONOTONIC
 */
struct llmos_req_desc {
	__aligned_u64 id;
	__u32 tenant;
	__u32 priority;
	__u32 cost;
	__u32 requeues;
	__aligned_u64 deadline_ns;
	__aligned_u64 ms_id;
	__aligned_u64 prompt_off;
	__aligned_u64 prompt_len;
	__aligned_u64 submit_ns;
};

/**
 * struct llmos_dispatch - ioctl(LLMOS_IOC_DISPATCH)
 * @size: sizeof(struct llmos_dispatch)
 * @flags: %LLMOS_NONBLOCK or 0
 * @descs_uptr: user array of @max elements of @desc_size bytes
 * @desc_size: size of one element, at least 64 (the first published
 *	struct llmos_req_desc)
 * @max: most requests to take (1..%LLMOS_MAX_DISPATCH); fewer are given
 *	when the worker's capacity is reached
 * @timeout_ms: longest wait for a first request, 0 for no limit
 * @out_count: requests written
 *
 * Waits until at least one request is there for the worker (unless
 * %LLMOS_NONBLOCK), then takes up to @max; they are DISPATCHED. When the
 * descriptors or @out_count cannot be written (EFAULT), the requests go
 * back to the front of their tenants, as a vanished worker's do.
 */
struct llmos_dispatch {
	__u32 size;
	__u32 flags;
	__aligned_u64 descs_uptr;
	__u32 desc_size;
	__u32 max;
	__u32 timeout_ms;
	__u32 out_count;
};

/**
 * struct llmos_start - ioctl(LLMOS_IOC_START)
 * @size: sizeof(struct llmos_start)
 * @flags: must be 0
 * @id: a request the calling worker holds, DISPATCHED; it becomes RUNNING
 */
struct llmos_start {
	__u32 size;
	__u32 flags;
	__aligned_u64 id;
};

/*
 * COMPLETE, COMPLETE_BATCH: hand the requests back unfinished instead
 * (%LLMOS_FEATURE_SCHED_RETURN).
 */
#define LLMOS_COMPLETE_RETURN (1U << 0)

/**
 * struct llmos_complete - ioctl(LLMOS_IOC_COMPLETE)
 * @size: sizeof(struct llmos_complete)
 * @flags: 0, or %LLMOS_COMPLETE_RETURN: the worker hands the request back
 *	unfinished (it is stopping, say): the request is queued again at the
 *	front of its tenant, for any worker, and its requeues do not grow;
 *	@status, @tokens, @result_off and @result_len must then be 0
 * @id: a request the calling worker holds
 * @status: 0 (COMPLETED) or a negative errno (FAILED)
 * @tokens: tokens produced
 * @result_off: where the result is in the request's mindspace
 * @result_len: its length; a result that does not lie inside the mindspace
 *	is refused with EINVAL
 */
struct llmos_complete {
	__u32 size;
	__u32 flags;
	__aligned_u64 id;
	__s32 status;
	__u32 tokens;
	__aligned_u64 result_off;
	__aligned_u64 result_len;
};

/* CANCEL: cancel this file's pending io_uring DISPATCH and WAITs instead. */
#define LLMOS_CANCEL_PENDING (1U << 0)

/**
 * struct llmos_cancel - ioctl(LLMOS_IOC_CANCEL)
 * @size: sizeof(struct llmos_cancel)
 * @flags: 0, or %LLMOS_CANCEL_PENDING: complete the io_uring DISPATCH and
 *	WAIT commands pending on this file with ECANCELED (@id must be 0;
 *	IORING_OP_ASYNC_CANCEL cannot reach them in kernel 6.12)
 * @id: a request of the caller (any, with %CAP_SYS_ADMIN) that has not
 *	finished; its client collects it with WAIT as CANCELLED
 */
struct llmos_cancel {
	__u32 size;
	__u32 flags;
	__aligned_u64 id;
};

/**
 * struct llmos_wait - ioctl(LLMOS_IOC_WAIT)
 * @size: sizeof(struct llmos_wait)
 * @flags: %LLMOS_NONBLOCK or 0
 * @id: the request to wait for, or 0 for whichever of the caller's
 *	finishes first
 * @timeout_ms: longest wait, 0 for no limit
 * @out_state: %LLMOS_REQ_COMPLETED, %LLMOS_REQ_FAILED or
 *	%LLMOS_REQ_CANCELLED
 * @out_id: the request
 * @out_status: the worker's status
 * @out_tokens: tokens produced
 * @out_result_off: result offset in the mindspace
 * @out_result_len: result length
 * @out_submit_ns: submission time, CLOCK_MONOTONIC
 * @out_dispatch_ns: when the worker that held it as it ended took it; 0
 *	when none held it then (never dispatched, or back in its queue after
 *	its worker gave it back or vanished, and cancelled there: no worker
 *	will write for it any more)
 * @out_end_ns: completion or cancellation time
 *
 * Collects one finished request of the caller: after WAIT returns it, its
 * id is gone.
 */
struct llmos_wait {
	__u32 size;
	__u32 flags;
	__aligned_u64 id;
	__u32 timeout_ms;
	__u32 out_state;
	__aligned_u64 out_id;
	__s32 out_status;
	__u32 out_tokens;
	__aligned_u64 out_result_off;
	__aligned_u64 out_result_len;
	__aligned_u64 out_submit_ns;
	__aligned_u64 out_dispatch_ns;
	__aligned_u64 out_end_ns;
};

/**
 * struct llmos_set_weight - ioctl(LLMOS_IOC_SET_WEIGHT)
 * @size: sizeof(struct llmos_set_weight)
 * @flags: must be 0
 * @tenant: tenant id
 * @weight: its share, 1..%LLMOS_MAX_WEIGHT (default 100); needs
 *	%CAP_SYS_ADMIN
 */
struct llmos_set_weight {
	__u32 size;
	__u32 flags;
	__u32 tenant;
	__u32 weight;
};

/**
 * enum llmos_grant_flags - flags of TENANT_GRANT
 * @LLMOS_GRANT_SET: the uid may name the tenants @first to @last (and no
 *	others) from now on; needs %CAP_SYS_ADMIN
 * @LLMOS_GRANT_RESET: the uid goes back to its own tenant and may not
 *	register workers (the default); needs %CAP_SYS_ADMIN
 * @LLMOS_GRANT_WORKER: with %LLMOS_GRANT_SET only: the uid may also
 *	register workers (WORKER_REGISTER); a SET without it takes that
 *	right away (ABI 1.3)
 *
 * Without a flag, TENANT_GRANT only reports the uid's tenants.
 */
enum llmos_grant_flags {
	LLMOS_GRANT_SET = 1 << 0,
	LLMOS_GRANT_RESET = 1 << 1,
	LLMOS_GRANT_WORKER = 1 << 2,
};

/**
 * struct llmos_tenant_grant - ioctl(LLMOS_IOC_TENANT_GRANT)
 * @size: sizeof(struct llmos_tenant_grant)
 * @flags: &enum llmos_grant_flags: none, %LLMOS_GRANT_RESET, or
 *	%LLMOS_GRANT_SET with or without %LLMOS_GRANT_WORKER
 * @uid: the uid, in the caller's user namespace, or %LLMOS_UID_SELF for
 *	the caller's fsuid; another uid than the caller's needs
 *	%CAP_SYS_ADMIN
 * @first: with %LLMOS_GRANT_SET: the first tenant of the range;
 *	otherwise must be 0
 * @last: with %LLMOS_GRANT_SET: the last tenant, @first or more;
 *	otherwise must be 0
 * @out_first: the first tenant the uid may name, after the command
 *	(tenants are numbered as the initial user namespace numbers uids)
 * @out_last: the last one
 * @out_granted: 1 when the range was set by %LLMOS_GRANT_SET, 0 when it is
 *	the uid's own tenant
 * @out_admin: 1 when the caller has %CAP_SYS_ADMIN, and so names any
 *	tenant whatever its uid's range
 * @out_worker: 1 when the uid was granted %LLMOS_GRANT_WORKER (ABI 1.3:
 *	this was a reserved field that had to be 0; its input is ignored)
 *
 * Sets, resets or reports which tenants a uid may name in SUBMIT and
 * SUBMIT_BATCH (see the scheduler's overview). A grant holds until it is
 * reset or the module is unloaded; a caller with %CAP_SYS_ADMIN may name
 * any tenant whatever its uid's range. Errors beyond the common ones:
 * EINVAL for unknown flags, %LLMOS_GRANT_RESET with another flag,
 * %LLMOS_GRANT_WORKER without %LLMOS_GRANT_SET, @first above @last, a range
 * without %LLMOS_GRANT_SET, or a uid with no mapping; EPERM for a change,
 * or another uid, without %CAP_SYS_ADMIN.
 */
struct llmos_tenant_grant {
	__u32 size;
	__u32 flags;
	__u32 uid;
	__u32 first;
	__u32 last;
	__u32 out_first;
	__u32 out_last;
	__u32 out_granted;
	__u32 out_admin;
	__u32 out_worker;
};

/**
 * struct llmos_tenant_stats - one tenant, in STATS
 * @tenant: tenant id
 * @weight: its weight
 * @queued: requests queued now
 * @__reserved: 0
 * @served_reqs: requests dispatched (once each, however often requeued)
 * @served_tokens: tokens of completed requests
 */
struct llmos_tenant_stats {
	__u32 tenant;
	__u32 weight;
	__u32 queued;
	__u32 __reserved;
	__aligned_u64 served_reqs;
	__aligned_u64 served_tokens;
};

#define LLMOS_POLICY_NAME_LEN 32
#define LLMOS_EXIT_MSG_LEN 128

/**
 * enum llmos_policy_state - which policy schedules, in STATS
 * @LLMOS_POLICY_BUILTIN: the built-in one (no BPF policy attached)
 * @LLMOS_POLICY_BPF: an attached BPF policy
 * @LLMOS_POLICY_EJECTED: a BPF policy is attached but was ejected; the
 *	built-in one schedules until it is detached
 */
enum llmos_policy_state {
	LLMOS_POLICY_BUILTIN,
	LLMOS_POLICY_BPF,
	LLMOS_POLICY_EJECTED,
};

/**
 * enum llmos_exit_kind - why a BPF policy stopped scheduling
 * @LLMOS_EXIT_NONE: it has not stopped
 * @LLMOS_EXIT_DETACH: it was detached
 * @LLMOS_EXIT_ERROR: it reported an error (llmos_policy_error())
 * @LLMOS_EXIT_STALL: a request waited past its timeout_ms while a worker
 *	asked for work and got less than it had room for (the watchdog)
 * @LLMOS_EXIT_ENQUEUE: enqueue left a request in no queue
 * @LLMOS_EXIT_MISUSE: a kfunc was used out of place (a request that is
 *	not being enqueued, a worker that is not being dispatched to, an
 *	unknown queue)
 * @LLMOS_EXIT_INIT: its init callback failed
 */
enum llmos_exit_kind {
	LLMOS_EXIT_NONE,
	LLMOS_EXIT_DETACH,
	LLMOS_EXIT_ERROR,
	LLMOS_EXIT_STALL,
	LLMOS_EXIT_ENQUEUE,
	LLMOS_EXIT_MISUSE,
	LLMOS_EXIT_INIT,
};

/**
 * struct llmos_sched_stats - ioctl(LLMOS_IOC_STATS)
 * @size: sizeof(struct llmos_sched_stats)
 * @flags: must be 0
 * @tenants_uptr: user array for per-tenant counters, or 0
 * @tenant_size: size of one element, at least 32
 * @tenant_count: in: capacity of the array; out: number of tenants (the
 *	first ones by id are written; no error when there are more). A caller
 *	without %CAP_SYS_ADMIN sees only the tenants it may name (its own, or
 *	its granted range; ABI 1.3); the totals are everyone's
 * @out_nr: requests in each state now, by &enum llmos_req_state (element 0
 *	is unused)
 * @out_submitted: requests submitted since load
 * @out_dispatched: dispatches (a requeued request counts again)
 * @out_completed: requests completed
 * @out_failed: requests failed
 * @out_cancelled: requests cancelled
 * @out_requeued: requests given back: by vanished workers, by workers
 *	with %LLMOS_COMPLETE_RETURN, and by DISPATCHes that could not write
 *	them out
 * @out_workers: workers registered now
 * @out_clients: open /dev/llmos files now
 * @out_lat_hist: dispatch latency (submission to first dispatch): element
 *	b counts latencies in [2^b, 2^(b+1)) units of 1024 ns (about a
 *	microsecond; b = 0: also less; the last one: also more)
 * @out_policy_state: &enum llmos_policy_state
 * @out_exit_kind: &enum llmos_exit_kind of the last BPF policy to stop
 * @out_exit_code: its error code (llmos_policy_error()), or 0
 * @out_exit_req: the request involved, or 0
 * @out_ejections: BPF policies stopped since load (detaches included)
 * @out_policy: name of the attached (or last) BPF policy
 * @out_exit_msg: what happened, in words
 */
struct llmos_sched_stats {
	__u32 size;
	__u32 flags;
	__aligned_u64 tenants_uptr;
	__u32 tenant_size;
	__u32 tenant_count;
	__aligned_u64 out_nr[8];
	__aligned_u64 out_submitted;
	__aligned_u64 out_dispatched;
	__aligned_u64 out_completed;
	__aligned_u64 out_failed;
	__aligned_u64 out_cancelled;
	__aligned_u64 out_requeued;
	__u32 out_workers;
	__u32 out_clients;
	__aligned_u64 out_lat_hist[LLMOS_LAT_BUCKETS];
	__u32 out_policy_state;
	__u32 out_exit_kind;
	__s64 out_exit_code;
	__aligned_u64 out_exit_req;
	__aligned_u64 out_ejections;
	char out_policy[LLMOS_POLICY_NAME_LEN];
	char out_exit_msg[LLMOS_EXIT_MSG_LEN];
};

/**
 * struct llmos_submit_entry - one request in SUBMIT_BATCH
 * @tenant: tenant id
 * @priority: 0..%LLMOS_MAX_PRIORITY
 * @cost: expected tokens
 * @__reserved: must be 0
 * @deadline_ns: absolute CLOCK_MONOTONIC deadline, 0 for none
 * @ms_id: mindspace holding the prompt
 * @prompt_off: prompt offset in it
 * @prompt_len: prompt length
 * @out_id: the request's id, 0 when it was not submitted
 * @out_error: 0, or what SUBMIT would have failed with for this entry
 * @__reserved2: must be 0
 */
struct llmos_submit_entry {
	__u32 tenant;
	__u32 priority;
	__u32 cost;
	__u32 __reserved;
	__aligned_u64 deadline_ns;
	__aligned_u64 ms_id;
	__aligned_u64 prompt_off;
	__aligned_u64 prompt_len;
	__aligned_u64 out_id;
	__s32 out_error;
	__u32 __reserved2;
};

/**
 * struct llmos_submit_batch - ioctl(LLMOS_IOC_SUBMIT_BATCH)
 * @size: sizeof(struct llmos_submit_batch)
 * @flags: must be 0
 * @entries_uptr: user array of @count elements of @entry_size bytes
 * @entry_size: size of one element, at least 64; bytes past the kernel's
 *	struct llmos_submit_entry must be zero (an entry with others is not
 *	submitted: its out_error is -E2BIG)
 * @count: number of elements (1..%LLMOS_MAX_DISPATCH)
 * @out_done: entries submitted (the others have out_error set)
 * @__reserved: must be 0
 *
 * SUBMIT many requests in one command, in array order. It succeeds as a
 * whole when every entry was read and written back.
 */
struct llmos_submit_batch {
	__u32 size;
	__u32 flags;
	__aligned_u64 entries_uptr;
	__u32 entry_size;
	__u32 count;
	__u32 out_done;
	__u32 __reserved;
};

/**
 * struct llmos_complete_entry - one request in COMPLETE_BATCH
 * @id: a request the calling worker holds
 * @status: 0 (COMPLETED) or a negative errno (FAILED)
 * @tokens: tokens produced
 * @result_off: result offset in the request's mindspace
 * @result_len: result length
 * @out_error: 0, or what COMPLETE would have failed with for this entry
 * @__reserved: must be 0
 */
struct llmos_complete_entry {
	__aligned_u64 id;
	__s32 status;
	__u32 tokens;
	__aligned_u64 result_off;
	__aligned_u64 result_len;
	__s32 out_error;
	__u32 __reserved;
};

/**
 * struct llmos_complete_batch - ioctl(LLMOS_IOC_COMPLETE_BATCH)
 * @size: sizeof(struct llmos_complete_batch)
 * @flags: 0, or %LLMOS_COMPLETE_RETURN: every entry is handed back, as
 *	with COMPLETE
 * @entries_uptr: user array of @count elements of @entry_size bytes
 * @entry_size: size of one element, at least 40; bytes past the kernel's
 *	struct llmos_complete_entry must be zero (an entry with others
 *	completes nothing: its out_error is -E2BIG)
 * @count: number of elements (1..%LLMOS_MAX_DISPATCH)
 * @out_done: entries that completed (the others have out_error set)
 * @__reserved: must be 0
 *
 * COMPLETE for many requests in one command. It succeeds as a whole when
 * every entry was read; each entry reports its own result.
 */
struct llmos_complete_batch {
	__u32 size;
	__u32 flags;
	__aligned_u64 entries_uptr;
	__u32 entry_size;
	__u32 count;
	__u32 out_done;
	__u32 __reserved;
};

/**
 * struct llmos_finished - one request collected by WAIT_BATCH
 * @id: the request
 * @state: %LLMOS_REQ_COMPLETED, %LLMOS_REQ_FAILED or %LLMOS_REQ_CANCELLED
 * @status: the worker's status
 * @tokens: tokens produced
 * @__reserved: 0
 * @result_off: result offset in the mindspace
 * @result_len: result length
 * @submit_ns: submission time, CLOCK_MONOTONIC
 * @dispatch_ns: as @out_dispatch_ns of &struct llmos_wait
 * @end_ns: completion or cancellation time
 */
struct llmos_finished {
	__aligned_u64 id;
	__u32 state;
	__s32 status;
	__u32 tokens;
	__u32 __reserved;
	__aligned_u64 result_off;
	__aligned_u64 result_len;
	__aligned_u64 submit_ns;
	__aligned_u64 dispatch_ns;
	__aligned_u64 end_ns;
};

/**
 * struct llmos_wait_batch - ioctl(LLMOS_IOC_WAIT_BATCH)
 * @size: sizeof(struct llmos_wait_batch)
 * @flags: %LLMOS_NONBLOCK or 0
 * @entries_uptr: user array of @max elements of @entry_size bytes
 * @entry_size: size of one element, at least 64
 * @max: most requests to collect (1..%LLMOS_MAX_DISPATCH)
 * @timeout_ms: longest wait for a first one, 0 for no limit
 * @out_count: requests collected, oldest finished first
 *
 * WAIT for any of the caller's requests, collecting up to @max at once.
 */
struct llmos_wait_batch {
	__u32 size;
	__u32 flags;
	__aligned_u64 entries_uptr;
	__u32 entry_size;
	__u32 max;
	__u32 timeout_ms;
	__u32 out_count;
};

/**
 * struct llmos_uring_sqe - the command area of an IORING_OP_URING_CMD SQE
 * @arg_uptr: user pointer to the command's argument struct, as the ioctl
 *	takes it
 * @__reserved: must be 0
 *
 * SQE fields: opcode %IORING_OP_URING_CMD, fd an open /dev/llmos, cmd_op
 * one of %LLMOS_IOC_SUBMIT, %LLMOS_IOC_SUBMIT_BATCH, %LLMOS_IOC_START,
 * %LLMOS_IOC_COMPLETE, %LLMOS_IOC_COMPLETE_BATCH, %LLMOS_IOC_CANCEL,
 * %LLMOS_IOC_DISPATCH,
 * %LLMOS_IOC_WAIT, %LLMOS_IOC_WAIT_BATCH (others: EOPNOTSUPP); addr, len,
 * uring_cmd_flags (no command takes a registered buffer) and, in an SQE128
 * ring, the command area past this struct must be 0 (EINVAL). The CQE's
 * res is the ioctl's result (0 or a negative errno) and, for DISPATCH and
 * WAIT_BATCH, the number of elements written. DISPATCH and the WAITs never
 * block the ring: with nothing ready they stay pending (at most one DISPATCH
 * and one WAIT or WAIT_BATCH per file, EBUSY otherwise) until a request
 * comes or finishes; with %LLMOS_NONBLOCK, DISPATCH and WAIT_BATCH complete
 * at once with 0 and WAIT with EAGAIN. A pending DISPATCH or WAIT_BATCH may
 * complete with 0 when another taker was first (a BPF policy gave the
 * request to another worker; a WAIT ioctl on the same file collected it),
 * and a pending WAIT with EAGAIN (submit it again) or, when nothing is
 * left to wait for, ENOENT. A pending command with a timeout_ms completes
 * with ETIMEDOUT once that much time has passed since it was issued (what
 * it waited for stays queued). Pending commands complete with ECANCELED
 * when their ring is closed, or on CANCEL with %LLMOS_CANCEL_PENDING
 * (IORING_OP_ASYNC_CANCEL does not reach them in kernel 6.12).
 *
 * The argument struct is read when the command is issued. A command linked
 * behind another (%IOSQE_IO_LINK) is issued later; kernels before the fix
 * "io_uring/uring_cmd: unconditionally copy SQEs at prep time" (6.12 among
 * them) read its SQE only then, from a ring slot the application may have
 * filled again: set %IOSQE_ASYNC on linked llmos commands, which makes the
 * kernel copy the SQE when it is submitted.
 */
struct llmos_uring_sqe {
	__aligned_u64 arg_uptr;
	__aligned_u64 __reserved;
};

#define LLMOS_IOC_WORKER_REGISTER _IO(LLMOS_TYPE, LLMOS_CMD_WORKER_REGISTER)
#define LLMOS_IOC_SUBMIT _IO(LLMOS_TYPE, LLMOS_CMD_SUBMIT)
#define LLMOS_IOC_DISPATCH _IO(LLMOS_TYPE, LLMOS_CMD_DISPATCH)
#define LLMOS_IOC_START _IO(LLMOS_TYPE, LLMOS_CMD_START)
#define LLMOS_IOC_COMPLETE _IO(LLMOS_TYPE, LLMOS_CMD_COMPLETE)
#define LLMOS_IOC_CANCEL _IO(LLMOS_TYPE, LLMOS_CMD_CANCEL)
#define LLMOS_IOC_WAIT _IO(LLMOS_TYPE, LLMOS_CMD_WAIT)
#define LLMOS_IOC_SET_WEIGHT _IO(LLMOS_TYPE, LLMOS_CMD_SET_WEIGHT)
#define LLMOS_IOC_STATS _IO(LLMOS_TYPE, LLMOS_CMD_STATS)
#define LLMOS_IOC_COMPLETE_BATCH _IO(LLMOS_TYPE, LLMOS_CMD_COMPLETE_BATCH)
#define LLMOS_IOC_WAIT_BATCH _IO(LLMOS_TYPE, LLMOS_CMD_WAIT_BATCH)
#define LLMOS_IOC_SUBMIT_BATCH _IO(LLMOS_TYPE, LLMOS_CMD_SUBMIT_BATCH)
#define LLMOS_IOC_TENANT_GRANT _IO(LLMOS_TYPE, LLMOS_CMD_TENANT_GRANT)

#endif /* _UAPI_LINUX_LLMOS_H */
