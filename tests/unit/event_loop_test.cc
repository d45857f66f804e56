// SPDX-License-Identifier: MIT
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <liburing.h>
#include <llmos/channel.hh>
#include <llmos/event_loop.hh>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;
using llmos::descriptor;
using llmos::doorbell_kind;

namespace {

int scale() {
    const char* s = std::getenv("LLMOS_TEST_SCALE");
    int v = s ? std::atoi(s) : 1;
    return v > 0 ? v : 1;
}

std::unique_ptr<llmos::event_loop> make_loop(doorbell_kind k, uint32_t spin = 4000) {
    auto l = llmos::event_loop::create({.bell = k, .spin = spin});
    if (!l) {
        ADD_FAILURE() << "event_loop::create: " << l.error().message();
        return nullptr;
    }
    return std::move(*l);
}

// Returns once `l` has announced that it sleeps, and 20 ms more (it goes
// to sleep right after); or after 5 s, which the caller's checks fail.
void wait_until_it_sleeps(llmos::event_loop& l) {
    for (int i = 0; i < 5000 && !l.bell().sleeping.load(); ++i) {
        std::this_thread::sleep_for(1ms);
    }
    std::this_thread::sleep_for(20ms);
}

// A channel's handler that appends each message's request to `got`.
auto appending_to(std::vector<uint64_t>& got) {
    return [&got](std::span<const descriptor> ds) {
        for (auto& d : ds) {
            got.push_back(d.request);
        }
    };
}

class event_loop_test : public ::testing::TestWithParam<doorbell_kind> {};

std::string name_of(const ::testing::TestParamInfo<doorbell_kind>& i) {
    return i.param == doorbell_kind::futex ? "futex" : "msg_ring";
}

} // namespace

TEST(event_loop, a_timer_fires_once) {
    auto l = make_loop(doorbell_kind::futex);
    ASSERT_TRUE(l);
    int fired = 0;
    auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE(l->after(2ms, [&] { ++fired; }));
    while (!fired) {
        l->run_once(1s);
    }
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 2ms);
    EXPECT_EQ(l->run_once(20ms), 0u);
    EXPECT_EQ(fired, 1);
}

TEST(event_loop, a_completion_runs_its_callback_with_the_result) {
    auto l = make_loop(doorbell_kind::futex);
    ASSERT_TRUE(l);
    int32_t got = 1;
    io_uring_sqe* s = l->sqe([&](int32_t res, uint32_t) { got = res; });
    ASSERT_NE(s, nullptr);
    auto ud = s->user_data;
    io_uring_prep_nop(s);
    s->user_data = ud;
    while (got == 1) {
        l->run_once(1s);
    }
    EXPECT_EQ(got, 0);
    EXPECT_EQ(l->stats().completions, 1u);
}

TEST_P(event_loop_test, stop_wakes_a_sleeping_loop) {
    auto l = make_loop(GetParam(), 0);
    ASSERT_TRUE(l);
    std::thread t([&] {
        wait_until_it_sleeps(*l);
        l->stop();
    });
    auto t0 = std::chrono::steady_clock::now();
    l->run();
    t.join();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
    EXPECT_GE(l->stats().sleeps, 1u);
}

TEST_P(event_loop_test, a_sleeping_loop_wakes_for_a_message) {
    auto l = make_loop(GetParam(), 0);
    ASSERT_TRUE(l);
    auto ring = std::make_unique<llmos::channel_ring<16>>();
    std::vector<uint64_t> got;
    auto h = appending_to(got);
    llmos::channel_source<16, decltype(h)> src(*ring, h);
    l->add_source(src);
    std::thread t([&] {
        llmos::channel_sender<16> tx(*ring, l->bell());
        wait_until_it_sleeps(*l);
        tx.send({7, 0, 0, 0});
    });
    auto t0 = std::chrono::steady_clock::now();
    while (got.empty()) {
        l->run_once(5s); // may wake without work; only the deadline counts
        ASSERT_LT(std::chrono::steady_clock::now() - t0, 4s) << "no wake-up within 4 s";
    }
    t.join();
    EXPECT_EQ(got, std::vector<uint64_t>{7});
    EXPECT_GE(l->stats().sleeps, 1u);
    EXPECT_GE(l->stats().doorbells, 1u);
}

