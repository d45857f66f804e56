// SPDX-License-Identifier: MIT
//
// libllmos's scheduler API, the same tests against every backend this
// machine has: the local one (the core in this process) always, the kernel
// one where /dev/llmos is (the test VM runs this program, as TAP).
#include "../support/test_new.hh"

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <gtest/gtest.h>
#include <linux/llmos.h>
#include <llmos/event_loop.hh>
#include <llmos/mindspace.hh>
#include <llmos/sched.hh>
#include <map>
#include <mutex>
#include <new>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unistd.h>

namespace {

using llmos::backend_kind;
using llmos::wait_for;
using namespace std::chrono_literals;

std::vector<backend_kind> available_backends() {
    std::vector<backend_kind> v{backend_kind::local};
    if (::access("/dev/llmos", F_OK) == 0) {
        v.push_back(backend_kind::kernel);
    }
    return v;
}

class sched_backend : public ::testing::TestWithParam<backend_kind> {
protected:
    std::optional<llmos::device> _dev;

    void SetUp() override {
        auto d = GetParam() == backend_kind::local ? llmos::device::open_local(local_dir())
                                                   : llmos::device::open();
        ASSERT_TRUE(d) << d.error().message();
        _dev.emplace(std::move(*d));
    }
    // One store for the whole run, removed at exit.
    static const std::string& local_dir() {
        static const struct store {
            std::string dir;
            store() {
                char tmpl[] = "/tmp/llmos-sched-XXXXXX";
                dir = ::mkdtemp(tmpl);
            }
            ~store() { std::filesystem::remove_all(dir); }
        } s;
        return s.dir;
    }
    const llmos::device& dev() { return *_dev; }
    llmos::sched_client client() { return llmos::sched_client::open(dev()).value(); }
    llmos::sched_worker worker(uint32_t cap) {
        return llmos::sched_worker::open(dev(), cap).value();
    }
};

std::string backend_name(const ::testing::TestParamInfo<backend_kind>& p) {
    return llmos::to_string(p.param);
}

INSTANTIATE_TEST_SUITE_P(backends, sched_backend, ::testing::ValuesIn(available_backends()),
                         backend_name);

TEST_P(sched_backend, a_request_goes_through_its_whole_life) {
    auto c = client();
    auto w = worker(4);
    // A request names a mindspace its submitter may write (the module checks).
    // (Its results lie inside it: the module checks that too.)
    auto ms = llmos::mindspace::create(dev(), {.length = 8192}).value();
    std::vector<uint64_t> ids;
    for (uint32_t i = 0; i < 3; ++i) {
        ids.push_back(
            c.submit({.tenant = 7, .cost = 5 + i, .ms_id = ms.id(), .prompt_len = 10}).value());
    }
    auto got = w.dispatch(8).value();
    ASSERT_EQ(got.size(), 3u);
    for (size_t i = 0; i < 3; ++i) {
        EXPECT_EQ(got[i].id, ids[i]);
        EXPECT_EQ(got[i].tenant, 7u);
        EXPECT_EQ(got[i].cost, 5u + i);
        EXPECT_EQ(got[i].ms_id, ms.id());
        EXPECT_EQ(got[i].prompt_len, 10u);
    }
    EXPECT_FALSE(w.start(ids[0]));
    EXPECT_EQ(w.start(ids[0]), std::errc::invalid_argument);
    for (size_t i = 0; i < 3; ++i) {
        EXPECT_FALSE(w.complete(ids[i], 0, 100 + static_cast<uint32_t>(i), 4096, 64));
    }
    for (size_t i = 0; i < 3; ++i) {
        auto f = c.wait(ids[i]).value();
        EXPECT_EQ(f.state, static_cast<uint32_t>(LLMOS_REQ_COMPLETED));
        EXPECT_EQ(f.tokens, 100u + i);
        EXPECT_EQ(f.result_off, 4096u);
        EXPECT_LE(f.submit_ns, f.dispatch_ns);
        EXPECT_LE(f.dispatch_ns, f.end_ns);
    }
    EXPECT_EQ(c.wait(0, wait_for::none()).error(), std::errc::no_such_file_or_directory);
}

// Both backends check a request's mindspace at SUBMIT, and its result at
// COMPLETE: a worker opens it with its own rights.
TEST_P(sched_backend, a_request_s_mindspace_and_ranges_are_checked) {
    auto c = client();
    auto w = worker(2);
    auto ms = llmos::mindspace::create(dev(), {.length = 8192}).value();
    const uint64_t id = ms.id();
    EXPECT_EQ(c.submit({.ms_id = id, .prompt_off = 8192, .prompt_len = 1}).error(),
              std::errc::invalid_argument);
    EXPECT_EQ(c.submit({.ms_id = id, .prompt_off = 8000, .prompt_len = ~0ull - 100}).error(),
              std::errc::invalid_argument); // wraps
    EXPECT_EQ(c.submit({.ms_id = id + 1000000, .prompt_len = 1}).error(),
              std::errc::no_such_file_or_directory);
    auto r = c.submit({.ms_id = id, .prompt_off = 8191, .prompt_len = 1}).value(); // the last byte
    ASSERT_EQ(w.dispatch(2).value().size(), 1u);
    EXPECT_EQ(w.complete(r, 0, 1, 8192, 1), std::errc::invalid_argument);
    EXPECT_EQ(w.complete(r, 0, 1, 4096, 4097), std::errc::invalid_argument);
    EXPECT_EQ(w.complete(r, 0, 1, ~0ull - 10, 20), std::errc::invalid_argument);
    EXPECT_FALSE(w.complete(r, 0, 1, 4096, 4096));
    EXPECT_EQ(c.wait(r).value().result_len, 4096u);
    // A mindspace let go (not persistent) is gone for new requests.
    ms = llmos::mindspace::create(dev(), {.length = 4096}).value(); // the old one closes
    EXPECT_EQ(c.submit({.ms_id = id, .prompt_len = 1}).error(),
              std::errc::no_such_file_or_directory);
}

TEST_P(sched_backend, nothing_to_take_fails_or_times_out) {
    auto w = worker(1);
    EXPECT_EQ(w.dispatch(1, wait_for::none()).error(), std::errc::resource_unavailable_try_again);
    EXPECT_EQ(w.dispatch(1, wait_for::at_most(100ms)).error(), std::errc::timed_out);
    auto c = client();
    auto id = c.submit({}).value();
    EXPECT_EQ(c.wait(id, wait_for::none()).error(), std::errc::resource_unavailable_try_again);
    EXPECT_EQ(c.wait(0, wait_for::at_most(50ms)).error(), std::errc::timed_out);
    EXPECT_FALSE(c.cancel(id));
    EXPECT_EQ(c.wait(id).value().state, static_cast<uint32_t>(LLMOS_REQ_CANCELLED));
}

// A client opens the device its `device` has open, not whatever the
// device's path names by then (here a symbolic link changed since).
TEST_P(sched_backend, a_client_opens_the_device_its_device_has_open) {
    if (GetParam() != backend_kind::kernel) {
        GTEST_SKIP() << "the local backend opens no device";
    }
    char tmpl[] = "/tmp/llmos-link-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    const std::string dir = tmpl, link = dir + "/llmos";
    ASSERT_EQ(::symlink("/dev/llmos", link.c_str()), 0);
    auto dev = llmos::device::open(link);
    ASSERT_EQ(::unlink(link.c_str()), 0);
    ASSERT_EQ(::symlink("/dev/null", link.c_str()), 0);
    ASSERT_TRUE(dev) << dev.error().message();
    auto c = llmos::sched_client::open(*dev);
    ASSERT_TRUE(c) << c.error().message();
    const uint64_t id = c->submit({}).value();
    EXPECT_FALSE(c->cancel(id));
    std::filesystem::remove_all(dir);
}

// A limit past any clock's reach (now + it overflows) is no limit: it
// waits for the request instead of timing out at once.
TEST_P(sched_backend, a_limit_past_the_clock_s_reach_waits) {
    auto w = worker(1);
    auto c = client();
    std::optional<llmos::result<std::vector<llmos::request_desc>>> got;
    std::thread t(
        [&] { got.emplace(w.dispatch(1, wait_for::at_most(std::chrono::milliseconds::max()))); });
    std::this_thread::sleep_for(100ms);
    const uint64_t id = c.submit({}).value();
    t.join();
    ASSERT_TRUE(*got) << got->error().message();
    ASSERT_EQ((*got)->size(), 1u);
    EXPECT_EQ((*got)->front().id, id);
    std::thread done([&] {
        std::this_thread::sleep_for(100ms);
        EXPECT_FALSE(w.start(id));
        EXPECT_FALSE(w.complete(id, 0, 1));
    });
    auto f = c.wait(id, wait_for::at_most(std::chrono::hours(24 * 365 * 300)));
    done.join();
    ASSERT_TRUE(f) << f.error().message();
    EXPECT_EQ(f->state, static_cast<uint32_t>(LLMOS_REQ_COMPLETED));
}

// Memory runs out in DISPATCH, at each allocation it makes in turn (on
// this thread: the local scheduler runs in it). It either fails having
// taken nothing, so that the next DISPATCH takes the request, not
// requeued, or takes it: never takes it and loses it (held by a worker
// that never learned of it, until closing the worker gives it back,
// counted).
TEST_P(sched_backend, out_of_memory_in_dispatch_takes_nothing) {
    using llmos::testing::news_to_fail_here;
    using llmos::testing::news_to_skip_here;
    auto c = client();
    auto w = worker(1);
    for (uint32_t skip = 0;; ++skip) {
        ASSERT_LT(skip, 100u) << "DISPATCH allocates without end";
        SCOPED_TRACE("allocation " + std::to_string(skip) + " fails");
        const uint64_t id = c.submit({.tenant = 1, .cost = 1}).value();
        std::optional<llmos::result<std::vector<llmos::request_desc>>> got;
        news_to_skip_here = skip;
        news_to_fail_here = 1;
        try {
            got.emplace(w.dispatch(1, wait_for::none()));
        } catch (const std::bad_alloc&) {
        }
        const bool failed_one = news_to_fail_here == 0;
        news_to_skip_here = 0;
        news_to_fail_here = 0;
        if (!got) {
            got.emplace(w.dispatch(1, wait_for::none()));
            ASSERT_TRUE(*got) << "taken and lost: " << got->error().message();
            EXPECT_EQ((*got)->front().requeues, 0u);
        }
        ASSERT_TRUE(*got) << got->error().message();
        ASSERT_EQ((*got)->size(), 1u);
        EXPECT_EQ((*got)->front().id, id);
        EXPECT_FALSE(w.complete(id, 0, 1));
        EXPECT_EQ(c.wait(id, wait_for::at_most(5s)).value().state, LLMOS_REQ_COMPLETED);
        if (!failed_one) {
            break; // it made fewer allocations: each has failed once
        }
    }
}

TEST_P(sched_backend, bad_arguments_are_refused) {
    auto c = client();
    EXPECT_EQ(c.submit({.priority = 256}).error(), std::errc::invalid_argument);
    EXPECT_EQ(llmos::sched_worker::open(dev(), 0).error(), std::errc::invalid_argument);
    EXPECT_EQ(llmos::sched_worker::open(dev(), LLMOS_MAX_CAPACITY + 1).error(),
              std::errc::invalid_argument);
    auto w = worker(1);
    EXPECT_EQ(w.dispatch(0, wait_for::none()).error(), std::errc::invalid_argument);
    EXPECT_EQ(w.complete(1, 5, 0), std::errc::invalid_argument);
    EXPECT_EQ(w.complete(~0ull, 0, 0), std::errc::no_such_file_or_directory);
    EXPECT_EQ(c.cancel(~0ull), std::errc::no_such_file_or_directory);
    EXPECT_EQ(llmos::set_tenant_weight(dev(), 1, 0), std::errc::invalid_argument);
}

TEST_P(sched_backend, a_vanished_worker_gives_its_requests_back) {
    auto c = client();
    std::vector<uint64_t> ids;
    for (int i = 0; i < 4; ++i) {
        ids.push_back(c.submit({.tenant = 3}).value());
    }
    {
        auto w = worker(3);
        ASSERT_EQ(w.dispatch(3).value().size(), 3u);
    } // gone without completing
    auto w = worker(8);
    auto got = w.dispatch(8).value();
    ASSERT_EQ(got.size(), 4u);
    for (size_t i = 0; i < 4; ++i) {
        EXPECT_EQ(got[i].id, ids[i]);
        EXPECT_EQ(got[i].requeues, i < 3 ? 1u : 0u);
        EXPECT_FALSE(w.complete(got[i].id, 0, 1));
    }
    std::map<uint64_t, int> seen;
    for (int i = 0; i < 4; ++i) {
        seen[c.wait().value().id]++;
    }
    for (auto id : ids) {
        EXPECT_EQ(seen[id], 1);
    }
}

TEST_P(sched_backend, a_worker_hands_back_what_it_will_not_finish) {
    auto c = client();
    std::vector<uint64_t> ids;
    for (int i = 0; i < 3; ++i) {
        ids.push_back(c.submit({.tenant = 4}).value());
    }
    auto stats0 = llmos::scheduler_stats(dev()).value();
    {
        auto w = worker(2);
        auto got = w.dispatch(2).value();
        ASSERT_EQ(got.size(), 2u);
        EXPECT_FALSE(w.start(got[1].id));
        auto other = worker(1);
        EXPECT_EQ(other.give_back(got[0].id), std::errc::no_such_process); // not its
        EXPECT_EQ(w.give_back(~0ull), std::errc::no_such_file_or_directory);
        EXPECT_FALSE(w.give_back(got[1].id)); // running
        EXPECT_FALSE(w.give_back(got[0].id)); // dispatched
        EXPECT_EQ(w.give_back(got[0].id), std::errc::no_such_process);
        EXPECT_EQ(w.complete(got[0].id, 0, 1), std::errc::no_such_process);
    } // closing it now gives back nothing: no requeue counted
    auto stats1 = llmos::scheduler_stats(dev()).value();
    EXPECT_EQ(stats1.requeued - stats0.requeued, 2u);
    auto w = worker(8);
    auto got = w.dispatch(8).value();
    ASSERT_EQ(got.size(), 3u);
    for (size_t i = 0; i < 3; ++i) {
        EXPECT_EQ(got[i].id, ids[i]); // the two first, in submission order
        EXPECT_EQ(got[i].requeues, 0u);
        EXPECT_FALSE(w.complete(got[i].id, 0, 1));
    }
    EXPECT_EQ(w.give_back(got[0].id), std::errc::no_such_process); // finished
    for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(c.wait().value().state, LLMOS_REQ_COMPLETED);
    }
}

