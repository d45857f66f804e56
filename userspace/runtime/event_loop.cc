// SPDX-License-Identifier: MIT
#include <algorithm>
#include <cerrno>
#include <climits>
#include <liburing.h>
#include <linux/futex.h>
#include <llmos/channel.hh>
#include <llmos/event_loop.hh>
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <thread>
#include <unistd.h>
#include <utility>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#define LLMOS_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define LLMOS_TSAN 1
#endif
#endif
#ifdef LLMOS_TSAN
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace llmos {

namespace {

// liburing maps and unmaps a ring with raw system calls, which
// ThreadSanitizer does not see: a ring mapped where a finished thread's
// ring was looks like that thread's memory, and its new owner's accesses
// like races with the old one's. Under TSan, a ring's pages are released
// as it is torn down and acquired when a new one is mapped over them
// (the kernel orders the two).
enum class ring_pages { release, acquire };

void sync_ring_pages([[maybe_unused]] const io_uring& r, [[maybe_unused]] ring_pages how) noexcept {
#ifdef LLMOS_TSAN
    const size_t sqe =
        (r.flags & IORING_SETUP_SQE128) ? 2 * sizeof(io_uring_sqe) : sizeof(io_uring_sqe);
    const std::pair<void*, size_t> maps[] = {{r.sq.ring_ptr, r.sq.ring_sz},
                                             {r.sq.sqes, size_t(r.sq.ring_entries) * sqe},
                                             {r.cq.ring_ptr, r.cq.ring_sz}};
    for (const auto& [at, size] : maps) {
        auto* p = static_cast<char*>(at);
        for (size_t off = 0; off < size; off += 4096) {
            if (how == ring_pages::release) {
                __tsan_release(p + off);
            } else {
                __tsan_acquire(p + off);
            }
        }
    }
#endif
}

// Newer than Debian's liburing 2.3 headers; values from the kernel UAPI.
constexpr uint8_t op_futex_wait = 51;             // IORING_OP_FUTEX_WAIT (6.7)
constexpr uint32_t futex2_size_u32 = 0x2;         // FUTEX2_SIZE_U32; not FUTEX2_PRIVATE:
                                                  // futex.cc wakes shared futexes
constexpr uint64_t futex_match_any = 0xffffffffu; // FUTEX_BITSET_MATCH_ANY

// user_data of doorbell completions (futex wait or MSG_RING); completion
// slots use their index + 1, and 0 is ignored.
// Not ~0: liburing takes CQEs with user_data -1 for its own timeouts and
// drops them inside its wait calls.
constexpr uint64_t bell_tag = 0x6c6c6d6f73626c6cull; // "llmosbll"
// The fallback doorbell of msg_ring loops: the POLL_ADD on their eventfd.
constexpr uint64_t fallback_tag = 0x6c6c6d6f73666262ull; // "llmosfbb"

std::atomic<detail::msg_ring_fault> fault{detail::msg_ring_fault::none};

void write_eventfd(int fd) noexcept {
    const uint64_t one = 1;
    // EAGAIN: the counter is full, so readable already; EINTR: again.
    while (::write(fd, &one, sizeof(one)) < 0 && errno == EINTR) {
    }
}

void cpu_relax() noexcept {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
}

// A ring private to a thread that rings msg_ring doorbells (a loop's own
// ring is reaped by its loop only: a failure would be seen too late).
struct private_ring {
    io_uring ring{};
    bool ok = false;
    private_ring() { init(); }
    ~private_ring() { tear_down(); }
    private_ring(const private_ring&) = delete;
    private_ring& operator=(const private_ring&) = delete;
    // A fresh ring after a send that failed before the kernel took its SQE
    // (io_uring_enter failing with EAGAIN, say): the SQE would otherwise go
    // with the next send, and its completion be read for that one's.
    void renew() noexcept {
        tear_down();
        init();
    }

private:
    void init() noexcept {
        ring = io_uring{};
        ok = io_uring_queue_init(8, &ring, 0) == 0;
        if (ok) {
            sync_ring_pages(ring, ring_pages::acquire);
        }
    }
    void tear_down() noexcept {
        if (ok) {
            sync_ring_pages(ring, ring_pages::release);
            io_uring_queue_exit(&ring);
            ok = false;
        }
    }
};

// An SQE of `r`; when its submission queue is full, what is queued is
// submitted once to make room. nullptr when there is still none.
io_uring_sqe* sqe_making_room(io_uring* r) {
    io_uring_sqe* s = io_uring_get_sqe(r);
    if (!s) {
        io_uring_submit(r);
        s = io_uring_get_sqe(r);
    }
    return s;
}

// Sends a MSG_RING from `from`, a ring nobody else reaps (a thread's
// private one), to `target_fd`, and waits for its completion. False when
// it could not be sent or failed: then the caller wakes the target
// another way. `stale`: set when the SQE may still be in `from`'s queue
// (the kernel did not take it), so that the ring must be renewed.
bool send_msg_ring(io_uring* from, int target_fd, bool& stale) {
    const auto f = fault.load(std::memory_order_relaxed);
    io_uring_cq_advance(from, io_uring_cq_ready(from)); // none left, normally
    io_uring_sqe* sqe = f == detail::msg_ring_fault::no_sqe ? nullptr : io_uring_get_sqe(from);
    for (int i = 0; !sqe && i < 1000 && f != detail::msg_ring_fault::no_sqe; ++i) {
        // The SQ is full: let it drain.
        io_uring_submit(from);
        if (i) {
            std::this_thread::yield();
        }
        sqe = io_uring_get_sqe(from);
    }
    if (!sqe) {
        return false;
    }
    if (f == detail::msg_ring_fault::send_fails) {
        target_fd = -1; // completes with -EBADF
    }
    io_uring_prep_msg_ring(sqe, target_fd, 0, bell_tag, 0);
    sqe->user_data = 0;
    int ret = 0;
    do {
        ret = io_uring_submit_and_wait(from, 1); // EINTR: a signal came first
    } while (ret == -EINTR);
    io_uring_cqe* cqe = nullptr;
    if (ret < 0 || io_uring_peek_cqe(from, &cqe) != 0) {
        stale = true;
        return false;
    }
    const bool sent = cqe->res >= 0;
    io_uring_cqe_seen(from, cqe);
    return sent;
}

} // namespace

namespace detail {
void set_msg_ring_fault(msg_ring_fault f) noexcept {
    fault.store(f);
}
} // namespace detail

void ring_doorbell(doorbell& b, event_loop* /* from */) {
    if (b.sleeping.load(std::memory_order_seq_cst) != 1 || b.sleeping.exchange(0) != 1) {
        return;
    }
    event_loop& l = *b.loop;
    if (l.bell_kind() == doorbell_kind::futex) {
        detail::futex_wake(b.sleeping);
        return;
    }
    // Having cleared `sleeping`, this caller is the one to wake the loop:
    // from its private ring, whose completion says at once whether the
    // MSG_RING got there (the caller's own loop, if it has one, would
    // learn it only when it next reaps, maybe never: a sender blocked on
    // a full channel does not reap), else by the eventfd.
    thread_local private_ring own;
    if (!own.ok ||
        fault.load(std::memory_order_relaxed) == detail::msg_ring_fault::no_private_ring) {
        l.wake_by_fallback();
    } else if (bool stale = false; !send_msg_ring(&own.ring, l.ring_fd(), stale)) {
        l.wake_by_fallback();
        if (stale) {
            own.renew();
        }
    }
}

void event_loop::ring_deleter::operator()(io_uring* r) const noexcept {
    sync_ring_pages(*r, ring_pages::release);
    io_uring_queue_exit(r);
    delete r;
}

event_loop::event_loop(options o)
    : _opt(o) {
    _bell.loop = this;
}

event_loop::~event_loop() {
    // Commands in flight may write into what their completions keep
    // alive (a DISPATCH's descriptors), and the kernel tears a ring down
    // after io_uring_queue_exit() returns, not before: a command it
    // completes then would write into freed memory. So they are cancelled
    // and reaped first; what is still in flight after that keeps its
    // completion, and what it owns, for good (leaked, never freed under
    // the kernel): a uring_cmd that IORING_OP_ASYNC_CANCEL does not reach,
    // whose owner did not cancel it (sched_worker does).
    if (_ring && !cancel_in_flight(std::chrono::milliseconds(200))) {
        (void)_slots.release();
    }
    _ring.reset();
}

bool event_loop::cancel_in_flight(std::chrono::milliseconds limit) noexcept {
    io_uring* r = _ring.get();
    // Slots taken and not reaped: what was sent, once the queue is submitted.
    const auto in_flight = [this] { return _slots->size() - _free.size(); };
    if (!in_flight()) {
        return true;
    }
    io_uring_submit(r);
    if (io_uring_sqe* s = sqe_making_room(r)) {
        io_uring_prep_cancel64(s, 0, IORING_ASYNC_CANCEL_ANY);
        s->user_data = 0; // its own completion is ignored
        io_uring_submit(r);
    }
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (in_flight()) {
        const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(
            deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) {
            return false;
        }
        __kernel_timespec ts{};
        ts.tv_sec = left.count() / 1000000000;
        ts.tv_nsec = left.count() % 1000000000;
        io_uring_cqe* cqe = nullptr;
        io_uring_wait_cqe_timeout(r, &cqe, &ts);
        while (io_uring_peek_cqe(r, &cqe) == 0) {
            const uint64_t ud = cqe->user_data;
            io_uring_cqe_seen(r, cqe);
            // The kernel is done with it: its completion goes, not run
            // (the loop is going). _free has room for every slot.
            const auto slot = static_cast<uint32_t>(ud - 1);
            if (ud != 0 && ud <= _slots->size() &&
                std::find(_free.begin(), _free.end(), slot) == _free.end()) {
                (*_slots)[slot] = nullptr;
                _free.push_back(slot);
            }
        }
    }
    return true;
}

result<std::unique_ptr<event_loop>> event_loop::create(options o) {
    std::unique_ptr<event_loop> l(new event_loop(o));
    auto* r = new io_uring{};
    // COOP_TASKRUN: no IPI for completions; not DEFER_TASKRUN, which hides
    // MSG_RING completions from a peeking loop (IO-URING-NOTES.md).
    io_uring_params p{};
    p.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL;
    int ret = io_uring_queue_init_params(o.entries, r, &p);
    if (ret == -EINVAL) {
        p = {};
        ret = io_uring_queue_init_params(o.entries, r, &p);
    }
    if (ret < 0) {
        delete r;
        return std::error_code(-ret, std::system_category());
    }
    sync_ring_pages(*r, ring_pages::acquire);
    l->_ring.reset(r);
    if (o.bell == doorbell_kind::futex) {
        // Probe: a futex wait on a word that does not match completes at
        // once with -EAGAIN where the kernel has the opcode.
        uint32_t word = 0;
        io_uring_sqe* sqe = io_uring_get_sqe(r);
        io_uring_prep_rw(op_futex_wait, sqe, futex2_size_u32, &word, 0, 1);
        sqe->addr3 = futex_match_any;
        sqe->user_data = 0;
        int w = 0;
        // (A submit that fails would leave the wait below waiting for ever.)
        while ((w = io_uring_submit(r)) == -EINTR) {
        }
        if (w < 0) {
            return std::error_code(-w, std::system_category());
        }
        io_uring_cqe* cqe = nullptr;
        while ((w = io_uring_wait_cqe(r, &cqe)) == -EINTR) { // a signal, not a failure
        }
        if (w < 0) {
            return std::error_code(-w, std::system_category());
        }
        int res = cqe->res;
        io_uring_cqe_seen(r, cqe);
        if (res != -EAGAIN) {
            return std::error_code(res == -EINVAL ? EOPNOTSUPP : -res, std::system_category());
        }
    } else {
        l->_wake_fd.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!l->_wake_fd) {
            return std::error_code(errno, std::system_category());
        }
    }
    return l;
}

