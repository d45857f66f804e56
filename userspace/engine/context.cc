// SPDX-License-Identifier: MIT
#include "attention.hh"
#include "quant_kernels.hh"
#include "step_batch.hh"
#if defined(__x86_64__)
#include "vec_avx512.hh"
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <llmos/engine/context.hh>
#include <llmos/engine/quant.hh>
#include <new>
#include <sched.h>
#include <utility>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace llmos::engine {

namespace {

int default_threads() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (::sched_getaffinity(0, sizeof(set), &set) == 0) {
        return std::max(1, CPU_COUNT(&set));
    }
    return 1;
}

template <typename T>
void grow(std::vector<T>& v, size_t n) {
    if (v.size() < n) {
        v.resize(n);
    }
}

/// grow() inside a thread pool's loop body, which must not throw: false
/// when there is no memory for `n`.
bool grow_scratch(std::vector<float>& v, size_t n) noexcept {
    try {
        grow(v, n);
        return true;
    } catch (const std::exception&) { // bad_alloc, length_error
        return false;
    }
}

/// The sum of squares in double: 8 partial sums (element i into sum i %
/// 8, as the AVX2 version's lanes), added pairwise, then the tail.
double sum_squares(const float* x, uint32_t n) {
    double s[8] = {};
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        for (int k = 0; k < 8; ++k) {
            s[k] += double(x[i + k]) * x[i + k];
        }
    }
    double ss = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
    for (; i < n; ++i) {
        ss += double(x[i]) * x[i];
    }
    return ss;
}

void rms_norm(const float* x, const float* w, float* y, uint32_t n, float eps) {
    const float scale = static_cast<float>(1.0 / std::sqrt(sum_squares(x, n) / n + eps));
    for (uint32_t i = 0; i < n; ++i) {
        y[i] = x[i] * scale * w[i];
    }
}

float dot(const float* a, const float* b, uint32_t n) {
    float s = 0;
    for (uint32_t i = 0; i < n; ++i) {
        s += a[i] * b[i];
    }
    return s;
}

float dot_f16(const float* a, const uint16_t* b, uint32_t n) {
    float s = 0;
    for (uint32_t i = 0; i < n; ++i) {
        s += a[i] * fp16_to_fp32(b[i]);
    }
    return s;
}

void axpy(float w, const float* x, float* y, uint32_t n) {
    for (uint32_t i = 0; i < n; ++i) {
        y[i] += w * x[i];
    }
}

void axpy_f16(float w, const uint16_t* x, float* y, uint32_t n) {
    for (uint32_t i = 0; i < n; ++i) {
        y[i] += w * fp16_to_fp32(x[i]);
    }
}

// g[i] = silu(g[i]) * up[i]: SwiGLU's gate.
void silu_mul(float* g, const float* up, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        g[i] = g[i] / (1.0f + std::exp(-g[i])) * up[i];
    }
}

#if defined(__x86_64__)
#define LLMOS_AVX2 __attribute__((target("avx2,fma,f16c")))

LLMOS_AVX2 float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

LLMOS_AVX2 float dot_avx2(const float* a, const float* b, uint32_t n) {
    __m256 acc = _mm256_setzero_ps();
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    }
    float s = hsum(acc);
    for (; i < n; ++i) {
        s += a[i] * b[i];
    }
    return s;
}

LLMOS_AVX2 float dot_f16_avx2(const float* a, const uint16_t* b, uint32_t n) {
    __m256 acc = _mm256_setzero_ps();
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 bf = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i)));
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), bf, acc);
    }
    float s = hsum(acc);
    for (; i < n; ++i) {
        s += a[i] * fp16_to_fp32(b[i]);
    }
    return s;
}

LLMOS_AVX2 void axpy_avx2(float w, const float* x, float* y, uint32_t n) {
    const __m256 wv = _mm256_set1_ps(w);
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(y + i,
                         _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    }
    for (; i < n; ++i) {
        y[i] += w * x[i];
    }
}

LLMOS_AVX2 void axpy_f16_avx2(float w, const uint16_t* x, float* y, uint32_t n) {
    const __m256 wv = _mm256_set1_ps(w);
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 xf = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(wv, xf, _mm256_loadu_ps(y + i)));
    }
    for (; i < n; ++i) {
        y[i] += w * fp16_to_fp32(x[i]);
    }
}

// e^x for 8 floats: x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two
// so r is exact to float precision), e^r by its Taylor series to r^6
// (relative error below 2e-7), 2^n put into the exponent. x is clamped
// to [-87.3, 88.7]: no infinities, no denormals.
LLMOS_AVX2 __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.7f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
}

