// SPDX-License-Identifier: MIT
//
// Inference workers: threads that each register with the scheduler as a
// worker of `slots` requests, take requests (continuous batching: new ones
// join between decode steps while slots are free), run them through their
// own engine, stream what the engine writes, and complete them.
// An idle worker waits for requests in its own event loop (io_uring): the
// DISPATCH is a uring_cmd on the kernel backend, and the in-process
// scheduler rings the loop on the local one; between decode steps it takes
// more without waiting.
//
// Each worker is pinned to one CPU and prefers memory on that CPU's NUMA
// node (libnuma), and runs in its pool's priority class.
//
// Crashes. When its engine throws, a worker recovers by itself: a fresh
// engine, and every request it held started again (what was already
// streamed is not streamed twice: the new engine must write those bytes
// again first, and a request whose new text differs from them fails with
// -EIO rather than splice the two). The requests of the batch that threw
// become suspects and run alone from then on, so the culprit is found
// without harming the others; a request that crashes the engine
// `max_requeues` times fails with -EIO. When a worker dies (a process
// that exits or is killed; worker_abort simulates it for one thread), its
// registration closes and the scheduler takes back everything it held: the
// module requeues it on the kernel backend, the in-process core on the
// local one. Requests requeued that way also run alone, and fail with
// -EIO once requeued `max_requeues` times.
//
// A lost device (engine::device_lost: a GPU kernel faulted, and CUDA fails
// every later call of the process) is no request's fault and cannot be
// recovered from: the worker gives back what it holds, uncounted, says so
// (on_device_lost) and ends.
//
// A request cancelled through the scheduler while a worker runs it (its
// client cancels it, or closes) is no longer held by the worker: the
// worker asks (a START, every 100 ms: EINVAL while it holds the request,
// ESRCH or ENOENT once it does not), stops it, and streams `failed`,
// counted failed, as its client sees it CANCELLED. A START refused for
// another reason than a cancel is not the request's fault: it goes back,
// uncounted.
//
// drain() stops taking requests and returns when every taken one is
// finished; stop() hands what is held back to the scheduler at once,
// unfinished but not as a crash (its requeues do not grow; a request that
// crashed an engine here is given back as a dying worker's is). Nothing
// is lost either way.
//
// Out of memory. Recovering from a crash allocates nothing it cannot do
// without (the copy of what a request streamed is made room for as it
// streams; a request that cannot be copied fails with -EIO). Anything else
// the worker's own code throws (no memory to set a request up, to take
// one, to register) is no request's fault nor the engine's: the worker
// gives back what it holds (what it took and had not set up yet too),
// uncounted, and registers again with the same engine. DISPATCH takes its
// memory before it takes requests: out of memory there takes none. A
// worker thread never ends the process.
//
// A request that the scheduler would neither let it complete nor take
// back is given back by closing the registration (a requeue, counted):
// the worker takes no more requests, finishes the ones it runs, closes,
// and registers again after a pause (100 ms, doubling up to 5 s). One
// requeued max_requeues times that way is left held (a slot less) until
// the registration closes, not cycled for ever.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <llmos/channel.hh>
#include <llmos/device.hh>
#include <llmos/event_loop.hh>
#include <llmos/inference.hh>
#include <llmos/result.hh>
#include <llmos/sched.hh>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace llmos {

/// How a pool's threads are scheduled by the OS.
enum class priority_class {
    interactive, ///< SCHED_OTHER, nice -5 (where permitted, else 0)
    normal,      ///< SCHED_OTHER, nice 0
    batch,       ///< SCHED_BATCH, nice 10
    background,  ///< SCHED_IDLE
};
const char* to_string(priority_class c) noexcept;

/// What a worker streams, as descriptors into the request's mindspace. A
/// request's output is at most UINT32_MAX bytes (the room an engine is
/// given past the prompt stops there), so that a `done` descriptor's
/// 32-bit length always says all of it, as its completion does.
enum class output_kind : uint32_t {
    tokens = 1,   ///< bytes appended by one decode step
    done = 2,     ///< the request finished; offset/length: all its output
    failed = 3,   ///< it failed; length 0
    done_cut = 4, ///< as done, ended by a limit (sequence::cut), not the model
};

/// Thrown by an engine (tests do) to make its worker die as a crashed
/// process would: no request is completed, the scheduler takes them back.
struct worker_abort {};

namespace detail {
/// Tests: the scheduler refuses (EIO) the next `times` endings of
/// `request` (COMPLETE and give-backs) by any worker. Any thread.
void refuse_endings(uint64_t request, uint32_t times) noexcept;
/// Tests: the scheduler refuses (EIO) the next `times` STARTs that set
/// `request` up, by any worker. Any thread.
void refuse_starts(uint64_t request, uint32_t times) noexcept;
} // namespace detail

