// SPDX-License-Identifier: MIT
//
// Channels: order, credits (a full ring, a sender that must wait), many
// senders into one receiver without loss, the wake-up protocol under random
// pauses on both sides, and shutdown with messages in flight.
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <gtest/gtest.h>
#include <llmos/channel.hh>
#include <memory>
#include <random>
#include <span>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using llmos::descriptor;

long scaled(long n) {
    const char* s = std::getenv("LLMOS_TEST_SCALE");
    double f = s && std::atof(s) > 0 ? std::atof(s) : 1.0;
    return std::max(1000L, static_cast<long>(static_cast<double>(n) * f));
}

descriptor msg(uint64_t sender, uint64_t seq) {
    return {sender, seq, static_cast<uint32_t>(seq * 7), 1};
}

TEST(channel, keeps_order_and_contents) {
    auto ring = std::make_unique<llmos::channel_ring<64>>();
    llmos::channel_sender tx(*ring);
    llmos::channel_receiver rx(*ring);
    for (uint64_t i = 0; i < 50; ++i) {
        ASSERT_TRUE(tx.try_send(msg(1, i)));
    }
    descriptor out[64];
    ASSERT_EQ(rx.try_receive(out), 50u);
    for (uint64_t i = 0; i < 50; ++i) {
        EXPECT_EQ(out[i].offset, i);
        EXPECT_EQ(out[i].length, i * 7);
    }
    EXPECT_EQ(rx.try_receive(out), 0u);
}

TEST(channel, a_full_ring_refuses_until_a_slot_is_freed) {
    auto ring = std::make_unique<llmos::channel_ring<8>>();
    llmos::channel_sender tx(*ring);
    llmos::channel_receiver rx(*ring);
    for (uint64_t i = 0; i < 8; ++i) {
        ASSERT_TRUE(tx.try_send(msg(1, i)));
    }
    EXPECT_FALSE(tx.try_send(msg(1, 8))); // no credit left
    descriptor one[1];
    ASSERT_EQ(rx.try_receive(one), 1u);
    EXPECT_EQ(one[0].offset, 0u);
    EXPECT_TRUE(tx.try_send(msg(1, 8)));
    EXPECT_FALSE(tx.try_send(msg(1, 9)));
}

TEST(channel, a_slow_receiver_makes_the_sender_wait_not_lose) {
    auto ring = std::make_unique<llmos::channel_ring<16>>();
    const uint64_t n = 2000;
    llmos::channel_sender tx(*ring);
    std::thread sender([&] {
        for (uint64_t i = 0; i < n; ++i) {
            ASSERT_TRUE(tx.send(msg(1, i)));
        }
    });
    llmos::channel_receiver rx(*ring, 10);
    descriptor out[4];
    uint64_t next = 0;
    while (next < n) {
        size_t got = rx.receive(out, 5s);
        ASSERT_GT(got, 0u) << "stuck at " << next;
        for (size_t i = 0; i < got; ++i) {
            ASSERT_EQ(out[i].offset, next++);
        }
        if (next % 100 == 0) {
            std::this_thread::sleep_for(1ms); // slow
        }
    }
    sender.join();
    EXPECT_GT(tx.stats().sender_sleeps, 0u); // it did run out of credit
}

