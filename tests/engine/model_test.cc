// SPDX-License-Identifier: MIT
//
// The forward pass against the external conformance vector (a GGUF written
// by another implementation, with that implementation's tokens, logits and
// greedy continuations), batching invariance, KV cache resume, and the
// errors a bad model or batch gets.
#include "../support/conformance.hh"
#include "../support/generated_model.hh"
#include "../support/paths.hh"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <gtest/gtest.h>
#include <llmos/engine/context.hh>
#include <llmos/engine/gguf.hh>
#include <llmos/engine/kv_cache.hh>
#include <llmos/engine/model.hh>
#include <llmos/engine/vocab.hh>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

using namespace llmos::engine;

namespace {

const std::string tiny = std::string(llmos::testing::testdata_dir) + "/llama-tiny-f32.gguf";

using expected = llmos::testing::conformance_vector;

using llmos::testing::expect_logits;
using llmos::testing::load_conformance;
using llmos::testing::max_abs_difference;

int32_t argmax(const std::vector<float>& v) {
    return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

class conformance : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        file = std::make_unique<gguf_file>(gguf_file::open(tiny));
        m = std::make_unique<model>(model::load(*file));
        voc = std::make_unique<vocab>(from_gguf(*file));
    }
    static void TearDownTestSuite() {
        voc.reset();
        m.reset();
        file.reset();
    }
    static inline std::unique_ptr<gguf_file> file;
    static inline std::unique_ptr<model> m;
    static inline std::unique_ptr<vocab> voc;

    kv_options f32{.type = kv_type::f32, .block_tokens = 16, .max_tokens = 256};

    // Prefill `toks`, then greedy-decode n tokens; returns them. The
    // prefill's last logits in `first`.
    std::vector<int32_t> greedy(context& ctx, kv_cache& kv, std::vector<int32_t> toks, int n,
                                std::vector<float>* first = nullptr) {
        std::vector<float> logits(m->params().n_vocab);
        std::vector<int32_t> out;
        for (int i = 0;; ++i) {
            batch_entry e{.kv = &kv, .tokens = toks, .logits = logits.data()};
            EXPECT_EQ(ctx.step({&e, 1}), step_status::ok);
            if (i == 0 && first) {
                *first = logits;
            }
            if (static_cast<int>(out.size()) == n) {
                break;
            }
            toks = {argmax(logits)};
            out.push_back(toks[0]);
            if (static_cast<int>(out.size()) == n) {
                break; // the last one is not in the cache yet
            }
        }
        return out;
    }
};

} // namespace

TEST_F(conformance, the_model_loads_with_its_metadata) {
    auto& p = m->params();
    EXPECT_EQ(p.arch, model_arch::llama);
    EXPECT_EQ(p.n_vocab, 1024u);
    EXPECT_EQ(p.n_embd, 64u);
    EXPECT_EQ(p.n_layer, 2u);
    EXPECT_EQ(p.n_head, 4u);
    EXPECT_EQ(p.n_head_kv, 2u);
    EXPECT_EQ(p.n_ff, 176u);
    EXPECT_EQ(p.head_dim, 16u);
    EXPECT_FALSE(p.neox_rope);
    EXPECT_EQ(m->type_summary(), "F32 x16");
}

TEST_F(conformance, prompt_logits_and_greedy_tokens_match_the_other_implementation) {
    // At every kernel level this CPU has (RoPE, norms and attention have
    // a portable and a SIMD version each).
    std::vector<simd_level> levels{simd_level::scalar};
    for (simd_level l : {simd_level::avx2, simd_level::avx512}) {
        if (detected_simd() >= l) {
            levels.push_back(l);
        }
    }
    for (simd_level level : levels) {
        for (const char* name : {"hello", "fox", "bytes"}) {
            SCOPED_TRACE(std::string(name) + " at " + std::string(simd_name(level)));
            expected ex = load_conformance(name);
            ASSERT_FALSE(ex.tokens.empty());
            ASSERT_FALSE(ex.greedy.empty());
            EXPECT_EQ(voc->encode(ex.prompt, true, false), ex.tokens);
            context ctx(*m, {.n_threads = 2, .kernels = level});
            kv_memory mem(kv_cache::bytes_for(m->params(), f32));
            auto kv = kv_cache::open(mem.span(), *m, f32);
            std::vector<float> first;
            auto got = greedy(ctx, kv, ex.tokens, static_cast<int>(ex.greedy.size()), &first);
            EXPECT_EQ(got, ex.greedy);
            expect_logits(ex, name, first, 1e-5f);
        }
    }
}