int event_loop::ring_fd() const noexcept {
    return _ring->ring_fd;
}

void event_loop::add_source(loop_source& s) {
    _sources.push_back(&s);
}

void event_loop::remove_source(loop_source& s) {
    std::erase(_sources, &s);
}

io_uring_sqe* event_loop::sqe(completion done) {
    // Memory first, so that a throw leaves no SQE taken and unprepared;
    // room in _free for every slot: reap() frees slots and must not
    // allocate (nor throw).
    auto& slots = *_slots;
    if (_free.empty() && slots.size() == slots.capacity()) {
        slots.reserve(std::max<size_t>(16, 2 * slots.size()));
    }
    _free.reserve(slots.capacity());
    io_uring_sqe* s = sqe_making_room(_ring.get());
    if (!s) {
        return nullptr;
    }
    uint32_t slot;
    if (!_free.empty()) {
        slot = _free.back();
        _free.pop_back();
        slots[slot] = std::move(done);
    } else {
        slot = static_cast<uint32_t>(slots.size());
        slots.push_back(std::move(done));
    }
    io_uring_sqe_set_data64(s, slot + 1);
    return s;
}

bool event_loop::after(std::chrono::nanoseconds d, std::function<void()> fn) {
    // The kernel reads the time when the SQE is submitted, which may be
    // later than now (a busy submission queue): it lives as long as the
    // completion does.
    auto ts = std::make_shared<__kernel_timespec>();
    ts->tv_sec = d.count() / 1000000000;
    ts->tv_nsec = d.count() % 1000000000;
    io_uring_sqe* s = sqe([fn = std::move(fn), ts](int32_t, uint32_t) { fn(); });
    if (!s) {
        return false;
    }
    auto ud = s->user_data;
    io_uring_prep_timeout(s, ts.get(), 0, 0);
    s->user_data = ud;
    io_uring_submit(_ring.get());
    return true;
}

