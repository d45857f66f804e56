// SPDX-License-Identifier: MIT
//
// One io_uring per thread is its event loop: it receives from any number of
// channels, runs timers, and completes operations submitted on the ring
// (uring_cmd to /dev/llmos among them). While messages flow it never
// enters the kernel; when every source is empty it spins a while, then
// sleeps in io_uring_wait, and a sender rings its doorbell only when it
// sleeps.
//
// Doorbell protocol (why no wake-up is lost): the loop has one word,
// `sleeping`, for all its sources.
//
//   loop                                  sender (any source)
//   sleeping = 1            (seq_cst)     publish tail         (seq_cst)
//   any source pending?     (seq_cst)     if sleeping == 1     (seq_cst)
//     yes: sleeping = 0, poll               and exchange(0) == 1: ring
//     no:  wait in the ring for a CQE
//
// All four operations are sequentially consistent, so at least one side
// sees the other's store: the loop sees the message, or the sender sees
// `sleeping` and rings. Ringing is one of:
//   - futex: the loop keeps an IORING_OP_FUTEX_WAIT on `sleeping` (value 1)
//     pending in its ring; the sender calls futex_wake. If the sender's
//     exchange already cleared the word before the wait was queued, the
//     wait completes at once (-EAGAIN): a spurious wake, never a lost one.
//   - msg_ring: the sender posts IORING_OP_MSG_RING to the loop's ring
//     from its own ring; the CQE wakes the loop.
// The exchange makes sure one sender rings once per sleep: having cleared
// `sleeping`, that sender must wake the loop, or nobody will. A MSG_RING
// can fail (no ring could be made for the sending thread, a submission
// queue that stays full, a failed MSG_RING completion), so a msg_ring loop
// also keeps an IORING_OP_POLL_ADD on an eventfd of its own pending, and a
// sender whose MSG_RING could not be sent, or failed, writes that eventfd
// instead: a write that cannot fail (a full counter is readable already).
// The sender learns at once: it sends from a ring private to its thread
// and waits for the MSG_RING's completion (from its own loop's ring, a
// failure would be seen only when that loop next reaps, which a sender
// blocked on a full channel never does).
// tests/unit/event_loop_test.cc stresses both with random pauses.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <llmos/result.hh>
#include <llmos/unique_fd.hh>
#include <memory>
#include <optional>
#include <vector>

struct io_uring;
struct io_uring_sqe;

namespace llmos {

enum class doorbell_kind : uint8_t {
    futex,    ///< futex_wake, received by a pending IORING_OP_FUTEX_WAIT
    msg_ring, ///< IORING_OP_MSG_RING from the sender's ring
};

class event_loop;

/// What a sender holds to wake a loop. Lives inside the loop.
struct doorbell {
    std::atomic<uint32_t> sleeping{0};
    event_loop* loop = nullptr;
};

/// Wakes the loop behind `b` if it sleeps. A msg_ring doorbell is rung
/// from a ring private to the calling thread, made on first use, and the
/// MSG_RING's completion waited for. `from` (the calling thread's own
/// loop) is not used any more: kept for callers. Any thread; the loop must
/// outlive the call (it writes the loop's eventfd, whose number a loop
/// destroyed meanwhile would leave to another file). A wake is never
/// lost: where the MSG_RING cannot be sent or fails, the loop's eventfd is
/// written.
void ring_doorbell(doorbell& b, event_loop* from = nullptr);

namespace detail {
/// Tests: make msg_ring doorbells fail the ways they can in the field.
enum class msg_ring_fault : uint8_t {
    none,
    no_private_ring, ///< the calling thread's private ring could not be made
    no_sqe,          ///< the sending ring has no free SQE
    send_fails,      ///< the MSG_RING is sent, and its completion fails (EBADF)
};
/// For every thread, until set back to none.
void set_msg_ring_fault(msg_ring_fault f) noexcept;
} // namespace detail

/// Something a loop polls: a channel receiver and its handler.
class loop_source {
public:
    virtual ~loop_source() = default;
    /// Handles what is there; returns how many messages it handled.
    virtual size_t poll() = 0;
    /// Is something there? A sequentially consistent load (the doorbell
    /// protocol needs it).
    virtual bool pending() const = 0;
    /// Is spinning pointless because the producer runs on `cpu`?
    virtual bool producer_on(int cpu) const {
        (void)cpu;
        return false;
    }
};

struct event_loop_stats {
    uint64_t iterations = 0;
    uint64_t sleeps = 0;      ///< times it waited in the ring
    uint64_t doorbells = 0;   ///< doorbell completions seen
    uint64_t fallbacks = 0;   ///< of those, wakes by the eventfd (a MSG_RING failed)
    uint64_t completions = 0; ///< other completions handled
};

class event_loop {
public:
    using completion = std::function<void(int32_t res, uint32_t flags)>;