TEST_F(conformance, batching_changes_nothing_but_float_noise) {
    expected a = load_conformance("hello"), b = load_conformance("fox");
    context ctx(*m, {.n_threads = 2});
    kv_memory ma(kv_cache::bytes_for(m->params(), f32)), mb(kv_cache::bytes_for(m->params(), f32));
    kv_memory sa(kv_cache::bytes_for(m->params(), f32)), sb(kv_cache::bytes_for(m->params(), f32));
    auto ka = kv_cache::open(ma.span(), *m, f32), kb = kv_cache::open(mb.span(), *m, f32);
    auto single_a =
        greedy(ctx, *std::make_unique<kv_cache>(kv_cache::open(sa.span(), *m, f32)), a.tokens, 32);
    auto single_b =
        greedy(ctx, *std::make_unique<kv_cache>(kv_cache::open(sb.span(), *m, f32)), b.tokens, 32);
    // Together: a prefills while b prefills, then both decode each step;
    // b joins one step late to mix a decode with a prefill.
    const uint32_t V = m->params().n_vocab;
    std::vector<float> la(V), lb(V);
    std::vector<int32_t> ta = a.tokens, tb, got_a, got_b;
    for (int step = 0; got_a.size() < 32 || got_b.size() < 32; ++step) {
        std::vector<batch_entry> batch;
        if (got_a.size() < 32) {
            batch.push_back({.kv = &ka, .tokens = ta, .logits = la.data()});
        }
        if (step == 1) {
            tb = b.tokens;
        }
        if (step >= 1 && got_b.size() < 32) {
            batch.push_back({.kv = &kb, .tokens = tb, .logits = lb.data()});
        }
        ASSERT_EQ(ctx.step(batch), step_status::ok);
        if (got_a.size() < 32) {
            got_a.push_back(argmax(la));
            ta = {got_a.back()};
        }
        if (step >= 1 && got_b.size() < 32) {
            got_b.push_back(argmax(lb));
            tb = {got_b.back()};
        }
    }
    EXPECT_EQ(got_a, single_a);
    EXPECT_EQ(got_b, single_b);
}

TEST_F(conformance, a_resumed_cache_continues_exactly_as_an_uninterrupted_run) {
    expected a = load_conformance("fox");
    kv_memory whole(kv_cache::bytes_for(m->params(), f32));
    std::vector<int32_t> uninterrupted;
    {
        context ctx(*m, {.n_threads = 2});
        auto kv = kv_cache::open(whole.span(), *m, f32);
        uninterrupted = greedy(ctx, kv, a.tokens, 60);
    }
    kv_memory mem(kv_cache::bytes_for(m->params(), f32));
    std::vector<int32_t> first;
    {
        context ctx(*m, {.n_threads = 1});
        auto kv = kv_cache::open(mem.span(), *m, f32);
        first = greedy(ctx, kv, a.tokens, 50);
        // The last sampled token is not in the cache yet: a worker keeps it
        // with the request; here the test does.
    }
    // A new context (a new worker) over the same memory.
    context ctx(*m, {.n_threads = 2});
    auto kv = kv_cache::open(mem.span(), *m, f32);
    EXPECT_TRUE(kv.resumed());
    EXPECT_EQ(kv.n_tokens(), a.tokens.size() + 49);
    auto rest = greedy(ctx, kv, {first.back()}, 10);
    first.insert(first.end(), rest.begin(), rest.end());
    EXPECT_EQ(first, uninterrupted);
}

TEST_F(conformance, a_cache_keeps_its_bookkeeping_from_memory_its_owner_can_rewrite) {
    // The cache lives in a mindspace its owner can write at any time. The
    // layout: the header, tokens from byte 128 (max_tokens of them), the
    // block table 64-byte aligned after them.
    kv_memory mem(kv_cache::bytes_for(m->params(), f32));
    std::span<std::byte> bytes = mem.span();
    auto at = [&](uint64_t off) { return reinterpret_cast<uint32_t*>(bytes.data() + off); };
    const uint64_t table = (128 + 4ull * f32.max_tokens + 63) / 64 * 64;
    uint32_t* n_tokens = at(40); // the header's committed count
    uint32_t* next_block = at(44);
    uint32_t* free_head = at(48);
    const std::vector<float> row(m->params().kv_dim(), 0.5f);
    auto fill = [&](kv_cache& kv, uint32_t n) {
        ASSERT_TRUE(kv.reserve(n));
        for (uint32_t p = kv.n_tokens(); p < kv.n_tokens() + n; ++p) {
            for (uint32_t l = 0; l < m->params().n_layer; ++l) {
                kv.write(l, p, row.data(), row.data());
            }
        }
        kv.commit(std::vector<int32_t>(n, 3));
    };
    auto inside = [&](const void* p) {
        return p >= bytes.data() && p < bytes.data() + bytes.size();
    };
    {
        auto kv = kv_cache::open(bytes, *m, f32);
        fill(kv, 40);    // blocks 0, 1, 2
        kv.truncate(20); // block 2 given back
        ASSERT_EQ(*n_tokens, 20u);
        ASSERT_EQ(*next_block, 3u);
        ASSERT_EQ(*free_head, 2u);
    }
    // Damaged before it is opened: refused (a worker starts it afresh).
    auto refused = [&](uint32_t* field, uint32_t bad) {
        const uint32_t was = *field;
        *field = bad;
        EXPECT_THROW(kv_cache::open(bytes, *m, f32), kv_error) << "value " << bad;
        *field = was;
    };
    refused(at(table), 0x7fffffff); // a block past the memory
    refused(at(table + 4), 0);      // a block mapped twice
    refused(at(table), UINT32_MAX); // a hole under the tokens
    refused(at(table + 8), 1);      // mapped past the first hole
    refused(n_tokens, f32.max_tokens + 1);
    refused(next_block, 1u << 30);
    refused(free_head, 0); // a mapped block on the free list
    refused(free_head, 1u << 30);
    // Rewritten while it is open: the cache goes on from what it read.
    auto kv = kv_cache::open(bytes, *m, f32);
    ASSERT_TRUE(kv.resumed());
    *at(table) = 0x7fffffff;
    *n_tokens = 1u << 30;
    *next_block = 0;
    *free_head = 0x7fffffff;
    EXPECT_EQ(kv.n_tokens(), 20u);
    EXPECT_EQ(kv.tokens().size(), 20u);
    EXPECT_TRUE(inside(kv.k_row(0, 0, 0)));
    fill(kv, 30); // block 2 again, then 3
    EXPECT_EQ(kv.n_tokens(), 50u);
    EXPECT_EQ(*n_tokens, 50u) << "changes are still written through";
    for (uint32_t p = 0; p < 50; ++p) {
        EXPECT_TRUE(inside(kv.k_row(m->params().n_layer - 1, p, m->params().n_head_kv - 1)));
        EXPECT_TRUE(inside(kv.v_row(m->params().n_layer - 1, p, m->params().n_head_kv - 1)));
    }
    EXPECT_EQ(kv.usage().blocks, 4u);
}

