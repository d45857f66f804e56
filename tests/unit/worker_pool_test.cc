// SPDX-License-Identifier: MIT
//
// The worker pool against every backend this machine has (local here; local
// and kernel in the test VM): requests served with their output streamed
// into their mindspace, continuous batching, pinning, priority classes,
// drain and stop without loss, crash requeue and the poison-request limit.
#include "../support/test_new.hh"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <gtest/gtest.h>
#include <linux/llmos.h>
#include <llmos/echo_engine.hh>
#include <llmos/engine/cuda.hh>
#include <llmos/mindspace.hh>
#include <llmos/worker_pool.hh>
#include <map>
#include <mutex>
#include <new>
#include <numa.h>
#include <optional>
#include <sched.h>
#include <set>
#include <span>
#include <stdexcept>
#include <thread>
#include <unistd.h>

// Allocations fail on request on one thread only (the worker's), while
// the scheduler, the test and gtest go on: test_new.hh's per-thread counts.
using llmos::testing::largest_new_here;
using llmos::testing::news_here;
using llmos::testing::news_to_fail_here;
using llmos::testing::news_to_skip_here;

namespace {

using llmos::backend_kind;
using llmos::descriptor;
using llmos::output_kind;
using namespace std::chrono_literals;

std::vector<backend_kind> available_backends() {
    std::vector<backend_kind> v{backend_kind::local};
    if (::access("/dev/llmos", F_OK) == 0) {
        v.push_back(backend_kind::kernel);
    }
    return v;
}

// Has the scheduler refuse the endings (llmos::detail::refuse_endings) or
// the STARTs (refuse_starts) of a request while it lives, and none after,
// however the test ends.
template <void (*Refuse)(uint64_t, uint32_t) noexcept>
struct refusing {
    refusing(uint64_t request, uint32_t times) { Refuse(request, times); }
    ~refusing() { Refuse(0, 0); }
    refusing(const refusing&) = delete;
    refusing& operator=(const refusing&) = delete;
};
using refusing_endings = refusing<llmos::detail::refuse_endings>;
using refusing_starts = refusing<llmos::detail::refuse_starts>;

std::vector<int> two_cpus() {
    cpu_set_t set;
    CPU_ZERO(&set);
    ::sched_getaffinity(0, sizeof(set), &set);
    std::vector<int> v;
    for (int c = 0; c < CPU_SETSIZE && v.size() < 2; ++c) {
        if (CPU_ISSET(c, &set)) {
            v.push_back(c);
        }
    }
    return v;
}

// What the workers streamed, per request.
struct stream_log {
    std::mutex m;
    std::map<uint64_t, std::vector<descriptor>> by_req;
    void add(const descriptor& d) {
        std::lock_guard lk(m);
        by_req[d.request].push_back(d);
    }
};

class worker_pool_test : public ::testing::TestWithParam<backend_kind> {
protected:
    std::optional<llmos::device> _dev;
    std::optional<llmos::mindspace> _ms;
    std::optional<llmos::mapping> _map;
    std::string _name;
    stream_log _log;

    void SetUp() override {
        auto d = GetParam() == backend_kind::local ? llmos::device::open_local(local_dir())
                                                   : llmos::device::open();
        ASSERT_TRUE(d) << d.error().message();
        _dev.emplace(std::move(*d));
        static int seq = 0;
        _name = "wp-" + std::to_string(::getpid()) + "-" + std::to_string(++seq);
        auto ms = llmos::mindspace::create(dev(), {.length = 1 << 20, .name = _name});
        ASSERT_TRUE(ms) << ms.error().message();
        _ms.emplace(std::move(*ms));
        _map.emplace(_ms->map().value());
    }
    static const std::string& local_dir() {
        static const struct store {
            std::string dir;
            store() {
                char tmpl[] = "/tmp/llmos-pool-XXXXXX";
                dir = ::mkdtemp(tmpl);
            }
            ~store() { std::filesystem::remove_all(dir); }
        } s;
        return s.dir;
    }
    const llmos::device& dev() { return *_dev; }
    std::span<std::byte> bytes() { return _map->bytes(); }

    // A prompt of `len` bytes at `off`, distinct per request.
    llmos::submit_options prompt(uint64_t off, uint64_t len, uint32_t seed) {
        for (uint64_t i = 0; i < len; ++i) {
            bytes()[off + i] = std::byte('a' + (seed + i) % 26);
        }
        return {.cost = 1, .ms_id = _ms->id(), .prompt_off = off, .prompt_len = len};
    }
    // Waits for `id` and checks that it failed with `status`; what it
    // finished with.
    llmos::finished_request expect_failed(llmos::sched_client& c, uint64_t id, int32_t status) {
        auto f = c.wait(id, llmos::wait_for::at_most(20s));
        EXPECT_TRUE(f) << "request " << id << ": " << f.error().message();
        if (!f) {
            return {};
        }
        EXPECT_EQ(f->state, LLMOS_REQ_FAILED) << "request " << id;
        EXPECT_EQ(f->status, status) << "request " << id;
        return *f;
    }
    // Submits `n` prompts of `len` bytes, a page apart; their options by id.
    std::map<uint64_t, llmos::submit_options> submit_prompts(llmos::sched_client& c, uint32_t n,
                                                             uint64_t len) {
        std::map<uint64_t, llmos::submit_options> ids;
        for (uint32_t i = 0; i < n; ++i) {
            auto p = prompt(i * 4096, len, i);
            ids[c.submit(p).value()] = p;
        }
        return ids;
    }
    llmos::worker_pool_options opts(llmos::echo_engine::options e, uint32_t slots = 4) {
        llmos::worker_pool_options o;
        o.cpus = two_cpus();
        o.slots = slots;
        o.engine = [e](unsigned) { return std::make_unique<llmos::echo_engine>(e); };
        o.on_output = [this](unsigned, const descriptor& d) { _log.add(d); };
        return o;
    }
    // One worker of two slots whose echo engine (4 bytes a token) calls
    // `on_step` at each step and cannot be made a second time.
    llmos::worker_pool_options
    one_engine_then_none(std::function<void(const llmos::sequence&)> on_step) {
        auto o = opts({});
        o.cpus.resize(1);
        o.slots = 2;
        auto made = std::make_shared<std::atomic<int>>(0);
        o.engine = [made, on_step](unsigned) -> std::unique_ptr<llmos::inference_engine> {
            if (made->fetch_add(1) > 0) {
                throw std::runtime_error("out of memory");
            }
            return std::make_unique<llmos::echo_engine>(
                llmos::echo_engine::options{.bytes_per_token = 4, .on_step = on_step});
        };
        return o;
    }
    // Waits for `ids` and checks each one echoed its prompt into its output.
    void expect_echoed(llmos::sched_client& c, const std::map<uint64_t, llmos::submit_options>& ids,
                       uint32_t bytes_per_token) {
        for (auto& [id, o] : ids) {
            auto f = c.wait(id, llmos::wait_for::at_most(20s));
            ASSERT_TRUE(f) << "request " << id << ": " << f.error().message();
            EXPECT_EQ(f->state, LLMOS_REQ_COMPLETED) << "request " << id;
            EXPECT_EQ(f->status, 0);
            EXPECT_EQ(f->result_off, llmos::output_offset(o.prompt_off, o.prompt_len));
            EXPECT_EQ(f->result_len, o.prompt_len);
            EXPECT_EQ(f->tokens, std::max<uint64_t>(1, (o.prompt_len + bytes_per_token - 1) /
                                                           bytes_per_token));
            EXPECT_EQ(std::memcmp(bytes().data() + f->result_off, bytes().data() + o.prompt_off,
                                  o.prompt_len),
                      0)
                << "request " << id << " output differs from its prompt";
        }
    }
    void TearDown() override {
        _map.reset();
        _ms.reset();
        if (_dev) {
            llmos::destroy_mindspace(dev(), llmos::ms_key{0, _name});
        }
    }
};

std::string backend_name(const ::testing::TestParamInfo<backend_kind>& p) {
    return llmos::to_string(p.param);
}

} // namespace