TEST(channel, four_senders_one_receiver_lose_nothing) {
    constexpr int senders = 4;
    const long n = scaled(1000000) / senders;
    std::vector<std::unique_ptr<llmos::channel_ring<256>>> rings;
    for (int s = 0; s < senders; ++s) {
        rings.push_back(std::make_unique<llmos::channel_ring<256>>());
    }
    std::vector<std::thread> threads;
    for (int s = 0; s < senders; ++s) {
        threads.emplace_back([&, s] {
            llmos::channel_sender tx(*rings[s]);
            for (long i = 0; i < n; ++i) {
                tx.send(msg(static_cast<uint64_t>(s), static_cast<uint64_t>(i)));
            }
            tx.close();
        });
    }
    std::vector<std::unique_ptr<llmos::channel_receiver<256>>> rx;
    for (auto& r : rings) {
        rx.push_back(std::make_unique<llmos::channel_receiver<256>>(*r, 100));
    }
    std::vector<long> next(senders, 0);
    descriptor out[64];
    int open = senders;
    while (open) {
        open = 0;
        for (int s = 0; s < senders; ++s) {
            if (rx[s]->closed()) {
                continue;
            }
            ++open;
            size_t got = rx[s]->receive(out, 1ms);
            for (size_t i = 0; i < got; ++i) {
                ASSERT_EQ(out[i].request, static_cast<uint64_t>(s));
                ASSERT_EQ(out[i].offset, static_cast<uint64_t>(next[s]++)) << "sender " << s;
            }
        }
    }
    for (auto& t : threads) {
        t.join();
    }
    for (int s = 0; s < senders; ++s) {
        EXPECT_EQ(next[s], n);
    }
}

TEST(channel, no_wakeup_is_lost_under_random_pauses) {
    auto ring = std::make_unique<llmos::channel_ring<4>>();
    const long n = scaled(50000);
    std::thread sender([&] {
        llmos::channel_sender tx(*ring);
        std::mt19937 rng(1);
        for (long i = 0; i < n; ++i) {
            tx.send(msg(1, static_cast<uint64_t>(i)));
            if (rng() % 64 == 0) {
                std::this_thread::sleep_for(std::chrono::microseconds(rng() % 50));
            }
        }
        tx.close();
    });
    // Spin of 1: nearly every empty ring puts the receiver to sleep.
    llmos::channel_receiver rx(*ring, 1);
    std::mt19937 rng(2);
    descriptor out[2];
    long next = 0, timeouts = 0;
    while (!rx.closed()) {
        size_t got = rx.receive(out, 10s);
        if (!got && !rx.closed()) {
            ++timeouts; // a lost wake-up would leave the sender stuck here
            break;
        }
        for (size_t i = 0; i < got; ++i) {
            ASSERT_EQ(out[i].offset, static_cast<uint64_t>(next++));
        }
        if (rng() % 64 == 0) {
            std::this_thread::sleep_for(std::chrono::microseconds(rng() % 50));
        }
    }
    sender.join();
    EXPECT_EQ(timeouts, 0);
    EXPECT_EQ(next, n);
    EXPECT_GT(rx.stats().receiver_sleeps, 0u);
}

TEST(channel, close_with_messages_in_flight_delivers_them_first) {
    auto ring = std::make_unique<llmos::channel_ring<32>>();
    llmos::channel_sender tx(*ring);
    llmos::channel_receiver rx(*ring, 10);
    for (uint64_t i = 0; i < 20; ++i) {
        ASSERT_TRUE(tx.try_send(msg(1, i)));
    }
    tx.close();
    EXPECT_FALSE(rx.closed());
    descriptor out[8];
    uint64_t got = 0;
    while (size_t n = rx.receive(out, 1s)) {
        got += n;
    }
    EXPECT_EQ(got, 20u);
    EXPECT_TRUE(rx.closed());
    // A receiver asleep when the sender closes wakes at once.
    auto ring2 = std::make_unique<llmos::channel_ring<4>>();
    llmos::channel_sender tx2(*ring2);
    std::thread closer([&] {
        std::this_thread::sleep_for(50ms);
        tx2.close();
    });
    llmos::channel_receiver rx2(*ring2, 1);
    auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(rx2.receive(out, 10s), 0u);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
    closer.join();
}

