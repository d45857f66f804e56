// SPDX-License-Identifier: GPL-2.0-only
/*
 * timer_kfunc: misbehaves on purpose - a bpf_timer callback of the policy
 * calls a kfunc. Timer callbacks run outside the policy's callbacks,
 * without the scheduler's lock (in softirq, on any CPU): the kfunc must do
 * nothing, and the policy is ejected (misuse) by the watchdog, even when
 * nothing else happens.
 */
#include "../llmos.bpf.h"

char _license[] SEC("license") = "GPL";

#define Q 5
#define CLOCK_MONOTONIC 1

struct elem {
	struct bpf_timer t;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, int);
	__type(value, struct elem);
} timers SEC(".maps");

static int fire(void *map, int *key, struct elem *e)
{
	llmos_create_queue(Q + 1);
	return 0;
}

SEC("struct_ops/timer_kfunc_init")
s32 BPF_PROG(timer_kfunc_init)
{
	int k = 0;
	struct elem *e = bpf_map_lookup_elem(&timers, &k);

	if (!e)
		return -1;
	bpf_timer_init(&e->t, &timers, CLOCK_MONOTONIC);
	bpf_timer_set_callback(&e->t, fire);
	bpf_timer_start(&e->t, 20 * 1000 * 1000, 0);
	return llmos_create_queue(Q);
}

SEC("struct_ops/timer_kfunc_enqueue")
s32 BPF_PROG(timer_kfunc_enqueue, struct llmos_core_req *req, u64 enq_flags)
{
	return llmos_queue_insert_fifo(req, Q);
}

SEC("struct_ops/timer_kfunc_dispatch")
void BPF_PROG(timer_kfunc_dispatch, struct llmos_core_worker *w, u32 budget)
{
	llmos_queue_move_to_worker(Q, w, budget);
}

SEC(".struct_ops.link")
struct llmos_sched_ops timer_kfunc_ops = {
	.init		= (void *)timer_kfunc_init,
	.enqueue	= (void *)timer_kfunc_enqueue,
	.dispatch	= (void *)timer_kfunc_dispatch,
	.timeout_ms	= 60000,
	.name		= "timer_kfunc",
};