// The workers stream descriptors through one channel each into a consumer
// thread's event loop: the bytes stay in the mindspace.
TEST_P(worker_pool_test, serves_every_request_and_streams_its_output_in_order) {
    auto o = opts({.bytes_per_token = 5});
    constexpr size_t cap = 64;
    std::vector<std::unique_ptr<llmos::channel_ring<cap>>> rings;
    auto consumer_loop = llmos::event_loop::create({}).value();
    std::vector<std::unique_ptr<llmos::channel_sender<cap>>> senders;
    for (size_t i = 0; i < o.cpus.size(); ++i) {
        rings.push_back(std::make_unique<llmos::channel_ring<cap>>());
        senders.push_back(
            std::make_unique<llmos::channel_sender<cap>>(*rings.back(), consumer_loop->bell()));
    }
    o.on_output = [&](unsigned w, const descriptor& d) { senders[w]->send(d); };
    std::atomic<size_t> finished{0};
    auto h = [&](std::span<const descriptor> ds) {
        for (auto& d : ds) {
            _log.add(d);
            finished += d.kind == uint32_t(output_kind::done);
        }
    };
    using source = llmos::channel_source<cap, decltype(h)>;
    std::vector<std::unique_ptr<source>> sources;
    for (auto& r : rings) {
        sources.push_back(std::make_unique<source>(*r, h));
        consumer_loop->add_source(*sources.back());
    }
    std::thread consumer([&] {
        while (finished.load() < 40) {
            consumer_loop->run_once(std::chrono::seconds(1));
        }
    });
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool) << pool.error().message();
    auto c = llmos::sched_client::open(dev()).value();
    std::map<uint64_t, llmos::submit_options> ids;
    for (uint32_t i = 0; i < 40; ++i) {
        auto p = prompt(i * 4096, 1 + i * 37, i);
        ids[c.submit(p).value()] = p;
    }
    expect_echoed(c, ids, 5);
    (*pool)->drain();
    consumer.join();
    EXPECT_GT(consumer_loop->stats().iterations, 0u);
    std::lock_guard lk(_log.m);
    for (auto& [id, o] : ids) {
        auto& ds = _log.by_req[id];
        ASSERT_FALSE(ds.empty());
        uint64_t out = llmos::output_offset(o.prompt_off, o.prompt_len), at = out;
        for (size_t k = 0; k + 1 < ds.size(); ++k) {
            EXPECT_EQ(ds[k].kind, uint32_t(output_kind::tokens));
            EXPECT_EQ(ds[k].offset, at) << "token batches are contiguous and in order";
            EXPECT_LE(ds[k].length, 5u);
            at += ds[k].length;
        }
        EXPECT_EQ(at - out, o.prompt_len);
        EXPECT_EQ(ds.back().kind, uint32_t(output_kind::done));
        EXPECT_EQ(ds.back().offset, out);
        EXPECT_EQ(ds.back().length, o.prompt_len);
    }
}

TEST_P(worker_pool_test, workers_are_pinned_with_memory_on_their_node) {
    auto pool = llmos::worker_pool::start(dev(), opts({}));
    ASSERT_TRUE(pool);
    while (!(*pool)->ready()) {
        std::this_thread::sleep_for(1ms);
    }
    auto cpus = two_cpus();
    ASSERT_EQ((*pool)->size(), cpus.size());
    for (unsigned i = 0; i < (*pool)->size(); ++i) {
        auto& w = (*pool)->info(i);
        EXPECT_EQ(w.cpu, cpus[i]);
        EXPECT_TRUE(w.pinned) << "worker " << i;
        if (::numa_available() >= 0) {
            EXPECT_EQ(w.node, ::numa_node_of_cpu(cpus[i]));
        } else {
            EXPECT_EQ(w.node, -1);
        }
    }
}

TEST_P(worker_pool_test, a_batch_class_pool_runs_under_sched_batch) {
    std::atomic<int> policy{-1};
    auto o = opts({});
    o.cls = llmos::priority_class::batch;
    o.engine = [&](unsigned) {
        policy = ::sched_getscheduler(0);
        return std::make_unique<llmos::echo_engine>(llmos::echo_engine::options{});
    };
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    while (!(*pool)->ready()) {
        std::this_thread::sleep_for(1ms);
    }
    EXPECT_TRUE((*pool)->info(0).class_applied);
    EXPECT_EQ(policy.load(), SCHED_BATCH);
}

TEST_P(worker_pool_test, continuous_batching_fills_the_slots) {
    auto o = opts({.decode_step = 1ms, .bytes_per_token = 8}, 4);
    o.cpus.resize(1);
    auto c = llmos::sched_client::open(dev()).value();
    std::map<uint64_t, llmos::submit_options> ids;
    uint64_t tokens = 0;
    // All queued before the worker starts: a pause of this thread does
    // not leave it running them one at a time.
    for (uint32_t i = 0; i < 12; ++i) {
        auto p = prompt(i * 4096, 64 + 8 * i, i);
        tokens += p.prompt_len / 8;
        ids[c.submit(p).value()] = p;
    }
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    expect_echoed(c, ids, 8);
    auto steps = (*pool)->info(0).steps.load();
    // Alone, each token is a step; four at a time, about a quarter.
    EXPECT_LT(steps, tokens / 2) << steps << " steps for " << tokens << " tokens";
}

TEST_P(worker_pool_test, drain_finishes_what_was_taken_and_leaves_the_rest_queued) {
    auto o = opts({.decode_step = 2ms, .bytes_per_token = 1}, 2);
    o.cpus.resize(1);
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    auto c = llmos::sched_client::open(dev()).value();
    std::map<uint64_t, llmos::submit_options> ids;
    for (uint32_t i = 0; i < 10; ++i) {
        auto p = prompt(i * 4096, 200, i); // 0.4 s each: drain() comes long before the last
        ids[c.submit(p).value()] = p;
    }
    while ((*pool)->info(0).active.load() == 0) {
        std::this_thread::sleep_for(1ms);
    }
    (*pool)->drain();
    auto served = (*pool)->info(0).served.load();
    EXPECT_GE(served, 1u);
    EXPECT_LT(served, 10u) << "drain took no new requests";
    // A new pool serves the rest: nothing was lost or failed.
    auto again = llmos::worker_pool::start(dev(), opts({.bytes_per_token = 1}));
    ASSERT_TRUE(again);
    expect_echoed(c, ids, 1);
}

TEST_P(worker_pool_test, stop_gives_back_what_is_held_and_a_new_pool_serves_it) {
    auto o = opts({.decode_step = 2ms, .bytes_per_token = 1}, 4);
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    auto c = llmos::sched_client::open(dev()).value();
    std::map<uint64_t, llmos::submit_options> ids;
    for (uint32_t i = 0; i < 8; ++i) {
        // 4 s each: stop() comes long before they end, however late
        // this thread gets there.
        auto p = prompt(i * 8192, 2000, i);
        ids[c.submit(p).value()] = p;
    }
    while ((*pool)->info(0).active.load() == 0) {
        std::this_thread::sleep_for(1ms);
    }
    auto requeued = llmos::scheduler_stats(dev()).value().requeued;
    (*pool)->stop();
    EXPECT_GT(llmos::scheduler_stats(dev()).value().requeued, requeued) << "it held some";
    // Handed back, not dropped as a crashed worker's: none counts a requeue
    // (the next worker would run it alone, and max_requeues stops would
    // fail it).
    {
        auto w = llmos::sched_worker::open(dev(), 8).value();
        auto got = w.dispatch(8, llmos::wait_for::none()).value(); // what is not done
        for (auto& d : got) {
            EXPECT_EQ(d.requeues, 0u) << d.id;
            EXPECT_FALSE(w.give_back(d.id));
        }
    }
    auto again = llmos::worker_pool::start(dev(), opts({.bytes_per_token = 1}));
    ASSERT_TRUE(again);
    expect_echoed(c, ids, 1);
}

// An engine that throws and cannot be made again: the worker gives back
// what it holds. The request of the batch that threw counts a requeue (it
// may be the culprit); one that came requeued but did not run in that
// batch does not.
TEST_P(worker_pool_test, a_lost_engine_counts_a_requeue_only_for_what_crashed_it) {
    auto c = llmos::sched_client::open(dev()).value();
    const auto y = c.submit(prompt(0, 40, 1)).value();    // crashes the engine
    const auto x = c.submit(prompt(4096, 40, 2)).value(); // does not
    {
        auto dead = llmos::sched_worker::open(dev(), 2).value();
        ASSERT_EQ(dead.dispatch(2, llmos::wait_for::at_most(5s)).value().size(), 2u);
    } // both back, requeues 1: both suspects, run alone, y first
    auto o = one_engine_then_none([y](const llmos::sequence& s) {
        if (s.req.id == y) {
            throw std::runtime_error("crash");
        }
    });
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    const auto until = std::chrono::steady_clock::now() + 10s;
    while ((*pool)->info(0).crashes.load() == 0 && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(1ms); // the pool takes both, y crashes it
    }
    std::map<uint64_t, uint32_t> requeues;
    auto w = llmos::sched_worker::open(dev(), 2).value();
    while (requeues.size() < 2 && std::chrono::steady_clock::now() < until) {
        if (auto got = w.dispatch(2, llmos::wait_for::at_most(100ms))) {
            for (auto& d : *got) {
                requeues[d.id] = d.requeues;
            }
        }
    }
    ASSERT_EQ(requeues.size(), 2u) << (*pool)->info(0).last_error();
    EXPECT_EQ(requeues[y], 2u);
    EXPECT_EQ(requeues[x], 1u) << "it did not run when the engine threw";
    (*pool)->stop();
    for (auto id : {x, y}) {
        EXPECT_FALSE(w.complete(id, -EIO, 0));
        EXPECT_EQ(c.wait(id).value().state, uint32_t(LLMOS_REQ_FAILED));
    }
}