bool event_loop::arm_futex() {
    io_uring_sqe* s = sqe_making_room(_ring.get());
    if (!s) {
        return false;
    }
    io_uring_prep_rw(op_futex_wait, s, futex2_size_u32, &_bell.sleeping, 0, 1);
    s->addr3 = futex_match_any;
    s->user_data = bell_tag;
    _futex_armed = true;
    return true;
}

bool event_loop::arm_fallback() {
    io_uring_sqe* s = sqe_making_room(_ring.get());
    if (!s) {
        return false;
    }
    io_uring_prep_poll_add(s, _wake_fd.get(), POLLIN);
    s->user_data = fallback_tag;
    _fallback_armed = true;
    return true;
}

void event_loop::wake_by_fallback() noexcept {
    write_eventfd(_wake_fd.get());
}

void event_loop::submit_queued() {
    if (io_uring_sq_ready(_ring.get())) {
        io_uring_submit(_ring.get());
    }
}

size_t event_loop::poll_sources() {
    size_t n = 0;
    for (size_t i = 0; i < _sources.size(); ++i) {
        n += _sources[i]->poll();
    }
    return n;
}

size_t event_loop::reap() {
    size_t handled = 0;
    io_uring_cqe* cqe;
    while (io_uring_peek_cqe(_ring.get(), &cqe) == 0) {
        uint64_t ud = cqe->user_data;
        int32_t res = cqe->res;
        uint32_t flags = cqe->flags;
        io_uring_cqe_seen(_ring.get(), cqe);
        if (ud == bell_tag) {
            ++_stats.doorbells;
            if (_opt.bell == doorbell_kind::futex) {
                _futex_armed = false;
            }
            continue;
        }
        if (ud == fallback_tag) {
            // Armed again before the next sleep, the eventfd read first.
            ++_stats.doorbells;
            ++_stats.fallbacks;
            _fallback_armed = false;
            uint64_t v = 0;
            [[maybe_unused]] ssize_t got = ::read(_wake_fd.get(), &v, sizeof(v));
            continue;
        }
        if (ud == 0 || ud > _slots->size()) {
            continue;
        }
        uint32_t slot = static_cast<uint32_t>(ud - 1);
        completion fn = std::move((*_slots)[slot]);
        (*_slots)[slot] = nullptr;
        _free.push_back(slot);
        ++_stats.completions;
        ++handled;
        if (fn) {
            fn(res, flags);
        }
    }
    return handled;
}

