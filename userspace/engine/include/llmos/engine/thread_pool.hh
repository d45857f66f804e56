// SPDX-License-Identifier: MIT
//
// A fixed set of threads for the engine's data-parallel loops (matmul
// rows, attention heads). The thread that calls parallel_for works too, so
// a pool of n runs n - 1 threads of its own. Between calls the workers spin
// a little (a forward pass calls back to back), then sleep on a futex.
// A call allocates nothing and takes no lock when uncontended, and never
// waits for a worker that has not started on it (on a busy machine the
// caller may do the whole loop itself).
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace llmos::engine {

class thread_pool {
public:
    /// A pool that runs loops on `n_threads` threads in all, the caller of
    /// parallel_for included (values below 1 count as 1). Throws
    /// std::system_error when a thread cannot be started. Any thread.
    explicit thread_pool(int n_threads);

    /// Stops and joins the workers. Must not run while a parallel_for of
    /// this pool is in progress.
    ~thread_pool();

    thread_pool(const thread_pool&) = delete;
    thread_pool& operator=(const thread_pool&) = delete;

    /// Threads that work on a loop, the caller included.
    int size() const noexcept { return static_cast<int>(_workers.size()) + 1; }

    /// Calls fn(begin, end) on disjoint ranges that together cover
    /// [0, n_items) exactly once, spread over the pool's threads and the
    /// caller; returns when all are done. Ranges are contiguous, of at
    /// least `grain` items (but the last), handed out in order as threads
    /// become free, shorter toward the end of the loop. fn must not throw
    /// (a throw terminates). Callers on several threads take turns; a call
    /// from inside fn (on any of the pool's threads) runs the whole loop
    /// inline. Allocates nothing.
    template <typename Fn>
    void parallel_for(int64_t n_items, Fn&& fn, int64_t grain = 1) {
        using f = std::remove_reference_t<Fn>;
        run(
            n_items, grain,
            [](void* ctx, int64_t begin, int64_t end) noexcept {
                (*static_cast<f*>(ctx))(begin, end);
            },
            const_cast<void*>(static_cast<const void*>(&fn)));
    }

private:
    using trampoline = void (*)(void*, int64_t, int64_t) noexcept;

    void run(int64_t n_items, int64_t grain, trampoline call, void* ctx);
    void work() noexcept;
    void worker_main() noexcept;

    std::vector<std::thread> _workers;
    std::mutex _call_mutex; // one loop at a time

    // The current loop: written by the caller before _generation moves,
    // read by the workers after they see it move.
    trampoline _call = nullptr;
    void* _ctx = nullptr;
    int64_t _n_items = 0;
    int64_t _chunk = 1; // the largest range handed out
    int64_t _grain = 1; // the smallest (but the last)

    alignas(64) std::atomic<int64_t> _next{0};        // next item to hand out
    alignas(64) std::atomic<uint32_t> _generation{0}; // bumped per loop
    std::atomic<bool> _stop{false};
    // Workers inside the current loop, plus open_bit while it admits more.
    alignas(64) std::atomic<uint32_t> _active{0};
};

} // namespace llmos::engine