// A worker with no room waiting for work is woken when it has room again
// because a request it held was cancelled, or its client went away; the
// request waiting then reaches it at once.
TEST_P(sched_backend, a_full_worker_waiting_is_woken_when_a_held_request_ends) {
    for (bool close : {false, true}) {
        auto w = worker(1);
        auto c = client();
        std::optional<llmos::sched_client> other(client());
        const uint64_t x =
            close ? other->submit({.tenant = 5}).value() : c.submit({.tenant = 5}).value();
        auto got = w.dispatch(1, llmos::wait_for::at_most(5s)).value();
        ASSERT_EQ(got.size(), 1u);
        ASSERT_EQ(got[0].id, x);
        const uint64_t y = c.submit({.tenant = 5}).value();
        std::thread t([&] {
            std::this_thread::sleep_for(100ms);
            if (close) {
                other.reset();
            } else {
                EXPECT_FALSE(c.cancel(x));
            }
        });
        const auto t0 = std::chrono::steady_clock::now();
        auto next = w.dispatch(1, llmos::wait_for::at_most(20s));
        const auto took = std::chrono::steady_clock::now() - t0;
        t.join();
        ASSERT_TRUE(next) << next.error().message();
        ASSERT_EQ(next->size(), 1u) << (close ? "closed" : "cancelled");
        EXPECT_EQ((*next)[0].id, y);
        EXPECT_LT(took, 10s) << (close ? "closed" : "cancelled") << ": woken only by the timeout";
        EXPECT_FALSE(w.complete(y, 0, 1));
    }
}