TEST(channel, a_receiver_that_never_spins_still_receives) {
    auto ring = std::make_unique<llmos::channel_ring<8>>();
    const long n = 5000;
    std::thread sender([&] {
        llmos::channel_sender tx(*ring);
        for (long i = 0; i < n; ++i) {
            tx.send(msg(1, static_cast<uint64_t>(i)));
        }
        tx.close();
    });
    llmos::channel_receiver rx(*ring, 0);
    descriptor out[4];
    long next = 0;
    while (size_t got = rx.receive(out, 10s)) {
        for (size_t i = 0; i < got; ++i) {
            ASSERT_EQ(out[i].offset, static_cast<uint64_t>(next++));
        }
    }
    sender.join();
    EXPECT_EQ(next, n);
}

TEST(channel, a_sleeping_receiver_wakes_for_a_message) {
    auto ring = std::make_unique<llmos::channel_ring<4>>();
    llmos::channel_sender tx(*ring);
    std::thread sender([&] {
        // Once it has said it sleeps (or after 5 s, which fails below).
        for (int i = 0; i < 5000 && !ring->rx_sleeping.load(); ++i) {
            std::this_thread::sleep_for(1ms);
        }
        tx.try_send(msg(1, 42));
    });
    llmos::channel_receiver rx(*ring, 1);
    descriptor out[1];
    ASSERT_EQ(rx.receive(out, 10s), 1u);
    EXPECT_EQ(out[0].offset, 42u);
    sender.join();
    EXPECT_EQ(tx.stats().wakeups_sent, 1u);
}

// A sender made for a ring that was used before (a restarted producer)
// starts with the credit the receiver left it: once the ring went round
// past its capacity, a new sender must still refuse to overwrite unread
// slots, and send() must wait for the receiver.
TEST(channel, a_sender_attached_to_a_used_ring_keeps_to_its_credit) {
    auto ring = std::make_unique<llmos::channel_ring<8>>();
    llmos::channel_receiver rx(*ring, 1);
    descriptor out[16];
    {
        llmos::channel_sender first(*ring);
        for (uint64_t i = 0; i < 16; ++i) {
            ASSERT_TRUE(first.try_send(msg(1, i)));
            ASSERT_EQ(rx.try_receive(std::span(out, 1)), 1u);
        }
    }
    ASSERT_EQ(ring->tail.load(), 16u);
    ASSERT_EQ(ring->head.load(), 16u);
    // An empty ring at tail 16: eight sends, not one more.
    llmos::channel_sender second(*ring);
    for (uint64_t i = 0; i < 8; ++i) {
        ASSERT_TRUE(second.try_send(msg(2, i))) << i;
    }
    EXPECT_FALSE(second.try_send(msg(2, 8)));
    ASSERT_EQ(rx.try_receive(out), 8u);
    for (uint64_t i = 0; i < 8; ++i) {
        EXPECT_EQ(out[i].request, 2u);
        EXPECT_EQ(out[i].offset, i);
    }
    // Three left unread: the next sender has five credits.
    for (uint64_t i = 0; i < 3; ++i) {
        ASSERT_TRUE(second.try_send(msg(3, i)));
    }
    llmos::channel_sender third(*ring);
    for (uint64_t i = 3; i < 8; ++i) {
        ASSERT_TRUE(third.try_send(msg(3, i))) << i;
    }
    EXPECT_FALSE(third.try_send(msg(3, 8)));
    // send() on the full ring waits until the receiver takes one.
    std::atomic<bool> sent{false};
    std::thread sender([&] {
        EXPECT_TRUE(third.send(msg(3, 8)));
        sent = true;
    });
    std::this_thread::sleep_for(50ms);
    EXPECT_FALSE(sent.load()) << "send() did not wait for credit";
    for (uint64_t next = 0; next < 9;) {
        size_t got = rx.receive(std::span(out, 1), 10s);
        ASSERT_EQ(got, 1u) << "stuck at " << next;
        EXPECT_EQ(out[0].request, 3u);
        EXPECT_EQ(out[0].offset, next++);
    }
    sender.join();
    EXPECT_TRUE(sent.load());
    EXPECT_EQ(rx.try_receive(out), 0u);
}

} // namespace
