// SPDX-License-Identifier: MIT
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <linux/llmos.h>
#include <llmos/engine/cuda.hh>
#include <llmos/mindspace.hh>
#include <llmos/sched.hh>
#include <llmos/worker_pool.hh>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <numa.h>
#include <optional>
#include <pthread.h>
#include <sched.h>
#include <string>
#include <sys/resource.h>
#include <unistd.h>
#include <vector>

namespace llmos {

const char* to_string(priority_class c) noexcept {
    switch (c) {
    case priority_class::interactive:
        return "interactive";
    case priority_class::normal:
        return "normal";
    case priority_class::batch:
        return "batch";
    case priority_class::background:
        return "background";
    }
    return "?";
}

namespace {

using namespace std::chrono_literals;

std::vector<int> allowed_cpus() {
    cpu_set_t set;
    CPU_ZERO(&set);
    std::vector<int> v;
    if (::sched_getaffinity(0, sizeof(set), &set) == 0) {
        for (int c = 0; c < CPU_SETSIZE; ++c) {
            if (CPU_ISSET(c, &set)) {
                v.push_back(c);
            }
        }
    }
    return v;
}

bool apply_class(priority_class c) {
    sched_param p{};
    int policy = SCHED_OTHER;
    int nice = 0;
    switch (c) {
    case priority_class::interactive:
        nice = -5;
        break;
    case priority_class::normal:
        break;
    case priority_class::batch:
        policy = SCHED_BATCH;
        nice = 10;
        break;
    case priority_class::background:
        policy = SCHED_IDLE;
        break;
    }
    if (::sched_setscheduler(0, policy, &p) != 0) {
        return false;
    }
    // Per thread on Linux: `who` 0 is the calling thread.
    if (::setpriority(PRIO_PROCESS, 0, nice) != 0 && nice < 0) {
        ::setpriority(PRIO_PROCESS, 0, 0); // not permitted: stay at 0
    }
    return true;
}

// Runs `f` when it goes out of scope, however that happens.
template <typename F>
class at_exit {
    F _f;

public:
    explicit at_exit(F f)
        : _f(std::move(f)) {}
    at_exit(const at_exit&) = delete;
    at_exit& operator=(const at_exit&) = delete;
    ~at_exit() { _f(); }
};

// The most output a request may have here: a final descriptor's 32-bit
// length says all of it (descriptor stays 24 bytes, its ABI).
constexpr uint64_t max_output = UINT32_MAX;

// detail::refuse_endings() and refuse_starts(): the request whose
// endings (or STARTs) fail, how many more, as one word (request, count)
// changed under a lock, so that take() never sees one's request with
// another's count.
struct refusals {
    std::mutex m;
    uint64_t request = 0; // under m
    uint32_t left = 0;    // under m
    std::atomic<bool> on{false};

