// SPDX-License-Identifier: MIT
//
// A channel: one sender thread, one receiver thread, small descriptors
// through a single-producer single-consumer ring in (shareable) memory.
//
// While both sides are busy no system call is made: the sender writes a
// slot and publishes the tail; the receiver reads slots and publishes the
// head. A receiver that finds nothing spins for a while, then sleeps on a
// futex; the sender wakes it only when it is asleep. The capacity is the
// sender's credit: a full ring makes the sender sleep (not spin) until the
// receiver frees a slot, so a slow receiver never loses a message. A
// receiver on the CPU the sender last ran on does not spin at all.
//
// Why no wake-up is ever lost (both sides, the same pattern):
//
//   receiver                          sender
//   rx_sleeping = 1      (seq_cst)    tail = t + 1        (seq_cst)
//   if tail != head:     (seq_cst)    if rx_sleeping == 1 (seq_cst):
//       stay awake                        rx_sleeping = 0; futex_wake
//   else futex_wait(rx_sleeping, 1)
//
// Each side stores, then loads what the other stored, all four operations
// sequentially consistent: in their single total order, at least one of
// the two loads comes after the other side's store and sees it (a plain
// release/acquire pair would allow both to miss). Either the receiver sees
// the new tail and does not
// sleep, or the sender sees rx_sleeping == 1 and wakes it. futex_wait only
// sleeps while rx_sleeping is still 1, so a wake that clears it first turns
// the wait into an immediate return. The sender's sleep on a full ring
// (tx_sleeping, head) is the mirror image. tests/unit/channel_test.cc
// stresses it with random pauses on both sides.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <llmos/event_loop.hh>
#include <optional>
#include <sched.h>
#include <span>
#include <type_traits>

namespace llmos {

/// What travels: it points into a mindspace; the payload is never copied.
struct descriptor {
    uint64_t request = 0; ///< request id
    uint64_t offset = 0;  ///< where the bytes are, in the request's mindspace
    uint32_t length = 0;  ///< how many
    uint32_t kind = 0;    ///< what they are (the user's enum)
};

static_assert(sizeof(descriptor) == 24);
static_assert(std::is_trivially_copyable_v<descriptor>);

namespace detail {
/// futex wait while *word == expected, up to `timeout` (none: forever).
/// Returns false on timeout.
bool futex_wait(std::atomic<uint32_t>& word, uint32_t expected,
                std::optional<std::chrono::nanoseconds> timeout);
void futex_wake(std::atomic<uint32_t>& word);
} // namespace detail

/// The ring's shared state and slots; lives in memory both threads (or
/// processes) map. Capacity is a power of two.
template <size_t Capacity>
struct channel_ring {
    static_assert(Capacity >= 2 && (Capacity & (Capacity - 1)) == 0);
    alignas(64) std::atomic<uint64_t> tail{0};        ///< written by the sender
    alignas(64) std::atomic<uint64_t> head{0};        ///< written by the receiver
    alignas(64) std::atomic<uint32_t> rx_sleeping{0}; ///< receiver asleep
    alignas(64) std::atomic<uint32_t> tx_sleeping{0}; ///< sender asleep (ring full)
    alignas(64) std::atomic<uint32_t> closed{0};
    alignas(64) std::atomic<int32_t> tx_cpu{-1}; ///< where the sender runs
    alignas(64) descriptor slots[Capacity];
};

struct channel_stats {
    uint64_t wakeups_sent = 0;    ///< futex wakes the sender issued
    uint64_t receiver_sleeps = 0; ///< times the receiver went to sleep
    uint64_t sender_sleeps = 0;   ///< times the sender waited for credit
};

/// The sending end. One thread at a time.
template <size_t Capacity>
class channel_sender {
    channel_ring<Capacity>* _r;
    doorbell* _bell = nullptr; // the receiving loop's, if it runs one
    event_loop* _from = nullptr;
    uint64_t _tail = 0;
    uint64_t _head_cache = 0;
    channel_stats _stats;

public:
    /// A sender may attach to a ring that was used before (by an earlier
    /// sender): it starts at the ring's tail, and its credit is what the
    /// receiver has not taken yet. Not to one that was closed: close()
    /// ends the channel, and a closed ring stays closed.
    explicit channel_sender(channel_ring<Capacity>& r)
        : _r(&r)
        , _tail(r.tail.load(std::memory_order_relaxed))
        , _head_cache(r.head.load(std::memory_order_acquire)) {}