// Rewritten WHILE it is opened (its owner's thread flips a table entry
// between a block it may map and one far past the memory): each entry is
// read once, so what was checked is what is used, and no row of an opened
// cache lies outside the memory. (Read twice, the flip landed between the
// check and the copy within some 20,000 opens in the ASan build.)
TEST_F(conformance, a_table_rewritten_while_it_is_opened_is_used_as_checked) {
    kv_memory mem(kv_cache::bytes_for(m->params(), f32));
    std::span<std::byte> bytes = mem.span();
    {
        auto kv = kv_cache::open(bytes, *m, f32);
        ASSERT_TRUE(kv.reserve(17));
        kv.commit(std::vector<int32_t>(17, 3)); // blocks 0 and 1
    }
    const uint64_t table = (128 + 4ull * f32.max_tokens + 63) / 64 * 64;
    auto* entry = reinterpret_cast<uint32_t*>(bytes.data() + table) + 1;
    std::atomic<bool> stop{false};
    std::thread owner([&] {
        std::atomic_ref<uint32_t> w(*entry);
        while (!stop.load(std::memory_order_relaxed)) {
            w.store(1, std::memory_order_relaxed);
            w.store(1u << 20, std::memory_order_relaxed);
        }
    });
    const char* scale = std::getenv("LLMOS_TEST_SCALE");
    const int opens = 50000 * std::max(1, scale ? std::atoi(scale) : 1);
    int outside = 0, resumed = 0;
    for (int i = 0; i < opens && !outside; ++i) {
        try {
            auto kv = kv_cache::open(bytes, *m, f32);
            resumed += kv.resumed();
            const auto* row = static_cast<const std::byte*>(kv.k_row(0, 16, 0));
            outside += row < bytes.data() || row >= bytes.data() + bytes.size();
        } catch (const kv_error&) { // it read the far block: refused
        }
    }
    stop = true;
    owner.join();
    EXPECT_EQ(outside, 0);
    EXPECT_GT(resumed, 0) << "no open read the table as it was made";
}

TEST_F(conformance, a_block_leaked_by_a_killed_worker_is_free_again) {
    kv_memory mem(kv_cache::bytes_for(m->params(), f32));
    std::span<std::byte> bytes = mem.span();
    uint32_t* free_head = reinterpret_cast<uint32_t*>(bytes.data() + 48);
    {
        auto kv = kv_cache::open(bytes, *m, f32);
        ASSERT_TRUE(kv.reserve(40)); // blocks 0, 1, 2
        kv.commit(std::vector<int32_t>(40, 3));
        kv.truncate(20); // block 2 given back
    }
    // Killed before the free list's head was written: block 2 is neither
    // mapped nor free.
    *free_head = UINT32_MAX;
    auto kv = kv_cache::open(bytes, *m, f32);
    ASSERT_TRUE(kv.resumed());
    EXPECT_EQ(*free_head, 2u) << "free again, and written through";
    // Every position can be had: no block is missing.
    EXPECT_TRUE(kv.reserve(f32.max_tokens - kv.n_tokens()));
}

TEST_F(conformance, avx512_attention_agrees_with_the_avx2_kernels) {
    if (detected_simd() < simd_level::avx512) {
        GTEST_SKIP() << "this CPU has no AVX-512: detected " << simd_name(detected_simd());
    }
    // A 100-token prompt in steps of 37 (so queries start past position
    // 0, mid-tile, and tiles of keys end short of 16), then 10 decode
    // steps (the one-token kernels), over F16 caches with both kernel
    // levels and block sizes that do and do not match the AVX-512
    // kernels' 16 keys: the logits agree but for float rounding (the
    // matmuls' too).
    const uint32_t V = m->params().n_vocab;
    std::vector<int32_t> prompt(100);
    for (size_t i = 0; i < prompt.size(); ++i) {
        prompt[i] = static_cast<int32_t>((i * 37 + 11) % V);
    }
    auto logits_of = [&](simd_level kernels, uint32_t block) {
        kv_options ko{.type = kv_type::f16, .block_tokens = block, .max_tokens = 256};
        kv_memory mem(kv_cache::bytes_for(m->params(), ko));
        auto kv = kv_cache::open(mem.span(), *m, ko);
        context ctx(*m, {.n_threads = 2, .kernels = kernels});
        std::vector<float> all(prompt.size() * V);
        for (size_t at = 0; at < prompt.size(); at += 37) {
            const size_t n = std::min<size_t>(37, prompt.size() - at);
            batch_entry e{.kv = &kv,
                          .tokens = std::span<const int32_t>(prompt).subspan(at, n),
                          .all_logits = all.data() + at * V};
            EXPECT_EQ(ctx.step({&e, 1}), step_status::ok);
        }
        std::vector<float> last(all.end() - V, all.end());
        for (int i = 0; i < 10; ++i) {
            const int32_t t = (17 * i + 5) % int32_t(V);
            batch_entry e{.kv = &kv, .tokens = {&t, 1}, .logits = last.data()};
            EXPECT_EQ(ctx.step({&e, 1}), step_status::ok);
            all.insert(all.end(), last.begin(), last.end());
        }
        return all;
    };
    for (const uint32_t block : {16u, 7u}) {
        const auto a = logits_of(simd_level::avx2, block);
        const auto b = logits_of(simd_level::avx512, block);
        ASSERT_EQ(a.size(), b.size());
        double worst = 0;
        for (size_t row = 0; row < a.size() / V; ++row) {
            double e2 = 0, r2 = 0;
            for (size_t k = row * V; k < (row + 1) * V; ++k) {
                e2 += (double(a[k]) - b[k]) * (double(a[k]) - b[k]);
                r2 += double(a[k]) * a[k];
            }
            const double rel = std::sqrt(e2 / r2);
            worst = std::isnan(rel) ? INFINITY : std::max(worst, rel);
        }
        EXPECT_LE(worst, 1e-5) << "block " << block;
        std::printf("block %u: worst relative difference %.2e\n", block, worst);
    }
}