// g[i] = silu(g[i]) * up[i].
LLMOS_AVX2 void silu_mul_avx2(float* g, const float* up, size_t n) {
    size_t i = 0;
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
        const __m256 s = _mm256_div_ps(x, _mm256_add_ps(one, e));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
    }
    silu_mul(g + i, up + i, n - i);
}

// rms_norm with the sum of squares in two vectors of 4 doubles (the same
// partial sums, added in the same order, as sum_squares).
LLMOS_AVX2 void rms_norm_avx2(const float* x, const float* w, float* y, uint32_t n, float eps) {
    __m256d lo = _mm256_setzero_pd();
    __m256d hi = _mm256_setzero_pd();
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256d a = _mm256_cvtps_pd(_mm_loadu_ps(x + i));
        const __m256d b = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4));
        lo = _mm256_add_pd(lo, _mm256_mul_pd(a, a));
        hi = _mm256_add_pd(hi, _mm256_mul_pd(b, b));
    }
    // Lane k of lo + hi is s[k] + s[k + 4].
    alignas(32) double pl[4];
    _mm256_store_pd(pl, _mm256_add_pd(lo, hi));
    double ss = (pl[0] + pl[1]) + (pl[2] + pl[3]);
    for (; i < n; ++i) {
        ss += double(x[i]) * x[i];
    }
    const __m256 scale = _mm256_set1_ps(static_cast<float>(1.0 / std::sqrt(ss / n + eps)));
    for (i = 0; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), scale),
                                              _mm256_loadu_ps(w + i)));
    }
    for (; i < n; ++i) {
        y[i] = x[i] * _mm256_cvtss_f32(scale) * w[i];
    }
}

// Softmax of `rows` rows of n scores, `stride` apart, in place.
LLMOS_AVX2 void softmax_rows_avx2(float* scores, size_t stride, uint32_t rows, uint32_t n) {
    for (uint32_t h = 0; h < rows; ++h) {
        float* sc = scores + size_t(h) * stride;
        __m256 mv = _mm256_set1_ps(-INFINITY);
        uint32_t j = 0;
        for (; j + 8 <= n; j += 8) {
            mv = _mm256_max_ps(mv, _mm256_loadu_ps(sc + j));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float mx = _mm_cvtss_f32(m4);
        for (uint32_t k = j; k < n; ++k) {
            mx = std::max(mx, sc[k]);
        }
        const __m256 mxv = _mm256_set1_ps(mx);
        __m256 sv = _mm256_setzero_ps();
        for (j = 0; j + 8 <= n; j += 8) {
            const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(sc + j), mxv));
            _mm256_storeu_ps(sc + j, e);
            sv = _mm256_add_ps(sv, e);
        }
        double sum = hsum(sv);
        for (; j < n; ++j) {
            sc[j] = std::exp(sc[j] - mx);
            sum += sc[j];
        }
        const __m256 inv = _mm256_set1_ps(static_cast<float>(1.0 / sum));
        for (j = 0; j + 8 <= n; j += 8) {
            _mm256_storeu_ps(sc + j, _mm256_mul_ps(_mm256_loadu_ps(sc + j), inv));
        }
        for (; j < n; ++j) {
            sc[j] *= static_cast<float>(1.0 / sum);
        }
    }
}

// One token's attention for the `G` query heads that share a KV head, over
// an F16 cache: each K and V row is widened once for all G heads (the
// heads' accumulators stay in registers), and rows are walked block by
// block rather than looked up one position at a time. D is a multiple of
// 8 * NC.
using f16_attn_args = detail::one_token_attn_args;

template <int G>
LLMOS_AVX2 void f16_scores(const f16_attn_args& a) {
    const uint32_t bt = a.kv->block_tokens();
    for (uint32_t j0 = 0; j0 < a.n; j0 += bt) {
        const auto* rows = static_cast<const uint16_t*>(a.kv->k_row(a.layer, j0, a.head));
        const uint32_t m = std::min(bt, a.n - j0);
        for (uint32_t s = 0; s < m; ++s) {
            const uint16_t* k = rows + size_t(s) * a.D;
            __m256 acc[G];
#pragma GCC unroll 8
            for (int h = 0; h < G; ++h) {
                acc[h] = _mm256_setzero_ps();
            }
            for (uint32_t d = 0; d < a.D; d += 8) {
                const __m256 kf =
                    _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(k + d)));
#pragma GCC unroll 8
                for (int h = 0; h < G; ++h) {
                    acc[h] =
                        _mm256_fmadd_ps(_mm256_loadu_ps(a.q + size_t(h) * a.D + d), kf, acc[h]);
                }
            }
#pragma GCC unroll 8
            for (int h = 0; h < G; ++h) {
                a.scores[size_t(h) * a.stride + j0 + s] = hsum(acc[h]) * a.scale;
            }
        }
    }
}