TEST_P(sched_backend, a_closed_clients_requests_are_cancelled) {
    auto w = worker(4);
    uint64_t held;
    {
        auto c = client();
        held = c.submit({}).value();
        c.submit({}).value();
        ASSERT_EQ(w.dispatch(1).value().size(), 1u);
    }
    EXPECT_EQ(w.complete(held, 0, 1), std::errc::no_such_file_or_directory);
    EXPECT_EQ(w.dispatch(4, wait_for::none()).error(), std::errc::resource_unavailable_try_again);
}

TEST_P(sched_backend, cancel_in_every_state) {
    auto c = client();
    auto w = worker(4);
    auto a = c.submit({}).value();
    auto b = c.submit({}).value();
    ASSERT_EQ(w.dispatch(1).value().size(), 1u); // a
    auto d = c.submit({}).value();
    ASSERT_EQ(w.dispatch(1).value().size(), 1u); // b
    EXPECT_FALSE(w.start(b));
    EXPECT_FALSE(c.cancel(a)); // dispatched
    EXPECT_FALSE(c.cancel(b)); // running
    EXPECT_FALSE(c.cancel(d)); // queued
    EXPECT_EQ(c.cancel(d), std::errc::connection_already_in_progress);
    EXPECT_EQ(w.complete(b, 0, 1), std::errc::no_such_process);
    for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(c.wait().value().state, static_cast<uint32_t>(LLMOS_REQ_CANCELLED));
    }
}