TEST_F(conformance, an_f16_cache_stays_close_to_f32) {
    expected a = load_conformance("hello");
    kv_options f16{.type = kv_type::f16, .block_tokens = 16, .max_tokens = 256};
    context ctx(*m, {.n_threads = 2});
    kv_memory m32(kv_cache::bytes_for(m->params(), f32)),
        m16(kv_cache::bytes_for(m->params(), f16));
    auto k32 = kv_cache::open(m32.span(), *m, f32);
    auto k16 = kv_cache::open(m16.span(), *m, f16);
    std::vector<float> l32, l16;
    greedy(ctx, k32, a.tokens, 0, &l32);
    greedy(ctx, k16, a.tokens, 0, &l16);
    float worst = 0;
    for (size_t i = 0; i < l32.size(); ++i) {
        worst = std::max(worst, std::fabs(l32[i] - l16[i]));
    }
    EXPECT_LE(worst, 1e-3f);
    EXPECT_GT(worst, 0.0f) << "an F16 cache that rounds nothing is not F16";
}

TEST_F(conformance, paged_cache_takes_blocks_on_demand_and_wastes_under_a_block) {
    kv_memory mem(kv_cache::bytes_for(m->params(), f32));
    auto kv = kv_cache::open(mem.span(), *m, f32);
    context ctx(*m, {.n_threads = 1});
    std::vector<int32_t> toks(37, 5);
    batch_entry e{.kv = &kv, .tokens = toks};
    ASSERT_EQ(ctx.step({&e, 1}), step_status::ok);
    auto u = kv.usage();
    EXPECT_EQ(u.tokens, 37u);
    EXPECT_EQ(u.blocks, 3u); // 16 + 16 + 5
    EXPECT_LT(u.waste(), 11.0 / 48 + 1e-9);
    kv.truncate(10);
    EXPECT_EQ(kv.usage().blocks, 1u);
    EXPECT_EQ(kv.tokens().size(), 10u);
    // Blocks given back are taken again before new ones.
    ASSERT_EQ(ctx.step({&e, 1}), step_status::ok);
    EXPECT_EQ(kv.usage().blocks, 3u);
}

TEST_F(conformance, bad_batches_are_refused_and_change_nothing) {
    kv_options small{.type = kv_type::f32, .block_tokens = 16, .max_tokens = 8};
    kv_memory mem(kv_cache::bytes_for(m->params(), small));
    auto kv = kv_cache::open(mem.span(), *m, small);
    context ctx(*m, {.n_threads = 1, .max_batch_tokens = 4});
    std::vector<int32_t> bad{1, 1024}, many(5, 1), fits{1, 2, 3};
    batch_entry e{.kv = &kv, .tokens = bad};
    EXPECT_EQ(ctx.step({&e, 1}), step_status::bad_token);
    e.tokens = many;
    EXPECT_EQ(ctx.step({&e, 1}), step_status::too_many_tokens);
    batch_entry twice[2] = {{.kv = &kv, .tokens = fits}, {.kv = &kv, .tokens = fits}};
    EXPECT_EQ(ctx.step(twice), step_status::bad_batch);
    e.tokens = fits;
    ASSERT_EQ(ctx.step({&e, 1}), step_status::ok);
    ASSERT_EQ(ctx.step({&e, 1}), step_status::ok);
    EXPECT_EQ(ctx.step({&e, 1}), step_status::cache_full);
    EXPECT_EQ(kv.n_tokens(), 6u);
}

TEST_F(conformance, a_cache_of_another_model_s_geometry_is_refused_by_step) {
    // The tiny model's cache handed to a model with twice its layers, and
    // to one with other heads (as many K/V floats per row, split
    // otherwise): either would write rows past the cache's memory or
    // across its heads.
    for (const auto& [name, shape] :
         {std::pair{"layers4", "--n-layer 4"}, std::pair{"heads8", "--n-head 8 --n-head-kv 8"}}) {
        std::string why;
        const std::string path =
            llmos::testing::generated_model(name, std::string("--preset tiny ") + shape, why);
        ASSERT_FALSE(path.empty()) << why;
        const gguf_file f = gguf_file::open(path);
        const model other = model::load(f);
        ASSERT_TRUE(other.params().n_layer != m->params().n_layer ||
                    other.params().head_dim != m->params().head_dim)
            << shape;
        kv_memory mem(kv_cache::bytes_for(m->params(), f32));
        auto kv = kv_cache::open(mem.span(), *m, f32);
        context ctx(other, {.n_threads = 1});
        std::vector<int32_t> toks{1, 2, 3};
        batch_entry e{.kv = &kv, .tokens = toks};
        EXPECT_EQ(ctx.step({&e, 1}), step_status::bad_batch) << shape;
        EXPECT_EQ(kv.n_tokens(), 0u);
        // The model it was made for runs it.
        context mine(*m, {.n_threads = 1});
        EXPECT_EQ(mine.step({&e, 1}), step_status::ok);
    }
}

