// SPDX-License-Identifier: GPL-2.0-only
/*
 * locality: send a request to the worker that last ran its mindspace.
 *
 * A worker that ran a request of mindspace M (its KV cache holds M's
 * context) is remembered in the "owner" map when it STARTs it. A new
 * request of M goes to that worker's own queue while it is registered; a
 * request of a mindspace nobody ran yet, or whose worker went away, goes
 * to the shared queue. A worker serves its own queue first, then what is
 * left in the queues of workers that went away, then the shared queue;
 * then it steals from another worker's queue whose head has waited longer
 * than steal_after_ns (default 200 ms). Keys are enqueue times, so every
 * queue is FIFO and the head's key is its age.
 *
 * A departed worker's queue goes (llmos_destroy_queue()) once it is empty:
 * at once, or when the others have served what it held.
 *
 * Limits: at most MAX_WORKERS workers are tracked for stealing at once (a
 * departed worker's slot is free again once its queue is empty); the
 * queues of more still work, but only their own worker or the watchdog's
 * ejection empties them.
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

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, u64);	/* worker id, while it is registered */
	__type(value, u8);
} alive SEC(".maps");

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
	if (w) {
		u64 id = *w;

		if (bpf_map_lookup_elem(&alive, &id) &&
		    llmos_queue_len(WORKER_QUEUE(id)) >= 0)
			return llmos_queue_insert(req, WORKER_QUEUE(id), now);
	}
	return llmos_queue_insert(req, SHARED_QUEUE, now);
}

/*
 * A worker comes (@online), or goes: its slot keeps its queue for the
 * others to serve, unless @empty (the queue went with it).
 */
static __always_inline void track(u64 id, bool online, bool empty)
{
	/* Tracked already (a worker whose queue could not be made before). */
	for (u32 i = 0; online && i < MAX_WORKERS; i++) {
		u32 key = i;
		u64 *slot = bpf_map_lookup_elem(&workers, &key);

		if (!slot)
			return;
		if (*slot == id)
			return;
	}
	for (u32 i = 0; i < MAX_WORKERS; i++) {
		u32 key = i; /* i stays in a register: the verifier bounds it */
		u64 *slot = bpf_map_lookup_elem(&workers, &key);

		if (!slot)
			return;
		/* Free, or a departed worker's whose queue is empty. */
		if (online && (!*slot || (*slot & OFFLINE))) {
			u64 gone = *slot & ~OFFLINE;

			if (!gone || llmos_queue_len(WORKER_QUEUE(gone)) <= 0) {
				if (gone)
					llmos_destroy_queue(WORKER_QUEUE(gone));
				*slot = id;
				return;
			}
		}
		if (!online && *slot == id) {
			*slot = empty ? 0 : id | OFFLINE;
			return;
		}
	}
}

static __always_inline void come(u64 id)
{
	u8 one = 1;

	llmos_create_queue(WORKER_QUEUE(id));
	bpf_map_update_elem(&alive, &id, &one, BPF_ANY);
	track(id, true, false);
}

SEC("struct_ops/locality_online")
void BPF_PROG(locality_online, struct llmos_core_worker *w)
{
	come(w->id);
}

SEC("struct_ops/locality_offline")
void BPF_PROG(locality_offline, struct llmos_core_worker *w)
{
	u64 id = w->id;

	bool empty = !llmos_queue_len(WORKER_QUEUE(id));

	bpf_map_delete_elem(&alive, &id);
	/* Nothing left for the others: the queue goes now. */
	if (empty)
		llmos_destroy_queue(WORKER_QUEUE(id));
	track(id, false, empty);
}

SEC("struct_ops/locality_dispatch")
void BPF_PROG(locality_dispatch, struct llmos_core_worker *w, u32 budget)
{
	u64 now = bpf_ktime_get_ns();
	u32 got;

	/* A worker from before the policy gets its queue now. */
	if (llmos_queue_len(WORKER_QUEUE(w->id)) < 0)
		come(w->id);
	/* (Its queue may not be there: no memory for it.) */
	got = llmos_queue_len(WORKER_QUEUE(w->id)) > 0 ?
	      llmos_queue_move_to_worker(WORKER_QUEUE(w->id), w, budget) : 0;
	/* What departed workers left: nobody else will take it. */
	for (u32 i = 0; i < MAX_WORKERS && got < budget; i++) {
		u32 key = i;
		u64 *slot = bpf_map_lookup_elem(&workers, &key), gone;

		if (!slot || !(*slot & OFFLINE))
			continue;
		gone = *slot & ~OFFLINE;
		if (llmos_queue_len(WORKER_QUEUE(gone)) > 0)
			got += llmos_queue_move_to_worker(WORKER_QUEUE(gone), w,
							  budget - got);
		/* Served: the queue and the slot are free. */
		if (llmos_queue_len(WORKER_QUEUE(gone)) <= 0) {
			llmos_destroy_queue(WORKER_QUEUE(gone));
			*slot = 0;
		}
	}
	if (got < budget)
		got += llmos_queue_move_to_worker(SHARED_QUEUE, w, budget - got);
	for (u32 i = 0; i < MAX_WORKERS && got < budget; i++) {
		u32 key = i;
		u64 *slot = bpf_map_lookup_elem(&workers, &key), head;

		if (!slot || !*slot || (*slot & OFFLINE) || *slot == w->id)
			continue;
		head = llmos_queue_peek_key(WORKER_QUEUE(*slot));
		if (head && now - head > steal_after_ns)
			got += llmos_queue_move_to_worker(WORKER_QUEUE(*slot), w,
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