// A handler that throws loses nothing: its batch stays on the ring and is
// handed to it again at the next poll.
TEST(channel_source, a_handler_that_throws_gets_its_batch_again) {
    auto ring = std::make_unique<llmos::channel_ring<16>>();
    llmos::channel_sender<16> tx(*ring);
    for (uint64_t id = 1; id <= 5; ++id) {
        ASSERT_TRUE(tx.send({id, 0, 0, 0}));
    }
    std::vector<std::vector<uint64_t>> batches;
    bool fail = true;
    auto h = [&](std::span<const llmos::descriptor> b) {
        std::vector<uint64_t> ids;
        for (const auto& d : b) {
            ids.push_back(d.request);
        }
        batches.push_back(ids);
        if (std::exchange(fail, false)) {
            throw std::runtime_error("out of memory");
        }
    };
    llmos::channel_source<16, decltype(h)> src(*ring, h);
    EXPECT_THROW(src.poll(), std::runtime_error);
    EXPECT_TRUE(src.pending());
    EXPECT_EQ(src.poll(), 5u);
    EXPECT_FALSE(src.pending());
    EXPECT_EQ(src.poll(), 0u);
    const std::vector<uint64_t> all{1, 2, 3, 4, 5};
    ASSERT_EQ(batches.size(), 2u);
    EXPECT_EQ(batches[0], all);
    EXPECT_EQ(batches[1], all);
    // Their slots went back to the sender: a full ring's worth fits again.
    for (uint64_t id = 6; id < 6 + 16; ++id) {
        EXPECT_TRUE(tx.try_send({id, 0, 0, 0})) << id;
    }
}

// Four senders into one loop, one channel each: per-sender order, nothing
// lost, credit-limited (small rings make the senders wait).
TEST_P(event_loop_test, four_channels_into_one_loop_keep_order_and_lose_nothing) {
    constexpr size_t cap = 64;
    const uint64_t per = 50000 * scale();
    auto l = make_loop(GetParam());
    ASSERT_TRUE(l);
    std::vector<std::unique_ptr<llmos::channel_ring<cap>>> rings;
    std::vector<uint64_t> next(4, 0);
    bool in_order = true;
    uint64_t total = 0;
    auto h = [&](std::span<const descriptor> ds) {
        for (auto& d : ds) {
            in_order = in_order && d.offset == next[d.request]++;
            ++total;
        }
    };
    using source = llmos::channel_source<cap, decltype(h)>;
    std::vector<std::unique_ptr<source>> srcs;
    for (int i = 0; i < 4; ++i) {
        rings.push_back(std::make_unique<llmos::channel_ring<cap>>());
        srcs.push_back(std::make_unique<source>(*rings.back(), h));
        l->add_source(*srcs.back());
    }
    std::vector<std::thread> ts;
    for (uint64_t i = 0; i < 4; ++i) {
        ts.emplace_back([&, i] {
            llmos::channel_sender<cap> tx(*rings[i], l->bell());
            for (uint64_t k = 0; k < per; ++k) {
                tx.send({i, k, 0, 0});
            }
        });
    }
    // A loop may wake without work (a doorbell rung for messages it had
    // already taken): only a long time without progress is a lost wake-up.
    auto progress = std::chrono::steady_clock::now();
    for (uint64_t seen = 0; total < 4 * per;) {
        l->run_once(5s);
        if (total != seen) {
            seen = total;
            progress = std::chrono::steady_clock::now();
        }
        ASSERT_LT(std::chrono::steady_clock::now() - progress, 4s) << "stuck at " << total;
    }
    for (auto& t : ts) {
        t.join();
    }
    EXPECT_TRUE(in_order);
    EXPECT_EQ(next, std::vector<uint64_t>(4, per));
}