template <int G, int NC>
LLMOS_AVX2 void f16_values(const f16_attn_args& a) {
    const uint32_t bt = a.kv->block_tokens();
    for (uint32_t dc = 0; dc < a.D; dc += 8 * NC) {
        __m256 acc[G][NC];
#pragma GCC unroll 8
        for (int h = 0; h < G; ++h) {
#pragma GCC unroll 8
            for (int c = 0; c < NC; ++c) {
                acc[h][c] = _mm256_setzero_ps();
            }
        }
        for (uint32_t j0 = 0; j0 < a.n; j0 += bt) {
            const auto* rows = static_cast<const uint16_t*>(a.kv->v_row(a.layer, j0, a.head)) + dc;
            const uint32_t m = std::min(bt, a.n - j0);
            for (uint32_t s = 0; s < m; ++s) {
                const uint16_t* v = rows + size_t(s) * a.D;
                __m256 vf[NC];
#pragma GCC unroll 8
                for (int c = 0; c < NC; ++c) {
                    vf[c] = _mm256_cvtph_ps(
                        _mm_loadu_si128(reinterpret_cast<const __m128i*>(v + 8 * c)));
                }
#pragma GCC unroll 8
                for (int h = 0; h < G; ++h) {
                    const __m256 w = _mm256_broadcast_ss(a.scores + size_t(h) * a.stride + j0 + s);
#pragma GCC unroll 8
                    for (int c = 0; c < NC; ++c) {
                        acc[h][c] = _mm256_fmadd_ps(w, vf[c], acc[h][c]);
                    }
                }
            }
        }
#pragma GCC unroll 8
        for (int h = 0; h < G; ++h) {
#pragma GCC unroll 8
            for (int c = 0; c < NC; ++c) {
                _mm256_storeu_ps(a.out + size_t(h) * a.D + dc + 8 * c, acc[h][c]);
            }
        }
    }
}

template <int G>
void f16_attend(const f16_attn_args& a) {
    f16_scores<G>(a);
    softmax_rows_avx2(a.scores, a.stride, G, a.n);
    // As many 8-float columns per pass as the registers hold for G heads.
    constexpr int nc = G <= 2 ? 4 : (G <= 5 ? 2 : 1);
    if (a.D % (8 * nc) == 0) {
        f16_values<G, nc>(a);
    } else {
        f16_values<G, 1>(a);
    }
}

using f16_attend_fn = detail::one_token_attend_fn;

// The kernel for `group` query heads per KV head and head size `D`, or
// nullptr (the generic loops then run).
f16_attend_fn f16_attend_for(uint32_t group, uint32_t D) {
    if (D % 8 != 0) {
        return nullptr;
    }
    switch (group) {
    case 1:
        return f16_attend<1>;
    case 2:
        return f16_attend<2>;
    case 3:
        return f16_attend<3>;
    case 4:
        return f16_attend<4>;
    case 5:
        return f16_attend<5>;
    case 6:
        return f16_attend<6>;
    case 7:
        return f16_attend<7>;
    case 8:
        return f16_attend<8>;
    default:
        return nullptr;
    }
}
#endif

// The attention inner loops, picked once per step by the SIMD level.
struct attn_kernels {
    float (*dot)(const float*, const float*, uint32_t) = llmos::engine::dot;
    float (*dot_f16)(const float*, const uint16_t*, uint32_t) = llmos::engine::dot_f16;
    void (*axpy)(float, const float*, float*, uint32_t) = llmos::engine::axpy;
    void (*axpy_f16)(float, const uint16_t*, float*, uint32_t) = llmos::engine::axpy_f16;
};

attn_kernels kernels_for(simd_level l) {
    attn_kernels k;
#if defined(__x86_64__)
    if (l >= simd_level::avx2) {
        k.dot = dot_avx2;
        k.dot_f16 = dot_f16_avx2;
        k.axpy = axpy_avx2;
        k.axpy_f16 = axpy_f16_avx2;
    }
#else
    (void)l;
#endif
    return k;
}

} // namespace

std::string_view step_status_name(step_status s) noexcept {
    switch (s) {
    case step_status::ok:
        return "ok";
    case step_status::too_many_tokens:
        return "too many tokens in one step";
    case step_status::cache_full:
        return "KV cache full";
    case step_status::bad_token:
        return "token id outside the vocabulary";
    case step_status::bad_batch:
        return "bad batch";
    case step_status::compute_error:
        return "compute error";
    case step_status::no_memory:
        return "no memory for a thread's scratch";
    }
    return "?";
}