    /// A sender to a receiver that runs an event loop: it rings `bell`
    /// (from `from`, the sending thread's own loop, if it has one).
    channel_sender(channel_ring<Capacity>& r, doorbell& bell, event_loop* from = nullptr)
        : _r(&r)
        , _bell(&bell)
        , _from(from)
        , _tail(r.tail.load(std::memory_order_relaxed))
        , _head_cache(r.head.load(std::memory_order_acquire)) {}

    /// Sends `d` if there is credit; false when the ring is full.
    bool try_send(const descriptor& d) noexcept {
        // `>=`, not `==`: whatever the cached head, a sender never writes
        // a slot the receiver has not freed.
        if (_tail - _head_cache >= Capacity) {
            _head_cache = _r->head.load(std::memory_order_acquire);
            if (_tail - _head_cache >= Capacity) {
                return false;
            }
        }
        _r->slots[_tail & (Capacity - 1)] = d;
        if ((_tail & 255) == 0) {
            note_cpu(); // every 256 sends: it rarely moves
        }
        _r->tail.store(++_tail, std::memory_order_seq_cst);
        ring_receiver();
        return true;
    }

    /// Sends `d`, sleeping while the ring is full. False if the channel
    /// was closed meanwhile.
    bool send(const descriptor& d) {
        while (!try_send(d)) {
            if (_r->closed.load(std::memory_order_acquire)) {
                return false;
            }
            // Mirror of the receiver's protocol: announce, then re-check.
            _r->tx_sleeping.store(1, std::memory_order_seq_cst);
            if (_tail - _r->head.load(std::memory_order_seq_cst) < Capacity ||
                _r->closed.load(std::memory_order_seq_cst)) {
                _r->tx_sleeping.store(0, std::memory_order_relaxed);
                continue;
            }
            ++_stats.sender_sleeps;
            detail::futex_wait(_r->tx_sleeping, 1, std::nullopt);
            note_cpu();
        }
        return true;
    }

    /// No more messages: a sleeping receiver wakes and sees the end.
    void close() {
        _r->closed.store(1, std::memory_order_seq_cst);
        if (_bell) {
            ring_doorbell(*_bell, _from);
            return;
        }
        if (_r->rx_sleeping.exchange(0) == 1) {
            detail::futex_wake(_r->rx_sleeping);
        }
    }

    const channel_stats& stats() const noexcept { return _stats; }

private:
    void note_cpu() noexcept {
        int cpu = ::sched_getcpu();
        if (cpu != _r->tx_cpu.load(std::memory_order_relaxed)) {
            _r->tx_cpu.store(cpu, std::memory_order_relaxed);
        }
    }
    void ring_receiver() {
        if (_bell) {
            ring_doorbell(*_bell, _from);
            return;
        }
        if (_r->rx_sleeping.load(std::memory_order_seq_cst) == 1 &&
            _r->rx_sleeping.exchange(0) == 1) {
            ++_stats.wakeups_sent;
            detail::futex_wake(_r->rx_sleeping);
        }
    }
};

/// The receiving end. One thread at a time.
template <size_t Capacity>
class channel_receiver {
    channel_ring<Capacity>* _r;
    uint64_t _head = 0;
    uint32_t _spin;
    channel_stats _stats;

public:
    /// `spin`: polls of an empty ring before sleeping.
    explicit channel_receiver(channel_ring<Capacity>& r, uint32_t spin = 4000)
        : _r(&r)
        , _head(r.head.load(std::memory_order_relaxed))
        , _spin(spin) {}

    /// Up to out.size() descriptors without waiting (0: none).
    size_t try_receive(std::span<descriptor> out) noexcept {
        const size_t n = peek(out);
        consume(n);
        return n;
    }

    /// Copies up to out.size() of the descriptors there into `out`
    /// without taking them: the next peek or receive sees them again,
    /// until consume() takes them (their slots go back to the sender).
    size_t peek(std::span<descriptor> out) const noexcept {
        const uint64_t tail = _r->tail.load(std::memory_order_acquire);
        size_t n = 0;
        for (uint64_t h = _head; h != tail && n < out.size(); ++h) {
            out[n++] = _r->slots[h & (Capacity - 1)];
        }
        return n;
    }

    /// Takes the first `n` descriptors peek() copied.
    void consume(size_t n) noexcept {
        if (n) {
            _head += n;
            _r->head.store(_head, std::memory_order_seq_cst);
            ring_sender();
        }
    }

