// SPDX-License-Identifier: MIT
//
// thread_pool: the caller publishes a loop (its state, then _active =
// open_bit with release) and bumps a generation counter that the workers
// wait on. A worker joins by incrementing _active while open_bit is set,
// takes chunks from an atomic cursor (smaller ones as the loop nears its
// end), and leaves by decrementing it. When the caller has run out of
// chunks it clears open_bit (no one joins any more: every chunk is taken)
// and waits only for the workers that joined to leave, so a worker that
// was slow to wake costs nothing. The loop's state is written only while
// _active is 0 and closed, so a worker that has joined always reads a
// consistent loop.
#include <algorithm>
#include <llmos/engine/thread_pool.hh>

namespace llmos::engine {

namespace {

/// The pool whose loop this thread is running, if any (nested calls run
/// inline instead of waiting for themselves).
thread_local const thread_pool* t_current = nullptr;

/// Polls before sleeping: long enough to bridge the gap between two
/// matmuls of one forward pass, short enough not to steal a shared core
/// for long.
constexpr int spin_polls = 1 << 12;

constexpr uint32_t open_bit = 1u << 31;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

} // namespace

thread_pool::thread_pool(int n_threads) {
    const int workers = std::max(n_threads, 1) - 1;
    _workers.reserve(static_cast<size_t>(workers));
    try {
        for (int i = 0; i < workers; ++i) {
            _workers.emplace_back([this] { worker_main(); });
        }
    } catch (...) {
        _stop.store(true, std::memory_order_release);
        _generation.fetch_add(1, std::memory_order_release);
        _generation.notify_all();
        for (auto& t : _workers) {
            t.join();
        }
        throw;
    }
}

thread_pool::~thread_pool() {
    _stop.store(true, std::memory_order_release);
    _generation.fetch_add(1, std::memory_order_release);
    _generation.notify_all();
    for (auto& t : _workers) {
        t.join();
    }
}

void thread_pool::run(int64_t n_items, int64_t grain, trampoline call, void* ctx) {
    if (n_items <= 0) {
        return;
    }
    grain = std::max<int64_t>(grain, 1);
    if (_workers.empty() || t_current == this || n_items <= grain) {
        call(ctx, 0, n_items);
        return;
    }
    std::lock_guard lock(_call_mutex);
    // About four chunks per thread: small enough to even out a thread
    // that started late or shares its core, large enough to stream.
    const int64_t per = (n_items + 4 * size() - 1) / (4 * size());
    _call = call;
    _ctx = ctx;
    _n_items = n_items;
    _grain = grain;
    _chunk = std::max(grain, per);
    _next.store(0, std::memory_order_relaxed);
    _active.store(open_bit, std::memory_order_release);
    _generation.fetch_add(1, std::memory_order_release);
    _generation.notify_all();

    const thread_pool* outer = t_current;
    t_current = this;
    work();
    t_current = outer;

    // Every chunk is taken: close the loop, wait for those still in it.
    uint32_t active = _active.fetch_and(~open_bit, std::memory_order_acq_rel) & ~open_bit;
    int polls = 0;
    while (active != 0) {
        if (++polls < spin_polls) {
            cpu_relax();
        } else {
            _active.wait(active, std::memory_order_acquire);
        }
        active = _active.load(std::memory_order_acquire);
    }
}

void thread_pool::work() noexcept {
    // Guided: a chunk is at most a (2 x threads)th of what is left, so the
    // chunks shrink toward the end (down to the grain) and the threads
    // finish together instead of one waiting on another's last big chunk.
    const int64_t share = 2 * static_cast<int64_t>(size());
    int64_t begin = _next.load(std::memory_order_relaxed);
    for (;;) {
        if (begin >= _n_items) {
            return;
        }
        const int64_t left = _n_items - begin;
        const int64_t chunk = std::min(_chunk, std::max(_grain, (left + share - 1) / share));
        if (!_next.compare_exchange_weak(begin, begin + chunk, std::memory_order_relaxed)) {
            continue; // begin now holds the cursor another thread moved
        }
        _call(_ctx, begin, std::min(begin + chunk, _n_items));
        begin = _next.load(std::memory_order_relaxed);
    }
}

void thread_pool::worker_main() noexcept {
    t_current = this;
    uint32_t seen = 0; // no loop starts before the constructor returns
    for (;;) {
        int polls = 0;
        uint32_t g;
        while ((g = _generation.load(std::memory_order_acquire)) == seen) {
            if (++polls < spin_polls) {
                cpu_relax();
            } else {
                _generation.wait(seen, std::memory_order_acquire);
            }
        }
        seen = g;
        if (_stop.load(std::memory_order_acquire)) {
            return;
        }
        // Join the loop if it still admits workers (it may be a later one
        // than generation g: its state is just as valid).
        uint32_t active = _active.load(std::memory_order_relaxed);
        bool joined = false;
        while ((active & open_bit) != 0 && !joined) {
            joined = _active.compare_exchange_weak(active, active + 1, std::memory_order_acquire,
                                                   std::memory_order_relaxed);
        }
        if (!joined) {
            continue;
        }
        work();
        if (_active.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            _active.notify_one(); // the last one out of a closed loop
        }
    }
}

} // namespace llmos::engine