context::context(const model& m, context_options o)
    : _m(m)
    , _o(o) {
    if (_o.n_threads <= 0) {
        _o.n_threads = default_threads();
    }
    _o.kernels = std::min(_o.kernels, detected_simd());
    if (!_o.max_batch_tokens) {
        _o.max_batch_tokens = 1;
    }
    _pool = std::make_unique<thread_pool>(_o.n_threads);
    const model_params& p = m.params();
    auto freqs = m.rope_freqs();
    for (uint32_t i = 0; i < p.n_rot / 2; ++i) {
        double f = std::pow(double(p.rope_base), -2.0 * i / p.n_rot);
        if (!freqs.empty() && freqs[i] > 0) {
            f /= freqs[i];
        }
        _inv_freq.push_back(f);
    }
}

context::~context() = default;

namespace detail {

void rope_head(float* v, uint32_t half, bool neox, const float* c, const float* s) noexcept {
    for (uint32_t i = 0; i < half; ++i) {
        const uint32_t a = neox ? i : 2 * i;
        const uint32_t b = neox ? i + half : 2 * i + 1;
        const float x0 = v[a], x1 = v[b];
        v[a] = x0 * c[i] - x1 * s[i];
        v[b] = x1 * c[i] + x0 * s[i];
    }
}

#if defined(__x86_64__)
// Explicit fused multiply-adds, in the vectors and the tails alike: a
// pair gets the same bits wherever it falls (the compiler is not left to
// contract some products and not others).
LLMOS_AVX2 void rope_head_avx2(float* v, uint32_t half, bool neox, const float* c,
                               const float* s) noexcept {
    uint32_t i = 0;
    if (neox) {
        float* v1 = v + half;
        for (; i + 8 <= half; i += 8) {
            const __m256 x0 = _mm256_loadu_ps(v + i);
            const __m256 x1 = _mm256_loadu_ps(v1 + i);
            const __m256 cv = _mm256_loadu_ps(c + i);
            const __m256 sv = _mm256_loadu_ps(s + i);
            _mm256_storeu_ps(v + i, _mm256_fmsub_ps(x0, cv, _mm256_mul_ps(x1, sv)));
            _mm256_storeu_ps(v1 + i, _mm256_fmadd_ps(x1, cv, _mm256_mul_ps(x0, sv)));
        }
        for (; i < half; ++i) {
            const float x0 = v[i], x1 = v1[i];
            v[i] = std::fma(x0, c[i], -(x1 * s[i]));
            v1[i] = std::fma(x1, c[i], x0 * s[i]);
        }
        return;
    }
    // Four pairs a vector: each angle's cos and sin twice, the pairs'
    // halves swapped, and fmaddsub: x0 c - x1 s in even lanes, x1 c + x0 s
    // in odd ones.
    for (; i + 4 <= half; i += 4) {
        const __m128 c4 = _mm_loadu_ps(c + i);
        const __m128 s4 = _mm_loadu_ps(s + i);
        const __m256 cv = _mm256_set_m128(_mm_unpackhi_ps(c4, c4), _mm_unpacklo_ps(c4, c4));
        const __m256 sv = _mm256_set_m128(_mm_unpackhi_ps(s4, s4), _mm_unpacklo_ps(s4, s4));
        const __m256 x = _mm256_loadu_ps(v + 2 * i);
        const __m256 swapped = _mm256_permute_ps(x, _MM_SHUFFLE(2, 3, 0, 1));
        _mm256_storeu_ps(v + 2 * i, _mm256_fmaddsub_ps(x, cv, _mm256_mul_ps(swapped, sv)));
    }
    for (; i < half; ++i) {
        const float x0 = v[2 * i], x1 = v[2 * i + 1];
        v[2 * i] = std::fma(x0, c[i], -(x1 * s[i]));
        v[2 * i + 1] = std::fma(x1, c[i], x0 * s[i]);
    }
}
#endif

attn_kernel attention_kernel(simd_level level, kv_type type, uint32_t G, uint32_t D,
                             token_kind kind, size_t n_tokens) noexcept {
#if defined(__x86_64__)
    if (type != kv_type::f16 || level < simd_level::avx2) {
        return attn_kernel::generic;
    }
    const bool prompt =
        kind == token_kind::prompt || (kind == token_kind::automatic && n_tokens > 1);
    if (level >= simd_level::avx512) {
        if (prompt && D % 16 == 0) {
            return attn_kernel::prefill_avx512;
        }
        if (one_token_attend_avx512(G, D)) {
            return attn_kernel::one_token_avx512;
        }
    }
    return f16_attend_for(G, D) ? attn_kernel::one_token_avx2 : attn_kernel::generic;
#else
    (void)level, (void)type, (void)G, (void)D, (void)kind, (void)n_tokens;
    return attn_kernel::generic;
#endif
}

} // namespace detail

void context::rope_angles(uint32_t pos, float* cs) const {
    const model_params& p = _m.params();
    const uint32_t half = p.n_rot / 2;
    const double at = double(pos) / p.rope_scale;
    for (uint32_t i = 0; i < half; ++i) {
        const double theta = at * _inv_freq[i];
        cs[i] = static_cast<float>(std::cos(theta));
        cs[half + i] = static_cast<float>(std::sin(theta));
    }
}