// A lost device (a GPU kernel that faulted: nothing on it works again in
// this process) is no request's fault: the worker gives back everything
// it holds, uncounted, says so once, and ends without making another
// engine.
TEST_P(worker_pool_test, a_lost_device_ends_its_worker_and_gives_back_what_it_held) {
    auto c = llmos::sched_client::open(dev()).value();
    std::map<uint64_t, llmos::submit_options> ids;
    for (uint32_t i = 0; i < 3; ++i) {
        auto p = prompt(i * 4096, 40, i);
        ids[c.submit(p).value()] = p;
    }
    std::atomic<int> made{0};
    std::mutex m;
    std::vector<std::pair<unsigned, std::string>> said;
    auto o = opts({});
    o.cpus.resize(1);
    o.slots = 4;
    o.engine = [&](unsigned) -> std::unique_ptr<llmos::inference_engine> {
        made.fetch_add(1);
        return std::make_unique<llmos::echo_engine>(llmos::echo_engine::options{
            .bytes_per_token = 4, .on_step = [](const llmos::sequence& s) {
                if (s.produced >= 8) {
                    throw llmos::engine::device_lost("kernel: cudaErrorIllegalAddress");
                }
            }});
    };
    o.on_device_lost = [&](unsigned w, const std::string& why) {
        std::lock_guard lk(m);
        said.emplace_back(w, why);
    };
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    const auto until = std::chrono::steady_clock::now() + 10s;
    while (!(*pool)->info(0).device_lost.load() && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(1ms);
    }
    ASSERT_TRUE((*pool)->info(0).device_lost.load());
    // Everything comes back, as it was submitted: not one a suspect.
    std::map<uint64_t, uint32_t> requeues;
    auto w = llmos::sched_worker::open(dev(), 4).value();
    while (requeues.size() < ids.size() && std::chrono::steady_clock::now() < until) {
        if (auto got = w.dispatch(4, llmos::wait_for::at_most(100ms))) {
            for (auto& d : *got) {
                requeues[d.id] = d.requeues;
                EXPECT_FALSE(w.give_back(d.id));
            }
        }
    }
    ASSERT_EQ(requeues.size(), ids.size()) << (*pool)->info(0).last_error();
    for (auto [id, n] : requeues) {
        EXPECT_EQ(n, 0u) << id;
    }
    EXPECT_EQ((*pool)->info(0).served.load() + (*pool)->info(0).failed.load(), 0u);
    EXPECT_EQ((*pool)->info(0).crashes.load(), 0u);
    EXPECT_NE((*pool)->info(0).last_error().find("device lost: kernel: cudaErrorIllegalAddress"),
              std::string::npos)
        << (*pool)->info(0).last_error();
    std::this_thread::sleep_for(300ms); // a worker that tried again would have by now
    EXPECT_EQ(made.load(), 1);
    {
        std::lock_guard lk(m);
        ASSERT_EQ(said.size(), 1u);
        EXPECT_EQ(said[0].first, 0u);
        EXPECT_EQ(said[0].second, "kernel: cudaErrorIllegalAddress");
    }
    (*pool)->stop();
    // A pool on a device that works serves them all.
    auto again = llmos::worker_pool::start(dev(), opts({.bytes_per_token = 1}));
    ASSERT_TRUE(again);
    expect_echoed(c, ids, 1);
}

// Fails one request's prefill as bad input, and loses the device at the
// next one's (a new KV region, a first context: they allocate).
class losing_engine final : public llmos::inference_engine {
public:
    explicit losing_engine(uint64_t bad)
        : _bad(bad) {}
    llmos::engine_status prefill(llmos::sequence& s) override {
        if (s.req.id == _bad) {
            s.status = -EINVAL;
            return llmos::engine_status::bad_input;
        }
        throw llmos::engine::device_lost("cuMemCreate: CUDA_ERROR_ILLEGAL_ADDRESS");
    }
    void decode(std::span<llmos::sequence* const>) override {}
    void release(llmos::sequence&) noexcept override {}

private:
    uint64_t _bad;
};

// The device lost in a prefill, after another request of the batch ended
// in its own: that one has its answer, the other goes back uncounted.
TEST_P(worker_pool_test, a_device_lost_in_a_prefill_after_one_ended_there) {
    auto c = llmos::sched_client::open(dev()).value();
    const uint64_t bad = c.submit(prompt(0, 40, 1)).value();
    const uint64_t good = c.submit(prompt(4096, 40, 2)).value();
    std::atomic<int> said{0};
    auto o = opts({});
    o.cpus.resize(1);
    o.slots = 4;
    o.engine = [bad](unsigned) { return std::make_unique<losing_engine>(bad); };
    o.on_device_lost = [&](unsigned, const std::string&) { said.fetch_add(1); };
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    auto f = c.wait(bad, llmos::wait_for::at_most(10s));
    ASSERT_TRUE(f) << f.error().message();
    EXPECT_EQ(f->state, uint32_t(LLMOS_REQ_FAILED));
    EXPECT_EQ(f->status, -EINVAL);
    const auto until = std::chrono::steady_clock::now() + 10s;
    while (!(*pool)->info(0).device_lost.load() && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(1ms);
    }
    ASSERT_TRUE((*pool)->info(0).device_lost.load()) << (*pool)->info(0).last_error();
    auto w = llmos::sched_worker::open(dev(), 4).value();
    auto got = w.dispatch(4, llmos::wait_for::at_most(10s)).value();
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].id, good);
    EXPECT_EQ(got[0].requeues, 0u);
    EXPECT_FALSE(w.complete(good, 0, 1));
    EXPECT_EQ(said.load(), 1);
    (*pool)->stop();
}

TEST_P(worker_pool_test, a_dying_worker_s_requests_are_requeued_by_the_scheduler) {
    std::atomic<int> deaths_left{1};
    std::atomic<uint64_t> victim{0};
    auto o = opts({});
    o.engine = [&](unsigned) {
        return std::make_unique<llmos::echo_engine>(llmos::echo_engine::options{
            .decode_step = 1ms, .bytes_per_token = 2, .on_step = [&](const llmos::sequence& s) {
                if (s.req.id == victim.load() && s.produced >= 10 && deaths_left.fetch_sub(1) > 0) {
                    throw llmos::worker_abort{};
                }
            }});
    };
    auto before = llmos::scheduler_stats(dev()).value().requeued;
    auto c = llmos::sched_client::open(dev()).value();
    std::map<uint64_t, llmos::submit_options> ids;
    for (uint32_t i = 0; i < 6; ++i) {
        auto p = prompt(i * 4096, 40, i);
        auto id = c.submit(p).value();
        ids[id] = p;
        if (i == 2) {
            victim = id;
        }
    }
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    expect_echoed(c, ids, 2);
    EXPECT_GE(llmos::scheduler_stats(dev()).value().requeued, before + 1)
        << "the scheduler took the victim back";
}

TEST_P(worker_pool_test, an_engine_exception_restarts_the_batch_and_streams_nothing_twice) {
    std::atomic<int> crashes_left{1};
    std::atomic<uint64_t> victim{0};
    auto o = opts({.bytes_per_token = 2});
    o.engine = [&](unsigned) {
        return std::make_unique<llmos::echo_engine>(llmos::echo_engine::options{
            .decode_step = 1ms, .bytes_per_token = 2, .on_step = [&](const llmos::sequence& s) {
                if (s.req.id == victim.load() && s.produced >= 10 &&
                    crashes_left.fetch_sub(1) > 0) {
                    throw std::runtime_error("injected crash");
                }
            }});
    };
    auto c = llmos::sched_client::open(dev()).value();
    std::map<uint64_t, llmos::submit_options> ids;
    for (uint32_t i = 0; i < 6; ++i) {
        auto p = prompt(i * 4096, 40, i);
        auto id = c.submit(p).value();
        ids[id] = p;
        if (i == 2) {
            victim = id;
        }
    }
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    expect_echoed(c, ids, 2);
    uint64_t crashes = 0;
    for (unsigned i = 0; i < (*pool)->size(); ++i) {
        crashes += (*pool)->info(i).crashes.load();
    }
    EXPECT_EQ(crashes, 1u);
    std::lock_guard lk(_log.m);
    for (auto& [id, o] : ids) {
        uint64_t streamed = 0;
        for (auto& d : _log.by_req[id]) {
            streamed += d.kind == uint32_t(output_kind::tokens) ? d.length : 0;
        }
        EXPECT_EQ(streamed, o.prompt_len) << "request " << id;
    }
}

TEST_P(worker_pool_test, a_request_that_keeps_crashing_fails_with_eio_the_rest_is_served) {
    std::atomic<uint64_t> victim{0};
    auto o = opts({});
    o.max_requeues = 2;
    o.engine = [&](unsigned) {
        return std::make_unique<llmos::echo_engine>(llmos::echo_engine::options{
            .bytes_per_token = 4, .on_step = [&](const llmos::sequence& s) {
                if (s.req.id == victim.load()) {
                    throw std::runtime_error("poison");
                }
            }});
    };
    auto c = llmos::sched_client::open(dev()).value();
    std::map<uint64_t, llmos::submit_options> ids;
    auto vp = prompt(0, 16, 0);
    victim = c.submit(vp).value();
    for (uint32_t i = 1; i < 6; ++i) {
        auto p = prompt(i * 4096, 16, i);
        ids[c.submit(p).value()] = p;
    }
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    expect_failed(c, victim, -EIO);
    expect_echoed(c, ids, 4);
    uint64_t crashes = 0;
    for (unsigned i = 0; i < (*pool)->size(); ++i) {
        crashes += (*pool)->info(i).crashes.load();
    }
    EXPECT_EQ(crashes, 2u);
}