TEST_F(conformance, an_embedding_row_past_the_table_is_refused) {
    const auto& p = m->params();
    std::vector<float> row(p.n_embd, -7.0f);
    EXPECT_THROW(m->embed(-1, row.data()), std::out_of_range);
    EXPECT_THROW(m->embed(int32_t(p.n_vocab), row.data()), std::out_of_range);
    EXPECT_EQ(row, std::vector<float>(p.n_embd, -7.0f));
    m->embed(int32_t(p.n_vocab) - 1, row.data());
    EXPECT_NE(row, std::vector<float>(p.n_embd, -7.0f));
}

TEST_F(conformance, an_entry_without_tokens_gets_no_logits) {
    // An empty entry that asks for logits (every row, and its last), first
    // and after one that runs: there are no rows of its own to hand out,
    // and the buffers stay as they were.
    kv_memory ma(kv_cache::bytes_for(m->params(), f32)), mb(kv_cache::bytes_for(m->params(), f32));
    auto a = kv_cache::open(ma.span(), *m, f32), b = kv_cache::open(mb.span(), *m, f32);
    context ctx(*m, {.n_threads = 1});
    const uint32_t V = m->params().n_vocab;
    std::vector<int32_t> toks{1, 2, 3};
    std::vector<float> all(3 * V), last(V, -7.0f), empty_last(V, -7.0f);
    for (bool empty_first : {true, false}) {
        a.truncate(0);
        batch_entry run{.kv = &a, .tokens = toks, .all_logits = all.data()};
        batch_entry none{.kv = &b, .logits = empty_last.data(), .all_logits = last.data()};
        batch_entry both[2] = {empty_first ? none : run, empty_first ? run : none};
        ASSERT_EQ(ctx.step(both), step_status::ok);
        EXPECT_EQ(empty_last, std::vector<float>(V, -7.0f)) << empty_first;
        EXPECT_EQ(last, std::vector<float>(V, -7.0f)) << empty_first;
        EXPECT_EQ(b.n_tokens(), 0u);
        EXPECT_EQ(a.n_tokens(), 3u);
    }
}

TEST_F(conformance, a_cache_of_another_geometry_is_refused_unless_fresh) {
    kv_memory mem(kv_cache::bytes_for(m->params(), f32));
    EXPECT_FALSE(kv_cache::open(mem.span(), *m, f32).resumed());
    kv_options other = f32;
    other.block_tokens = 32;
    EXPECT_THROW(kv_cache::open(mem.span(), *m, other), kv_error);
    auto kv = kv_cache::open(mem.span(), *m, other, true);
    EXPECT_FALSE(kv.resumed());
    EXPECT_THROW(kv_cache::open(mem.span().first(100), *m, f32), kv_error);
}

TEST_F(conformance, a_cache_of_another_layout_version_is_refused_unless_fresh) {
    kv_memory mem(kv_cache::bytes_for(m->params(), f32));
    {
        auto kv = kv_cache::open(mem.span(), *m, f32);
        ASSERT_TRUE(kv.reserve(3));
        std::vector<float> row(m->params().kv_dim(), 1.0f);
        for (uint32_t pos = 0; pos < 3; ++pos) {
            kv.write(0, pos, row.data(), row.data());
        }
        const int32_t toks[] = {1, 2, 3};
        kv.commit(toks);
    }
    // The header's version (after the 8-byte magic) as an older engine
    // wrote it.
    const uint32_t v1 = 1;
    std::memcpy(mem.span().data() + 8, &v1, 4);
    try {
        (void)kv_cache::open(mem.span(), *m, f32);
        ADD_FAILURE() << "a version 1 cache was opened";
    } catch (const kv_error& e) {
        EXPECT_NE(std::string(e.what()).find("version 1"), std::string::npos) << e.what();
    }
    auto kv = kv_cache::open(mem.span(), *m, f32, true);
    EXPECT_FALSE(kv.resumed());
    EXPECT_EQ(kv.n_tokens(), 0u);
}