void context::rope(float* x, uint32_t n_heads, const float* cs) const {
    const model_params& p = _m.params();
    const uint32_t half = p.n_rot / 2;
    void (*head)(float*, uint32_t, bool, const float*, const float*) noexcept = detail::rope_head;
#if defined(__x86_64__)
    if (_o.kernels >= simd_level::avx2) {
        head = detail::rope_head_avx2;
    }
#endif
    for (uint32_t h = 0; h < n_heads; ++h) {
        head(x + size_t(h) * p.head_dim, half, p.neox_rope, cs, cs + half);
    }
}

bool context::attention(std::span<batch_entry> batch, uint32_t layer) {
    const model_params& p = _m.params();
    const uint32_t D = p.head_dim, E = p.n_embd, HKV = p.n_head_kv;
    const uint32_t group = p.n_head / p.n_head_kv;
    const float scale = 1.0f / std::sqrt(float(D));
    const attn_kernels kern = kernels_for(_o.kernels);
    _jobs.clear();
    for (size_t i = 0; i < batch.size(); ++i) {
        const size_t n = batch[i].tokens.size();
        // By what the tokens are, never by how many share a job: a
        // prompt's tokens get the same bits in chunks of any size.
        const detail::attn_kernel k =
            detail::attention_kernel(_o.kernels, batch[i].kv->type(), group, D, batch[i].kind, n);
        // Tokens of one job. The prefill kernel widens each K and V row
        // once per job for all its queries: at least 64 of them (16 tokens
        // or more, a multiple of 16) keep that cost small against the
        // FMAs, while the jobs stay many enough to share out.
        const size_t chunk = k == detail::attn_kernel::prefill_avx512
                                 ? std::max<size_t>(16, (64 / group + 15) / 16 * 16)
                                 : 16;
        for (uint32_t g = 0; g < HKV; ++g) {
            for (size_t t = 0; t < n; t += chunk) {
                _jobs.push_back({uint32_t(i), g, uint32_t(t), uint32_t(std::min(n, t + chunk)), k});
            }
        }
    }
#if defined(__x86_64__)
    const f16_attend_fn one_avx512 =
        _o.kernels >= simd_level::avx512 ? detail::one_token_attend_avx512(group, D) : nullptr;
    const f16_attend_fn one_avx2 =
        _o.kernels >= simd_level::avx2 ? f16_attend_for(group, D) : nullptr;
#endif
    // A thread's scratch grows inside the loop, whose body must not throw:
    // a thread without memory for it skips its jobs and says so here.
    std::atomic<bool> no_memory{false};
    // One job: a KV head's query heads over a run of tokens. Each K and V
    // row is read once for all the query heads that share it.
    _pool->parallel_for(static_cast<int64_t>(_jobs.size()), [&](int64_t begin, int64_t end) {
        for (int64_t jb = begin; jb < end; ++jb) {
            const attn_job& job = _jobs[size_t(jb)];
            const batch_entry& e = batch[job.entry];
            const kv_cache& kv = *e.kv;
            const bool f16 = kv.type() == kv_type::f16;
#if defined(__x86_64__)
            if (job.kernel == detail::attn_kernel::prefill_avx512) {
                const uint32_t M = (job.t1 - job.t0) * group;
                // Per thread, grown to the largest job it met (64-byte aligned).
                thread_local std::vector<float> scratch;
                if (!grow_scratch(scratch, detail::prefill_attn_scratch_floats(D, M) + 16)) {
                    no_memory.store(true, std::memory_order_relaxed);
                    continue;
                }
                const auto at = (reinterpret_cast<uintptr_t>(scratch.data()) + 63) & ~uintptr_t{63};
                const size_t r0 = _first[job.entry] + job.t0;
                detail::prefill_attend_avx512(
                    {.kv = &kv,
                     .layer = layer,
                     .head = job.kv_head,
                     .D = D,
                     .G = group,
                     .T = job.t1 - job.t0,
                     .pos0 = _pos0[job.entry] + job.t0,
                     .q = _q.data() + r0 * E + size_t(job.kv_head) * group * D,
                     .q_stride = E,
                     .out = _att.data() + r0 * E + size_t(job.kv_head) * group * D,
                     .out_stride = E,
                     .scale = scale,
                     .scratch = reinterpret_cast<float*>(at)});
                continue;
            }
#endif
            // Scores of the job's query heads over its positions, per
            // thread: grown to the longest job the thread met (one
            // sequence's length, not the batch's longest for every job).
            const size_t max_len = size_t(_pos0[job.entry]) + job.t1;
            thread_local std::vector<float> job_scores;
            if (!grow_scratch(job_scores, group * max_len)) {
                no_memory.store(true, std::memory_order_relaxed);
                continue;
            }
            float* scores = job_scores.data();
#if defined(__x86_64__)
            const f16_attend_fn fast =
                job.kernel == detail::attn_kernel::one_token_avx512 ? one_avx512
                : job.kernel == detail::attn_kernel::one_token_avx2 ? one_avx2
                                                                    : nullptr;
#endif
            for (uint32_t t = job.t0; t < job.t1; ++t) {
                const size_t r = _first[job.entry] + t;
                const uint32_t pos = _pos0[job.entry] + t;
                const float* q0 = _q.data() + r * E + size_t(job.kv_head) * group * D;
#if defined(__x86_64__)
                if (fast) {
                    fast({.kv = &kv,
                          .layer = layer,
                          .head = job.kv_head,
                          .D = D,
                          .n = pos + 1,
                          .q = q0,
                          .out = _att.data() + r * E + size_t(job.kv_head) * group * D,
                          .scores = scores,
                          .stride = max_len,
                          .scale = scale});
                    continue;
                }
#endif
                for (uint32_t j = 0; j <= pos; ++j) {
                    const void* k = kv.k_row(layer, j, job.kv_head);
                    for (uint32_t h = 0; h < group; ++h) {
                        const float* q = q0 + size_t(h) * D;
                        float s = f16 ? kern.dot_f16(q, static_cast<const uint16_t*>(k), D)
                                      : kern.dot(q, static_cast<const float*>(k), D);
                        scores[size_t(h) * max_len + j] = s * scale;
                    }
                }
                float* out0 = _att.data() + r * E + size_t(job.kv_head) * group * D;
                for (uint32_t h = 0; h < group; ++h) {
                    float* sc = scores + size_t(h) * max_len;
                    float mx = -INFINITY;
                    for (uint32_t j = 0; j <= pos; ++j) {
                        mx = std::max(mx, sc[j]);
                    }
                    double sum = 0;
                    for (uint32_t j = 0; j <= pos; ++j) {
                        sc[j] = std::exp(sc[j] - mx);
                        sum += sc[j];
                    }
                    const float inv = static_cast<float>(1.0 / sum);
                    for (uint32_t j = 0; j <= pos; ++j) {
                        sc[j] *= inv;
                    }
                    std::fill(out0 + size_t(h) * D, out0 + size_t(h + 1) * D, 0.0f);
                }
                for (uint32_t j = 0; j <= pos; ++j) {
                    const void* v = kv.v_row(layer, j, job.kv_head);
                    for (uint32_t h = 0; h < group; ++h) {
                        const float w = scores[size_t(h) * max_len + j];
                        float* out = out0 + size_t(h) * D;
                        if (f16) {
                            kern.axpy_f16(w, static_cast<const uint16_t*>(v), out, D);
                        } else {
                            kern.axpy(w, static_cast<const float*>(v), out, D);
                        }
                    }
                }
            }
        }
    });
    return !no_memory.load(std::memory_order_relaxed);
}

