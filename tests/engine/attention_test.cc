// SPDX-License-Identifier: MIT
//
// The AVX-512 prefill attention kernel (private: userspace/engine/
// attention.hh) against attention computed in double precision from the
// same F16 cache rows, over the head shapes of the models users run (head
// sizes 16 to 128, 1 to 8 query heads per KV head), queries that start at
// and past position 0, runs of tokens that do and do not fill the kernel's
// 16 lanes, and cache blocks that do and do not hold 16 keys. The model
// only gives the cache its geometry: llmos-mkmodel writes one per shape.
#include "../support/generated_model.hh"
#include "attention.hh"

#include <algorithm>
#include <cmath>
#include <gtest/gtest.h>
#include <llmos/engine/gguf.hh>
#include <llmos/engine/kv_cache.hh>
#include <llmos/engine/model.hh>
#include <llmos/engine/quant.hh>
#include <random>
#include <string>
#include <vector>

using namespace llmos::engine;

namespace {

struct head_shape {
    const char* name;
    uint32_t n_embd, n_head, n_head_kv; // D = n_embd / n_head, G = n_head / n_head_kv
};

class prefill_attention : public ::testing::TestWithParam<head_shape> {};

/// What the kernel must compute, in double: token t's G heads over the
/// keys 0 .. pos0 + t of KV head `kv_head`, from the halves written into
/// the cache (ks, vs: kv_dim a position).
std::vector<double> expected(const std::vector<uint16_t>& ks, const std::vector<uint16_t>& vs,
                             uint32_t kv_dim, uint32_t kv_head, uint32_t D, uint32_t G, uint32_t T,
                             uint32_t pos0, const float* q, size_t q_stride, float scale) {
    std::vector<double> out(size_t(T) * G * D);
    for (uint32_t t = 0; t < T; ++t) {
        const uint32_t n = pos0 + t + 1;
        for (uint32_t h = 0; h < G; ++h) {
            const float* qh = q + t * q_stride + size_t(h) * D;
            std::vector<double> s(n);
            double mx = -INFINITY;
            for (uint32_t j = 0; j < n; ++j) {
                const uint16_t* k = ks.data() + size_t(j) * kv_dim + size_t(kv_head) * D;
                double dot = 0;
                for (uint32_t d = 0; d < D; ++d) {
                    dot += double(qh[d]) * fp16_to_fp32(k[d]);
                }
                s[j] = dot * scale;
                mx = std::max(mx, s[j]);
            }
            double sum = 0;
            for (double& x : s) {
                x = std::exp(x - mx);
                sum += x;
            }
            double* o = out.data() + (size_t(t) * G + h) * D;
            for (uint32_t j = 0; j < n; ++j) {
                const uint16_t* v = vs.data() + size_t(j) * kv_dim + size_t(kv_head) * D;
                for (uint32_t d = 0; d < D; ++d) {
                    o[d] += s[j] / sum * fp16_to_fp32(v[d]);
                }
            }
        }
    }
    return out;
}

TEST_P(prefill_attention, matches_double_precision_attention_over_the_f16_cache) {
    if (detected_simd() < simd_level::avx512) {
        GTEST_SKIP() << "this CPU has no AVX-512: detected " << simd_name(detected_simd());
    }
    const head_shape& hs = GetParam();
    std::string why;
    const std::string path = llmos::testing::generated_model(
        hs.name,
        "--preset tiny --n-layer 1 --n-ff 64 --n-ctx 256 --n-embd " + std::to_string(hs.n_embd) +
            " --n-head " + std::to_string(hs.n_head) + " --n-head-kv " +
            std::to_string(hs.n_head_kv),
        why);
    ASSERT_FALSE(path.empty()) << why;
    const gguf_file f = gguf_file::open(path);
    const model m = model::load(f);
    const model_params& p = m.params();
    const uint32_t D = p.head_dim, G = p.n_head / p.n_head_kv, E = p.n_embd;
    ASSERT_EQ(D, hs.n_embd / hs.n_head);
    ASSERT_EQ(D % 16, 0u);
    const float scale = 1.0f / std::sqrt(float(D));
    // The last KV head (its rows past the others' in what write() is
    // given).
    const uint32_t kv_head = p.n_head_kv - 1;
    constexpr uint32_t n_pos = 180;
    for (const uint32_t block : {16u, 7u}) {
        kv_options ko{.type = kv_type::f16, .block_tokens = block, .max_tokens = 256};
        kv_memory mem(kv_cache::bytes_for(p, ko));
        kv_cache kv = kv_cache::open(mem.span(), m, ko);
        ASSERT_TRUE(kv.reserve(n_pos));
        std::mt19937 rng(D * 131 + G * 7 + block);
        std::normal_distribution<float> nd(0.0f, 1.0f);
        std::vector<float> k(p.kv_dim()), v(p.kv_dim());
        std::vector<uint16_t> ks(size_t(n_pos) * p.kv_dim()), vs(ks.size());
        for (uint32_t pos = 0; pos < n_pos; ++pos) {
            for (float& x : k) {
                x = 2.0f * nd(rng); // scores of a few units: a peaked softmax
            }
            for (float& x : v) {
                x = nd(rng);
            }
            kv.write(0, pos, k.data(), v.data());
            fp32_to_fp16_row(k.data(), ks.data() + size_t(pos) * p.kv_dim(), p.kv_dim());
            fp32_to_fp16_row(v.data(), vs.data() + size_t(pos) * p.kv_dim(), p.kv_dim());
        }
        struct run {
            uint32_t pos0, T;
        };
        for (const run r :
             {run{0, 16}, run{0, 37}, run{5, 16}, run{9, 64}, run{100, 33}, run{150, 30}}) {
            if (r.T * G < 16) {
                continue; // the kernel is for 16 queries or more
            }
            std::vector<float> q(size_t(r.T) * E);
            for (float& x : q) {
                x = nd(rng);
            }
            // Outputs land in kv_head's heads; every other element keeps
            // the sentinel.
            const float sentinel = -12345.0f;
            std::vector<float> out(size_t(r.T) * E, sentinel);
            std::vector<float> scratch(detail::prefill_attn_scratch_floats(D, G * r.T) + 16,
                                       NAN); // stale scratch must not matter
            const auto at = (reinterpret_cast<uintptr_t>(scratch.data()) + 63) & ~uintptr_t{63};
            const size_t head0 = size_t(kv_head) * G * D;
            detail::prefill_attend_avx512({.kv = &kv,
                                           .layer = 0,
                                           .head = kv_head,
                                           .D = D,
                                           .G = G,
                                           .T = r.T,
                                           .pos0 = r.pos0,
                                           .q = q.data() + head0,
                                           .q_stride = E,
                                           .out = out.data() + head0,
                                           .out_stride = E,
                                           .scale = scale,
                                           .scratch = reinterpret_cast<float*>(at)});
            const auto want = expected(ks, vs, p.kv_dim(), kv_head, D, G, r.T, r.pos0,
                                       q.data() + head0, E, scale);
            double worst = 0;
            size_t touched = 0;
            for (uint32_t t = 0; t < r.T; ++t) {
                for (uint32_t e = 0; e < E; ++e) {
                    const float got = out[size_t(t) * E + e];
                    if (e < head0 || e >= head0 + size_t(G) * D) {
                        touched += got != sentinel;
                        continue;
                    }
                    const double w = want[size_t(t) * G * D + (e - head0)];
                    const double err = std::fabs(double(got) - w);
                    worst = std::isnan(err) ? INFINITY : std::max(worst, err);
                }
            }
            EXPECT_LE(worst, 2e-5) << "block " << block << ", pos0 " << r.pos0 << ", T " << r.T;
            EXPECT_EQ(touched, 0u) << "outside the KV head's query heads";
        }
    }
}

// TinyLlama and SmolLM (64 x 8 and 64 x 3), llama-2/3 style 128-wide heads
// (1 and 4 per KV head), the conformance model's 16 x 2, and 80 (not a
// power of two).
INSTANTIATE_TEST_SUITE_P(
    shapes, prefill_attention,
    ::testing::Values(head_shape{"d16_g2", 64, 4, 2}, head_shape{"d64_g3", 384, 6, 2},
                      head_shape{"d64_g8", 512, 8, 1}, head_shape{"d128_g1", 256, 2, 2},
                      head_shape{"d128_g4", 512, 4, 1}, head_shape{"d80_g2", 320, 4, 2}),
    [](const auto& info) { return std::string(info.param.name); });

// RoPE: both layouts, heads of 1 to 37 pairs (the AVX2 version's
// vectors of 8 and 4 pairs and its tails), against the rotation in
// double precision; on AVX2 a pair gets the same bits in a vector as in
// the tail.
TEST(rope, turns_every_pair_by_its_angle_in_both_layouts) {
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0.0f, 2.0f);
    for (const bool neox : {false, true}) {
        for (const uint32_t half : {1u, 3u, 4u, 5u, 8u, 13u, 20u, 32u, 37u}) {
            std::vector<float> v(2 * half), c(half), s(half);
            for (auto& x : v) {
                x = nd(rng);
            }
            for (uint32_t i = 0; i < half; ++i) {
                const double theta = 0.37 * (i + 1) * (half + 2);
                c[i] = static_cast<float>(std::cos(theta));
                s[i] = static_cast<float>(std::sin(theta));
            }
            std::vector<double> want(2 * half);
            for (uint32_t i = 0; i < half; ++i) {
                const uint32_t a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
                want[a] = double(v[a]) * c[i] - double(v[b]) * s[i];
                want[b] = double(v[a]) * s[i] + double(v[b]) * c[i];
            }
            std::vector<std::vector<float>> got{v};
            detail::rope_head(got[0].data(), half, neox, c.data(), s.data());
#if defined(__x86_64__)
            if (detected_simd() >= simd_level::avx2) {
                got.push_back(v);
                detail::rope_head_avx2(got[1].data(), half, neox, c.data(), s.data());
            }
#endif
            for (size_t k = 0; k < got.size(); ++k) {
                for (uint32_t j = 0; j < 2 * half; ++j) {
                    ASSERT_NEAR(got[k][j], want[j], 1e-6 * (std::fabs(want[j]) + 4))
                        << (k ? "avx2" : "portable") << (neox ? ", neox" : "") << ", half " << half
                        << ", element " << j;
                }
            }
#if defined(__x86_64__)
            if (got.size() == 2 && !neox) {
                // The first pairs again, as a head of 1..3 pairs: the tail.
                for (uint32_t n = 1; n <= std::min(half, 3u); ++n) {
                    std::vector<float> t(v.begin(), v.begin() + 2 * n);
                    detail::rope_head_avx2(t.data(), n, false, c.data(), s.data());
                    for (uint32_t j = 0; j < 2 * n; ++j) {
                        ASSERT_EQ(t[j], got[1][j]) << "half " << half << ", " << n << " pairs";
                    }
                }
            }
#endif
        }
    }
}