    /// At least one descriptor, waiting (spin, then sleep) up to `timeout`.
    /// 0: timed out, or the channel is closed and drained.
    size_t receive(std::span<descriptor> out,
                   std::optional<std::chrono::nanoseconds> timeout = std::nullopt) {
        // A timeout past the clock's reach is none (now + it would wrap).
        const auto now = std::chrono::steady_clock::now();
        auto deadline = timeout && *timeout < std::chrono::steady_clock::time_point::max() - now
                            ? now + *timeout
                            : std::chrono::steady_clock::time_point::max();
        for (;;) {
            // Spinning while the sender shares our CPU only delays it.
            uint32_t spin =
                _r->tx_cpu.load(std::memory_order_relaxed) == ::sched_getcpu() ? 0 : _spin;
            for (uint32_t i = 0;; ++i) {
                if (size_t n = try_receive(out)) {
                    return n;
                }
                if (i >= spin) {
                    break;
                }
                cpu_relax();
            }
            _r->rx_sleeping.store(1, std::memory_order_seq_cst);
            if (_r->tail.load(std::memory_order_seq_cst) != _head) {
                _r->rx_sleeping.store(0, std::memory_order_relaxed);
                continue;
            }
            if (_r->closed.load(std::memory_order_seq_cst)) {
                _r->rx_sleeping.store(0, std::memory_order_relaxed);
                return try_receive(out);
            }
            std::optional<std::chrono::nanoseconds> left;
            if (timeout) {
                auto now = std::chrono::steady_clock::now();
                if (now >= deadline) {
                    _r->rx_sleeping.store(0, std::memory_order_relaxed);
                    return try_receive(out);
                }
                left = deadline - now;
            }
            ++_stats.receiver_sleeps;
            detail::futex_wait(_r->rx_sleeping, 1, left);
            _r->rx_sleeping.store(0, std::memory_order_relaxed);
        }
    }

    /// Is a message there? (seq_cst: the event loop's doorbell protocol.)
    bool pending() const noexcept { return _r->tail.load(std::memory_order_seq_cst) != _head; }
    /// Does the sender run on `cpu`?
    bool sender_on(int cpu) const noexcept {
        return _r->tx_cpu.load(std::memory_order_relaxed) == cpu;
    }

    bool closed() const noexcept {
        return _r->closed.load(std::memory_order_seq_cst) &&
               _r->tail.load(std::memory_order_seq_cst) == _head;
    }
    const channel_stats& stats() const noexcept { return _stats; }

private:
    static void cpu_relax() noexcept {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
    }
    void ring_sender() {
        if (_r->tx_sleeping.load(std::memory_order_seq_cst) == 1 &&
            _r->tx_sleeping.exchange(0) == 1) {
            detail::futex_wake(_r->tx_sleeping);
        }
    }
};

} // namespace llmos

namespace llmos {

/// A channel's receiving end as an event loop source: each poll hands
/// up to `Batch` descriptors at a time to `Handler` (void(std::span<const
/// descriptor>)). The sender must ring the loop's doorbell (the
/// channel_sender constructor that takes one). A batch is taken off the
/// ring once the handler has returned: one that throws (out of its poll)
/// is handed the same batch again at the next poll, none lost (those it
/// handled before it threw come again).
template <size_t Capacity, typename Handler, size_t Batch = 32>
class channel_source final : public loop_source {
    channel_receiver<Capacity> _rx;
    Handler _h;
    bool _close_seen = false;

public:
    channel_source(channel_ring<Capacity>& r, Handler h)
        : _rx(r, 0)
        , _h(std::move(h)) {}

    size_t poll() override {
        descriptor buf[Batch];
        size_t total = 0;
        while (size_t n = _rx.peek(buf)) {
            _h(std::span<const descriptor>(buf, n));
            _rx.consume(n);
            total += n;
            if (n < Batch) {
                break;
            }
        }
        if (!_close_seen && _rx.closed()) {
            _close_seen = true; // an event too: run_once returns
            ++total;
        }
        return total;
    }
    /// A message, or the close not yet seen by poll() (close rings too).
    bool pending() const override { return _rx.pending() || (!_close_seen && _rx.closed()); }
    bool producer_on(int cpu) const override { return _rx.sender_on(cpu); }
    bool closed() const noexcept { return _rx.closed(); }
    channel_receiver<Capacity>& receiver() noexcept { return _rx; }
};

} // namespace llmos
