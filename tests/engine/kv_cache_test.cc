// SPDX-License-Identifier: MIT
//
// What the KV caches promise their noexcept methods: truncate() gives
// blocks back without allocating (the free list has room for every block
// from the moment the cache is opened, fresh or resumed), so a worker that
// drops a conversation's tail cannot fail there. The CPU cache and the
// GPU cache's bookkeeping (host memory only: it runs without a GPU).
//
// The program counts operator new calls.
#include "../support/paths.hh"
#include "../support/test_new.hh"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <gtest/gtest.h>
#include <llmos/engine/cuda.hh>
#include <llmos/engine/gguf.hh>
#include <llmos/engine/kv_cache.hh>
#include <llmos/engine/model.hh>
#include <new>
#include <numeric>
#include <string>
#include <vector>

using namespace llmos::engine;

namespace {

const std::string tiny = std::string(llmos::testing::testdata_dir) + "/llama-tiny-f32.gguf";

class kv_caches : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        file = std::make_unique<gguf_file>(gguf_file::open(tiny));
        m = std::make_unique<model>(model::load(*file));
    }
    static void TearDownTestSuite() {
        m.reset();
        file.reset();
    }
    static inline std::unique_ptr<gguf_file> file;
    static inline std::unique_ptr<model> m;

    // Fills `kv` (every block taken), then drops it in three truncations,
    // the last to nothing, and fills it again: allocations during the
    // truncations.
    template <typename Cache>
    static uint64_t news_in_truncate(Cache& kv) {
        std::vector<int32_t> toks(kv.capacity() - kv.n_tokens());
        std::iota(toks.begin(), toks.end(), 1);
        uint64_t news = 0;
        for (int round = 0; round < 2; ++round) {
            EXPECT_TRUE(kv.reserve(static_cast<uint32_t>(toks.size())));
            kv.commit(toks);
            EXPECT_EQ(kv.n_tokens(), kv.capacity());
            const uint64_t before = llmos::testing::news.load();
            kv.truncate(kv.capacity() - 1);
            kv.truncate(kv.capacity() / 2);
            kv.truncate(0);
            news += llmos::testing::news.load() - before;
            EXPECT_EQ(kv.n_tokens(), 0u);
            toks.resize(kv.capacity());
            std::iota(toks.begin(), toks.end(), 1);
        }
        return news;
    }
};

} // namespace

TEST_F(kv_caches, truncate_allocates_nothing_on_the_cpu) {
    const kv_options o{.type = kv_type::f16, .block_tokens = 4, .max_tokens = 256};
    kv_memory mem(kv_cache::bytes_for(m->params(), o));
    {
        auto kv = kv_cache::open(mem.span(), *m, o);
        EXPECT_EQ(news_in_truncate(kv), 0u) << "fresh";
        std::vector<int32_t> some{1, 2, 3, 4, 5, 6, 7};
        ASSERT_TRUE(kv.reserve(7));
        kv.commit(some);
    }
    // Resumed: its free list taken from the memory (every block taken
    // there before is on it).
    auto kv = kv_cache::open(mem.span(), *m, o);
    ASSERT_TRUE(kv.resumed());
    EXPECT_EQ(news_in_truncate(kv), 0u) << "resumed";
}

TEST_F(kv_caches, truncate_allocates_nothing_in_a_gpu_cache_s_bookkeeping) {
    const cuda_kv_options o{.block_tokens = 4, .max_tokens = 256};
    kv_memory host(cuda_kv_cache::host_bytes_for(m->params(), o));
    // Never touched by the bookkeeping: plain memory stands for the device.
    kv_memory device(cuda_kv_cache::device_bytes_for(m->params(), o));
    {
        auto kv =
            cuda_kv_cache::open(host.span(), device.span().data(), device.span().size(), *m, o);
        EXPECT_EQ(news_in_truncate(kv), 0u) << "fresh";
        std::vector<int32_t> some{1, 2, 3, 4, 5, 6, 7};
        ASSERT_TRUE(kv.reserve(7));
        kv.commit(some);
    }
    auto kv = cuda_kv_cache::open(host.span(), device.span().data(), device.span().size(), *m, o);
    ASSERT_TRUE(kv.resumed());
    EXPECT_EQ(news_in_truncate(kv), 0u) << "resumed";
}