TEST_P(worker_pool_test, a_crash_beside_a_request_that_ended_in_prefill_is_recovered) {
    // One worker takes both at once: the first ends in its prefill (no
    // room for its output), the second's prefill throws once.
    std::atomic<uint64_t> victim{0};
    std::atomic<int> crashes_left{1};
    auto o = opts({});
    o.cpus.resize(1);
    o.engine = [&](unsigned) {
        return std::make_unique<llmos::echo_engine>(llmos::echo_engine::options{
            .bytes_per_token = 4, .on_step = [&](const llmos::sequence& s) {
                if (s.req.id == victim.load() && crashes_left.fetch_sub(1) > 0) {
                    throw std::runtime_error("injected crash");
                }
            }});
    };
    auto c = llmos::sched_client::open(dev()).value();
    auto full = c.submit(prompt((1 << 20) - 3000, 2990, 0)).value();
    std::map<uint64_t, llmos::submit_options> ids;
    auto p = prompt(0, 40, 1);
    victim = c.submit(p).value();
    ids[victim] = p;
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    auto f = c.wait(full, llmos::wait_for::at_most(20s));
    ASSERT_TRUE(f) << f.error().message();
    EXPECT_EQ(f->status, -ENOSPC);
    expect_echoed(c, ids, 4);
    EXPECT_EQ((*pool)->info(0).crashes.load(), 1u);
}

TEST_P(worker_pool_test,
       an_engine_that_cannot_be_made_again_is_tried_again_meanwhile_others_serve) {
    // Worker 0's first engine crashes on the request; its next ones cannot
    // be made for 5 s. Worker 1 starts only after that crash: the request
    // must reach it, given back by worker 0 while that one tries again.
    std::atomic<bool> crashed{false};
    std::atomic<int> made0{0};
    std::atomic<std::chrono::steady_clock::rep> t_crash{0}; // when it crashed
    auto since_crash = [&] {
        return std::chrono::steady_clock::now() -
               std::chrono::steady_clock::time_point(std::chrono::steady_clock::duration(t_crash));
    };
    auto o = opts({});
    o.cpus.resize(1);
    o.cpus.push_back(o.cpus[0]);
    o.engine = [&](unsigned i) -> std::unique_ptr<llmos::inference_engine> {
        if (i == 1) {
            while (!crashed) {
                std::this_thread::sleep_for(5ms);
            }
            return std::make_unique<llmos::echo_engine>(
                llmos::echo_engine::options{.bytes_per_token = 4});
        }
        const int n = made0.fetch_add(1);
        if (n > 0 && since_crash() < 5s) {
            throw std::runtime_error("out of memory");
        }
        return std::make_unique<llmos::echo_engine>(llmos::echo_engine::options{
            .bytes_per_token = 4, .on_step = [&, n](const llmos::sequence&) {
                if (n == 0) {
                    t_crash = std::chrono::steady_clock::now().time_since_epoch().count();
                    crashed = true;
                    throw std::runtime_error("crash");
                }
            }});
    };
    auto c = llmos::sched_client::open(dev()).value();
    auto p = prompt(0, 40, 1);
    auto id = c.submit(p).value();
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    auto f = c.wait(id, llmos::wait_for::at_most(20s));
    ASSERT_TRUE(f) << f.error().message();
    EXPECT_EQ(f->state, LLMOS_REQ_COMPLETED);
    EXPECT_LT(since_crash(), 4s) << "it waited for worker 0's engine";
    // Counted just after the scheduler heard of it.
    for (int k = 0; k < 500 && (*pool)->info(1).served.load() == 0; ++k) {
        std::this_thread::sleep_for(10ms);
    }
    EXPECT_EQ((*pool)->info(1).served.load(), 1u);
    EXPECT_EQ((*pool)->info(0).crashes.load(), 1u);
    EXPECT_NE((*pool)->info(0).last_error().find("out of memory"), std::string::npos)
        << (*pool)->info(0).last_error();
    // Worker 0 comes back once its engine can be made.
    for (int k = 0; k < 1000 && made0.load() < 3; ++k) {
        std::this_thread::sleep_for(10ms);
    }
    EXPECT_GE(made0.load(), 3);
}

TEST_P(worker_pool_test, a_request_refused_at_setup_leaves_the_mapping_of_others_in_place) {
    // `held` is given back once (requeues 1 = max_requeues) while `long_one`,
    // of the same mindspace, runs: refusing `held` must not unmap it.
    auto o = opts({.decode_step = 1ms, .bytes_per_token = 1});
    o.cpus.resize(1);
    o.max_requeues = 1;
    auto c = llmos::sched_client::open(dev()).value();
    auto held = c.submit(prompt(8192, 16, 0)).value();
    auto mine = llmos::sched_worker::open(dev(), 1).value();
    ASSERT_EQ(mine.dispatch(1, llmos::wait_for::at_most(5s)).value().at(0).id, held);
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    std::map<uint64_t, llmos::submit_options> ids;
    auto p = prompt(0, 1500, 1);
    ids[c.submit(p).value()] = p;
    while ((*pool)->info(0).active.load() == 0) {
        std::this_thread::sleep_for(1ms);
    }
    { auto gone = std::move(mine); } // gives `held` back
    auto f = c.wait(held, llmos::wait_for::at_most(20s));
    ASSERT_TRUE(f) << f.error().message();
    EXPECT_EQ(f->status, -EIO);
    expect_echoed(c, ids, 1);
}

TEST_P(worker_pool_test, more_slots_than_one_dispatch_takes_still_serve) {
    // The module's DISPATCH takes at most LLMOS_MAX_DISPATCH (256) at once.
    auto o = opts({}, 300);
    o.cpus.resize(1);
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    auto c = llmos::sched_client::open(dev()).value();
    expect_echoed(c, submit_prompts(c, 3, 20), 4);
    EXPECT_EQ((*pool)->info(0).last_error(), "");
}

TEST_P(worker_pool_test, a_prompt_outside_its_mindspace_fails_that_request_only) {
    auto pool = llmos::worker_pool::start(dev(), opts({}));
    ASSERT_TRUE(pool);
    auto c = llmos::sched_client::open(dev()).value();
    llmos::submit_options bad{
        .cost = 1, .ms_id = _ms->id(), .prompt_off = (1 << 20) - 8, .prompt_len = 64};
    std::vector<uint64_t> failing;
    auto bad_id = c.submit(bad); // both backends refuse it at once
    ASSERT_FALSE(bad_id);
    EXPECT_EQ(bad_id.error().value(), EINVAL);
    // A prompt without a mindspace is the worker's to refuse.
    llmos::submit_options none{.cost = 1, .ms_id = 0, .prompt_off = 0, .prompt_len = 8};
    failing.push_back(c.submit(none).value());
    std::map<uint64_t, llmos::submit_options> ids;
    auto p = prompt(0, 30, 1);
    ids[c.submit(p).value()] = p;
    for (auto id : failing) {
        expect_failed(c, id, -EINVAL);
    }
    expect_echoed(c, ids, 4);
}

TEST_P(worker_pool_test, a_request_whose_client_went_away_ends_early) {
    std::atomic<uint64_t> gone{0};
    auto o = opts({.decode_step = 1ms, .bytes_per_token = 1});
    o.is_cancelled = [&](uint64_t id) { return id == gone.load(); };
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    auto c = llmos::sched_client::open(dev()).value();
    auto p = prompt(0, 2000, 1);
    auto id = c.submit(p).value();
    while ((*pool)->info(0).active.load() + (*pool)->info((*pool)->size() - 1).active.load() == 0) {
        std::this_thread::sleep_for(1ms);
    }
    gone = id;
    EXPECT_LT(expect_failed(c, id, -ECANCELED).tokens, 2000u) << "it stopped before the end";
}

