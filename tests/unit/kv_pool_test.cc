// SPDX-License-Identifier: MIT
//
// kv_pool over host regions (the same bookkeeping the GPU's KV memory
// uses): a conversation finds its region again, regions grow on demand
// within their reservation, room is taken from idle regions (requests'
// ones first, then the least recently used) and never from one in use.
#include <atomic>
#include <cstring>
#include <gtest/gtest.h>
#include <llmos/kv_pool.hh>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

namespace {

const uint64_t page = 4096;
const uint64_t unit = 16 * page;

llmos::kv_pool host_pool(uint64_t capacity) {
    return llmos::kv_pool({.capacity = capacity, .make = llmos::make_host_region});
}

void fill(const llmos::kv_pool::lease& l, uint64_t bytes, unsigned char v) {
    std::memset(l.data(), v, bytes);
}

bool holds(const llmos::kv_pool::lease& l, uint64_t bytes, unsigned char v) {
    auto* p = static_cast<const unsigned char*>(l.data());
    for (uint64_t i = 0; i < bytes; ++i) {
        if (p[i] != v) {
            return false;
        }
    }
    return true;
}

TEST(kv_pool, a_conversation_finds_its_region_and_rows_again) {
    auto pool = host_pool(64 * unit);
    void* where = nullptr;
    uint64_t tag = 0;
    {
        auto l = pool.acquire({7, 8192}, 8 * unit);
        EXPECT_TRUE(l.fresh());
        tag = l.tag();
        EXPECT_NE(tag, 0u);
        EXPECT_GE(l.reserved_bytes(), 8 * unit);
        EXPECT_EQ(l.mapped_bytes(), 0u);
        ASSERT_TRUE(l.grow(3 * unit));
        fill(l, 3 * unit, 0x5a);
        where = l.data();
    }
    auto l = pool.acquire({7, 8192}, 8 * unit);
    EXPECT_FALSE(l.fresh());
    EXPECT_EQ(l.data(), where);
    EXPECT_TRUE(holds(l, 3 * unit, 0x5a));
    EXPECT_EQ(l.tag(), tag) << "the same rows";
    // Another offset in the same mindspace is another conversation.
    auto other = pool.acquire({7, 0}, 8 * unit);
    EXPECT_TRUE(other.fresh());
    EXPECT_NE(other.data(), where);
    EXPECT_NE(other.tag(), tag);
    auto st = pool.stats();
    EXPECT_EQ(st.resumed, 1u);
    EXPECT_EQ(st.regions, 2u);
    EXPECT_EQ(st.leased, 2u);
    EXPECT_EQ(st.mapped_bytes, 3 * unit);
}

TEST(kv_pool, a_capacity_of_all_memory_does_not_wrap) {
    auto pool = host_pool(UINT64_MAX);
    {
        auto idle = pool.acquire({1, 0}, unit);
        ASSERT_TRUE(idle.grow(unit)); // backed and idle once its lease ends
    }
    auto l = pool.acquire({2, 0}, 4 * unit);
    EXPECT_TRUE(l.grow(2 * unit)) << "capacity + idle wrapped";
    EXPECT_EQ(pool.stats().regions, 2u) << "nothing had to be dropped";
}

TEST(kv_pool, a_region_in_use_is_refused_to_a_second_lease) {
    auto pool = host_pool(64 * unit);
    auto l = pool.acquire({1, 0}, unit);
    EXPECT_THROW((void)pool.acquire({1, 0}, unit), std::runtime_error);
    EXPECT_FALSE(pool.forget({1, 0}));
    l = {};
    EXPECT_TRUE(pool.forget({1, 0}));
    EXPECT_FALSE(pool.forget({1, 0}));
    EXPECT_EQ(pool.stats().regions, 0u);
}

TEST(kv_pool, regions_are_backed_on_demand_within_their_reservation) {
    auto pool = host_pool(64 * unit);
    auto l = pool.acquire({1, 0}, 4 * unit);
    ASSERT_TRUE(l.grow(10000));
    EXPECT_GE(l.mapped_bytes(), 10000u);
    EXPECT_EQ(l.mapped_bytes() % page, 0u);
    fill(l, 10000, 1);
    // Growing to what is backed already changes nothing.
    const uint64_t had = l.mapped_bytes();
    ASSERT_TRUE(l.grow(100));
    EXPECT_EQ(l.mapped_bytes(), had);
    std::string why;
    EXPECT_FALSE(l.grow(l.reserved_bytes() + 1, &why));
    EXPECT_NE(why.find("region holds"), std::string::npos) << why;
    EXPECT_EQ(l.mapped_bytes(), had);
    EXPECT_EQ(pool.stats().mapped_bytes, had);
}

TEST(kv_pool, a_growing_region_takes_an_eighth_more_when_there_is_room) {
    auto pool = host_pool(1024 * unit);
    auto l = pool.acquire({1, 0}, 512 * unit);
    ASSERT_TRUE(l.grow(64 * unit));
    EXPECT_EQ(l.mapped_bytes(), 64 * unit);
    ASSERT_TRUE(l.grow(64 * unit + 1));
    EXPECT_EQ(l.mapped_bytes(), 72 * unit); // not one page more
    // Near the bound only what is needed.
    auto tight = host_pool(80 * unit);
    auto t = tight.acquire({1, 0}, 512 * unit);
    ASSERT_TRUE(t.grow(72 * unit));
    ASSERT_TRUE(t.grow(72 * unit + 1));
    EXPECT_EQ(t.mapped_bytes(), 72 * unit + page);
}

TEST(kv_pool, room_is_taken_from_the_least_recently_used_idle_conversation) {
    auto pool = host_pool(4 * unit);
    for (uint64_t key : {1, 2}) {
        auto l = pool.acquire({key, 0}, 4 * unit);
        ASSERT_TRUE(l.grow(2 * unit));
    }
    { auto again = pool.acquire({1, 0}, 4 * unit); } // 1 is now the more recent
    {
        auto l = pool.acquire({3, 0}, 4 * unit);
        ASSERT_TRUE(l.grow(2 * unit));
    }
    auto st = pool.stats();
    EXPECT_EQ(st.evictions, 1u);
    EXPECT_EQ(st.mapped_bytes, 4 * unit);
    EXPECT_FALSE(pool.acquire({1, 0}, 4 * unit).fresh());
    EXPECT_TRUE(pool.acquire({2, 0}, 4 * unit).fresh()); // the one dropped
}

TEST(kv_pool, requests_regions_go_before_any_conversation_s) {
    auto pool = host_pool(4 * unit);
    {
        auto conv = pool.acquire({1, 0}, 4 * unit);
        ASSERT_TRUE(conv.grow(2 * unit));
    }
    {
        auto req = pool.acquire_anonymous(4 * unit); // newer than the conversation
        ASSERT_TRUE(req.grow(2 * unit));
    }
    {
        auto l = pool.acquire({2, 0}, 4 * unit);
        ASSERT_TRUE(l.grow(2 * unit));
    }
    EXPECT_FALSE(pool.acquire({1, 0}, 4 * unit).fresh());
    EXPECT_EQ(pool.stats().evictions, 1u);
}

TEST(kv_pool, a_region_in_use_is_never_dropped) {
    auto pool = host_pool(4 * unit);
    auto a = pool.acquire({1, 0}, 4 * unit);
    ASSERT_TRUE(a.grow(3 * unit));
    fill(a, 3 * unit, 0x33);
    auto b = pool.acquire({2, 0}, 4 * unit);
    std::string why;
    EXPECT_FALSE(b.grow(2 * unit, &why));
    EXPECT_NE(why.find("KV memory is full"), std::string::npos) << why;
    EXPECT_EQ(b.mapped_bytes(), 0u);
    EXPECT_TRUE(holds(a, 3 * unit, 0x33));
    EXPECT_EQ(pool.stats().evictions, 0u);
    // Once it is given back, its room can be taken.
    a = {};
    EXPECT_TRUE(b.grow(2 * unit, &why)) << why;
    EXPECT_EQ(pool.stats().evictions, 1u);
    EXPECT_LE(pool.stats().mapped_bytes, 4 * unit);
}

TEST(kv_pool, room_comes_from_idle_regions_even_when_one_in_use_is_older) {
    auto pool = host_pool(4 * unit);
    auto old = pool.acquire({1, 0}, 4 * unit); // the least recently used, but in use
    ASSERT_TRUE(old.grow(2 * unit));
    fill(old, 2 * unit, 0x44);
    {
        auto idle = pool.acquire({2, 0}, 4 * unit);
        ASSERT_TRUE(idle.grow(2 * unit));
    }
    auto l = pool.acquire({3, 0}, 4 * unit);
    ASSERT_TRUE(l.grow(2 * unit));
    EXPECT_TRUE(holds(old, 2 * unit, 0x44));
    EXPECT_EQ(old.mapped_bytes(), 2 * unit);
    EXPECT_EQ(pool.stats().evictions, 1u);
    l = {};
    EXPECT_TRUE(pool.acquire({2, 0}, 4 * unit).fresh());
}

TEST(kv_pool, nothing_is_dropped_when_dropping_would_not_make_room) {
    auto pool = host_pool(4 * unit);
    {
        auto idle = pool.acquire({1, 0}, 4 * unit);
        ASSERT_TRUE(idle.grow(unit));
    }
    auto busy = pool.acquire({2, 0}, 8 * unit);
    ASSERT_TRUE(busy.grow(2 * unit));
    EXPECT_FALSE(busy.grow(6 * unit)); // 1 idle unit would not be enough
    EXPECT_EQ(pool.stats().evictions, 0u);
    busy = {};
    EXPECT_FALSE(pool.acquire({1, 0}, 4 * unit).fresh());
}

TEST(kv_pool, a_region_made_for_a_smaller_cache_is_replaced) {
    auto pool = host_pool(64 * unit);
    uint64_t tag = 0;
    {
        auto l = pool.acquire({1, 0}, 2 * unit);
        ASSERT_TRUE(l.grow(2 * unit));
        tag = l.tag();
    }
    auto l = pool.acquire({1, 0}, 8 * unit);
    EXPECT_TRUE(l.fresh());
    EXPECT_NE(l.tag(), tag) << "new rows, under the same key";
    EXPECT_GE(l.reserved_bytes(), 8 * unit);
    auto st = pool.stats();
    EXPECT_EQ(st.regions, 1u);
    EXPECT_EQ(st.mapped_bytes, 0u);
}

TEST(kv_pool, requests_regions_are_reused_and_always_fresh) {
    auto pool = host_pool(64 * unit);
    void* where = nullptr;
    {
        auto l = pool.acquire_anonymous(4 * unit);
        ASSERT_TRUE(l.grow(2 * unit));
        where = l.data();
    }
    {
        auto l = pool.acquire_anonymous(2 * unit);
        EXPECT_TRUE(l.fresh());
        EXPECT_EQ(l.data(), where);
        EXPECT_EQ(l.mapped_bytes(), 2 * unit);
        // Too small for this one: a new region.
        auto big = pool.acquire_anonymous(8 * unit);
        EXPECT_NE(big.data(), where);
        big.discard();
        EXPECT_FALSE(big);
    }
    auto st = pool.stats();
    EXPECT_EQ(st.regions, 1u);
    EXPECT_EQ(st.mapped_bytes, 2 * unit);
}

TEST(kv_pool, a_factory_that_fails_leaves_nothing_behind) {
    int calls = 0;
    llmos::kv_pool pool(
        {.capacity = unit, .make = [&](uint64_t) -> std::unique_ptr<llmos::growable_region> {
             ++calls;
             throw std::runtime_error("no device memory");
         }});
    try {
        (void)pool.acquire({1, 0}, unit);
        FAIL() << "acquire did not throw";
    } catch (const std::runtime_error& e) {
        EXPECT_STREQ(e.what(), "no device memory");
    }
    EXPECT_THROW((void)pool.acquire_anonymous(unit), std::runtime_error);
    EXPECT_EQ(calls, 2);
    EXPECT_EQ(pool.stats().regions, 0u);
    EXPECT_THROW(llmos::kv_pool({.capacity = unit}), std::invalid_argument);
}

// A keepsake that records its life: made for one key at a backed size,
// counted while alive.
struct keepsake {
    llmos::kv_key key;
    uint64_t mapped;
    std::atomic<int>& alive;
    keepsake(llmos::kv_key k, uint64_t m, std::atomic<int>& a)
        : key(k)
        , mapped(m)
        , alive(a) {
        ++alive;
    }
    ~keepsake() { --alive; }
};

TEST(kv_pool, a_conversation_s_keepsake_lives_as_long_as_its_rows) {
    std::atomic<int> alive{0};
    std::vector<std::weak_ptr<keepsake>> made;
    int throws = 0;
    llmos::kv_pool pool(
        {.capacity = 4 * unit,
         .make = llmos::make_host_region,
         .on_give_back = [&](const llmos::kv_key& k,
                             const llmos::growable_region& r) -> llmos::kv_keepsake {
             // The previous one is gone before the next is made.
             for (const auto& w : made) {
                 if (auto old = w.lock(); old && old->key == k) {
                     ADD_FAILURE() << "the old keepsake is still alive";
                 }
             }
             if (k.ms_id == 9) {
                 ++throws;
                 throw std::runtime_error("refused");
             }
             auto p = std::make_shared<keepsake>(k, r.mapped_bytes(), alive);
             made.push_back(p);
             return p;
         }});
    {
        auto l = pool.acquire({1, 0}, 4 * unit);
        ASSERT_TRUE(l.grow(unit));
        EXPECT_EQ(alive.load(), 0) << "nothing is kept while the region is in use";
    }
    ASSERT_EQ(made.size(), 1u);
    EXPECT_EQ(alive.load(), 1);
    EXPECT_EQ(made[0].lock()->mapped, unit);
    {
        // Given back again, grown: a new keepsake replaces the old one.
        auto l = pool.acquire({1, 0}, 4 * unit);
        EXPECT_FALSE(made[0].expired()) << "kept while in use again";
        ASSERT_TRUE(l.grow(2 * unit));
    }
    ASSERT_EQ(made.size(), 2u);
    EXPECT_TRUE(made[0].expired());
    EXPECT_EQ(made[1].lock()->mapped, 2 * unit);
    EXPECT_EQ(alive.load(), 1);

    // A request's region, and a region given back to be dropped, keep nothing.
    {
        auto l = pool.acquire_anonymous(unit);
        ASSERT_TRUE(l.grow(unit));
    }
    {
        auto l = pool.acquire({2, 0}, 4 * unit);
        l.discard();
    }
    EXPECT_EQ(made.size(), 2u);
    // A hook that throws keeps nothing and harms nothing.
    { auto l = pool.acquire({9, 0}, 4 * unit); }
    EXPECT_EQ(throws, 1);
    EXPECT_FALSE(pool.acquire({9, 0}, 4 * unit).fresh());

    // Evicted: its keepsake goes with it.
    {
        auto l = pool.acquire({3, 0}, 4 * unit);
        ASSERT_TRUE(l.grow(4 * unit)); // room only once 1's rows are dropped
    }
    EXPECT_TRUE(made[1].expired());
    ASSERT_EQ(made.size(), 3u);
    EXPECT_EQ(alive.load(), 1);
    // Forgotten: the same.
    EXPECT_TRUE(pool.forget({3, 0}));
    EXPECT_EQ(alive.load(), 0);
    {
        auto l = pool.acquire({4, 0}, 4 * unit);
        ASSERT_TRUE(l.grow(unit));
    }
    EXPECT_EQ(alive.load(), 1);
}

TEST(kv_pool, the_pool_s_end_releases_keepsakes_and_host_regions_have_no_dmabuf) {
    std::atomic<int> alive{0};
    {
        llmos::kv_pool pool(
            {.capacity = 4 * unit,
             .make = llmos::make_host_region,
             .on_give_back = [&](const llmos::kv_key& k, const llmos::growable_region& r) {
                 EXPECT_THROW((void)r.export_dmabuf(), std::runtime_error);
                 return std::make_shared<keepsake>(k, r.mapped_bytes(), alive);
             }});
        for (uint64_t key : {1, 2}) {
            auto l = pool.acquire({key, 0}, unit);
            ASSERT_TRUE(l.grow(page));
        }
        EXPECT_EQ(alive.load(), 2);
    }
    EXPECT_EQ(alive.load(), 0);
}

TEST(kv_pool, threads_sharing_a_small_pool_keep_it_within_bounds) {
    const uint64_t cap = 8 * unit;
    auto pool = host_pool(cap);
    std::atomic<uint64_t> grown{0}, refused{0};
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < 4; ++t) {
        ts.emplace_back([&, t] {
            for (unsigned i = 0; i < 200; ++i) {
                auto l = (i % 3 == 0) ? pool.acquire_anonymous(4 * unit)
                                      : pool.acquire({t, i % 5 * page}, 4 * unit);
                const uint64_t want = (1 + (i + t) % 4) * unit;
                if (l.grow(want)) {
                    fill(l, want, static_cast<unsigned char>(t));
                    ASSERT_TRUE(holds(l, want, static_cast<unsigned char>(t)));
                    grown.fetch_add(1);
                } else {
                    refused.fetch_add(1);
                }
                ASSERT_LE(pool.stats().mapped_bytes, cap);
            }
        });
    }
    for (auto& t : ts) {
        t.join();
    }
    auto st = pool.stats();
    EXPECT_EQ(st.leased, 0u);
    EXPECT_LE(st.mapped_bytes, cap);
    EXPECT_GT(grown.load(), 0u);
    EXPECT_GT(st.evictions, 0u);
}

} // namespace
