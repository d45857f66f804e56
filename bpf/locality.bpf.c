// SPDX-License-Identifier: GPL-2.0-only
/*
 * locality: send a request to the worker that last ran its mindspace.
 *
 * A worker that ran a request of mindspace M (its KV cache holds M's
 * context) is remembered in the "owner" map when it STARTs it. A new
 * request of M goes to that worker's own queue; a request of a mindspace
 * nobody ran yet goes to the shared queue. A worker serves its own queue
 * first, then the shared one; then it steals from another worker's queue
 * whose head has waited longer than steal_after_ns (default 200 ms), or at
 * once from the queue of a worker that went offline. Keys are enqueue
 * times, so every queue is FIFO and the head's key is its age.
 *
 * Limits: at most MAX_WORKERS workers are tracked for stealing (more still
 * work, but their queues can only be stolen by the watchdog's ejection).
 */
#include "llmos.bpf.h"

char _license[] SEC("license") = "GPL";

#define SHARED_QUEUE 1
#define WORKER_QUEUE(id) (1000 + (id))
#define MAX_WORKERS 64
#define OFFLINE 0x8000000000000000ULL

const volatile u64 steal_after_ns = 200 * 1000 * 1000;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, u64);	/* mindspace id */
	__type(value, u64);	/* worker id */
} owner SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_WORKERS);
	__type(key, u32);
	__type(value, u64);	/* worker id, | OFFLINE when gone; 0: free */
} workers SEC(".maps");

SEC("struct_ops/locality_init")
s32 BPF_PROG(locality_init)
{
	return llmos_create_queue(SHARED_QUEUE);
}

SEC("struct_ops/locality_enqueue")
s32 BPF_PROG(locality_enqueue, struct llmos_core_req *req, u64 enq_flags)
{
	u64 ms = req->ms_id, *w, now = bpf_ktime_get_ns();

	w = ms ? bpf_map_lookup_elem(&owner, &ms) : NULL;
	if (w && llmos_queue_len(WORKER_QUEUE(*w)) >= 0)
		return llmos_queue_insert(req, WORKER_QUEUE(*w), now);
	return llmos_queue_insert(req, SHARED_QUEUE, now);
}

static __always_inline void track(u64 id, bool online)
{
	for (u32 i = 0; i < MAX_WORKERS; i++) {
		u32 key = i; /* i stays in a register: the verifier bounds it */
		u64 *slot = bpf_map_lookup_elem(&workers, &key);

		if (!slot)
			return;
		if (online && !*slot) {
			*slot = id;
			return;
		}
		if (!online && *slot == id) {
			*slot = id | OFFLINE;
			return;
		}
	}
}

SEC("struct_ops/locality_online")
void BPF_PROG(locality_online, struct llmos_core_worker *w)
{
	llmos_create_queue(WORKER_QUEUE(w->id));
	track(w->id, true);
}

SEC("struct_ops/locality_offline")
void BPF_PROG(locality_offline, struct llmos_core_worker *w)
{
	track(w->id, false);
}

SEC("struct_ops/locality_dispatch")
void BPF_PROG(locality_dispatch, struct llmos_core_worker *w, u32 budget)
{
	u64 now = bpf_ktime_get_ns();
	u32 got;

	/* A worker from before the policy gets its queue now. */
	if (llmos_queue_len(WORKER_QUEUE(w->id)) < 0) {
		llmos_create_queue(WORKER_QUEUE(w->id));
		track(w->id, true);
	}
	got = llmos_queue_move_to_worker(WORKER_QUEUE(w->id), w, budget);
	if (got < budget)
		got += llmos_queue_move_to_worker(SHARED_QUEUE, w, budget - got);
	for (u32 i = 0; i < MAX_WORKERS && got < budget; i++) {
		u32 key = i;
		u64 *slot = bpf_map_lookup_elem(&workers, &key), other, head;

		if (!slot || !*slot || (*slot & ~OFFLINE) == w->id)
			continue;
		other = *slot & ~OFFLINE;
		head = llmos_queue_peek_key(WORKER_QUEUE(other));
		if (!head)
			continue;
		if ((*slot & OFFLINE) || now - head > steal_after_ns)
			got += llmos_queue_move_to_worker(WORKER_QUEUE(other), w,
							  budget - got);
	}
}

SEC("struct_ops/locality_running")
void BPF_PROG(locality_running, struct llmos_core_req *req, struct llmos_core_worker *w)
{
	u64 ms = req->ms_id, id = w->id;

	if (ms)
		bpf_map_update_elem(&owner, &ms, &id, BPF_ANY);
}

SEC(".struct_ops.link")
struct llmos_sched_ops locality_ops = {
	.init		= (void *)locality_init,
	.enqueue	= (void *)locality_enqueue,
	.dispatch	= (void *)locality_dispatch,
	.running	= (void *)locality_running,
	.worker_online	= (void *)locality_online,
	.worker_offline	= (void *)locality_offline,
	.timeout_ms	= 30000,
	.name		= "locality",
};
