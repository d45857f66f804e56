// SPDX-License-Identifier: GPL-2.0-only
/*
 * sjf: shortest (expected) job first.
 *
 * One queue keyed by the request's expected cost in tokens: short requests
 * overtake long ones, which cuts the mean and tail wait of short requests
 * under a mixed load. With aging: the key is cost * 16 plus the submission
 * time in units of 2^20 ns (about a millisecond), so a request of cost C is
 * overtaken only by ones submitted less than about 16.8 * C ms after it:
 * while short ones keep coming, a long request waits that long behind them
 * (69 s for a cost of 4096), not for ever (which the watchdog would not
 * see: its workers get all they ask for). The cost is the client's to say;
 * one above 2^20 tokens (more than a context holds) counts as 2^20, so
 * that no request waits more than about five hours.
 */
#include "llmos.bpf.h"

char _license[] SEC("license") = "GPL";

#define SJF_QUEUE 1
#define SJF_TOKEN_MS 16 /* a token of cost weighs this many ~ms of wait */
#define SJF_MAX_COST 1048576ULL /* 2^20 tokens, the most a context holds */

SEC("struct_ops/sjf_init")
s32 BPF_PROG(sjf_init)
{
	return llmos_create_queue(SJF_QUEUE);
}

SEC("struct_ops/sjf_enqueue")
s32 BPF_PROG(sjf_enqueue, struct llmos_core_req *req, u64 enq_flags)
{
	u64 cost = req->cost;

	if (cost > SJF_MAX_COST)
		cost = SJF_MAX_COST;
	/* cost <= 2^20, t_submit >> 20 < 2^44: no overflow. */
	return llmos_queue_insert(req, SJF_QUEUE,
				  cost * SJF_TOKEN_MS + (req->t_submit >> 20));
}

SEC("struct_ops/sjf_dispatch")
void BPF_PROG(sjf_dispatch, struct llmos_core_worker *w, u32 budget)
{
	llmos_queue_move_to_worker(SJF_QUEUE, w, budget);
}

SEC(".struct_ops.link")
struct llmos_sched_ops sjf_ops = {
	.init		= (void *)sjf_init,
	.enqueue	= (void *)sjf_enqueue,
	.dispatch	= (void *)sjf_dispatch,
	.timeout_ms	= 60000,
	.name		= "sjf",
};
