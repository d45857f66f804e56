// SPDX-License-Identifier: GPL-2.0-only
/*
 * count_workers: FIFO, and counts the workers it was told of - online
 * ones up, offline ones down - in map counts (key 0: the balance, key 1:
 * every worker_online call). The workers registered before it attached
 * come online to it too, so the balance is the number of workers.
 */
#include "../llmos.bpf.h"

char _license[] SEC("license") = "GPL";

#define Q 6

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, u32);
	__type(value, s64);
} counts SEC(".maps");

static void count(u32 key, s64 by)
{
	s64 *v = bpf_map_lookup_elem(&counts, &key);

	if (v)
		__sync_fetch_and_add(v, by);
}

SEC("struct_ops/count_workers_init")
s32 BPF_PROG(count_workers_init)
{
	return llmos_create_queue(Q);
}

SEC("struct_ops/count_workers_enqueue")
s32 BPF_PROG(count_workers_enqueue, struct llmos_core_req *req, u64 enq_flags)
{
	return llmos_queue_insert_fifo(req, Q);
}

SEC("struct_ops/count_workers_dispatch")
void BPF_PROG(count_workers_dispatch, struct llmos_core_worker *w, u32 budget)
{
	llmos_queue_move_to_worker(Q, w, budget);
}

SEC("struct_ops/count_workers_online")
void BPF_PROG(count_workers_online, struct llmos_core_worker *w)
{
	count(0, 1);
	count(1, 1);
}

SEC("struct_ops/count_workers_offline")
void BPF_PROG(count_workers_offline, struct llmos_core_worker *w)
{
	count(0, -1);
}

SEC(".struct_ops.link")
struct llmos_sched_ops count_workers_ops = {
	.init		= (void *)count_workers_init,
	.enqueue	= (void *)count_workers_enqueue,
	.dispatch	= (void *)count_workers_dispatch,
	.worker_online	= (void *)count_workers_online,
	.worker_offline	= (void *)count_workers_offline,
	.timeout_ms	= 60000,
	.name		= "count_workers",
};