    struct options {
        unsigned entries = 256;
        doorbell_kind bell = doorbell_kind::futex;
        uint32_t spin = 4000; ///< polls of empty sources before sleeping
    };

    /// A loop owned by the caller; use it from one thread (stop() and the
    /// doorbell excepted). Errors: ENOMEM, ENOSYS or EINVAL (io_uring
    /// unavailable), EOPNOTSUPP (futex doorbell on a kernel < 6.7).
    static result<std::unique_ptr<event_loop>> create(options o);
    static result<std::unique_ptr<event_loop>> create() { return create(options{}); }
    /// Cancels what is in flight on its ring (IORING_OP_ASYNC_CANCEL) and
    /// waits for it, 200 ms at most, without running its completions.
    /// What is still in flight then (a uring_cmd its owner did not cancel)
    /// keeps its completion, and what that owns, allocated for good: the
    /// kernel, which tears a ring down after it is closed, may still write
    /// into it.
    ~event_loop();
    event_loop(const event_loop&) = delete;
    event_loop& operator=(const event_loop&) = delete;

    /// Polls `s` every iteration. It must outlive the loop or be removed.
    void add_source(loop_source& s);
    void remove_source(loop_source& s);

    /// An SQE whose completion calls `done` on this thread; nullptr when
    /// the submission queue is full even after submitting.
    io_uring_sqe* sqe(completion done);
    /// Calls `fn` once after `d` (IORING_OP_TIMEOUT). False: no SQE.
    bool after(std::chrono::nanoseconds d, std::function<void()> fn);

    /// One iteration: polls the sources; if nothing came, spins, then
    /// sleeps until a message, a completion or `max_wait` (none:
    /// forever; 0: no spin, no sleep). Returns messages plus completions
    /// handled. SQEs prepared (sqe()) before or during it are submitted
    /// before it returns, whichever way it returns.
    size_t run_once(std::optional<std::chrono::nanoseconds> max_wait = std::nullopt);
    /// Iterates until stop().
    void run();
    /// Makes run() return; any thread.
    void stop();
    bool stopping() const noexcept { return _stop.load(std::memory_order_acquire); }

    /// Called when every source was found empty, just before the loop
    /// announces that it sleeps (tests send at that worst moment).
    void set_idle_hook(std::function<void()> fn) { _idle_hook = std::move(fn); }

    doorbell& bell() noexcept { return _bell; }
    doorbell_kind bell_kind() const noexcept { return _opt.bell; }
    int ring_fd() const noexcept;
    io_uring* ring() noexcept { return _ring.get(); }
    const event_loop_stats& stats() const noexcept { return _stats; }

private:
    friend void ring_doorbell(doorbell& b, event_loop* from);
    struct ring_deleter {
        void operator()(io_uring* r) const noexcept;
    };
    explicit event_loop(options o);
    size_t poll_sources();
    size_t reap();
    bool arm_futex();
    bool arm_fallback();
    void submit_queued();
    /// The destructor's: cancels and reaps what is in flight; false if
    /// some is still in flight after `limit`.
    bool cancel_in_flight(std::chrono::milliseconds limit) noexcept;
    /// Writes the eventfd (msg_ring loops): the wake that cannot fail.
    void wake_by_fallback() noexcept;

    options _opt;
    std::unique_ptr<io_uring, ring_deleter> _ring;
    doorbell _bell;
    std::atomic<bool> _stop{false};
    bool _futex_armed = false;
    // msg_ring loops: an eventfd polled in the ring, which a sender whose
    // MSG_RING failed writes (see ring_doorbell).
    unique_fd _wake_fd;
    bool _fallback_armed = false;
    std::vector<loop_source*> _sources;
    // user_data - 1 indexes this. Held by pointer: the destructor leaks it
    // when the kernel may still write into what its completions own.
    std::unique_ptr<std::vector<completion>> _slots = std::make_unique<std::vector<completion>>();
    std::vector<uint32_t> _free;
    std::function<void()> _idle_hook;
    event_loop_stats _stats;
};

} // namespace llmos