TEST_P(sched_backend, threads_complete_every_request_exactly_once) {
    const char* scale = std::getenv("LLMOS_TEST_SCALE");
    const int per_client = static_cast<int>(2000 * (scale ? std::atof(scale) : 1.0)) + 10;
    std::atomic<bool> stop{false};
    std::atomic<int> errors{0};
    std::atomic<long> done{0};
    std::vector<std::thread> workers, clients;
    for (int i = 0; i < 2; ++i) {
        workers.emplace_back([&] {
            auto w = worker(16);
            while (!stop) {
                auto got = w.dispatch(16, wait_for::at_most(20ms));
                if (!got) {
                    errors += got.error() != std::errc::timed_out;
                    continue;
                }
                for (auto& r : *got) {
                    errors += static_cast<bool>(w.complete(r.id, 0, 1));
                    done++;
                }
            }
        });
    }
    for (int i = 0; i < 4; ++i) {
        clients.emplace_back([&, i] {
            auto c = client();
            std::map<uint64_t, int> seen;
            for (int k = 0; k < per_client; ++k) {
                seen[c.submit({.tenant = static_cast<uint32_t>(i)}).value()] = 0;
            }
            for (int k = 0; k < per_client; ++k) {
                auto f = c.wait(0, wait_for::at_most(60s));
                if (!f || f->state != LLMOS_REQ_COMPLETED || ++seen[f->id] != 1) {
                    errors++;
                }
            }
            errors += static_cast<int>(seen.size()) != per_client;
        });
    }
    for (auto& t : clients) {
        t.join();
    }
    stop = true;
    for (auto& t : workers) {
        t.join();
    }
    EXPECT_EQ(errors, 0);
    EXPECT_EQ(done, 4L * per_client);
}