size_t event_loop::run_once(std::optional<std::chrono::nanoseconds> max_wait) {
    ++_stats.iterations;
    size_t n = poll_sources() + reap();
    if (n) {
        // Submit what the handlers queued; no waiting.
        submit_queued();
        return n;
    }
    // Spin, unless a producer shares our CPU (it would only be delayed).
    uint32_t spin = _opt.spin;
    if (max_wait && max_wait->count() == 0) {
        spin = 0;
    }
    int cpu = ::sched_getcpu();
    for (auto* s : _sources) {
        if (s->producer_on(cpu)) {
            spin = 0;
        }
    }
    for (uint32_t i = 0; i < spin; ++i) {
        cpu_relax();
        bool any = false;
        for (auto* s : _sources) {
            any = any || s->pending();
        }
        if (any || io_uring_cq_ready(_ring.get())) {
            n = poll_sources() + reap();
            submit_queued();
            return n;
        }
    }
    if (max_wait && max_wait->count() == 0) {
        // What was prepared before this call (sqe()) goes in now, or a
        // caller that never sleeps would never see it complete.
        submit_queued();
        return 0;
    }
    if (_idle_hook) {
        _idle_hook();
    }
    // Sleep protocol: announce, re-check, then wait.
    _bell.sleeping.store(1, std::memory_order_seq_cst);
    bool any = _stop.load(std::memory_order_seq_cst);
    for (auto* s : _sources) {
        any = any || s->pending();
    }
    if (any) {
        _bell.sleeping.store(0, std::memory_order_relaxed);
        // What was prepared but not submitted yet (a stopping loop that
        // handled nothing, or a submission that failed) goes in now.
        submit_queued();
        n = poll_sources() + reap();
        submit_queued();
        return n;
    }
    // A doorbell that cannot be armed now (no SQE) would not wake this
    // sleep: then it is a short one, and the next tries again. (A msg_ring
    // loop's doorbell is the MSG_RING; its eventfd is the fallback.)
    const bool armed = _opt.bell == doorbell_kind::futex ? _futex_armed || arm_futex()
                                                         : _fallback_armed || arm_fallback();
    if (!armed && (!max_wait || *max_wait > std::chrono::milliseconds(1))) {
        max_wait = std::chrono::milliseconds(1);
    }
    ++_stats.sleeps;
    io_uring_cqe* cqe = nullptr;
    if (max_wait) {
        __kernel_timespec ts{};
        ts.tv_sec = max_wait->count() / 1000000000;
        ts.tv_nsec = max_wait->count() % 1000000000;
        io_uring_submit_and_wait_timeout(_ring.get(), &cqe, 1, &ts, nullptr);
    } else {
        io_uring_submit_and_wait(_ring.get(), 1);
    }
    _bell.sleeping.store(0, std::memory_order_seq_cst);
    n = poll_sources() + reap();
    submit_queued();
    return n;
}

void event_loop::run() {
    while (!_stop.load(std::memory_order_acquire)) {
        run_once();
    }
}

void event_loop::stop() {
    _stop.store(true, std::memory_order_seq_cst);
    ring_doorbell(_bell);
}

} // namespace llmos