// A request cancelled through the scheduler while it runs (by its
// client, or its client closing), which the pool's is_cancelled does not
// know of: the worker notices within a few steps that it no longer holds
// it, stops it, and streams a failure (counted failed, not served), as
// its client sees it CANCELLED; not a `done` with all its output.
TEST_P(worker_pool_test, a_request_cancelled_through_the_scheduler_stops_and_ends_as_a_failure) {
    auto o = opts({.decode_step = 1ms, .bytes_per_token = 1});
    o.cpus.resize(1);
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    const auto& info = (*pool)->info(0);
    for (bool close : {false, true}) {
        SCOPED_TRACE(close ? "its client closes" : "its client cancels it");
        std::optional<llmos::sched_client> c(llmos::sched_client::open(dev()).value());
        const uint64_t served = info.served.load();
        const uint64_t failed = info.failed.load();
        const uint64_t id = c->submit(prompt(0, 2000, 1)).value(); // 2 s of steps
        // Running: it streamed something.
        auto streamed_any = [&] {
            std::lock_guard lk(_log.m);
            return _log.by_req.count(id) != 0;
        };
        const auto deadline = std::chrono::steady_clock::now() + 10s;
        while (!streamed_any() && std::chrono::steady_clock::now() < deadline) {
            std::this_thread::sleep_for(1ms);
        }
        ASSERT_TRUE(streamed_any());
        if (close) {
            c.reset();
        } else {
            EXPECT_FALSE(c->cancel(id));
            auto f = c->wait(id, llmos::wait_for::at_most(5s));
            ASSERT_TRUE(f) << f.error().message();
            EXPECT_EQ(f->state, LLMOS_REQ_CANCELLED);
        }
        while (info.failed.load() == failed && std::chrono::steady_clock::now() < deadline) {
            std::this_thread::sleep_for(1ms);
        }
        EXPECT_EQ(info.failed.load(), failed + 1);
        EXPECT_EQ(info.served.load(), served);
        std::lock_guard lk(_log.m);
        const auto& got = _log.by_req[id];
        ASSERT_FALSE(got.empty());
        EXPECT_EQ(got.back().kind, uint32_t(output_kind::failed));
        EXPECT_EQ(got.back().length, 0u);
        uint64_t streamed = 0;
        for (auto& d : got) {
            streamed += d.kind == uint32_t(output_kind::tokens) ? d.length : 0;
        }
        EXPECT_LT(streamed, 2000u) << "it ran to its end";
    }
}

// A request cancelled through the scheduler just as it ends (here: as its
// last bytes are streamed, before the worker completes it): its COMPLETE
// finds it no longer held, and the worker streams a failure, as its
// client sees it CANCELLED; not a `done`, counted served.
TEST_P(worker_pool_test, a_request_cancelled_as_it_ends_is_streamed_as_a_failure) {
    auto c = llmos::sched_client::open(dev()).value();
    auto o = opts({.bytes_per_token = 8});
    o.cpus.resize(1);
    const auto p = prompt(0, 40, 1);
    const uint64_t end = llmos::output_offset(p.prompt_off, p.prompt_len) + p.prompt_len;
    o.on_output = [&](unsigned, const descriptor& d) {
        if (d.kind == uint32_t(output_kind::tokens) && d.offset + d.length == end) {
            EXPECT_FALSE(c.cancel(d.request));
        }
        _log.add(d);
    };
    const uint64_t id = c.submit(p).value();
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    auto f = c.wait(id, llmos::wait_for::at_most(10s));
    ASSERT_TRUE(f) << f.error().message();
    EXPECT_EQ(f->state, LLMOS_REQ_CANCELLED);
    (*pool)->stop();
    EXPECT_EQ((*pool)->info(0).served.load(), 0u);
    EXPECT_EQ((*pool)->info(0).failed.load(), 1u);
    std::lock_guard lk(_log.m);
    const auto& got = _log.by_req[id];
    ASSERT_FALSE(got.empty());
    EXPECT_EQ(got.back().kind, uint32_t(output_kind::failed));
    EXPECT_EQ(got.back().length, 0u);
}

// A request cancelled through the scheduler while its worker runs it, and
// before the worker looks (here: in the step that loses the device, or
// crashes an engine that cannot be made again): the worker gives back
// what it holds, and finds this one no longer held. Its end is streamed
// all the same (a failure), or whoever streams it waits for ever; the
// other one goes back and is served by the next pool.
TEST_P(worker_pool_test, a_request_cancelled_before_its_worker_gives_it_back_ends_its_stream) {
    for (bool lost : {true, false}) {
        SCOPED_TRACE(lost ? "the device is lost" : "the engine crashes and cannot be made again");
        _log.by_req.clear();
        auto c = llmos::sched_client::open(dev()).value();
        const auto x = c.submit(prompt(0, 400, 1)).value();    // cancelled
        const auto y = c.submit(prompt(4096, 400, 2)).value(); // loses the device
        auto o = one_engine_then_none([&, x, y, lost](const llmos::sequence& s) {
            if (s.req.id == y && s.produced >= 8) {
                EXPECT_FALSE(c.cancel(x));
                if (lost) {
                    throw llmos::engine::device_lost("kernel: cudaErrorIllegalAddress");
                }
                throw std::runtime_error("crash");
            }
        });
        auto pool = llmos::worker_pool::start(dev(), o);
        ASSERT_TRUE(pool);
        const auto f = c.wait(x, llmos::wait_for::at_most(10s));
        ASSERT_TRUE(f) << f.error().message();
        EXPECT_EQ(f->state, LLMOS_REQ_CANCELLED);
        auto ended = [&] {
            std::lock_guard lk(_log.m);
            auto it = _log.by_req.find(x);
            return it != _log.by_req.end() &&
                   it->second.back().kind != uint32_t(output_kind::tokens);
        };
        const auto until = std::chrono::steady_clock::now() + 10s;
        while (!ended() && std::chrono::steady_clock::now() < until) {
            std::this_thread::sleep_for(1ms);
        }
        ASSERT_TRUE(ended()) << "no end streamed for the cancelled request";
        {
            std::lock_guard lk(_log.m);
            const auto& got = _log.by_req[x];
            EXPECT_EQ(got.back().kind, uint32_t(output_kind::failed));
            EXPECT_EQ(got.back().length, 0u);
            EXPECT_EQ(got.back().offset, llmos::output_offset(0, 400));
            EXPECT_EQ(std::count_if(got.begin(), got.end(),
                                    [](const descriptor& d) {
                                        return d.kind != uint32_t(output_kind::tokens);
                                    }),
                      1);
            EXPECT_EQ(_log.by_req.count(y) ? _log.by_req[y].back().kind
                                           : uint32_t(output_kind::tokens),
                      uint32_t(output_kind::tokens))
                << "y is not ended here: it goes back";
        }
        EXPECT_EQ((*pool)->info(0).failed.load(), 1u);
        EXPECT_EQ((*pool)->info(0).served.load(), 0u);
        (*pool)->stop();
        auto again = llmos::worker_pool::start(dev(), opts({.bytes_per_token = 4}));
        ASSERT_TRUE(again);
        auto g = c.wait(y, llmos::wait_for::at_most(20s));
        ASSERT_TRUE(g) << g.error().message();
        EXPECT_EQ(g->state, LLMOS_REQ_COMPLETED);
    }
}

// The scheduler refuses a request's START for another reason than its
// cancel (EIO here): not the request's fault, nor a cancel. It goes back,
// uncounted (with max_requeues 1, one counted requeue would fail it), and
// is served.
TEST_P(worker_pool_test, a_start_refused_for_another_reason_gives_the_request_back) {
    auto o = opts({.bytes_per_token = 8});
    o.cpus.resize(1);
    o.max_requeues = 1;
    auto c = llmos::sched_client::open(dev()).value();
    auto ids = submit_prompts(c, 2, 40);
    const uint64_t victim = ids.begin()->first;
    const refusing_starts refuse(victim, 1);
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    expect_echoed(c, ids, 8);
    EXPECT_NE((*pool)->info(0).last_error().find("start: "), std::string::npos)
        << (*pool)->info(0).last_error();
    std::lock_guard lk(_log.m);
    for (auto& d : _log.by_req[victim]) {
        EXPECT_NE(d.kind, uint32_t(output_kind::failed)) << "a failure was streamed";
    }
}

// An engine whose idle(), the first time its worker waits for work, waits
// until drain() has been called, and a while more.
class draining_engine final : public llmos::inference_engine {
public:
    explicit draining_engine(std::atomic<bool>& waiting, std::atomic<bool>& drained)
        : _waiting(waiting)
        , _drained(drained)
        , _echo({.bytes_per_token = 8}) {}
    llmos::engine_status prefill(llmos::sequence& s) override { return _echo.prefill(s); }
    void decode(std::span<llmos::sequence* const> batch) override { _echo.decode(batch); }
    void release(llmos::sequence& s) noexcept override { _echo.release(s); }
    void idle() noexcept override {
        if (_waiting.exchange(true)) {
            return;
        }
        while (!_drained.load()) {
            std::this_thread::sleep_for(1ms);
        }
        // drain() has begun: the test calls it right after setting the
        // flag (a loaded machine may hold its thread a while: 500 ms was
        // not always enough).
        std::this_thread::sleep_for(2s);
    }

private:
    std::atomic<bool>& _waiting;
    std::atomic<bool>& _drained;
    llmos::echo_engine _echo;
};

// drain() comes while the worker is about to wait for work, after it
// looked at the pool's state: it takes nothing new. (On the kernel
// backend a DISPATCH sent then takes requests at once, before any cancel.)
TEST_P(worker_pool_test, a_drain_as_a_worker_goes_to_wait_for_work_takes_nothing_new) {
    std::atomic<bool> waiting{false};
    std::atomic<bool> drained{false};
    auto o = opts({});
    o.cpus.resize(1);
    o.engine = [&](unsigned) { return std::make_unique<draining_engine>(waiting, drained); };
    auto c = llmos::sched_client::open(dev()).value();
    auto ids = submit_prompts(c, 2, 40);
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    while (!waiting.load()) {
        std::this_thread::sleep_for(1ms);
    }
    drained = true;
    (*pool)->drain();
    EXPECT_EQ((*pool)->info(0).served.load() + (*pool)->info(0).failed.load(), 0u);
    EXPECT_EQ(c.wait(0, llmos::wait_for::none()).error(),
              std::errc::resource_unavailable_try_again);
    // Still queued, never taken: a worker takes them, not requeued.
    auto w = llmos::sched_worker::open(dev(), 2).value();
    auto got = w.dispatch(2, llmos::wait_for::at_most(5s));
    ASSERT_TRUE(got) << got.error().message();
    ASSERT_EQ(got->size(), 2u);
    for (auto& d : *got) {
        EXPECT_TRUE(ids.count(d.id));
        EXPECT_EQ(d.requeues, 0u);
    }
}