TEST_P(sched_backend, stats_count_what_happened) {
    auto before = llmos::scheduler_stats(dev()).value();
    auto c = client();
    auto w = worker(2);
    auto id = c.submit({.tenant = 99, .cost = 4}).value();
    auto mid = llmos::scheduler_stats(dev()).value();
    EXPECT_EQ(mid.submitted, before.submitted + 1);
    EXPECT_EQ(mid.nr[LLMOS_REQ_QUEUED], before.nr[LLMOS_REQ_QUEUED] + 1);
    EXPECT_GE(mid.workers, 1u);
    bool found = false;
    for (auto& t : mid.tenants) {
        found |= t.tenant == 99 && t.queued == 1;
    }
    EXPECT_TRUE(found);
    ASSERT_EQ(w.dispatch(1).value().size(), 1u);
    EXPECT_FALSE(w.complete(id, 0, 4));
    c.wait(id).value();
    auto after = llmos::scheduler_stats(dev()).value();
    EXPECT_EQ(after.completed, before.completed + 1);
    uint64_t hist = 0, hist0 = 0;
    for (int i = 0; i < 32; ++i) {
        hist += after.lat_hist[i];
        hist0 += before.lat_hist[i];
    }
    EXPECT_EQ(hist, hist0 + 1);
}