// Random pauses on both sides, and a loop that never spins, so that the
// sender often finds it just going to sleep. A lost wake-up would leave a
// message unseen until the watchdog's stop(): the test fails then.
TEST_P(event_loop_test, no_wakeup_is_lost_under_random_pauses) {
    constexpr size_t cap = 8;
    const uint64_t n = 5000 * scale();
    auto l = make_loop(GetParam(), 0);
    ASSERT_TRUE(l);
    auto ring = std::make_unique<llmos::channel_ring<cap>>();
    uint64_t got = 0;
    std::atomic<uint64_t> consumed{0};
    bool in_order = true;
    auto h = [&](std::span<const descriptor> ds) {
        for (auto& d : ds) {
            in_order = in_order && d.request == got++;
        }
        consumed.store(got);
    };
    llmos::channel_source<cap, decltype(h)> src(*ring, h);
    l->add_source(src);
    std::atomic<bool> sent_all{false}, watchdog_fired{false};
    std::thread tx_thread([&] {
        std::mt19937 rng(1);
        llmos::channel_sender<cap> tx(*ring, l->bell());
        for (uint64_t k = 0; k < n; ++k) {
            if (rng() % 4 == 0) {
                std::this_thread::sleep_for(std::chrono::microseconds(rng() % 40));
            }
            tx.send({k, 0, 0, 0});
            // Mostly wait until it is taken: each message is then the
            // last one, and a lost wake-up stalls the loop.
            while (rng() % 8 != 0 && consumed.load() <= k && !watchdog_fired) {
                std::this_thread::yield();
            }
        }
        sent_all = true;
    });
    std::thread watchdog([&] {
        auto end = std::chrono::steady_clock::now() + 60s;
        while (!sent_all || std::chrono::steady_clock::now() < end) {
            if (sent_all) {
                break;
            }
            std::this_thread::sleep_for(10ms);
        }
        if (!sent_all) {
            watchdog_fired = true;
            l->stop();
        }
    });
    std::mt19937 rng(2);
    while (got < n && !watchdog_fired) {
        if (rng() % 4 == 0) {
            std::this_thread::sleep_for(std::chrono::microseconds(rng() % 40));
        }
        // A wait as long as the 10 s asked for means a wake was lost
        // (half of it: room for a loaded machine's pauses).
        auto t0 = std::chrono::steady_clock::now();
        l->run_once(10s);
        ASSERT_LT(std::chrono::steady_clock::now() - t0, 5s) << "lost wake-up at message " << got;
    }
    tx_thread.join();
    watchdog.join();
    EXPECT_FALSE(watchdog_fired);
    EXPECT_TRUE(in_order);
    EXPECT_EQ(got, n);
    EXPECT_GT(l->stats().sleeps, 0u);
}

TEST_P(event_loop_test, close_with_messages_in_flight_delivers_them_first) {
    auto l = make_loop(GetParam(), 0);
    ASSERT_TRUE(l);
    auto ring = std::make_unique<llmos::channel_ring<16>>();
    uint64_t got = 0;
    auto h = [&](std::span<const descriptor> ds) { got += ds.size(); };
    llmos::channel_source<16, decltype(h)> src(*ring, h);
    l->add_source(src);
    std::thread t([&] {
        llmos::channel_sender<16> tx(*ring, l->bell());
        for (int i = 0; i < 100; ++i) {
            tx.send({1, 0, 0, 0});
        }
        tx.close();
    });
    while (!src.closed()) {
        l->run_once(5s);
    }
    t.join();
    EXPECT_EQ(got, 100u);
}

INSTANTIATE_TEST_SUITE_P(doorbell, event_loop_test,
                         ::testing::Values(doorbell_kind::futex, doorbell_kind::msg_ring), name_of);