// An echo engine that notes a decode of a sequence it did not prefill.
class checking_engine final : public llmos::inference_engine {
public:
    explicit checking_engine(std::atomic<int>& unprefilled)
        : _echo({.bytes_per_token = 1})
        , _unprefilled(unprefilled) {}
    llmos::engine_status prefill(llmos::sequence& s) override {
        auto st = _echo.prefill(s);
        if (st == llmos::engine_status::ok) {
            _prefilled.insert(&s);
        }
        return st;
    }
    void decode(std::span<llmos::sequence* const> batch) override {
        for (auto* s : batch) {
            if (!_prefilled.count(s)) {
                _unprefilled.fetch_add(1);
            }
        }
        _echo.decode(batch);
    }
    void release(llmos::sequence& s) noexcept override {
        _prefilled.erase(&s);
        _echo.release(s);
    }

private:
    llmos::echo_engine _echo;
    std::atomic<int>& _unprefilled;
    std::set<llmos::sequence*> _prefilled;
};

// Two requests given back once (both run alone, as suspects): the first
// fails in prefill, and the second is prefilled before its first step.
TEST_P(worker_pool_test, a_suspect_after_one_that_failed_in_prefill_is_prefilled_first) {
    auto c = llmos::sched_client::open(dev()).value();
    // No room to echo it: its output would run past the mindspace.
    llmos::submit_options bad{
        .cost = 1, .ms_id = _ms->id(), .prompt_off = (1 << 20) - 8192, .prompt_len = 6000};
    const uint64_t bad_id = c.submit(bad).value();
    std::map<uint64_t, llmos::submit_options> ids;
    auto p = prompt(0, 40, 3);
    ids[c.submit(p).value()] = p;
    {
        auto w = llmos::sched_worker::open(dev(), 4).value();
        ASSERT_EQ(w.dispatch(4, llmos::wait_for::at_most(5s)).value().size(), 2u);
    } // gone: both go back, requeued once
    std::atomic<int> unprefilled{0};
    llmos::worker_pool_options o;
    o.cpus = {two_cpus().front()}; // one worker takes both
    o.slots = 4;
    o.engine = [&](unsigned) { return std::make_unique<checking_engine>(unprefilled); };
    o.on_output = [this](unsigned, const descriptor& d) { _log.add(d); };
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    expect_failed(c, bad_id, -ENOSPC);
    expect_echoed(c, ids, 1);
    EXPECT_EQ(unprefilled.load(), 0) << "decoded before it was prefilled";
}

// An echo engine whose text is upper case when `upper`: a request started
// again on a new one writes other bytes than the first one streamed.
class fickle_engine final : public llmos::inference_engine {
public:
    fickle_engine(llmos::echo_engine::options o, bool upper)
        : _echo(std::move(o))
        , _upper(upper) {}
    llmos::engine_status prefill(llmos::sequence& s) override { return _echo.prefill(s); }
    void decode(std::span<llmos::sequence* const> batch) override {
        _echo.decode(batch);
        for (llmos::sequence* s : batch) {
            for (size_t i = 0; _upper && i < s->produced; ++i) {
                s->output[i] = std::byte(std::toupper(int(s->output[i])));
            }
        }
    }
    void release(llmos::sequence& s) noexcept override { _echo.release(s); }

private:
    llmos::echo_engine _echo;
    bool _upper;
};

// A worker whose engine crashed starts its requests again and streams
// only what is past the bytes it streamed before; when the new engine's
// text differs from those bytes, the request fails (-EIO) instead of
// ending in a splice of two texts that no engine generated.
TEST_P(worker_pool_test, a_restarted_request_whose_new_text_differs_fails_instead_of_splicing) {
    std::atomic<int> made{0};
    std::atomic<uint64_t> victim{0};
    std::mutex m;
    std::map<uint64_t, std::string> streamed; // as the bytes were when streamed
    llmos::worker_pool_options o;
    o.cpus = {two_cpus().front()}; // one worker: one batch
    o.slots = 4;
    o.engine = [&](unsigned) {
        const bool upper = made.fetch_add(1) > 0;
        return std::make_unique<fickle_engine>(
            llmos::echo_engine::options{.bytes_per_token = 2,
                                        .on_step =
                                            [&victim, upper](const llmos::sequence& s) {
                                                if (!upper && s.req.id == victim.load() &&
                                                    s.produced >= 10) {
                                                    throw std::runtime_error("injected crash");
                                                }
                                            }},
            upper);
    };
    o.on_output = [&](unsigned, const descriptor& d) {
        if (d.kind == uint32_t(output_kind::tokens)) {
            std::lock_guard lk(m);
            streamed[d.request].append(reinterpret_cast<const char*>(bytes().data()) + d.offset,
                                       d.length);
        }
    };
    auto c = llmos::sched_client::open(dev()).value();
    std::map<uint64_t, llmos::submit_options> ids;
    for (uint32_t i = 0; i < 3; ++i) {
        auto p = prompt(i * 4096, 40, i);
        ids[c.submit(p).value()] = p;
        if (i == 1) {
            victim = ids.rbegin()->first;
        }
    }
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    for (auto& [id, p] : ids) {
        auto f = id == victim ? std::optional(expect_failed(c, id, -EIO))
                              : c.wait(id, llmos::wait_for::at_most(20s)).value();
        std::string lower(reinterpret_cast<const char*>(bytes().data()) + p.prompt_off,
                          p.prompt_len);
        std::string upper = lower;
        for (char& ch : upper) {
            ch = char(std::toupper(ch));
        }
        std::lock_guard lk(m);
        const std::string& got = streamed[id];
        if (f->state == LLMOS_REQ_COMPLETED) {
            EXPECT_EQ(got, upper) << "request " << id << " completed on the second engine alone";
        } else {
            EXPECT_EQ(f->status, -EIO) << "request " << id;
            EXPECT_EQ(got, lower.substr(0, got.size()))
                << "request " << id << ": only the first engine's bytes were streamed";
        }
    }
    EXPECT_EQ((*pool)->info(0).crashes.load(), 1u);
}

TEST_P(worker_pool_test, callbacks_that_throw_cost_a_descriptor_not_the_worker) {
    auto o = opts({.bytes_per_token = 8}, 4);
    o.cpus = {two_cpus().front()};
    std::atomic<int> thrown{0};
    o.on_output = [&](unsigned, const descriptor&) {
        thrown.fetch_add(1);
        throw std::runtime_error("consumer full");
    };
    o.is_cancelled = [](uint64_t) -> bool { throw std::runtime_error("no table"); };
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    auto c = llmos::sched_client::open(dev()).value();
    expect_echoed(c, submit_prompts(c, 3, 64), 8);
    EXPECT_GT(thrown.load(), 0);
    EXPECT_EQ((*pool)->info(0).crashes.load(), 0u);
    const std::string why = (*pool)->info(0).last_error();
    EXPECT_TRUE(why.find("on_output: consumer full") != std::string::npos ||
                why.find("is_cancelled: no table") != std::string::npos)
        << why;
}

// An engine that breaks its contract: it ends one request with a positive
// status, and throws something that is not a std::exception for another.
class wayward_engine final : public llmos::inference_engine {
public:
    wayward_engine(uint64_t odd, uint64_t thrower)
        : _odd(odd)
        , _thrower(thrower) {}
    llmos::engine_status prefill(llmos::sequence&) override { return llmos::engine_status::ok; }
    void decode(std::span<llmos::sequence* const> batch) override {
        for (llmos::sequence* s : batch) {
            if (s->req.id == _thrower) {
                throw 42; // NOLINT: the point of the test
            }
            s->done = true;
            s->status = s->req.id == _odd ? 7 : 0;
        }
    }
    void release(llmos::sequence&) noexcept override {}

private:
    uint64_t _odd, _thrower;
};