    void set(uint64_t id, uint32_t times) noexcept {
        std::lock_guard lk(m);
        request = id;
        left = times;
        on.store(times != 0);
    }
    bool take(uint64_t id) noexcept {
        if (!on.load()) {
            return false;
        }
        std::lock_guard lk(m);
        if (request != id || left == 0) {
            return false;
        }
        --left;
        return true;
    }
};
refusals endings;
refusals starts;
const std::error_code refusal(EIO, std::system_category());

bool refused(uint64_t id) noexcept {
    return endings.take(id);
}

// What the scheduler answers about a request this worker no longer
// holds: cancelled (by its client, or its client closing) or ended.
bool not_held(std::error_code e) noexcept {
    return e == std::errc::no_such_file_or_directory || e == std::errc::no_such_process;
}

// How often a worker asks the scheduler whether the requests it runs are
// still its own (one START each, a system call on the kernel backend): a
// cancel through the scheduler then stops one within this, not at its
// end, for a few calls a second per request.
constexpr auto held_check_every = std::chrono::milliseconds(100);

// A mindspace a worker has open and mapped, for the requests using it.
struct mapped_ms {
    mindspace ms;
    mapping map;
    uint32_t users = 0;
};

} // namespace

namespace detail {
void refuse_endings(uint64_t request, uint32_t times) noexcept {
    endings.set(request, times);
}
void refuse_starts(uint64_t request, uint32_t times) noexcept {
    starts.set(request, times);
}
} // namespace detail

worker_pool::worker_pool(const device& dev, worker_pool_options o)
    : _dev(dev)
    , _o(std::move(o)) {
}

worker_pool::~worker_pool() {
    stop();
}

result<std::unique_ptr<worker_pool>> worker_pool::start(const device& dev, worker_pool_options o) {
    auto allowed = allowed_cpus();
    if (o.cpus.empty()) {
        o.cpus = allowed;
    }
    // (A capacity the scheduler refuses would have every worker retry
    // its registration for ever; max_requeues 0 would fail every request.)
    if (!o.engine || o.slots == 0 || o.slots > LLMOS_MAX_CAPACITY || o.cpus.empty() ||
        o.max_requeues == 0) {
        return std::error_code(EINVAL, std::system_category());
    }
    for (int c : o.cpus) {
        if (std::find(allowed.begin(), allowed.end(), c) == allowed.end()) {
            return std::error_code(EINVAL, std::system_category());
        }
    }
    std::unique_ptr<worker_pool> p(new worker_pool(dev, std::move(o)));
    // libnuma fills its CPU-to-node cache lazily and without a lock: ask
    // it here, before the workers start.
    bool numa = ::numa_available() >= 0;
    for (size_t i = 0; i < p->_o.cpus.size(); ++i) {
        p->_infos.push_back(std::make_unique<worker_info>());
        p->_infos.back()->cpu = p->_o.cpus[i];
        p->_infos.back()->node = numa ? ::numa_node_of_cpu(p->_o.cpus[i]) : -1;
    }
    for (unsigned i = 0; i < p->_infos.size(); ++i) {
        p->_threads.emplace_back([pp = p.get(), i] {
            try {
                pp->run_worker(i);
            } catch (...) { // it ends, as a dead worker's registration would
            }
        });
    }
    return p;
}

void worker_pool::join() {
    std::lock_guard lk(_join_m);
    for (auto& t : _threads) {
        if (t.joinable()) {
            t.join();
        }
    }
}

void worker_pool::wake_all() {
    std::lock_guard lk(_loops_m);
    for (auto* l : _loops) {
        l->stop();
    }
}

void worker_pool::poke() {
    _pokes.fetch_add(1);
    std::lock_guard lk(_loops_m);
    for (auto* l : _loops) {
        ring_doorbell(l->bell());
    }
}

void worker_pool::drain() {
    state s = state::running;
    _state.compare_exchange_strong(s, state::draining);
    wake_all();
    join();
}

void worker_pool::stop() {
    _state.store(state::stopping);
    wake_all();
    join();
}

void worker_pool::setup_thread(unsigned i) {
    worker_info& w = *_infos[i];
    int cpu = w.cpu;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    ::pthread_setaffinity_np(::pthread_self(), sizeof(set), &set);
    cpu_set_t got;
    CPU_ZERO(&got);
    w.pinned = ::pthread_getaffinity_np(::pthread_self(), sizeof(got), &got) == 0 &&
               CPU_COUNT(&got) == 1 && CPU_ISSET(cpu, &got);
    if (w.node >= 0) {
        // This thread's allocations (its engine's buffers) on its node.
        ::numa_set_preferred(w.node);
    }
    w.class_applied = apply_class(_o.cls);
}

// One worker's requests while it serves them.
struct worker_pool::slot {
    std::unique_ptr<sequence> s;
    size_t streamed = 0; ///< output bytes already streamed
    /// After its engine crashed: what was streamed before, which the new
    /// engine must write again (the first `checked` bytes it has). A
    /// vector: its reserve() takes what it is asked, no more.
    std::vector<char> again;
    size_t checked = 0;
    uint32_t strikes = 0; ///< engine crashes it caused here
    bool prefilled = false;
    bool suspect = false; ///< came requeued, or was in a batch that crashed: runs alone
    bool crashed = false; ///< was in a batch that crashed here

    /// After a step: whether its request, started again after a crash,
    /// has written other bytes than it streamed before (or ended short of
    /// them). Once it has written them all, it is as if it had not crashed.
    bool again_differs() noexcept {
        if (again.empty() || s->status) {
            return false;
        }
        const size_t n = std::min(s->produced, again.size());
        if (n > checked &&
            std::memcmp(s->output.data() + checked, again.data() + checked, n - checked) != 0) {
            return true;
        }
        checked = n;
        if (n == again.size()) {
            again.clear();
            checked = 0;
            return false;
        }
        return s->done;
    }
};

// Waits for requests in the worker's event loop (DISPATCH as a uring_cmd
// on the kernel backend, the scheduler ringing the loop on the local one),
// or, without a loop, in a DISPATCH that blocks a while. drain() and
// stop() wake the loop; then the wait is cancelled (ECANCELED), and what
// was taken meanwhile still comes back here.
namespace {

// poke()s as one of a waiting worker's loop sources: the loop's sleep
// protocol looks at its sources again after it says it sleeps, so a poke
// that comes just then still wakes it.
struct poke_source final : loop_source {
    const std::atomic<uint64_t>& pokes;
    uint64_t seen;
    inference_engine& engine;

