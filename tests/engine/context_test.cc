// SPDX-License-Identifier: MIT
//
// The forward pass's step as a server drives it. A prompt cut into chunks
// of any size, beside other sequences or alone, and its last token
// computed again alone (a worker after a crash), gives the same K/V rows
// and logits to the bit, and so do the tokens generated after it, at every
// kernel level this CPU has: batch_entry::kind picks the attention kernel
// by what the tokens are (on AVX-512 the prefill and one-token kernels
// differ in the last bits), and every other part of a step treats each
// row alike wherever it falls. And a pool thread that cannot grow its
// attention scratch fails the step with no_memory, committing nothing,
// instead of terminating the process (the loop body must not throw).
//
// The program replaces operator new so that a test can make it fail.
#include "../support/generated_model.hh"
#include "../support/paths.hh"
#include "../support/test_new.hh"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <gtest/gtest.h>
#include <llmos/engine/context.hh>
#include <llmos/engine/gguf.hh>
#include <llmos/engine/kv_cache.hh>
#include <llmos/engine/model.hh>
#include <new>
#include <string>
#include <thread>
#include <vector>

using namespace llmos::engine;

namespace {

const std::string tiny = std::string(llmos::testing::testdata_dir) + "/llama-tiny-f32.gguf";

// The levels the chunking cases run at. Their threads (the step's pool)
// work alike at every level, and the kernels of each level are one
// thread's code: ThreadSanitizer, which slows them the most and finds only
// races, runs the best level alone (the other lanes all of them).
std::vector<simd_level> levels() {
    std::vector<simd_level> v{simd_level::scalar};
    for (simd_level l : {simd_level::avx2, simd_level::avx512}) {
        if (detected_simd() >= l) {
            v.push_back(l);
        }
    }
#if defined(__SANITIZE_THREAD__)
    v.erase(v.begin(), v.end() - 1);
#endif
    return v;
}

// What a sequence's run left: every step's last logits, in order, and the
// K/V rows of its cache.
struct run_result {
    std::vector<float> logits;
    std::vector<std::byte> rows;
};

std::vector<std::byte> rows_of(const kv_cache& kv, const model_params& p) {
    const size_t bytes = size_t(p.head_dim) * (kv.type() == kv_type::f16 ? 2 : 4);
    std::vector<std::byte> out;
    for (uint32_t l = 0; l < p.n_layer; ++l) {
        for (uint32_t pos = 0; pos < kv.n_tokens(); ++pos) {
            for (uint32_t h = 0; h < p.n_head_kv; ++h) {
                for (const void* r : {kv.k_row(l, pos, h), kv.v_row(l, pos, h)}) {
                    const auto* b = static_cast<const std::byte*>(r);
                    out.insert(out.end(), b, b + bytes);
                }
            }
        }
    }
    return out;
}

class chunking : public ::testing::TestWithParam<const char*> {
protected:
    // The model of this case: the conformance one, or one llmos-mkmodel
    // writes (4 query heads a KV head of 64; an n_ff whose rows are not
    // whole vectors of 8).
    std::string path() {
        const std::string name = GetParam();
        if (name == "tiny") {
            return tiny;
        }
        std::string args = "--preset tiny --n-layer 2 --n-ctx 256 ";
        if (name == "d64_g4_q8_0") {
            args += "--n-embd 256 --n-head 4 --n-head-kv 1 --n-ff 256 --type q8_0";
        } else {
            args += "--n-ff 180 --type f32";
        }
        std::string why;
        std::string p = llmos::testing::generated_model(name, args, why);
        EXPECT_FALSE(p.empty()) << why;
        return p;
    }
};

TEST_P(chunking, a_prompt_s_rows_and_logits_do_not_depend_on_its_chunks_or_its_batch) {
    const std::string file = path();
    ASSERT_FALSE(file.empty());
    const gguf_file f = gguf_file::open(file);
    const model m = model::load(f);
    const model_params& p = m.params();
    const uint32_t V = p.n_vocab;
    std::vector<int32_t> prompt(100), generated(6);
    for (size_t i = 0; i < prompt.size(); ++i) {
        prompt[i] = static_cast<int32_t>((i * 37 + 11) % V);
    }
    for (size_t i = 0; i < generated.size(); ++i) {
        generated[i] = static_cast<int32_t>((i * 53 + 7) % V);
    }
    for (const simd_level level : levels()) {
        for (const kv_type type : {kv_type::f16, kv_type::f32}) {
            const kv_options ko{.type = type, .block_tokens = 16, .max_tokens = 256};
            context ctx(m, {.n_threads = 2, .kernels = level});
            // The prompt in chunks of these sizes (the last one repeated),
            // each step beside another sequence when `beside`; then the
            // generated tokens one a step. `again`: the prompt's last token
            // once more, alone, after two generated tokens were dropped.
            auto run = [&](std::vector<size_t> chunks, bool beside, bool again) {
                kv_memory mem(kv_cache::bytes_for(p, ko)), other_mem(kv_cache::bytes_for(p, ko));
                auto kv = kv_cache::open(mem.span(), m, ko);
                auto other = kv_cache::open(other_mem.span(), m, ko);
                run_result r;
                std::vector<float> last(V), other_last(V);
                std::vector<int32_t> other_toks{1, 2, 3, 4, 5};
                auto step = [&](std::span<const int32_t> toks, token_kind kind) {
                    std::vector<batch_entry> b{
                        {.kv = &kv, .tokens = toks, .logits = last.data(), .kind = kind}};
                    if (beside) {
                        b.push_back({.kv = &other,
                                     .tokens = other_toks,
                                     .logits = other_last.data(),
                                     .kind = other.n_tokens() ? token_kind::generated
                                                              : token_kind::prompt});
                    }
                    ASSERT_EQ(ctx.step(b), step_status::ok);
                    other_toks.assign(1, int32_t(other.n_tokens() * 7 % V));
                };
                for (size_t at = 0, i = 0; at < prompt.size(); ++i) {
                    const size_t n =
                        std::min(chunks[std::min(i, chunks.size() - 1)], prompt.size() - at);
                    step(std::span<const int32_t>(prompt).subspan(at, n), token_kind::prompt);
                    at += n;
                }
                r.logits = last;
                for (size_t i = 0; i < generated.size();) {
                    step(std::span<const int32_t>(generated).subspan(i++, 1),
                         token_kind::generated);
                    r.logits.insert(r.logits.end(), last.begin(), last.end());
                    if (again && i == 2) {
                        // A new worker after a crash: the cache keeps the
                        // prompt and two generated tokens; the prompt's
                        // last token is computed again, alone.
                        again = false;
                        kv.truncate(static_cast<uint32_t>(prompt.size() - 1));
                        step(std::span<const int32_t>(prompt).last(1), token_kind::prompt);
                        EXPECT_EQ(std::memcmp(last.data(), r.logits.data(), V * sizeof(float)), 0)
                            << "the prompt's last token computed again alone";
                        r.logits.resize(V);
                        i = 0;
                    }
                }
                r.rows = rows_of(kv, p);
                return r;
            };
            const run_result want = run({prompt.size()}, false, false);
            struct variant {
                const char* name;
                std::vector<size_t> chunks;
                bool beside, again;
            };
            for (const variant& v : {variant{"chunks of 1", {1}, false, false},
                                     variant{"chunks of 7 beside another", {7}, true, false},
                                     variant{"37, 1, 62", {37, 1, 62}, false, false},
                                     variant{"16, then 3s beside another", {16, 3}, true, false},
                                     variant{"whole, its last token again", {100}, false, true},
                                     variant{"chunks of 5, beside, again", {5}, true, true}}) {
                SCOPED_TRACE(std::string(v.name) + " at " + std::string(simd_name(level)) +
                             (type == kv_type::f16 ? ", f16 cache" : ", f32 cache"));
                const run_result got = run(v.chunks, v.beside, v.again);
                ASSERT_EQ(got.logits.size(), want.logits.size());
                for (size_t s = 0; s < want.logits.size() / V; ++s) {
                    EXPECT_EQ(std::memcmp(got.logits.data() + s * V, want.logits.data() + s * V,
                                          V * sizeof(float)),
                              0)
                        << "logits of step " << s << " (0: the prompt's)";
                }
                ASSERT_EQ(got.rows.size(), want.rows.size());
                EXPECT_EQ(std::memcmp(got.rows.data(), want.rows.data(), want.rows.size()), 0)
                    << "K/V rows";
            }
        }
    }
}

INSTANTIATE_TEST_SUITE_P(models, chunking, ::testing::Values("tiny", "d64_g4_q8_0", "ff180_f32"),
                         [](const auto& info) { return std::string(info.param); });

// The attention scratch of a pool thread grows inside the pool's loop: a
// thread without memory for it fails the step (nothing committed), and
// the step runs once there is memory again, with the bits it would have.
TEST(context_step, a_thread_without_memory_for_its_scratch_fails_the_step_alone) {
    const gguf_file f = gguf_file::open(tiny);
    const model m = model::load(f);
    const uint32_t V = m.params().n_vocab;
    const kv_options ko{.type = kv_type::f16, .block_tokens = 16, .max_tokens = 256};
    std::vector<int32_t> prompt(40), small{3, 4, 5, 6};
    for (size_t i = 0; i < prompt.size(); ++i) {
        prompt[i] = static_cast<int32_t>((i * 37 + 11) % V);
    }
    const int32_t next = 42;
    std::vector<float> want(V);
    {
        context ctx(m, {.n_threads = 2});
        kv_memory mem(kv_cache::bytes_for(m.params(), ko));
        auto kv = kv_cache::open(mem.span(), m, ko);
        batch_entry e{.kv = &kv, .tokens = prompt, .kind = token_kind::prompt};
        ASSERT_EQ(ctx.step({&e, 1}), step_status::ok);
        e = {.kv = &kv, .tokens = {&next, 1}, .logits = want.data(), .kind = token_kind::generated};
        ASSERT_EQ(ctx.step({&e, 1}), step_status::ok);
    }
    // `a` holds the prompt, computed by another context (whose threads'
    // scratch has grown for it, not this one's).
    kv_memory ma(kv_cache::bytes_for(m.params(), ko)), mb(kv_cache::bytes_for(m.params(), ko));
    auto a = kv_cache::open(ma.span(), m, ko), b = kv_cache::open(mb.span(), m, ko);
    {
        context other(m, {.n_threads = 2});
        batch_entry e{.kv = &a, .tokens = prompt, .kind = token_kind::prompt};
        ASSERT_EQ(other.step({&e, 1}), step_status::ok);
    }
    // On a thread of its own, whose scratch (like the new pool's) has
    // grown for nothing yet.
    std::thread([&] {
        context ctx(m, {.n_threads = 2});
        std::vector<float> logits(V);
        // Steps of a shorter sequence: everything a decode step of `a`
        // needs has grown but the scratch for its 41 positions.
        batch_entry e{.kv = &b, .tokens = small, .kind = token_kind::prompt};
        ASSERT_EQ(ctx.step({&e, 1}), step_status::ok);
        for (int i = 0; i < 3; ++i) {
            e = {.kv = &b,
                 .tokens = {&next, 1},
                 .logits = logits.data(),
                 .kind = token_kind::generated};
            ASSERT_EQ(ctx.step({&e, 1}), step_status::ok);
        }
        e = {
            .kv = &a, .tokens = {&next, 1}, .logits = logits.data(), .kind = token_kind::generated};
        llmos::testing::fail_new = true;
        const step_status st = ctx.step({&e, 1});
        llmos::testing::fail_new = false;
        EXPECT_EQ(st, step_status::no_memory) << step_status_name(st);
        EXPECT_EQ(a.n_tokens(), prompt.size()) << "nothing committed";
        ASSERT_EQ(ctx.step({&e, 1}), step_status::ok);
        EXPECT_EQ(a.n_tokens(), prompt.size() + 1);
        EXPECT_EQ(std::memcmp(logits.data(), want.data(), V * sizeof(float)), 0);
    }).join();
}

} // namespace