struct worker_pool_options {
    /// One worker per CPU listed; empty: one per CPU this process may run
    /// on.
    std::vector<int> cpus;
    uint32_t slots = 4; ///< requests per worker at once (its batch)
    priority_class cls = priority_class::normal;
    uint64_t model = 0;        ///< model id registered with the scheduler
    uint32_t max_requeues = 3; ///< then a request fails with -EIO (at least 1)
    /// Makes each worker's engine, on the worker's thread.
    std::function<std::unique_ptr<inference_engine>(unsigned worker)> engine;
    /// Called on the worker's thread with each descriptor it streams
    /// (request id, offset and length in the request's mindspace, kind):
    /// the workers call it at the same time. One that throws loses that
    /// descriptor, and the worker's last_error says why.
    std::function<void(unsigned worker, const descriptor&)> on_output;
    /// Asked between steps for each request a worker runs: true ends it
    /// with -ECANCELED (its client went away, and the scheduler does not
    /// know yet: a cancel through the scheduler the worker notices by
    /// itself). Called on the worker's thread; must be cheap. One that
    /// throws is taken as false.
    std::function<bool(uint64_t request)> is_cancelled;
    /// Called once on a worker's thread when its engine, in a step or as
    /// it is made, throws engine::device_lost (its GPU cannot be used by
    /// this process any more): the worker gives back what it holds,
    /// uncounted (the device failed, not the requests), and ends; it is
    /// not tried again. A server should exit so that it is started anew.
    /// One that throws is ignored (last_error says what was lost).
    std::function<void(unsigned worker, const std::string& why)> on_device_lost;
};

/// What a worker found when it set itself up, and its counters.
struct worker_info {
    int cpu = -1;        ///< the CPU it is pinned to
    int node = -1;       ///< that CPU's NUMA node (-1 without libnuma)
    bool pinned = false; ///< its affinity is exactly {cpu}
    bool class_applied = false;
    std::atomic<uint64_t> served{0};
    std::atomic<uint64_t> failed{0};
    std::atomic<uint64_t> crashes{0};
    std::atomic<uint64_t> steps{0};
    std::atomic<uint32_t> active{0};
    std::atomic<bool> device_lost{false}; ///< its engine's device failed for good

    /// The worker's last error ("" for none). Any thread.
    std::string last_error() const {
        std::lock_guard lk(_error_m);
        return _error;
    }
    void set_error(std::string e) {
        std::lock_guard lk(_error_m);
        _error = std::move(e);
    }

private:
    mutable std::mutex _error_m;
    std::string _error;
};

class worker_pool {
public:
    /// Starts the workers. Errors: EINVAL (no engine factory, zero slots
    /// or max_requeues, a CPU this process may not use).
    static result<std::unique_ptr<worker_pool>> start(const device& dev, worker_pool_options o);
    ~worker_pool(); ///< stop()
    worker_pool(const worker_pool&) = delete;
    worker_pool& operator=(const worker_pool&) = delete;

    /// Takes no new requests, finishes the taken ones, joins the workers.
    void drain();
    /// Gives back what the workers hold and joins them.
    void stop();
    /// Has every worker call its engine's idle() soon: at once if it
    /// waits for work, else when it next does (something its engines
    /// used, a model, is gone). Any thread.
    void poke();

    size_t size() const noexcept { return _infos.size(); }
    /// Worker `i`'s setup and counters (stable while the pool lives; setup
    /// fields are valid once ready() is true).
    const worker_info& info(unsigned i) const { return *_infos.at(i); }
    /// Every worker has set itself up and registered once.
    bool ready() const noexcept { return _ready.load() == _infos.size(); }

private:
    enum class state : int { running, draining, stopping };
    struct slot;
    worker_pool(const device& dev, worker_pool_options o);
    void run_worker(unsigned i);
    void setup_thread(unsigned i);
    void join();
    void wake_all();
    result<std::vector<request_desc>> wait_for_work(sched_worker& w, event_loop* loop, uint32_t max,
                                                    inference_engine& engine);

    const device& _dev;
    worker_pool_options _o;
    std::atomic<state> _state{state::running};
    std::atomic<size_t> _ready{0};
    std::atomic<uint64_t> _pokes{0};
    std::vector<std::unique_ptr<worker_info>> _infos;
    std::vector<std::thread> _threads;
    std::mutex _join_m;              // drain() and stop() on two threads join once
    std::mutex _loops_m;             // _loops
    std::vector<event_loop*> _loops; // the workers', to wake them
};

} // namespace llmos
