// SPDX-License-Identifier: MIT
//
// The local backend's scheduler: the same core as the module (kmod/core/),
// run in this process behind one mutex, with the module's semantics for
// clients, workers, requeue on a worker's end, and cancel on a client's.
#pragma once

#include <llmos/event_loop.hh>
#include <llmos/sched.hh>

namespace llmos::local_sched {

uint64_t open_client();
void close_client(uint64_t client);
/// `ms_len`: the length of the mindspace `o` names (0 for none), which
/// the caller checked it may open read-write and holds the prompt; a
/// result must lie inside it.
result<uint64_t> submit(uint64_t client, const submit_options& o, uint64_t ms_len);
std::error_code cancel(uint64_t client, uint64_t id);
result<finished_request> wait(uint64_t client, uint64_t id, wait_for w);
result<uint64_t> register_worker(uint64_t client, uint32_t capacity, int numa_node, uint64_t model);
result<std::vector<request_desc>> dispatch(uint64_t client, uint32_t max, wait_for w);
std::error_code start(uint64_t client, uint64_t id);
std::error_code complete(uint64_t client, uint64_t id, int32_t status, uint32_t tokens,
                         uint64_t result_off, uint64_t result_len);
/// COMPLETE with LLMOS_COMPLETE_RETURN: back to its tenant, unfinished.
std::error_code give_back(uint64_t client, uint64_t id);
/// Bumped (under the scheduler's lock) whenever a worker may find work.
uint64_t work_generation();
/// Rings `b` whenever the work generation changes (on), or no more (off).
void watch_work(doorbell& b, bool on);
sched_stats stats();
std::error_code set_weight(uint32_t tenant, uint32_t weight);

} // namespace llmos::local_sched