using dispatched = std::optional<llmos::result<std::vector<llmos::request_desc>>>;

// Runs `loop` until a cancelled dispatch_async answers (10 s at most): it
// must say ECANCELED, with no request.
void expect_cancelled(llmos::event_loop& loop, const dispatched& got) {
    for (auto t0 = std::chrono::steady_clock::now();
         !got && std::chrono::steady_clock::now() - t0 < 10s;) {
        loop.run_once(100ms);
    }
    ASSERT_TRUE(got);
    ASSERT_FALSE(*got) << "it got a request";
    EXPECT_EQ(got->error(), std::errc::operation_canceled);
}

// A plain DISPATCH of `w` takes `id`, which it starts and completes.
void takes_and_completes(llmos::sched_worker& w, uint64_t id) {
    auto d = w.dispatch(1, wait_for::at_most(5s));
    ASSERT_TRUE(d) << d.error().message();
    EXPECT_EQ(d->front().id, id);
    EXPECT_FALSE(w.start(id));
    EXPECT_FALSE(w.complete(id, 0, 1));
}

} // namespace

// DISPATCH waiting in an event loop: a uring_cmd on the loop's ring (kernel)
// or the in-process scheduler ringing the loop's doorbell (local).
TEST_P(sched_backend, dispatch_async_waits_in_the_event_loop) {
    auto loop = llmos::event_loop::create({.spin = 0}).value();
    auto w = worker(2);
    auto c = client();
    std::optional<llmos::result<std::vector<llmos::request_desc>>> got;
    ASSERT_FALSE(w.dispatch_async(*loop, 2, [&](auto r) { got.emplace(std::move(r)); }));
    EXPECT_TRUE(w.dispatch_pending());
    EXPECT_EQ(w.dispatch_async(*loop, 2, [](auto) {}), std::errc::device_or_resource_busy);
    // Nothing queued: the loop goes to sleep without an answer.
    loop->run_once(20ms);
    EXPECT_FALSE(got);
    uint64_t id = 0;
    std::thread t([&] {
        std::this_thread::sleep_for(30ms);
        id = c.submit({.tenant = 1, .cost = 1}).value();
    });
    auto t0 = std::chrono::steady_clock::now();
    while (!got && std::chrono::steady_clock::now() - t0 < 10s) {
        loop->run_once(5s);
    }
    t.join();
    ASSERT_TRUE(got);
    ASSERT_TRUE(*got) << got->error().message();
    ASSERT_EQ((*got)->size(), 1u);
    EXPECT_EQ((*got)->front().id, id);
    EXPECT_FALSE(w.dispatch_pending());
    EXPECT_GE(loop->stats().sleeps, 1u);
    EXPECT_FALSE(w.start(id));
    EXPECT_FALSE(w.complete(id, 0, 1));
    EXPECT_EQ(c.wait(id, wait_for::at_most(5s)).value().state, LLMOS_REQ_COMPLETED);
}

