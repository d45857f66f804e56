/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * llmos: what every BPF scheduling policy includes.
 *
 * vmlinux.h is generated at build time from the module's BTF (kernel types
 * plus struct llmos_sched_ops, struct llmos_core_req, struct
 * llmos_core_worker, struct llmos_exit_info); the kfuncs are declared here
 * (pahole does not emit their prototypes).
 */
#ifndef _LLMOS_BPF_H
#define _LLMOS_BPF_H

#include "vmlinux.h"

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

s32 llmos_create_queue(u64 queue_id) __ksym;
s32 llmos_destroy_queue(u64 queue_id) __ksym;
s32 llmos_queue_insert(struct llmos_core_req *req, u64 queue_id, u64 key) __ksym;
s32 llmos_queue_insert_fifo(struct llmos_core_req *req, u64 queue_id) __ksym;
u32 llmos_queue_move_to_worker(u64 queue_id, struct llmos_core_worker *w,
			       u32 n) __ksym;
s32 llmos_queue_len(u64 queue_id) __ksym;
u64 llmos_queue_peek(u64 queue_id) __ksym;
u64 llmos_queue_peek_key(u64 queue_id) __ksym;
s32 llmos_set_tenant_weight(u32 tenant, u32 weight) __ksym;
void llmos_policy_error(s64 code) __ksym;

#endif /* _LLMOS_BPF_H */