    poke_source(const std::atomic<uint64_t>& p, inference_engine& e)
        : pokes(p)
        , seen(p.load())
        , engine(e) {}
    size_t poll() override {
        const uint64_t now = pokes.load();
        if (now == seen) {
            return 0;
        }
        seen = now;
        engine.idle();
        return 1;
    }
    bool pending() const override { return pokes.load(std::memory_order_seq_cst) != seen; }
};

} // namespace

result<std::vector<request_desc>> worker_pool::wait_for_work(sched_worker& w, event_loop* loop,
                                                             uint32_t max,
                                                             inference_engine& engine) {
    poke_source pokes(_pokes, engine);
    engine.idle();
    // idle() may take a while: a drain() or stop() meanwhile takes nothing
    // new (a DISPATCH sent now could take requests before it is cancelled).
    if (_state.load() != state::running) {
        return std::make_error_code(std::errc::operation_canceled);
    }
    if (!loop) {
        return w.dispatch(max, wait_for::at_most(50ms));
    }
    // Shared with the callback: if a throw (no memory) leaves here, the
    // dispatch is cancelled when `w` goes, and its callback may still run
    // (from the loop, on the kernel backend) after this frame is gone.
    auto got = std::make_shared<std::optional<result<std::vector<request_desc>>>>();
    // Memory first: on the kernel backend the DISPATCH may take requests
    // as it is sent, and a throw after it would leave them to `w`, which
    // gives them back counted as it closes.
    loop->add_source(pokes);
    const at_exit added{[&] { loop->remove_source(pokes); }};
    if (auto ec = w.dispatch_async(*loop, max, [got](auto r) { got->emplace(std::move(r)); })) {
        return ec;
    }
    bool cancelled = false;
    while (!*got) {
        if (_state.load() != state::running && w.dispatch_pending()) {
            // Again until its completion comes: a cancel that came while
            // the command was being issued found nothing parked. The loop
            // no longer sleeps (it was woken to stop): not a hot spin.
            if (cancelled) {
                std::this_thread::sleep_for(1ms);
            }
            w.cancel_dispatch();
            cancelled = true;
        }
        if (!*got) {
            loop->run_once();
        }
    }
    return std::move(**got);
}

void worker_pool::run_worker(unsigned i) {
    setup_thread(i);
    worker_info& info = *_infos[i];
    // Its last_error. With no memory for the message, the error stays
    // unsaid: these throw nothing (crash recovery uses them).
    auto note_error = [&](const char* what, const char* why) noexcept {
        try {
            info.set_error(std::string(what) + why);
        } catch (...) {
        }
    };
    auto note_code = [&](const char* what, std::error_code e) noexcept {
        try {
            info.set_error(what + e.message());
        } catch (...) {
        }
    };
    // This thread's event loop, which drain() and stop() can wake.
    // Without one (no memory, no io_uring) it waits in a DISPATCH that
    // blocks a while instead.
    std::unique_ptr<event_loop> loop;
    try {
        if (auto l = event_loop::create({.entries = 16, .spin = 0})) {
            std::lock_guard lk(_loops_m);
            _loops.push_back(l->get());
            loop = std::move(*l);
        }
    } catch (const std::bad_alloc&) {
    }
    bool counted_ready = false;
    auto mark_ready = [&] {
        if (!counted_ready) {
            counted_ready = true;
            _ready.fetch_add(1);
        }
    };
    // However the worker ends, it counts as ready (nobody waits for it)
    // and nobody wakes its loop any more.
    const at_exit done{[&] {
        mark_ready();
        std::lock_guard lk(_loops_m);
        std::erase(_loops, loop.get());
    }};
    // The engine's device cannot be used by this process any more: said
    // once; the worker gives back what it holds and ends.
    bool device_gone = false;
    auto lost = [&](const char* why) {
        if (device_gone) {
            return;
        }
        device_gone = true;
        info.device_lost.store(true);
        note_error("device lost: ", why);
        if (_o.on_device_lost) {
            try {
                _o.on_device_lost(i, why);
            } catch (...) { // said in last_error already
            }
        }
    };
    auto make_engine = [&]() -> std::unique_ptr<inference_engine> {
        try {
            return _o.engine(i);
        } catch (const engine::device_lost& e) {
            lost(e.what());
            return nullptr;
        } catch (const std::exception& e) {
            note_error("engine: ", e.what());
            return nullptr;
        } catch (...) {
            note_error("engine: ", "an exception that is not a std::exception");
            return nullptr;
        }
    };
    std::unique_ptr<inference_engine> engine = make_engine();
    // The caller's callbacks: one that throws costs that descriptor (or
    // that look at cancellation), said in last_error, not the worker, nor
    // its engine's requests (a throw here is not the engine's crash).
    auto emit = [&](const descriptor& d) noexcept {
        if (_o.on_output) {
            try {
                _o.on_output(i, d);
            } catch (const std::exception& e) {
                note_error("on_output: ", e.what());
            } catch (...) {
                note_error("on_output: ", "an exception");
            }
        }
    };
    auto cancelled = [&](uint64_t id) noexcept {
        try {
            return _o.is_cancelled(id);
        } catch (const std::exception& e) {
            note_error("is_cancelled: ", e.what());
        } catch (...) {
            note_error("is_cancelled: ", "an exception");
        }
        return false;
    };
    std::map<uint64_t, mapped_ms> maps;

    // An engine that could not be made again (a GPU's memory not given
    // back yet, say) is tried again, from 100 ms to 5 s apart, while the
    // pool runs; meanwhile this worker is not registered: what it held is
    // back in the scheduler, for the other workers. (One never made at the
    // start ends that worker, with its last_error.)
    const bool made_once = engine != nullptr;
    auto make_again = [&] {
        for (auto wait = 100ms; !engine && !device_gone && _state.load() == state::running;
             wait = std::min<std::chrono::milliseconds>(wait * 2, 5s)) {
            for (auto t = 0ms; t < wait && _state.load() == state::running; t += 10ms) {
                std::this_thread::sleep_for(10ms);
            }
            if (_state.load() == state::running) {
                engine = make_engine();
            }
        }
    };
    bool remake = false; // the engine aborted: a new one at once
    // After a registration closed to give back a request it could neither
    // end nor give back (`stuck`, below): how long to wait before the next
    // one, from 100 ms to 5 s (the scheduler may refuse it again).
    auto stuck_wait = 0ms;
    while (made_once && _state.load() != state::stopping) {
        // A throw that nothing below catches (no memory for a request's
        // setup, a dispatch, a registration) ends this registration as a
        // dying worker's would: `w` closes as the exception leaves, and
        // the scheduler takes back what it held (requeued, counted).
        // Then a fresh engine, and the worker registers again.
        try {
            if (!engine && remake) {
                remake = false;
                engine = make_engine();
            }
            if (!engine) {
                if (device_gone) {
                    break; // no engine can work here again
                }
                make_again();
                if (!engine) {
                    break;
                }
            }
            for (auto t = 0ms; t < stuck_wait && _state.load() == state::running; t += 10ms) {
                std::this_thread::sleep_for(10ms);
            }
            auto reg = sched_worker::open(_dev, _o.slots, info.node, _o.model);
            if (!reg) {
                // Tried again while running; a drain has nothing here to wait for.
                note_code("register: ", reg.error());
                mark_ready();
                if (_state.load() != state::running) {
                    break;
                }
                std::this_thread::sleep_for(100ms);
                continue;
            }
            sched_worker w = std::move(*reg);
            mark_ready();
            std::vector<slot> active;
            std::vector<sequence*> batch;
            // What one DISPATCH took, the first `set_up` of them set up:
            // out of memory setting up the others, they go back uncounted
            // (`w` would give them back counted as it closes).
            std::vector<uint64_t> taken;
            size_t set_up = 0;
            // Up front: fill_batch() then allocates nothing, nor does
            // recording what a DISPATCH took.
            active.reserve(_o.slots);
            batch.reserve(_o.slots);
            taken.reserve(std::min<uint32_t>(_o.slots, LLMOS_MAX_DISPATCH));
            auto last_held_check = std::chrono::steady_clock::now();
            // A request that could be neither completed nor given back is
            // still held by `w`: only closing `w` gives it back (requeued,
            // as a dying worker's, counted), so the worker takes no more
            // work, finishes the requests it runs, and registers again
            // (after stuck_wait). One that has used its max_requeues
            // already would only come back to fail the same way: it is
            // left held (`left`, a slot less) until `w` closes.
            bool stuck = false;
            uint32_t left = 0;

            // COMPLETE, give-back and START, unless a test has the
            // scheduler refuse them.
            auto complete = [&](uint64_t id, int32_t status, uint32_t tokens, uint64_t off,
                                uint64_t len) {
                return refused(id) ? refusal : w.complete(id, status, tokens, off, len);
            };
            // A request this worker will not finish goes back, uncounted.
            // One that cannot go back either is never left held here
            // without a reason: `w` closes (counted), or, once it has used
            // its max_requeues, it stays held, a slot less (`left`).
            auto hand_back = [&](const request_desc& d) noexcept {
                const std::error_code e = refused(d.id) ? refusal : w.give_back(d.id);
                if (e && !not_held(e)) {
                    if (d.requeues >= _o.max_requeues) {
                        ++left;
                    } else {
                        stuck = true;
                    }
                }
                return e;
            };
            // Ends a request: completes it with the scheduler, streams the
            // final descriptor, drops its mapping (`mapped`: setup() counted
            // it as a user of one). Throws nothing: crash recovery calls it.
            auto finish = [&](sequence& s, bool release, bool mapped = true) noexcept {
                if (release) {
                    engine->release(s);
                }
                uint64_t len = s.status ? 0 : s.produced;
                bool ended = true; // false: it went back to the queue, unended
                try {
                    if (const std::error_code e =
                            complete(s.req.id, s.status, s.tokens, s.output_off, len);
                        not_held(e)) {
                        // Cancelled through the scheduler (by its client, or
                        // its client closing) while it ran: its client sees
                        // it CANCELLED, and so does whoever reads the stream.
                        s.status = -ECANCELED;
                        len = 0;
                    } else if (e) {
                        // Refused (an output outside what the scheduler knows
                        // of the mindspace, a status that is no errno): it
                        // fails instead, or goes back; it is never left held
                        // here.
                        note_code("complete: ", e);
                        s.status = -EIO;
                        len = 0;
                        if (const std::error_code e2 = complete(s.req.id, -EIO, s.tokens, 0, 0);
                            e2 && !not_held(e2)) {
                            const std::error_code e3 = hand_back(s.req);
                            ended = e3 && not_held(e3);
                        }
                    }
                } catch (...) { // the scheduler's state unknown: `w` closes
                    note_error("complete: ", "an exception");
                    ended = false;
                    stuck = true;
                }
                if (ended) {
                    emit({s.req.id, s.output_off, static_cast<uint32_t>(len),
                          static_cast<uint32_t>(s.status ? output_kind::failed
                                                : s.cut  ? output_kind::done_cut
                                                         : output_kind::done)});
                    (s.status ? info.failed : info.served).fetch_add(1);
                }
                if (auto it = maps.find(s.req.ms_id);
                    mapped && it != maps.end() && --it->second.users == 0) {
                    maps.erase(it);
                    if (_dev.kind() == backend_kind::local) {
                        // A local mindspace nobody holds goes when something
                        // looks at it (the module's, with its last holder):
                        // a request's own, once its submitter let it go too.
                        try {
                            (void)mindspace_info(_dev, ms_key{s.req.ms_id, {}});
                        } catch (...) { // the next look removes it
                        }
                    }
                }
            };
            auto fail = [&](sequence& s, int32_t status, bool release,
                            bool mapped = true) noexcept {
                s.status = status;
                finish(s, release, mapped);
            };
            // Maps a dispatched request's mindspace and checks its prompt.
            auto setup = [&](const request_desc& d) -> std::unique_ptr<sequence> {
                auto s = std::make_unique<sequence>();
                s->req = d;
                if (const std::error_code e = starts.take(d.id) ? refusal : w.start(d.id)) {
                    if (not_held(e) || not_held(hand_back(d))) {
                        // Cancelled since it was dispatched: not run; the
                        // final descriptor tells whoever streams it.
                        fail(*s, -ECANCELED, false, false);
                        return nullptr;
                    }
                    // Refused for another reason (EINVAL, a transient
                    // error): not the request's fault; it went back,
                    // uncounted. A pause, as after a failed DISPATCH, so
                    // that a scheduler refusing every START is not asked
                    // again at once, for ever.
                    note_code("start: ", e);
                    std::this_thread::sleep_for(10ms);
                    return nullptr;
                }
                if (d.requeues >= _o.max_requeues) {
                    fail(*s, -EIO, false, false); // it crashed worker after worker
                    return nullptr;
                }
                if (!d.ms_id) {
                    if (d.prompt_len) {
                        fail(*s, -EINVAL, false, false); // a prompt needs a mindspace
                        return nullptr;
                    }
                    return s;
                }
                auto it = maps.find(d.ms_id);
                if (it == maps.end()) {
                    auto ms = mindspace::open(_dev, ms_key{d.ms_id, {}});
                    auto m = ms ? ms->map() : result<mapping>(ms.error());
                    if (!m) {
                        fail(*s, -m.error().value(), false, false);
                        return nullptr;
                    }
                    it = maps.emplace(d.ms_id, mapped_ms{std::move(*ms), std::move(*m), 0}).first;
                }
                ++it->second.users;
                auto bytes = it->second.map.bytes();
                if (d.prompt_off > bytes.size() || d.prompt_len > bytes.size() - d.prompt_off) {
                    fail(*s, -EINVAL, false); // the prompt is not inside the mindspace
                    return nullptr;
                }
                s->prompt = bytes.subspan(d.prompt_off, d.prompt_len);
                s->output_off =
                    std::min<uint64_t>(output_offset(d.prompt_off, d.prompt_len), bytes.size());
                // At most max_output: the final descriptor says how much.
                s->output = bytes.subspan(
                    s->output_off, std::min<uint64_t>(bytes.size() - s->output_off, max_output));
                s->memory = bytes;
                return s;
            };
            // Prefills; false if the request ended here.
            auto prefill = [&](slot& sl) {
                sequence& s = *sl.s;
                switch (engine->prefill(s)) {
                case engine_status::ok:
                    return true;
                case engine_status::bad_input:
                    fail(s, s.status ? s.status : -EINVAL, true);
                    return false;
                case engine_status::no_room:
                    break;
                }
                fail(s, -EAGAIN, true);
                return false;
            };
            // Drops the slots whose request has ended (their sequence is gone).
            auto drop_ended = [&]() noexcept {
                std::erase_if(active, [](slot& sl) { return !sl.s; });
            };
            // The engine threw while running `culprits`: a fresh engine, the
            // culprit struck (failed after max_requeues strikes), everything
            // else prefilled again from the start. Bytes already streamed are
            // not streamed twice: the new engine's must be the same (the CPU
            // engine's are, whatever the batch; llm_engine.hh), which is
            // checked (see again_differs) before anything past them is.
            // Without an engine (it could not be made again) the loop ends,
            // `w` gives every request back, and the worker tries again (above).
            // Throws nothing (it runs when memory may have run out): a
            // request whose streamed bytes cannot be copied for that check
            // fails with -EIO.
            auto recover = [&](std::span<sequence* const> culprits, const char* what) noexcept {
                info.crashes.fetch_add(1);
                note_error("engine: ", what);
                drop_ended(); // ended in prefill
                for (auto& sl : active) {
                    engine->release(*sl.s);
                }
                engine.reset(); // before its successor takes memory (a GPU's)
                engine = make_engine();
                bool known = culprits.size() == 1;
                for (auto& sl : active) {
                    bool in =
                        std::find(culprits.begin(), culprits.end(), sl.s.get()) != culprits.end();
                    if (in && known && ++sl.strikes + sl.s->req.requeues >= _o.max_requeues) {
                        fail(*sl.s, -EIO, false);
                        sl.s.reset();
                        continue;
                    }
                    sequence& s = *sl.s;
                    // A copy from an earlier crash that is not written again
                    // in full yet stays (nothing past it was streamed). Its
                    // room was taken as the bytes were streamed.
                    if (sl.again.size() < sl.streamed) {
                        try {
                            const auto* p = reinterpret_cast<const char*>(s.output.data());
                            sl.again.assign(p, p + sl.streamed);
                        } catch (...) {
                            note_error("engine: ", "no memory to restart a request: it fails");
                            fail(s, -EIO, false);
                            sl.s.reset();
                            continue;
                        }
                    }
                    sl.suspect = sl.suspect || in;
                    sl.crashed = sl.crashed || in;
                    sl.checked = 0;
                    s.produced = 0;
                    s.tokens = 0;
                    s.done = false;
                    s.cut = false;
                    s.status = 0;
                    s.engine_state = nullptr;
                    sl.prefilled = false;
                }
                drop_ended();
            };

            bool aborted = false;
            // As if the thread died (worker_abort): nothing is completed;
            // closing the registration gives every held request back,
            // counted.
            auto abort_worker = [&]() noexcept {
                info.crashes.fetch_add(1);
                drop_ended(); // ended in prefill
                aborted = true;
            };
            // A throw outside the engine's steps (no memory to take or set
            // up a request): not the requests' fault nor the engine's. The
            // requests go back uncounted (below), the engine stays, and the
            // worker registers again.
            bool gave_up = false;
            while (engine && !(stuck && active.empty())) {
                try {
                    state st = _state.load();
                    if (st == state::stopping || (st == state::draining && active.empty())) {
                        break;
                    }
                    if (left >= _o.slots) {
                        stuck = true; // no slot left: `w` closes
                        continue;
                    }
                    // One DISPATCH takes at most LLMOS_MAX_DISPATCH (EINVAL past it).
                    uint32_t free = std::min<uint32_t>(
                        _o.slots - left - static_cast<uint32_t>(active.size()), LLMOS_MAX_DISPATCH);
                    // Read again: a drain() since the top takes nothing new.
                    if (free && !stuck && _state.load() == state::running) {
                        auto got = active.empty() ? wait_for_work(w, loop.get(), free, *engine)
                                                  : w.dispatch(free, wait_for::none());
                        if (got) {
                            for (auto& d : *got) {
                                taken.push_back(d.id); // reserved
                            }
                            for (auto& d : *got) {
                                auto s = setup(d);
                                ++set_up;
                                if (s) {
                                    active.push_back({std::move(s)}); // reserved
                                    active.back().suspect = d.requeues > 0;
                                    active.back().streamed = 0;
                                }
                            }
                            taken.clear();
                            set_up = 0;
                        } else if (got.error().value() != EAGAIN &&
                                   got.error().value() != ETIMEDOUT &&
                                   got.error().value() != EINTR &&
                                   got.error().value() != ECANCELED) {
                            note_code("dispatch: ", got.error());
                            std::this_thread::sleep_for(10ms);
                        }
                    }
                    info.active.store(static_cast<uint32_t>(active.size()));
                    // Suspects run alone, one at a time; the rest as one batch.
                    // Whether all of it is prefilled.
                    auto fill_batch = [&] {
                        batch.clear();
                        bool ready = true;
                        for (auto& sl : active) {
                            if (sl.suspect) {
                                batch.assign(1, sl.s.get());
                                return sl.prefilled;
                            }
                            batch.push_back(sl.s.get());
                            ready = ready && sl.prefilled;
                        }
                        return ready;
                    };
                    fill_batch();
                    if (batch.empty()) {
                        continue;
                    }
                    bool restarted = false;
                    try {
                        for (auto& sl : active) {
                            if (sl.prefilled ||
                                std::find(batch.begin(), batch.end(), sl.s.get()) == batch.end()) {
                                continue;
                            }
                            sequence* one[] = {sl.s.get()};
                            try {
                                if (prefill(sl)) {
                                    sl.prefilled = true;
                                } else {
                                    sl.s.reset();
                                }
                            } catch (const worker_abort&) {
                                throw;
                            } catch (const engine::device_lost&) {
                                throw;
                            } catch (const std::exception& e) {
                                recover(one, e.what()); // changes `active`: leave the loop
                                restarted = true;
                                break;
                            } catch (...) {
                                recover(one, "an exception that is not a std::exception");
                                restarted = true;
                                break;
                            }
                        }
                        if (restarted) {
                            continue;
                        }
                        drop_ended();
                        // The batch again, without what ended in prefill: when
                        // that brings in a sequence not prefilled yet (the next
                        // suspect), the next pass prefills it first.
                        if (!fill_batch() || batch.empty()) {
                            continue;
                        }
                        try {
                            engine->decode(batch);
                        } catch (const worker_abort&) {
                            throw;
                        } catch (const engine::device_lost&) {
                            throw;
                        } catch (const std::exception& e) {
                            recover(batch, e.what());
                            continue;
                        } catch (...) {
                            recover(batch, "an exception that is not a std::exception");
                            continue;
                        }
                    } catch (const worker_abort&) {
                        abort_worker();
                        break;
                    } catch (const engine::device_lost& e) {
                        // Not the requests' fault: they go back (below), uncounted.
                        lost(e.what());
                        drop_ended(); // ended in prefill
                        break;
                    }
                    info.steps.fetch_add(1);
                    for (auto& sl : active) {
                        sequence& s = *sl.s;
                        if (sl.again_differs()) {
                            // Splicing its new text onto the old would give the
                            // client text no engine generated: it fails instead.
                            note_error("engine: ",
                                       "regenerated text differs from what was streamed");
                            s.status = -EIO;
                            s.done = true;
                        }
                        if (!s.status && s.produced > sl.streamed) {
                            // Room for the copy recover() makes of what was
                            // streamed, taken now: after a crash memory may
                            // have run out. (Without it, recover() tries
                            // then.) Doubling, up to what it may need.
                            if (sl.again.capacity() < s.produced) {
                                try {
                                    sl.again.reserve(std::min<size_t>(
                                        std::max<size_t>(s.produced, 2 * sl.again.capacity()),
                                        s.output.size()));
                                } catch (const std::bad_alloc&) {
                                }
                            }
                            emit({s.req.id, s.output_off + sl.streamed,
                                  static_cast<uint32_t>(s.produced - sl.streamed),
                                  static_cast<uint32_t>(output_kind::tokens)});
                            sl.streamed = s.produced;
                        }
                    }
                    if (_o.is_cancelled) {
                        for (auto& sl : active) {
                            if (!sl.s->done && cancelled(sl.s->req.id)) {
                                sl.s->done = true;
                                sl.s->status = -ECANCELED;
                            }
                        }
                    }
                    // Cancelled through the scheduler: no longer held. START
                    // asks without changing anything: a request this worker
                    // runs is not DISPATCHED, so START says EINVAL while it
                    // holds it, and ESRCH or ENOENT once it does not.
                    if (const auto now = std::chrono::steady_clock::now();
                        now - last_held_check >= held_check_every) {
                        last_held_check = now;
                        for (auto& sl : active) {
                            if (!sl.s->done && not_held(w.start(sl.s->req.id))) {
                                sl.s->done = true;
                                sl.s->status = -ECANCELED;
                            }
                        }
                    }
                    std::erase_if(active, [&](slot& sl) {
                        if (!sl.s->done) {
                            return false;
                        }
                        finish(*sl.s, true);
                        return true;
                    });
                } catch (const std::exception& e) {
                    // Out of memory outside the engine's steps, say: the
                    // engine's requests are as they were, and go back.
                    note_error("worker: ", e.what());
                    drop_ended(); // ended in prefill
                    gave_up = true;
                    break;
                } catch (...) {
                    note_error("worker: ", "an exception that is not a std::exception");
                    drop_ended();
                    gave_up = true;
                    break;
                }
            }
            // One cancelled through the scheduler meanwhile is no longer
            // held: it goes back to no queue, and no worker will end it.
            // Its end is streamed here, as finish() streams a cancelled
            // one's, so that whoever streams it (llmosd, keeping the
            // request's session for it) is not left waiting.
            auto end_cancelled = [&](uint64_t id, uint64_t off) noexcept {
                emit({id, off, 0, static_cast<uint32_t>(output_kind::failed)});
                info.failed.fetch_add(1);
            };
            // Taken and not set up (some started already): back as the
            // set-up ones go below, uncounted.
            for (size_t k = set_up; k < taken.size(); ++k) {
                if (not_held(w.give_back(taken[k]))) {
                    end_cancelled(taken[k], 0);
                }
            }
            for (auto& sl : active) {
                if (engine) { // without one, recover() released them
                    engine->release(*sl.s);
                }
                // Stopping, without an engine, or out of memory: what was in
                // no batch that crashed here goes back unfinished, not as a
                // crash. The rest (all of it when aborted) `w` gives back as
                // its end does, counting a requeue: the next worker runs it
                // alone, and max_requeues of those fail it. (START asks
                // whether `w` still holds one: EINVAL while it does.)
                const uint64_t id = sl.s->req.id;
                if (not_held(!aborted && !sl.crashed ? w.give_back(id) : w.start(id))) {
                    end_cancelled(id, sl.s->output_off);
                }
            }
            maps.clear();
            info.active.store(0);
            if (device_gone) {
                engine.reset();
                continue; // `w` goes first, giving back what it held; then the worker ends
            }
            if (aborted) {
                // Its memory given back before `w` goes (giving back what it
                // held) and before its successor takes memory of its own.
                engine.reset();
                remake = true;
                continue; // register again
            }
            if (stuck) {
                // `w` goes first, giving back the request it still holds;
                // the next registration waits.
                stuck_wait = std::min<std::chrono::milliseconds>(
                    stuck_wait == 0ms ? 100ms : 2 * stuck_wait, 5s);
                continue;
            }
            stuck_wait = 0ms;
            if (gave_up) {
                continue; // register again, with the same engine
            }
            if (!engine) {
                continue; // `w` goes first, giving back what it held
            }
            break;
        } catch (const std::exception& e) {
            note_error("worker: ", e.what());
        } catch (...) {
            note_error("worker: ", "an exception that is not a std::exception");
        }
        // Here from a throw (no memory to register, say) outside the
        // steps, where the engine holds no request: it stays; the worker
        // registers again after a pause (memory may come back).
        maps.clear();
        info.active.store(0);
        mark_ready();
        std::this_thread::sleep_for(100ms);
    }
}

} // namespace llmos