// The worst moment: a message published after the loop found its sources
// empty but before it announced its sleep. The sender sees no sleeper and
// does not ring; the loop must see the message when it re-checks.
TEST_P(event_loop_test, a_message_sent_just_before_the_sleep_is_seen) {
    auto l = make_loop(GetParam(), 0);
    ASSERT_TRUE(l);
    auto ring = std::make_unique<llmos::channel_ring<16>>();
    uint64_t got = 0;
    auto h = [&](std::span<const descriptor> ds) { got += ds.size(); };
    llmos::channel_source<16, decltype(h)> src(*ring, h);
    l->add_source(src);
    llmos::channel_sender<16> tx(*ring, l->bell());
    int hooked = 0;
    l->set_idle_hook([&] {
        if (hooked++ < 3) {
            EXPECT_TRUE(tx.try_send({1, 0, 0, 0}));
        }
    });
    for (uint64_t want = 1; want <= 3; ++want) {
        auto t0 = std::chrono::steady_clock::now();
        while (got < want) {
            l->run_once(10s); // all of it when the message is not seen
            ASSERT_LT(std::chrono::steady_clock::now() - t0, 5s)
                << "message " << want << " not seen: lost wake-up";
        }
    }
    EXPECT_EQ(got, 3u);
    EXPECT_EQ(tx.stats().wakeups_sent, 0u);
}

// A read in flight as its loop goes is cancelled before the destructor
// returns, and its completion (what it owns) freed: the kernel, which
// tears a closed ring down later, must not complete it into memory that
// may be gone. (Here the buffer outlives the loop, to look at it.)
TEST(event_loop, destroying_a_loop_cancels_what_it_has_in_flight_first) {
    int p[2];
    ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
    char buf[8] = {};
    auto owned = std::make_shared<int>(0);
    auto l = make_loop(doorbell_kind::futex, 0);
    ASSERT_TRUE(l);
    io_uring_sqe* s = l->sqe([owned](int32_t, uint32_t) {});
    ASSERT_NE(s, nullptr);
    auto ud = s->user_data;
    io_uring_prep_read(s, p[0], buf, sizeof(buf), 0);
    s->user_data = ud;
    EXPECT_EQ(l->run_once(0ns), 0u); // submitted; the pipe is empty
    l.reset();
    // (Had it waited out its limit, it would have leaked the callback.)
    EXPECT_EQ(owned.use_count(), 1) << "its completion outlived the loop";
    ASSERT_EQ(::write(p[1], "x", 1), 1);
    std::this_thread::sleep_for(20ms);
    ASSERT_EQ(::fcntl(p[0], F_SETFL, O_NONBLOCK), 0);
    char got = 0;
    EXPECT_EQ(::read(p[0], &got, 1), 1) << "the destroyed loop's read took it";
    EXPECT_EQ(buf[0], 0);
    ::close(p[0]);
    ::close(p[1]);
}

// run_once(0) neither spins nor sleeps, and still submits what was
// prepared: a caller that only ever polls sees its completions.
TEST(event_loop, run_once_without_waiting_submits_what_was_prepared) {
    for (auto kind : {doorbell_kind::futex, doorbell_kind::msg_ring}) {
        auto l = make_loop(kind);
        ASSERT_TRUE(l);
        int32_t got = 1;
        io_uring_sqe* s = l->sqe([&](int32_t res, uint32_t) { got = res; });
        ASSERT_NE(s, nullptr);
        auto ud = s->user_data;
        io_uring_prep_nop(s);
        s->user_data = ud;
        const auto deadline = std::chrono::steady_clock::now() + 2s;
        while (got == 1 && std::chrono::steady_clock::now() < deadline) {
            l->run_once(0ns);
        }
        EXPECT_EQ(got, 0) << "the NOP was never submitted";
        EXPECT_EQ(l->stats().sleeps, 0u);
    }
}

namespace {

struct fault_case {
    llmos::detail::msg_ring_fault fault;
    bool own_loop; // the sender rings from a loop of its own, else from a private ring
    const char* name;
};

class msg_ring_fault_test : public ::testing::TestWithParam<fault_case> {};

// Makes msg_ring doorbells fail while it lives, and not after, however
// the test ends.
struct msg_ring_faulty {
    explicit msg_ring_faulty(llmos::detail::msg_ring_fault f) {
        llmos::detail::set_msg_ring_fault(f);
    }
    ~msg_ring_faulty() { llmos::detail::set_msg_ring_fault(llmos::detail::msg_ring_fault::none); }
    msg_ring_faulty(const msg_ring_faulty&) = delete;
    msg_ring_faulty& operator=(const msg_ring_faulty&) = delete;
};

} // namespace