bool context::mm(const weight_view& w, const float* x, size_t n_tokens, float* y) {
    if (!_o.exact_activations || detail::act_format_of(w.type) == detail::act_format::f32) {
        return matmul(w, x, static_cast<int64_t>(n_tokens), y, *_pool, _o.kernels,
                      _o.activations) == matmul_status::ok;
    }
    const auto rb = *row_bytes(w.type, static_cast<uint64_t>(w.cols));
    const int64_t chunk = 16;
    const int64_t jobs = (w.rows + chunk - 1) / chunk;
    grow(_wide, static_cast<size_t>(jobs * w.cols));
    _pool->parallel_for(jobs, [&](int64_t b, int64_t e) {
        for (int64_t j = b; j < e; ++j) {
            float* row = _wide.data() + j * w.cols;
            for (int64_t r = j * chunk; r < std::min(w.rows, (j + 1) * chunk); ++r) {
                dequantize_row(w.type, static_cast<const std::byte*>(w.data) + rb * size_t(r), row,
                               w.cols);
                for (size_t t = 0; t < n_tokens; ++t) {
                    double s = 0;
                    const float* xt = x + t * size_t(w.cols);
                    for (int64_t k = 0; k < w.cols; ++k) {
                        s += double(row[k]) * xt[k];
                    }
                    y[t * size_t(w.rows) + size_t(r)] = static_cast<float>(s);
                }
            }
        }
    });
    return true;
}