#if defined(__x86_64__)
// The kernel is chosen by what the tokens are, never by how many of them
// run together: a prompt cut into chunks of any length (one token
// included) gets the same kernel, so the same bits, for every token. A
// plain function of its arguments: it runs without AVX-512 too.
TEST(attention_kernel, is_chosen_by_what_the_tokens_are_not_how_many_there_are) {
    using detail::attn_kernel;
    const auto pick = [](simd_level l, kv_type t, uint32_t G, uint32_t D, token_kind k, size_t n) {
        return detail::attention_kernel(l, t, G, D, k, n);
    };
    for (const simd_level l : {simd_level::scalar, simd_level::avx2, simd_level::avx512}) {
        for (const kv_type t : {kv_type::f32, kv_type::f16}) {
            for (const uint32_t G : {1u, 2u, 3u, 4u, 8u, 12u}) {
                for (const uint32_t D : {16u, 24u, 64u, 80u, 128u, 512u}) {
                    SCOPED_TRACE(std::string(simd_name(l)) + (t == kv_type::f16 ? " f16" : " f32") +
                                 " G " + std::to_string(G) + " D " + std::to_string(D));
                    const attn_kernel prompt = pick(l, t, G, D, token_kind::prompt, 1);
                    const attn_kernel gen = pick(l, t, G, D, token_kind::generated, 1);
                    for (const size_t n : {1u, 2u, 3u, 7u, 8u, 15u, 16u, 17u, 31u, 64u, 300u}) {
                        EXPECT_EQ(pick(l, t, G, D, token_kind::prompt, n), prompt) << n;
                        EXPECT_EQ(pick(l, t, G, D, token_kind::generated, n), gen) << n;
                        // Unsaid: more than one token is a prompt's chunk.
                        EXPECT_EQ(pick(l, t, G, D, token_kind::automatic, n), n > 1 ? prompt : gen)
                            << n;
                    }
                    if (t == kv_type::f32 || l == simd_level::scalar) {
                        EXPECT_EQ(prompt, attn_kernel::generic);
                        EXPECT_EQ(gen, attn_kernel::generic);
                        continue;
                    }
                    // The one-token kernels take up to 8 heads a KV head.
                    const attn_kernel avx2 =
                        G <= 8 && D % 8 == 0 ? attn_kernel::one_token_avx2 : attn_kernel::generic;
                    if (l == simd_level::avx2) {
                        EXPECT_EQ(prompt, avx2);
                        EXPECT_EQ(gen, avx2);
                        continue;
                    }
                    EXPECT_EQ(prompt, D % 16 == 0 ? attn_kernel::prefill_avx512 : avx2);
                    EXPECT_EQ(gen, G <= 8 && D % 16 == 0 && D <= 256 ? attn_kernel::one_token_avx512
                                                                     : avx2);
                }
            }
        }
    }
}
#endif

} // namespace