TEST_F(conformance, a_heads_rows_run_through_the_conversations_blocks) {
    // Each KV head's rows come back as written, and a head's rows of one
    // layer lie back to back across blocks taken in order (the attention
    // of a decode step streams them).
    const model_params& p = m->params();
    ASSERT_GT(p.n_head_kv, 1u);
    // Integers below 2048: exact in F16 too.
    const auto value = [](uint32_t layer, uint32_t pos, uint32_t i) {
        return float((pos * 37 + layer * 11 + i) % 2000);
    };
    for (const kv_type type : {kv_type::f16, kv_type::f32}) {
        kv_options o{.type = type, .block_tokens = 16, .max_tokens = 64};
        kv_memory mem(kv_cache::bytes_for(p, o));
        auto kv = kv_cache::open(mem.span(), *m, o);
        ASSERT_TRUE(kv.reserve(40));
        std::vector<float> k(p.kv_dim()), v(p.kv_dim());
        for (uint32_t pos = 0; pos < 40; ++pos) {
            for (uint32_t layer = 0; layer < p.n_layer; ++layer) {
                for (uint32_t i = 0; i < p.kv_dim(); ++i) {
                    k[i] = value(layer, pos, i);
                    v[i] = -k[i];
                }
                kv.write(layer, pos, k.data(), v.data());
            }
        }
        const size_t elt = type == kv_type::f32 ? 4 : 2;
        for (uint32_t layer = 0; layer < p.n_layer; ++layer) {
            for (uint32_t h = 0; h < p.n_head_kv; ++h) {
                for (uint32_t pos = 0; pos < 40; ++pos) {
                    const auto* kr = static_cast<const std::byte*>(kv.k_row(layer, pos, h));
                    const auto* vr = static_cast<const std::byte*>(kv.v_row(layer, pos, h));
                    for (uint32_t d = 0; d < p.head_dim; ++d) {
                        const uint32_t i = h * p.head_dim + d;
                        const float want = value(layer, pos, i);
                        float gk, gv;
                        if (type == kv_type::f32) {
                            std::memcpy(&gk, kr + 4 * d, 4);
                            std::memcpy(&gv, vr + 4 * d, 4);
                        } else {
                            uint16_t hk, hv;
                            std::memcpy(&hk, kr + 2 * d, 2);
                            std::memcpy(&hv, vr + 2 * d, 2);
                            gk = fp16_to_fp32(hk);
                            gv = fp16_to_fp32(hv);
                        }
                        ASSERT_EQ(gk, want) << "layer " << layer << " head " << h << " pos " << pos;
                        ASSERT_EQ(gv, -want)
                            << "layer " << layer << " head " << h << " pos " << pos;
                    }
                    if (pos > 0) {
                        const auto* prev =
                            static_cast<const std::byte*>(kv.k_row(layer, pos - 1, h));
                        EXPECT_EQ(kr - prev, ptrdiff_t(p.head_dim * elt)) << "pos " << pos;
                    }
                }
            }
        }
    }
}

TEST(kv_memory, whole_pages_aligned_with_a_zeroed_header_page) {
    for (size_t bytes : {size_t(1), size_t(4096), size_t(5000), size_t(3 << 20)}) {
        kv_memory m(bytes);
        auto s = m.span();
        EXPECT_EQ(s.size() % 4096, 0u);
        EXPECT_GE(s.size(), bytes);
        EXPECT_LT(s.size(), bytes + 4096);
        EXPECT_EQ(reinterpret_cast<uintptr_t>(s.data()) % 4096, 0u);
        EXPECT_TRUE(std::all_of(s.begin(), s.begin() + 4096,
                                [](std::byte b) { return b == std::byte{0}; }));
    }
    kv_memory all(3 * 4096 + 1, true);
    auto s = all.span();
    EXPECT_TRUE(std::all_of(s.begin(), s.end(), [](std::byte b) { return b == std::byte{0}; }));
    EXPECT_EQ(s.size(), 4u * 4096);
}

TEST(model_load, the_fingerprint_reads_past_each_matrix_s_first_row) {
    std::string why;
    const std::string path = llmos::testing::generated_model("seed1", "--type q8_0 --seed 1", why);
    ASSERT_FALSE(path.empty()) << why;
    std::ifstream in(path, std::ios::binary);
    std::vector<char> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ASSERT_FALSE(raw.empty());
    // In memory that keeps the file's alignment (parse() reads it in place).
    std::vector<uint64_t> words((raw.size() + 7) / 8);
    std::memcpy(words.data(), raw.data(), raw.size());
    const std::span<std::byte> bytes(reinterpret_cast<std::byte*>(words.data()), raw.size());
    const uint64_t before = model::load(gguf_file::parse(bytes)).fingerprint();
    uint64_t at = 0, len = 0;
    {
        const gguf_file f = gguf_file::parse(bytes);
        const gguf_tensor* t = f.find_tensor("blk.0.attn_q.weight");
        ASSERT_NE(t, nullptr);
        ASSERT_GT(t->n_rows, 2u);
        at = f.data_offset() + t->offset + t->row_bytes; // row 1 on
        len = t->n_bytes - t->row_bytes;
    }
    for (uint64_t i = at; i < at + len; ++i) {
        bytes[i] ^= std::byte{0x5a};
    }
    EXPECT_NE(model::load(gguf_file::parse(bytes)).fingerprint(), before)
        << "other weights in every row but the first";
}

TEST(model_load, a_cache_of_a_model_of_the_same_shape_and_other_weights_is_refused) {
    // A model and its fine-tune: one shape, one weight type, other weights.
    std::string why;
    const std::string a = llmos::testing::generated_model("seed1", "--type q8_0 --seed 1", why);
    ASSERT_FALSE(a.empty()) << why;
    const std::string b = llmos::testing::generated_model("seed2", "--type q8_0 --seed 2", why);
    ASSERT_FALSE(b.empty()) << why;
    const gguf_file fa = gguf_file::open(a), fb = gguf_file::open(b);
    const model ma = model::load(fa), mb = model::load(fb);
    ASSERT_EQ(ma.params().n_embd, mb.params().n_embd);
    EXPECT_NE(ma.fingerprint(), mb.fingerprint());
    const gguf_file fa2 = gguf_file::open(a);
    EXPECT_EQ(model::load(fa2).fingerprint(), ma.fingerprint()) << "the same model, loaded again";
    const kv_options ko{.type = kv_type::f32, .block_tokens = 16, .max_tokens = 64};
    kv_memory mem(kv_cache::bytes_for(ma.params(), ko));
    {
        auto kv = kv_cache::open(mem.span(), ma, ko);
        ASSERT_TRUE(kv.reserve(1));
        std::vector<float> row(ma.params().kv_dim(), 1.0f);
        for (uint32_t l = 0; l < ma.params().n_layer; ++l) {
            kv.write(l, 0, row.data(), row.data());
        }
        kv.commit(std::vector<int32_t>{5});
    }
    EXPECT_THROW(kv_cache::open(mem.span(), mb, ko), kv_error);
    EXPECT_TRUE(kv_cache::open(mem.span(), ma, ko).resumed());
}