bool context::mm_many(std::span<const mm_job> jobs, const float* x, size_t n_tokens) {
    if (_o.exact_activations) {
        for (const mm_job& j : jobs) {
            if (!mm(*j.w, x, n_tokens, j.y)) {
                return false;
            }
        }
        return true;
    }
    if (n_tokens != 1 || _pool->size() == 1) {
        // x quantized once for all the matrices that read it alike.
        return matmul_many(jobs, x, static_cast<int64_t>(n_tokens), *_pool, _o.kernels,
                           _o.activations) == matmul_status::ok;
    }
    // One token: the matrices' rows in chunks of one loop, so the threads
    // meet once for all of them rather than once per matrix.
    _pieces.clear();
    const int64_t target = 4 * _pool->size();
    int64_t total = 0;
    for (const mm_job& j : jobs) {
        total += j.w->rows;
    }
    // Whole groups of packed rows, so that every piece keeps the packing.
    const int64_t rows_per =
        (std::max<int64_t>(32, (total + target - 1) / target) + packed_row_group - 1) /
        packed_row_group * packed_row_group;
    for (const mm_job& j : jobs) {
        for (int64_t r = 0; r < j.w->rows; r += rows_per) {
            _pieces.push_back({&j, r, std::min(j.w->rows, r + rows_per)});
        }
    }
    std::atomic<bool> ok{true}, no_memory{false};
    _pool->parallel_for(static_cast<int64_t>(_pieces.size()), [&](int64_t b, int64_t e) {
        for (int64_t p = b; p < e; ++p) {
            const auto& pc = _pieces[size_t(p)];
            const weight_view sub = sub_rows(*pc.job->w, pc.r0, pc.r1);
            // Inside the pool's loop, matmul runs on this thread alone,
            // with its thread's scratch, which may grow here: no memory
            // for it fails the step (the loop may not throw).
            try {
                if (matmul(sub, x, 1, pc.job->y + pc.r0, *_pool, _o.kernels, _o.activations) !=
                    matmul_status::ok) {
                    ok = false;
                }
            } catch (const std::bad_alloc&) {
                no_memory = true;
                ok = false;
            }
        }
    });
    _mm_no_memory = no_memory.load();
    return ok;
}