// The scheduler refuses the odd request's ending: it fails with EIO rather
// than stay held (its slot lost, its client waiting for ever); the one
// whose engine throws an int is struck like any crash, not the process's
// end. One worker of one slot serves the rest after both.
TEST_P(worker_pool_test, endings_the_scheduler_refuses_and_odd_throws_lose_nothing) {
    auto c = llmos::sched_client::open(dev()).value();
    const uint64_t odd = c.submit(prompt(0, 40, 1)).value();
    const uint64_t thrower = c.submit(prompt(4096, 40, 2)).value();
    std::vector<uint64_t> rest;
    for (uint32_t i = 0; i < 3; ++i) {
        rest.push_back(c.submit(prompt((3 + i) * 4096, 40, 3 + i)).value());
    }
    auto o = opts({}, 1);
    o.cpus.resize(1);
    o.max_requeues = 1;
    o.engine = [=](unsigned) { return std::make_unique<wayward_engine>(odd, thrower); };
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    expect_failed(c, odd, -EIO);
    expect_failed(c, thrower, -EIO);
    for (uint64_t id : rest) {
        auto f = c.wait(id, llmos::wait_for::at_most(20s));
        ASSERT_TRUE(f) << "request " << id << ": " << f.error().message();
        EXPECT_EQ(f->state, LLMOS_REQ_COMPLETED) << "request " << id;
    }
    EXPECT_EQ((*pool)->info(0).crashes.load(), 1u);
    std::lock_guard lk(_log.m);
    ASSERT_FALSE(_log.by_req[odd].empty());
    EXPECT_EQ(_log.by_req[odd].back().kind, uint32_t(output_kind::failed));
}

// The engine runs out of memory (std::bad_alloc in a step), and so does
// the recovery after it: the next `n` allocations of the worker's thread
// fail too (its error message, the new engine, ...). The worker must not
// take the process down (std::terminate: every client's requests lost);
// every request is served, the crashed ones after a restart or requeue.
TEST_P(worker_pool_test, out_of_memory_in_a_step_and_in_its_recovery_loses_nothing) {
    for (uint32_t n : {1u, 2u, 3u, 4u, 5u}) {
        SCOPED_TRACE("allocations that fail after the crash: " + std::to_string(n));
        std::atomic<uint64_t> victim{0};
        std::atomic<bool> thrown{false};
        auto o = opts({.bytes_per_token = 2});
        o.cpus.resize(1);
        o.engine = [&, n](unsigned) {
            return std::make_unique<llmos::echo_engine>(llmos::echo_engine::options{
                .bytes_per_token = 2, .on_step = [&, n](const llmos::sequence& s) {
                    // Once 20 bytes were streamed: recovery has a copy to make.
                    if (s.req.id == victim.load() && s.produced >= 20 && !thrown.exchange(true)) {
                        news_to_fail_here = n;
                        throw std::bad_alloc();
                    }
                }});
        };
        auto c = llmos::sched_client::open(dev()).value();
        auto ids = submit_prompts(c, 4, 40);
        victim = ids.begin()->first;
        auto pool = llmos::worker_pool::start(dev(), o);
        ASSERT_TRUE(pool);
        expect_echoed(c, ids, 2);
        EXPECT_TRUE(thrown.load());
        EXPECT_GE((*pool)->info(0).crashes.load(), 1u);
        // And it serves on.
        expect_echoed(c, submit_prompts(c, 2, 40), 2);
    }
}

// An engine that, the first time its worker waits for work, has that
// thread's allocations fail: `fail` of them, after `skip` more (the
// worker's own code: taking requests, setting them up, its loop).
class starving_engine final : public llmos::inference_engine {
public:
    struct plan {
        std::atomic<bool> armed{false};
        uint32_t skip = 0;
        uint32_t fail = 0;
        // Calibration (fail 0): allocations from the wait to the first prefill.
        std::atomic<uint64_t> at_wait{0};
        std::atomic<uint64_t> span{0};
    };
    explicit starving_engine(plan& p)
        : _p(p)
        , _echo({.bytes_per_token = 8}) {}
    llmos::engine_status prefill(llmos::sequence& s) override {
        if (_p.armed.load() && !_p.span.load()) {
            _p.span = news_here - _p.at_wait.load();
        }
        return _echo.prefill(s);
    }
    void decode(std::span<llmos::sequence* const> batch) override { _echo.decode(batch); }
    void release(llmos::sequence& s) noexcept override { _echo.release(s); }
    void idle() noexcept override {
        if (!_p.armed.exchange(true)) {
            _p.at_wait = news_here;
            news_to_skip_here = _p.skip;
            news_to_fail_here = _p.fail;
        }
    }

private:
    plan& _p;
    llmos::echo_engine _echo;
};

// Memory runs out in the worker's own code, at each allocation it makes
// from waiting for work to running the first request (outside any step,
// some requests set up, some taken and not yet): the worker gives its
// registration up and serves the requests again once registered anew;
// the process lives on. What it held went back uncounted: with
// max_requeues 1, one counted requeue would fail a request.
TEST_P(worker_pool_test, out_of_memory_outside_the_engine_costs_a_registration_not_the_process) {
    auto run = [&](starving_engine::plan& p) {
        auto o = opts({});
        o.cpus.resize(1);
        o.max_requeues = 1;
        o.engine = [&p](unsigned) { return std::make_unique<starving_engine>(p); };
        auto c = llmos::sched_client::open(dev()).value();
        auto ids = submit_prompts(c, 3, 40);
        auto pool = llmos::worker_pool::start(dev(), o);
        ASSERT_TRUE(pool);
        expect_echoed(c, ids, 8);
        EXPECT_TRUE(p.armed.load());
    };
    starving_engine::plan calibration;
    run(calibration);
    const uint64_t span = calibration.span.load();
    ASSERT_GT(span, 0u) << "no allocation between the wait and the first prefill";
    const uint64_t step = std::max<uint64_t>(1, span / 24);
    for (uint64_t skip = 0; skip < span; skip += step) {
        for (uint32_t fail : {1u, 3u}) {
            SCOPED_TRACE("allocation " + std::to_string(skip) + " of " + std::to_string(span) +
                         " and " + std::to_string(fail - 1) + " more fail");
            starving_engine::plan p;
            p.skip = static_cast<uint32_t>(skip);
            p.fail = fail;
            run(p);
            if (::testing::Test::HasFatalFailure()) {
                return;
            }
        }
    }
}

// The scheduler lets the worker neither complete a request (as it is,
// nor failed with -EIO) nor take it back: the worker must not drop it
// while the scheduler has it held (its client waiting for ever, the
// worker a slot short). It registers again: closing the registration
// requeues the request, and it is served.
TEST_P(worker_pool_test, a_request_that_can_be_neither_ended_nor_given_back_is_requeued) {
    auto o = opts({.bytes_per_token = 8}, 2);
    o.cpus.resize(1);
    auto c = llmos::sched_client::open(dev()).value();
    auto ids = submit_prompts(c, 3, 40);
    const uint64_t victim = ids.begin()->first;
    const uint64_t before = llmos::scheduler_stats(dev()).value().requeued;
    // Its COMPLETE, the COMPLETE with -EIO, the give-back.
    const refusing_endings refuse(victim, 3);
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    expect_echoed(c, ids, 8);
    EXPECT_GE(llmos::scheduler_stats(dev()).value().requeued, before + 1);
    EXPECT_NE((*pool)->info(0).last_error().find("complete: "), std::string::npos)
        << (*pool)->info(0).last_error();
    std::lock_guard lk(_log.m);
    for (auto& d : _log.by_req[victim]) {
        EXPECT_NE(d.kind, uint32_t(output_kind::failed)) << "a failure was streamed";
    }
}

// As above, but the scheduler refuses them for ever. The worker takes no
// more work while it finishes what it runs (not given back: not started
// again), registers again after a pause that grows, and once the request
// has used its max_requeues, leaves it held (a slot less) and serves the
// rest: the other requests are served, and the request is requeued
// max_requeues times, not cycled for ever.
TEST_P(worker_pool_test, a_request_that_can_never_be_ended_stops_being_requeued) {
    auto o = opts({.decode_step = 20ms, .bytes_per_token = 8}, 2); // 100 ms a request
    o.cpus.resize(1);
    auto c = llmos::sched_client::open(dev()).value();
    auto ids = submit_prompts(c, 4, 40);
    const uint64_t victim = ids.begin()->first;
    ids.erase(ids.begin());
    const uint64_t before = llmos::scheduler_stats(dev()).value().requeued;
    const refusing_endings refuse(victim, UINT32_MAX);
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    for (auto& [id, p] : ids) {
        auto f = c.wait(id, llmos::wait_for::at_most(10s));
        ASSERT_TRUE(f) << "request " << id << ": " << f.error().message();
        EXPECT_EQ(f->state, LLMOS_REQ_COMPLETED) << "request " << id;
    }
    const uint64_t requeued = llmos::scheduler_stats(dev()).value().requeued - before;
    EXPECT_LE(requeued, o.max_requeues) << "registered again and again";
    (*pool)->stop();
    std::lock_guard lk(_log.m);
    for (auto& [id, p] : ids) {
        size_t finals = 0;
        for (auto& d : _log.by_req[id]) {
            finals += d.kind != uint32_t(output_kind::tokens);
        }
        EXPECT_EQ(finals, 1u) << "request " << id;
        // Streamed once: not given back and started again.
        uint64_t streamed = 0;
        for (auto& d : _log.by_req[id]) {
            streamed += d.kind == uint32_t(output_kind::tokens) ? d.length : 0;
        }
        EXPECT_EQ(streamed, p.prompt_len) << "request " << id << " was started again";
    }
}