TEST(model_load, unsupported_architectures_and_types_are_named) {
    gguf_file f = gguf_file::open(tiny);
    // Rewrite the file with another architecture name, and with a tensor
    // of a type the engine does not compute with.
    auto rewrite = [&](auto edit) {
        gguf_writer w;
        for (auto& kv : f.kvs()) {
            w.set(kv.key, kv.value);
        }
        for (auto& t : f.tensors()) {
            edit(w, t);
        }
        return w.write();
    };
    auto bytes = rewrite([](gguf_writer& w, const gguf_tensor& t) {
        w.add_tensor(t.name, t.type, t.dims(), t.data);
    });
    {
        gguf_writer w;
        auto g = gguf_file::parse(bytes);
        for (auto& kv : g.kvs()) {
            w.set(kv.key, kv.key == "general.architecture" ? gguf_value("mamba") : kv.value);
        }
        auto b2 = w.write();
        auto g2 = gguf_file::parse(b2);
        try {
            (void)model::load(g2);
            FAIL() << "loaded a mamba model";
        } catch (const model_error& e) {
            EXPECT_NE(std::string(e.what()).find("architecture 'mamba' is not supported"),
                      std::string::npos)
                << e.what();
        }
    }
    auto missing = rewrite([](gguf_writer& w, const gguf_tensor& t) {
        if (t.name != "blk.1.ffn_up.weight") {
            w.add_tensor(t.name, t.type, t.dims(), t.data);
        }
    });
    auto g3 = gguf_file::parse(missing);
    try {
        (void)model::load(g3);
        FAIL() << "loaded without blk.1.ffn_up.weight";
    } catch (const model_error& e) {
        EXPECT_NE(std::string(e.what()).find("'blk.1.ffn_up.weight' is missing"), std::string::npos)
            << e.what();
    }
    auto q8_1 = rewrite([](gguf_writer& w, const gguf_tensor& t) {
        if (t.name == "blk.0.attn_q.weight") {
            std::vector<std::byte> data(*row_bytes(ggml_type::q8_1, 64) * 64);
            w.add_tensor(t.name, ggml_type::q8_1, t.dims(), data);
        } else {
            w.add_tensor(t.name, t.type, t.dims(), t.data);
        }
    });
    auto g4 = gguf_file::parse(q8_1);
    try {
        (void)model::load(g4);
        FAIL() << "loaded Q8_1 weights";
    } catch (const model_error& e) {
        EXPECT_NE(std::string(e.what()).find("Q8_1, which this engine does not compute with"),
                  std::string::npos)
            << e.what();
    }
}

