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
 * Limits: at most MAX_WORKERS workers are tracked at once (a departed
 * worker's slot is free again once its queue is empty). Only a tracked
 * worker gets requests in its own queue, where the others can find them
 * (to steal, or once it went); a worker without a slot gets the requests
 * of its mindspaces from the shared queue, like everyone, and looks for a
 * slot again at each dispatch until it has one. So a worker that goes
 * leaves nothing where nobody looks.
 */
#include "llmos.bpf.h"

char _license[] SEC("license") = "GPL";

#define SHARED_QUEUE 1
#define WORKER_QUEUE(id) (1000 + (id))
#define MAX_WORKERS 64
#define OFFLINE 0x8000000000000000ULL
#define LOCALITY_ENOSPC 28 /* ENOSPC: vmlinux.h has no errno macros */

const volatile u64 steal_after_ns = 200 * 1000 * 1000;

/*
 * Least recently started mindspaces are forgotten past 65536 (ids only
 * grow): their next request goes to the shared queue.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
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
	__type(value, u8);	/* ALIVE, or TRACKED once it has a slot */
} alive SEC(".maps");

#define ALIVE 1
#define TRACKED 2

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
		u8 *state = bpf_map_lookup_elem(&alive, &id);

		/* Only where the others look too, should it go. */
		if (state && *state == TRACKED &&
		    llmos_queue_len(WORKER_QUEUE(id)) >= 0)
			return llmos_queue_insert(req, WORKER_QUEUE(id), now);
	}
	return llmos_queue_insert(req, SHARED_QUEUE, now);
}

/*
 * A worker comes (@online: it takes a free slot, if there is one), or goes:
 * its slot keeps its queue for the others to serve, unless @empty (the
 * queue went with it). Returns whether it has (had) a slot.
 */
static __always_inline bool track(u64 id, bool online, bool empty)
{
	/* Tracked already (a worker whose queue could not be made before). */
	for (u32 i = 0; online && i < MAX_WORKERS; i++) {
		u32 key = i;
		u64 *slot = bpf_map_lookup_elem(&workers, &key);

		if (!slot)
			return false;
		if (*slot == id)
			return true;
	}
	for (u32 i = 0; i < MAX_WORKERS; i++) {
		u32 key = i; /* i stays in a register: the verifier bounds it */
		u64 *slot = bpf_map_lookup_elem(&workers, &key);

		if (!slot)
			return false;
		/* Free, or a departed worker's whose queue is empty. */
		if (online && (!*slot || (*slot & OFFLINE))) {
			u64 gone = *slot & ~OFFLINE;

			if (!gone || llmos_queue_len(WORKER_QUEUE(gone)) <= 0) {
				if (gone)
					llmos_destroy_queue(WORKER_QUEUE(gone));
				*slot = id;
				return true;
			}
		}
		if (!online && *slot == id) {
			*slot = empty ? 0 : id | OFFLINE;
			return true;
		}
	}
	return false;
}

static __always_inline void come(u64 id)
{
	u8 state = ALIVE;

	llmos_create_queue(WORKER_QUEUE(id));
	if (track(id, true, false))
		state = TRACKED;
	bpf_map_update_elem(&alive, &id, &state, BPF_ANY);
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
	/*
	 * Without a slot its queue was never given anything; should it hold
	 * requests all the same, nobody would serve them: give up, and the
	 * built-in policy serves them.
	 */
	if (!track(id, false, empty) &&
	    llmos_queue_len(WORKER_QUEUE(id)) > 0)
		llmos_policy_error(-LOCALITY_ENOSPC);
}

SEC("struct_ops/locality_dispatch")
void BPF_PROG(locality_dispatch, struct llmos_core_worker *w, u32 budget)
{
	u64 now = bpf_ktime_get_ns(), id = w->id;
	u8 *state = bpf_map_lookup_elem(&alive, &id);
	u32 got;

	/* A worker from before the policy gets its queue now. */
	if (llmos_queue_len(WORKER_QUEUE(id)) < 0)
		come(id);
	/* One without a slot looks for one again. */
	else if (state && *state != TRACKED && track(id, true, false))
		*state = TRACKED;
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