// A sender that cleared `sleeping` must wake the loop even when its
// MSG_RING cannot be sent (no ring, no SQE) or fails once sent: the
// loop's eventfd does it.
TEST_P(msg_ring_fault_test, a_doorbell_that_cannot_be_sent_still_wakes_the_loop) {
    auto l = make_loop(doorbell_kind::msg_ring, 0);
    ASSERT_TRUE(l);
    auto ring = std::make_unique<llmos::channel_ring<16>>();
    std::vector<uint64_t> got;
    auto h = appending_to(got);
    llmos::channel_source<16, decltype(h)> src(*ring, h);
    l->add_source(src);
    std::thread t([&] {
        // (Its own loop is never run: the sender learns at once.)
        auto own = GetParam().own_loop ? make_loop(doorbell_kind::msg_ring, 0) : nullptr;
        llmos::channel_sender<16> tx(*ring, l->bell(), own.get());
        wait_until_it_sleeps(*l);
        const msg_ring_faulty fault(GetParam().fault);
        tx.send({7, 0, 0, 0});
    });
    auto t0 = std::chrono::steady_clock::now();
    while (got.empty() && std::chrono::steady_clock::now() - t0 < 4s) {
        l->run_once(5s); // without the fallback: a 5 s sleep
    }
    t.join();
    EXPECT_EQ(got, std::vector<uint64_t>{7}) << "no wake-up within 4 s";
    EXPECT_GE(l->stats().sleeps, 1u);
    EXPECT_GE(l->stats().fallbacks, 1u);
}

INSTANTIATE_TEST_SUITE_P(
    faults, msg_ring_fault_test,
    ::testing::Values(
        fault_case{llmos::detail::msg_ring_fault::no_private_ring, false, "no_private_ring"},
        fault_case{llmos::detail::msg_ring_fault::no_sqe, false, "private_no_sqe"},
        fault_case{llmos::detail::msg_ring_fault::no_sqe, true, "loop_no_sqe"},
        fault_case{llmos::detail::msg_ring_fault::send_fails, false, "private_send_fails"},
        fault_case{llmos::detail::msg_ring_fault::send_fails, true, "loop_send_fails"}),
    [](const ::testing::TestParamInfo<fault_case>& i) { return std::string(i.param.name); });

// A sender with a loop of its own that it does not run (it blocks on a
// full channel instead) must still wake the receiver when its MSG_RINGs
// fail: it learns so as it sends, not when its loop next reaps.
TEST(msg_ring_fault, a_sender_blocked_on_a_full_channel_still_wakes_the_loop) {
    auto l = make_loop(doorbell_kind::msg_ring, 0);
    ASSERT_TRUE(l);
    auto ring = std::make_unique<llmos::channel_ring<4>>();
    std::vector<uint64_t> got;
    auto h = appending_to(got);
    llmos::channel_source<4, decltype(h)> src(*ring, h);
    l->add_source(src);
    std::atomic<bool> sent{false};
    std::thread t([&] {
        auto own = make_loop(doorbell_kind::msg_ring, 0);
        llmos::channel_sender<4> tx(*ring, l->bell(), own.get());
        wait_until_it_sleeps(*l);
        const msg_ring_faulty fault(llmos::detail::msg_ring_fault::send_fails);
        for (uint64_t i = 1; i <= 6; ++i) {
            tx.send({i, 0, 0, 0}); // the fifth waits for the receiver
        }
        sent = true;
    });
    auto t0 = std::chrono::steady_clock::now();
    while (got.size() < 6 && std::chrono::steady_clock::now() - t0 < 4s) {
        l->run_once(5s); // without a wake: a 5 s sleep
    }
    const size_t in_time = got.size();
    while (!sent.load()) { // let a sender that still waits finish
        l->run_once(10ms);
    }
    t.join();
    EXPECT_EQ(in_time, 6u) << "no wake-up within 4 s";
    EXPECT_GE(l->stats().fallbacks, 1u);
}