TEST(model_load, bad_hyperparameters_and_misaligned_tensors_are_refused) {
    gguf_file f = gguf_file::open(tiny);
    // The file rewritten with `key` set to `value` (a tensor list of its
    // own when `tensors` is given).
    auto rewrite = [&](const std::string& key, gguf_value value,
                       std::function<void(gguf_writer&)> tensors = {}) {
        gguf_writer w;
        for (auto& kv : f.kvs()) {
            if (kv.key != key) {
                w.set(kv.key, kv.value);
            }
        }
        w.set(key, value);
        if (tensors) {
            tensors(w);
        } else {
            for (auto& t : f.tensors()) {
                w.add_tensor(t.name, t.type, t.dims(), t.data);
            }
        }
        return w.write();
    };
    auto refused = [&](const std::vector<std::byte>& bytes, const std::string& why) {
        auto g = gguf_file::parse(bytes);
        try {
            (void)model::load(g);
            ADD_FAILURE() << "loaded; wanted: " << why;
        } catch (const model_error& e) {
            EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
        }
    };
    const std::string arch = "llama.";
    for (float bad : {0.0f, -1.0f, NAN, INFINITY}) {
        refused(rewrite(arch + "rope.freq_base", bad), "must be finite and positive");
        refused(rewrite(arch + "attention.layer_norm_rms_epsilon", bad),
                "must be finite and positive");
        if (bad != 0.0f) { // 0: no scaling (below)
            refused(rewrite(arch + "rope.scaling.factor", bad), "must be finite and positive");
        }
    }
    // A head of another size than embedding / heads: its weights' shapes
    // are not what this engine computes with, said as such.
    const uint32_t head = f.find_u32(arch + "embedding_length").value() /
                          f.find_u32(arch + "attention.head_count").value();
    refused(rewrite(arch + "attention.key_length", head * 2), "attention.key_length is");
    refused(rewrite(arch + "attention.value_length", head * 2), "attention.value_length is");
    // Position scaling: a factor is linear without a type, and the older
    // key rope.scale_linear is read too (a factor left out silently would
    // run a long-context model at the wrong positions).
    auto scale_of = [&](const std::vector<std::pair<std::string, gguf_value>>& keys) {
        gguf_writer w;
        for (auto& kv : f.kvs()) {
            w.set(kv.key, kv.value);
        }
        for (auto& [k, v] : keys) {
            w.set(k, v);
        }
        for (auto& t : f.tensors()) {
            w.add_tensor(t.name, t.type, t.dims(), t.data);
        }
        const auto bytes = w.write(); // what the parsed file points into
        auto g = gguf_file::parse(bytes);
        return model::load(g).params().rope_scale;
    };
    EXPECT_EQ(1.0f, scale_of({}));
    EXPECT_EQ(4.0f, scale_of({{arch + "rope.scaling.type", std::string("linear")},
                              {arch + "rope.scaling.factor", 4.0f}}));
    EXPECT_EQ(4.0f, scale_of({{arch + "rope.scaling.factor", 4.0f}}));
    EXPECT_EQ(2.0f, scale_of({{arch + "rope.scale_linear", 2.0f}}));
    EXPECT_EQ(1.0f, scale_of({{arch + "rope.scaling.factor", 0.0f}})) << "0 is no scaling";
    EXPECT_EQ(1.0f, scale_of({{arch + "attention.key_length", head},
                              {arch + "attention.value_length", head}}))
        << "the usual head size, said";
    EXPECT_EQ(1.0f, scale_of({{arch + "rope.scaling.type", std::string("none")},
                              {arch + "rope.scaling.factor", 4.0f}}));
    refused(rewrite(arch + "rope.scaling.type", std::string("yarn"),
                    [&](gguf_writer& w) {
                        w.set(arch + "rope.scaling.factor", 4.0f);
                        for (auto& t : f.tensors()) {
                            w.add_tensor(t.name, t.type, t.dims(), t.data);
                        }
                    }),
            "rope scaling 'yarn' is not supported");
    // general.alignment 1 (llama.cpp and the reader take any power of two;
    // the writer keeps to GGUF's multiple of 8, so it is set in place
    // after) lets an F32 tensor start at any byte: the data section then
    // starts where the tensor infos end, which a key of 0 to 3 bytes moves.
    bool tried = false;
    for (int pad = 0; pad < 4 && !tried; ++pad) {
        auto bytes = rewrite("general.alignment", 8u, [&](gguf_writer& w) {
            w.set("pad", std::string(static_cast<size_t>(pad), 'x'));
            for (auto& t : f.tensors()) {
                w.add_tensor(t.name, t.type, t.dims(), t.data);
            }
        });
        // The key, its u32 type, then the u32 value.
        const std::string key = "general.alignment";
        auto at = std::search(bytes.begin(), bytes.end(), key.begin(), key.end(),
                              [](std::byte b, char c) { return b == std::byte(c); });
        ASSERT_NE(bytes.end(), at);
        const uint32_t one = 1;
        std::memcpy(&*(at + static_cast<std::ptrdiff_t>(key.size() + 4)), &one, sizeof one);
        auto g = gguf_file::parse(bytes);
        if (reinterpret_cast<uintptr_t>(g.find_tensor("token_embd.weight")->data.data()) % 4) {
            tried = true;
            refused(bytes, "-byte aligned in the file");
        }
    }
    EXPECT_TRUE(tried);
    // A block_count below the file's layers would drop the rest unsaid.
    const uint32_t layers = f.get_u32(arch + "block_count");
    ASSERT_GT(layers, 1u);
    refused(rewrite(arch + "block_count", layers - 1), "'blk." + std::to_string(layers - 1) + ".");
    refused(rewrite(arch + "block_count", layers - 1), "is past block_count");
    // No vocabulary.
    refused(rewrite("x.none", 0u,
                    [&](gguf_writer& w) {
                        for (auto& t : f.tensors()) {
                            if (t.name == "token_embd.weight") {
                                w.add_tensor(t.name, t.type, {t.ne[0], 0}, {});
                            } else {
                                w.add_tensor(t.name, t.type, t.dims(), t.data);
                            }
                        }
                    }),
            "n_vocab 1 to 2^31 - 1");
}

TEST(model_load, packs_every_matrix_for_avx512_and_lets_their_rows_go) {
    gguf_file f = gguf_file::open(tiny);
    const model plain = model::load(f, simd_level::avx2);
    EXPECT_EQ(plain.packed_bytes(), 0u);
    EXPECT_EQ(plain.dropped_bytes(), 0u);
    EXPECT_EQ(plain.output().packed, nullptr);
    const model packed = model::load(f, simd_level::avx512);
    uint64_t want = 0;
    for (const auto& l : packed.layers()) {
        for (const weight_view* w : l.matrices()) {
            EXPECT_NE(w->packed, nullptr);
            EXPECT_EQ(reinterpret_cast<uintptr_t>(w->packed) % 64, 0u);
            want += packed_weight_bytes(*w, simd_level::avx512);
        }
    }
    want += packed_weight_bytes(packed.output(), simd_level::avx512);
    EXPECT_EQ(packed.packed_bytes(), want);
    EXPECT_GE(want, packed.weight_bytes());
    EXPECT_EQ(packed.token_embd().packed, nullptr); // embed() reads its rows
    // The file's pages behind the packed matrices went (the tiny model's
    // matrices are 16 KiB: most of their pages are whole).
    EXPECT_GT(packed.dropped_bytes(), 0u);
    EXPECT_LE(packed.dropped_bytes(), packed.weight_bytes());
    // A copy of the model shares its packed copy.
    const model copy = packed;
    EXPECT_EQ(copy.layers()[0].wq.packed, packed.layers()[0].wq.packed);
}
