/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * llmos tracepoints: the life of requests and the scheduler's workers.
 *
 *   llmos:req_submit    a request was submitted
 *   llmos:req_dispatch  a worker took it
 *   llmos:req_complete  it finished (completed, failed or cancelled)
 *   llmos:sched_worker  a worker registered or went away (with what it
 *                       gave back)
 */
#undef TRACE_SYSTEM
#define TRACE_SYSTEM llmos

#if !defined(_LLMOS_TRACE_H) || defined(TRACE_HEADER_MULTI_READ)
#define _LLMOS_TRACE_H

#include <linux/tracepoint.h>

TRACE_EVENT(req_submit,
	    TP_PROTO(u64 id, u32 tenant, u32 prio, u32 cost, u32 queued),
	    TP_ARGS(id, tenant, prio, cost, queued),
	    TP_STRUCT__entry(__field(u64, id)
			     __field(u32, tenant)
			     __field(u32, prio)
			     __field(u32, cost)
			     __field(u32, queued)),
	    TP_fast_assign(__entry->id = id;
			   __entry->tenant = tenant;
			   __entry->prio = prio;
			   __entry->cost = cost;
			   __entry->queued = queued;),
	    TP_printk("id=%llu tenant=%u prio=%u cost=%u queued=%u",
		      __entry->id, __entry->tenant, __entry->prio,
		      __entry->cost, __entry->queued)
);

TRACE_EVENT(req_dispatch,
	    TP_PROTO(u64 id, u64 worker, u64 wait_ns, u32 requeues),
	    TP_ARGS(id, worker, wait_ns, requeues),
	    TP_STRUCT__entry(__field(u64, id)
			     __field(u64, worker)
			     __field(u64, wait_ns)
			     __field(u32, requeues)),
	    TP_fast_assign(__entry->id = id;
			   __entry->worker = worker;
			   __entry->wait_ns = wait_ns;
			   __entry->requeues = requeues;),
	    TP_printk("id=%llu worker=%llu wait_ns=%llu requeues=%u",
		      __entry->id, __entry->worker, __entry->wait_ns,
		      __entry->requeues)
);

TRACE_EVENT(req_complete,
	    TP_PROTO(u64 id, u32 state, s32 status, u32 tokens,
		     u64 sojourn_ns),
	    TP_ARGS(id, state, status, tokens, sojourn_ns),
	    TP_STRUCT__entry(__field(u64, id)
			     __field(u32, state)
			     __field(s32, status)
			     __field(u32, tokens)
			     __field(u64, sojourn_ns)),
	    TP_fast_assign(__entry->id = id;
			   __entry->state = state;
			   __entry->status = status;
			   __entry->tokens = tokens;
			   __entry->sojourn_ns = sojourn_ns;),
	    TP_printk("id=%llu state=%u status=%d tokens=%u sojourn_ns=%llu",
		      __entry->id, __entry->state, __entry->status,
		      __entry->tokens, __entry->sojourn_ns)
);

TRACE_EVENT(sched_worker,
	    TP_PROTO(u64 worker, bool online, u32 capacity, u32 requeued),
	    TP_ARGS(worker, online, capacity, requeued),
	    TP_STRUCT__entry(__field(u64, worker)
			     __field(bool, online)
			     __field(u32, capacity)
			     __field(u32, requeued)),
	    TP_fast_assign(__entry->worker = worker;
			   __entry->online = online;
			   __entry->capacity = capacity;
			   __entry->requeued = requeued;),
	    TP_printk("worker=%llu %s capacity=%u requeued=%u", __entry->worker,
		      __entry->online ? "online" : "offline",
		      __entry->capacity, __entry->requeued)
);

#endif /* _LLMOS_TRACE_H */

#undef TRACE_INCLUDE_PATH
#define TRACE_INCLUDE_PATH .
#undef TRACE_INCLUDE_FILE
#define TRACE_INCLUDE_FILE trace
#include <trace/define_trace.h>