// Two workers waiting on one loop: the first one answered does not stop
// the other from being woken for the next request. (The loop sleeps
// without a time limit on its own thread: only a wake-up ends its sleep.)
TEST_P(sched_backend, two_dispatches_waiting_on_one_loop_are_both_woken) {
    auto loop = llmos::event_loop::create({.spin = 0}).value();
    auto w1 = worker(1);
    auto w2 = worker(1);
    auto c = client();
    std::mutex m;
    std::vector<uint64_t> got;
    auto take = [&](llmos::result<std::vector<llmos::request_desc>> r) {
        std::lock_guard g(m);
        for (auto& d : r.value()) {
            got.push_back(d.id);
        }
    };
    ASSERT_FALSE(w1.dispatch_async(*loop, 1, take));
    ASSERT_FALSE(w2.dispatch_async(*loop, 1, take));
    std::thread runner([&] { loop->run(); });
    auto count = [&] {
        std::lock_guard g(m);
        return got.size();
    };
    auto wait_for_count = [&](size_t n) {
        for (auto t0 = std::chrono::steady_clock::now();
             count() < n && std::chrono::steady_clock::now() - t0 < 3s;) {
            std::this_thread::sleep_for(1ms);
        }
        return count();
    };
    const uint64_t a = c.submit({.tenant = 1, .cost = 1}).value();
    EXPECT_EQ(wait_for_count(1), 1u);
    std::this_thread::sleep_for(20ms); // the loop is asleep again
    const uint64_t b = c.submit({.tenant = 1, .cost = 1}).value();
    EXPECT_EQ(wait_for_count(2), 2u) << "the second waiting dispatch was not woken";
    loop->stop();
    runner.join();
    for (auto* w : {&w1, &w2}) {
        for (auto id : {a, b}) {
            (void)w->complete(id, 0, 1); // the one that holds it completes it
        }
    }
    w1.cancel_dispatch();
    w2.cancel_dispatch();
    EXPECT_EQ(c.wait(a, wait_for::at_most(5s)).value().state, LLMOS_REQ_COMPLETED);
    if (count() == 2) {
        EXPECT_EQ(c.wait(b, wait_for::at_most(5s)).value().state, LLMOS_REQ_COMPLETED);
    }
}

TEST_P(sched_backend, a_worker_assigned_over_cancels_its_pending_dispatch) {
    auto loop = llmos::event_loop::create({.spin = 0}).value();
    auto w = worker(1);
    auto c = client();
    std::optional<llmos::result<std::vector<llmos::request_desc>>> got;
    ASSERT_FALSE(w.dispatch_async(*loop, 1, [&](auto r) { got.emplace(std::move(r)); }));
    loop->run_once(10ms);
    w = worker(1); // the first worker goes, with its pending DISPATCH
    EXPECT_FALSE(w.dispatch_pending());
    auto id = c.submit({.tenant = 1, .cost = 1}).value();
    expect_cancelled(*loop, got); // the old worker's callback got no request
    takes_and_completes(w, id);
}

TEST_P(sched_backend, dispatch_async_cancelled_loses_nothing) {
    auto loop = llmos::event_loop::create({.spin = 0}).value();
    auto w = worker(1);
    auto c = client();
    std::optional<llmos::result<std::vector<llmos::request_desc>>> got;
    ASSERT_FALSE(w.dispatch_async(*loop, 1, [&](auto r) { got.emplace(std::move(r)); }));
    loop->run_once(10ms);
    w.cancel_dispatch();
    expect_cancelled(*loop, got);
    // The next request goes to a plain DISPATCH: nothing was left taken.
    takes_and_completes(w, c.submit({.tenant = 1, .cost = 1}).value());
}

TEST_P(sched_backend, a_moved_from_handle_says_ebadf) {
    auto c = client();
    auto moved = std::move(c);
    // NOLINTNEXTLINE(bugprone-use-after-move): the point of the test
    auto r = c.submit({.tenant = 1, .cost = 1});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), std::errc::bad_file_descriptor);
    EXPECT_TRUE(moved.submit({.tenant = 1, .cost = 1}));
}