step_status context::step(std::span<batch_entry> batch) {
    const model_params& p = _m.params();
    const uint32_t E = p.n_embd, KV = p.kv_dim(), F = p.n_ff, V = p.n_vocab;
    size_t T = 0;
    if (step_status st = detail::check_batch(batch, p, _o.max_batch_tokens, T);
        st != step_status::ok) {
        return st;
    }
    if (T == 0) {
        return step_status::ok;
    }
    _first.assign(batch.size(), 0);
    _pos0.assign(batch.size(), 0);
    for (size_t i = 0, row = 0; i < batch.size(); ++i) {
        _first[i] = static_cast<uint32_t>(row);
        _pos0[i] = batch[i].kv->n_tokens();
        row += batch[i].tokens.size();
    }
    if (step_status st = detail::reserve_batch(batch); st != step_status::ok) {
        return st;
    }
    // Each row's sequence, and its RoPE angles (the same in every layer).
    _row_entry.resize(T);
    grow(_rope_cs, T * p.n_rot);
    for (size_t i = 0; i < batch.size(); ++i) {
        for (size_t t = 0; t < batch[i].tokens.size(); ++t) {
            _row_entry[_first[i] + t] = static_cast<uint32_t>(i);
            rope_angles(_pos0[i] + uint32_t(t), _rope_cs.data() + (_first[i] + t) * p.n_rot);
        }
    }
    grow(_x, T * E);
    grow(_xn, T * E);
    grow(_q, T * E);
    grow(_att, T * E);
    grow(_k, T * KV);
    grow(_v, T * KV);
    grow(_gate, T * F);
    grow(_up, T * F);

    // Embeddings.
    for (size_t i = 0; i < batch.size(); ++i) {
        for (size_t t = 0; t < batch[i].tokens.size(); ++t) {
            _m.embed(batch[i].tokens[t], _x.data() + (_first[i] + t) * E);
        }
    }
    auto mm = [&](const weight_view& w, const float* in, float* out) {
        return this->mm(w, in, T, out);
    };
    void (*silu)(float*, const float*, size_t) = silu_mul;
    void (*norm)(const float*, const float*, float*, uint32_t, float) = rms_norm;
#if defined(__x86_64__)
    if (_o.kernels >= simd_level::avx2) {
        silu = _o.kernels >= simd_level::avx512 ? detail::silu_mul_avx512 : silu_mul_avx2;
        norm = rms_norm_avx2;
    }
#endif
    // Whether _xn holds a sublayer's output still to be added to _x (the
    // residual): the next norm's loop adds it, row by row, before norming.
    bool residual = false;
    auto add_row = [&](size_t t) {
        float* __restrict x = _x.data() + t * E;
        const float* __restrict y = _xn.data() + t * E;
        for (uint32_t j = 0; j < E; ++j) {
            x[j] += y[j];
        }
    };
    auto norm_all = [&](std::span<const float> w) {
        auto rows = [&](int64_t b, int64_t e) {
            for (int64_t t = b; t < e; ++t) {
                if (residual) {
                    add_row(size_t(t));
                }
                norm(_x.data() + t * E, w.data(), _xn.data() + t * E, E, p.rms_eps);
            }
        };
        if (T < 8) {
            rows(0, static_cast<int64_t>(T)); // not worth waking the threads
        } else {
            _pool->parallel_for(static_cast<int64_t>(T), rows);
        }
        residual = false;
    };
    auto add_bias = [&](float* y, std::span<const float> b, uint32_t width) {
        if (b.empty()) {
            return;
        }
        for (size_t t = 0; t < T; ++t) {
            for (uint32_t j = 0; j < width; ++j) {
                y[t * width + j] += b[j];
            }
        }
    };

    // mm_many() failed: for want of memory, or a kernel refused.
    auto mm_failed = [&] {
        return std::exchange(_mm_no_memory, false) ? step_status::no_memory
                                                   : step_status::compute_error;
    };
    for (uint32_t l = 0; l < p.n_layer; ++l) {
        const layer_weights& w = _m.layers()[l];
        norm_all(w.attn_norm);
        const mm_job qkv[] = {{&w.wq, _q.data()}, {&w.wk, _k.data()}, {&w.wv, _v.data()}};
        if (!mm_many(qkv, _xn.data(), T)) {
            return mm_failed();
        }
        add_bias(_q.data(), w.bq, E);
        add_bias(_k.data(), w.bk, KV);
        add_bias(_v.data(), w.bv, KV);
        // Each row on its own: RoPE, then its K and V into its cache.
        auto place = [&](int64_t b, int64_t e) {
            for (int64_t r = b; r < e; ++r) {
                const size_t i = _row_entry[size_t(r)];
                const uint32_t pos = _pos0[i] + uint32_t(size_t(r) - _first[i]);
                const float* cs = _rope_cs.data() + size_t(r) * p.n_rot;
                rope(_q.data() + size_t(r) * E, p.n_head, cs);
                rope(_k.data() + size_t(r) * KV, p.n_head_kv, cs);
                batch[i].kv->write(l, pos, _k.data() + size_t(r) * KV, _v.data() + size_t(r) * KV);
            }
        };
        if (T < 8) {
            place(0, static_cast<int64_t>(T));
        } else {
            _pool->parallel_for(static_cast<int64_t>(T), place);
        }
        if (!attention(batch, l)) {
            return step_status::no_memory;
        }
        if (!mm(w.wo, _att.data(), _xn.data())) {
            return step_status::compute_error;
        }
        residual = true;
        norm_all(w.ffn_norm);
        const mm_job gate_up[] = {{&w.w_gate, _gate.data()}, {&w.w_up, _up.data()}};
        if (!mm_many(gate_up, _xn.data(), T)) {
            return mm_failed();
        }
        // Row by row: a row's elements fall on the same vector lanes (and
        // the same tail) whatever range of rows a thread is handed.
        auto swiglu = [&](int64_t b, int64_t e) {
            for (int64_t t = b; t < e; ++t) {
                silu(_gate.data() + size_t(t) * F, _up.data() + size_t(t) * F, F);
            }
        };
        if (T < 8) {
            swiglu(0, static_cast<int64_t>(T));
        } else {
            _pool->parallel_for(static_cast<int64_t>(T), swiglu);
        }
        if (!mm(w.w_down, _gate.data(), _xn.data())) {
            return step_status::compute_error;
        }
        residual = true; // added by the next layer's norm, or below
    }

    // Logits of the rows asked for, gathered into one matrix.
    size_t R = 0;
    for (auto& e : batch) {
        R += detail::logit_rows(e);
    }
    if (R) {
        grow(_rows, R * E + R * size_t(V));
        float* rows = _rows.data();
        float* out = rows + R * E;
        size_t r = 0;
        for (size_t i = 0; i < batch.size(); ++i) {
            const batch_entry& e = batch[i];
            const size_t n = detail::logit_rows(e);
            size_t from = _first[i] + e.tokens.size() - n;
            for (size_t t = 0; t < n; ++t, ++r) {
                if (residual) { // the last layer's (only these rows need it)
                    add_row(from + t);
                }
                norm(_x.data() + (from + t) * E, _m.output_norm().data(), rows + r * E, E,
                     p.rms_eps);
            }
        }
        if (!this->mm(_m.output(), rows, R, out)) {
            return step_status::compute_error;
        }
        detail::scatter_logits(batch, out, V);
    }
    for (auto& e : batch) {
        e.kv->commit(e.tokens);
    }
    return step_status::ok;
}

} // namespace llmos::engine