// Out of memory in the worker's own code (here: taking more work between
// steps) is neither its requests' fault nor its engine's: they go back
// uncounted (with max_requeues 1, one counted requeue would fail them)
// and the engine is kept.
TEST_P(worker_pool_test, out_of_memory_in_the_worker_costs_its_requests_nothing) {
    auto o = opts({}, 3); // a free slot: the worker asks for more between steps
    o.cpus.resize(1);
    o.max_requeues = 1;
    std::atomic<int> made{0};
    o.engine = [&made](unsigned) {
        made.fetch_add(1);
        return std::make_unique<llmos::echo_engine>(
            llmos::echo_engine::options{.bytes_per_token = 8});
    };
    // Asked after every step, on the worker's thread: the next allocation
    // (taking more work) fails, three times, at the first step (40 bytes
    // are 5: nothing has ended yet).
    std::atomic<int> ooms{3};
    o.is_cancelled = [&](uint64_t) {
        if (ooms.load() > 0) {
            ooms.fetch_sub(1);
            news_to_fail_here = 1;
        }
        return false;
    };
    auto c = llmos::sched_client::open(dev()).value();
    auto ids = submit_prompts(c, 2, 40);
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    expect_echoed(c, ids, 8);
    (*pool)->stop();
    EXPECT_LE(ooms.load(), 0);
    EXPECT_EQ(made.load(), 1) << "the engine was made again";
    EXPECT_NE((*pool)->info(0).last_error().find("worker: "), std::string::npos)
        << (*pool)->info(0).last_error();
}

// The local scheduler records an ending only once nothing can throw: out
// of memory as a request is completed or cancelled leaves it as it was
// (not ended, and ended by the next try), not ended without its client
// knowing.
TEST_P(worker_pool_test, out_of_memory_as_a_request_ends_leaves_it_as_it_was) {
    if (GetParam() != backend_kind::local) {
        GTEST_SKIP() << "the local scheduler's";
    }
    auto c = llmos::sched_client::open(dev()).value();
    auto w = llmos::sched_worker::open(dev(), 2).value();
    const uint64_t a = c.submit(prompt(0, 8, 0)).value();
    const uint64_t b = c.submit(prompt(4096, 8, 1)).value();
    auto got = w.dispatch(2, llmos::wait_for::at_most(5s));
    ASSERT_TRUE(got) << got.error().message();
    ASSERT_EQ(got->size(), 2u);
    const auto before = llmos::scheduler_stats(dev()).value();
    news_to_fail_here = 1;
    EXPECT_THROW((void)w.complete(a, 0, 1, 0, 0), std::bad_alloc);
    news_to_fail_here = 1;
    EXPECT_THROW((void)c.cancel(b), std::bad_alloc);
    news_to_fail_here = 0;
    const auto after = llmos::scheduler_stats(dev()).value();
    // (Else the next wait() would erase an iterator never set.)
    ASSERT_EQ(after.completed, before.completed) << "completed, yet complete() threw";
    ASSERT_EQ(after.cancelled, before.cancelled) << "cancelled, yet cancel() threw";
    EXPECT_EQ(c.wait(a, llmos::wait_for::none()).error().value(), EAGAIN);
    EXPECT_FALSE(w.complete(a, 0, 1, 0, 0));
    EXPECT_FALSE(c.cancel(b));
    auto fa = c.wait(a, llmos::wait_for::none());
    ASSERT_TRUE(fa) << fa.error().message();
    EXPECT_EQ(fa->state, LLMOS_REQ_COMPLETED);
    auto fb = c.wait(b, llmos::wait_for::none());
    ASSERT_TRUE(fb) << fb.error().message();
    EXPECT_EQ(fb->state, LLMOS_REQ_CANCELLED);
}

// An engine that writes 3/5 of its room at its first step and the rest
// at its second, and says, as its request ends, the largest allocation
// its worker made meanwhile.
class two_step_engine final : public llmos::inference_engine {
public:
    explicit two_step_engine(std::atomic<size_t>& largest, std::atomic<size_t>& room)
        : _largest(largest)
        , _room(room) {}
    llmos::engine_status prefill(llmos::sequence& s) override {
        largest_new_here = 0;
        _room = s.output.size();
        return llmos::engine_status::ok;
    }
    void decode(std::span<llmos::sequence* const> batch) override {
        for (llmos::sequence* s : batch) {
            s->produced = s->produced ? s->output.size() : s->output.size() / 5 * 3;
            s->tokens++;
            s->done = s->produced == s->output.size();
        }
    }
    void release(llmos::sequence&) noexcept override { _largest = largest_new_here; }

private:
    std::atomic<size_t>& _largest;
    std::atomic<size_t>& _room;
};

// What a worker keeps of a request's streamed output (to check it after a
// crash) grows by doubling, but never past the request's room.
TEST_P(worker_pool_test, the_copy_of_streamed_output_grows_no_larger_than_the_output) {
    std::atomic<size_t> largest{0};
    std::atomic<size_t> room{0};
    auto o = opts({}, 1);
    o.cpus.resize(1);
    o.engine = [&](unsigned) { return std::make_unique<two_step_engine>(largest, room); };
    auto c = llmos::sched_client::open(dev()).value();
    const uint64_t id = c.submit({.cost = 1, .ms_id = _ms->id()}).value();
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    auto f = c.wait(id, llmos::wait_for::at_most(20s));
    (*pool)->stop();
    ASSERT_TRUE(f) << f.error().message();
    EXPECT_EQ(f->state, LLMOS_REQ_COMPLETED);
    ASSERT_GT(room.load(), 4096u);
    EXPECT_GE(largest.load(), room.load()) << "no room taken for the copy";
    EXPECT_LE(largest.load(), room.load() + 64) << "room of " << room.load();
}

// An engine that says it filled all the room it was given (it writes
// nothing: the pages stay unmade).
class filling_engine final : public llmos::inference_engine {
public:
    explicit filling_engine(std::atomic<uint64_t>& room)
        : _room(room) {}
    llmos::engine_status prefill(llmos::sequence&) override { return llmos::engine_status::ok; }
    void decode(std::span<llmos::sequence* const> batch) override {
        for (llmos::sequence* s : batch) {
            _room = s->output.size();
            s->produced = s->output.size();
            s->tokens = 1;
            s->done = true;
        }
    }
    void release(llmos::sequence&) noexcept override {}

private:
    std::atomic<uint64_t>& _room;
};

// The final descriptor's length is 32 bits: a request's output stops at
// UINT32_MAX bytes, however large its mindspace, so that the descriptor
// says what the completion says.
TEST_P(worker_pool_test, output_stops_where_a_descriptor_can_say_it_all) {
    const std::string big_name = _name + "-big";
    std::optional<llmos::mindspace> big;
    if (auto ms =
            llmos::mindspace::create(dev(), {.length = uint64_t{5} << 30, .name = big_name})) {
        big.emplace(std::move(*ms));
    } else {
        GTEST_SKIP() << "no 5 GiB mindspace here: " << ms.error().message();
    }
    std::atomic<uint64_t> room{0};
    auto o = opts({}, 1);
    o.cpus.resize(1);
    o.engine = [&](unsigned) { return std::make_unique<filling_engine>(room); };
    auto c = llmos::sched_client::open(dev()).value();
    const uint64_t id = c.submit({.cost = 1, .ms_id = big->id()}).value();
    auto pool = llmos::worker_pool::start(dev(), o);
    ASSERT_TRUE(pool);
    auto f = c.wait(id, llmos::wait_for::at_most(20s));
    (*pool)->stop();
    big.reset();
    llmos::destroy_mindspace(dev(), llmos::ms_key{0, big_name});
    ASSERT_TRUE(f) << f.error().message();
    EXPECT_EQ(f->state, LLMOS_REQ_COMPLETED);
    EXPECT_EQ(room.load(), UINT32_MAX);
    EXPECT_EQ(f->result_len, UINT32_MAX);
    std::lock_guard lk(_log.m);
    ASSERT_FALSE(_log.by_req[id].empty());
    const descriptor& last = _log.by_req[id].back();
    EXPECT_EQ(last.kind, uint32_t(output_kind::done));
    EXPECT_EQ(last.offset, f->result_off);
    EXPECT_EQ(last.length, f->result_len) << "the final descriptor cut the length";
}

TEST_P(worker_pool_test, bad_options_are_refused) {
    auto o = opts({});
    o.slots = 0;
    EXPECT_EQ(llmos::worker_pool::start(dev(), o).error().value(), EINVAL);
    o = opts({});
    o.engine = nullptr;
    EXPECT_EQ(llmos::worker_pool::start(dev(), o).error().value(), EINVAL);
    // More than a worker may register for (its workers would retry for ever).
    o = opts({}, LLMOS_MAX_CAPACITY + 1);
    EXPECT_EQ(llmos::worker_pool::start(dev(), o).error().value(), EINVAL);
    o = opts({});
    o.cpus = {CPU_SETSIZE - 1};
    EXPECT_EQ(llmos::worker_pool::start(dev(), o).error().value(), EINVAL);
    // No requeue at all would fail every request before it ran.
    o = opts({});
    o.max_requeues = 0;
    EXPECT_EQ(llmos::worker_pool::start(dev(), o).error().value(), EINVAL);
}

INSTANTIATE_TEST_SUITE_P(backend, worker_pool_test, ::testing::ValuesIn(available_backends()),
                         backend_name);
