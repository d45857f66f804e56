// SPDX-License-Identifier: MIT
//
// AVX2 + FMA + F16C dot kernels and activation quantizers. Each function
// carries the target attribute itself (no file-wide flags), so the library
// still runs on CPUs without AVX2: matmul only calls in here after
// detected_simd() said yes.
//
// One call handles one weight row and NT (1..max_tile) activation rows:
// the weight block is loaded and unpacked once, then multiplied into each
// token's accumulator. Integer products: Q8_0 uses the sign trick
// (|w| * sign(x, w) through maddubs); the 4, 5 and 6 bit weights are
// unsigned and go into maddubs as they are, their offsets (Q4_0's 8,
// Q6_K's 32, the K-quant mins) applied through the activation sums.
#include "quant_kernels.hh"

#include <cmath>
#include <immintrin.h>

#define LLMOS_AVX2 __attribute__((target("avx2,fma,f16c")))
#define LLMOS_AVX2_INLINE LLMOS_AVX2 inline __attribute__((always_inline))

namespace llmos::engine::detail {

namespace {

LLMOS_AVX2_INLINE float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

LLMOS_AVX2_INLINE float hmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

LLMOS_AVX2_INLINE float half(uint16_t h) {
    return _cvtsh_ss(h);
}

LLMOS_AVX2_INLINE __m256i load(const void* p) {
    return _mm256_loadu_si256(static_cast<const __m256i*>(p));
}

/// Sum of products of 32 unsigned (u) by 32 signed (s) bytes, as 8 int32
/// lanes. u * s pairs must fit int16 (u <= 128 with |s| <= 127).
LLMOS_AVX2_INLINE __m256i dot_u8_i8(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

/// Same, each int16 pair sum weighted by `scale` (int16 lanes) first.
LLMOS_AVX2_INLINE __m256i dot_u8_i8_scaled(__m256i u, __m256i s, __m256i scale) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scale);
}

template <typename Block>
const Block* act_row(const void* act, size_t stride, int t) {
    return reinterpret_cast<const Block*>(static_cast<const std::byte*>(act) +
                                          static_cast<size_t>(t) * stride);
}

// ---- activations -----------------------------------------------------------

/// 8 floats times id, rounded to nearest even, as int32 (|v * id| <= 127
/// by construction of id).
LLMOS_AVX2_INLINE __m256i round8(const float* x, __m256 id) {
    return _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), id));
}

/// 32 int32 lanes (4 vectors) to 32 int8 in order.
LLMOS_AVX2_INLINE __m256i pack32(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i ab = _mm256_packs_epi32(a, b);
    const __m256i cd = _mm256_packs_epi32(c, d);
    const __m256i abcd = _mm256_packs_epi16(ab, cd);
    return _mm256_permutevar8x32_epi32(abcd, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

LLMOS_AVX2_INLINE float absmax(const float* x, int n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (int j = 0; j < n; j += 8) {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)));
    }
    return hmax(m);
}

LLMOS_AVX2 void quantize_act_q8_32(const float* x, void* dst, int64_t cols) {
    auto* y = static_cast<act_q8_32*>(dst);
    for (int64_t b = 0; b < cols / qk_block; ++b, x += qk_block) {
        const float d = absmax(x, qk_block) / 127.0f;
        const __m256 id = _mm256_set1_ps(d > 0.0f ? 1.0f / d : 0.0f);
        const __m256i q0 = round8(x, id);
        const __m256i q1 = round8(x + 8, id);
        const __m256i q2 = round8(x + 16, id);
        const __m256i q3 = round8(x + 24, id);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[b].qs), pack32(q0, q1, q2, q3));
        const __m256i s = _mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3));
        const __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        const __m128i s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
        const int sum = _mm_cvtsi128_si32(s2) + _mm_extract_epi32(s2, 1);
        y[b].d = d;
        y[b].ds = d * static_cast<float>(sum);
    }
}

LLMOS_AVX2 void quantize_act_q8_256(const float* x, void* dst, int64_t cols) {
    auto* y = static_cast<act_q8_256*>(dst);
    for (int64_t b = 0; b < cols / qk_super; ++b, x += qk_super) {
        const float d = absmax(x, qk_super) / 127.0f;
        const __m256 id = _mm256_set1_ps(d > 0.0f ? 1.0f / d : 0.0f);
        for (int j = 0; j < qk_super; j += 32) {
            const __m256i q = pack32(round8(x + j, id), round8(x + j + 8, id),
                                     round8(x + j + 16, id), round8(x + j + 24, id));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[b].qs + j), q);
            // Sums of each 16: bytes to int16 pairs, then 4-lane groups.
            const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), q),
                                                _mm256_set1_epi16(1));
            const __m128i lo = _mm256_castsi256_si128(p);
            const __m128i hi = _mm256_extracti128_si256(p, 1);
            const __m128i l2 = _mm_hadd_epi32(lo, hi); // [l01 l23 h01 h23]
            const __m128i l1 = _mm_hadd_epi32(l2, l2); // [lo hi lo hi]
            y[b].bsums[j / 16] = static_cast<int16_t>(_mm_cvtsi128_si32(l1));
            y[b].bsums[j / 16 + 1] = static_cast<int16_t>(_mm_extract_epi32(l1, 1));
        }
        y[b].d = d;
    }
}

// ---- float weights ---------------------------------------------------------

/// 8 weights at w + k as floats.
template <typename W>
LLMOS_AVX2_INLINE __m256 load_w(const W* w, int64_t k) {
    if constexpr (sizeof(W) == 2) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k)));
    } else {
        return _mm256_loadu_ps(w + k);
    }
}

template <typename W>
inline float scalar_w(const W* w, int64_t k) {
    if constexpr (sizeof(W) == 2) {
        return fp16_to_fp32(w[k]);
    } else {
        return w[k];
    }
}

template <typename W, int NT>
LLMOS_AVX2 void dot_float(const void* w_row, const void* act, size_t stride, int64_t cols,
                          float* out) {
    // Independent accumulators hide the FMA latency: 4 per token when one
    // token, 2 per token otherwise.
    constexpr int u = NT == 1 ? 4 : 2;
    const auto* w = static_cast<const W*>(w_row);
    const float* x[NT];
    __m256 acc[NT][u];
    for (int t = 0; t < NT; ++t) {
        x[t] = act_row<float>(act, stride, t);
        for (int i = 0; i < u; ++i) {
            acc[t][i] = _mm256_setzero_ps();
        }
    }
    int64_t k = 0;
    for (; k + 8 * u <= cols; k += 8 * u) {
        for (int i = 0; i < u; ++i) {
            const __m256 wv = load_w(w, k + 8 * i);
            for (int t = 0; t < NT; ++t) {
                acc[t][i] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x[t] + k + 8 * i), acc[t][i]);
            }
        }
    }
    for (; k + 8 <= cols; k += 8) {
        const __m256 wv = load_w(w, k);
        for (int t = 0; t < NT; ++t) {
            acc[t][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x[t] + k), acc[t][0]);
        }
    }
    for (int t = 0; t < NT; ++t) {
        __m256 a = acc[t][0];
        for (int i = 1; i < u; ++i) {
            a = _mm256_add_ps(a, acc[t][i]);
        }
        float s = hsum(a);
        for (int64_t j = k; j < cols; ++j) {
            s += scalar_w(w, j) * x[t][j];
        }
        out[t] = s;
    }
}

// ---- Q8_0 / Q4_0 -----------------------------------------------------------

template <int NT>
LLMOS_AVX2_INLINE void q8_0_block(const block_q8_0& w, const act_q8_32* const* x, int64_t b,
                                  __m256* acc) {
    const __m256i wq = load(w.qs);
    const __m256i aw = _mm256_sign_epi8(wq, wq);
    const float dw = half(w.d);
    for (int t = 0; t < NT; ++t) {
        const __m256i sx = _mm256_sign_epi8(load(x[t][b].qs), wq);
        const __m256 p = _mm256_cvtepi32_ps(dot_u8_i8(aw, sx));
        acc[t] = _mm256_fmadd_ps(p, _mm256_set1_ps(dw * x[t][b].d), acc[t]);
    }
}

template <int NT>
LLMOS_AVX2_INLINE void q4_0_block(const block_q4_0& w, const act_q8_32* const* x, int64_t b,
                                  __m256* acc, float* offset) {
    const __m128i m4 = _mm_set1_epi8(0x0f);
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.qs));
    const __m256i wq =
        _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4));
    const float dw = half(w.d);
    for (int t = 0; t < NT; ++t) {
        const __m256 p = _mm256_cvtepi32_ps(dot_u8_i8(wq, load(x[t][b].qs)));
        acc[t] = _mm256_fmadd_ps(p, _mm256_set1_ps(dw * x[t][b].d), acc[t]);
        offset[t] += dw * x[t][b].ds;
    }
}

/// Q8_0 and Q4_0: U sets of accumulators take alternate blocks, so that
/// with few tokens several blocks are in flight.
template <typename Block, int NT>
LLMOS_AVX2 void dot_q_32(const void* w_row, const void* act, size_t stride, int64_t cols,
                         float* out) {
    constexpr int u = NT <= 2 ? 2 : 1;
    const auto* w = static_cast<const Block*>(w_row);
    const act_q8_32* x[NT];
    __m256 acc[u][NT];
    float offset[NT];
    for (int t = 0; t < NT; ++t) {
        x[t] = act_row<act_q8_32>(act, stride, t);
        offset[t] = 0.0f;
        for (int i = 0; i < u; ++i) {
            acc[i][t] = _mm256_setzero_ps();
        }
    }
    const int64_t nb = cols / qk_block;
    int64_t b = 0;
    for (; b + u <= nb; b += u) {
        for (int i = 0; i < u; ++i) {
            if constexpr (sizeof(Block) == sizeof(block_q8_0)) {
                q8_0_block<NT>(w[b + i], x, b + i, acc[i]);
            } else {
                q4_0_block<NT>(w[b + i], x, b + i, acc[i], offset);
            }
        }
    }
    for (; b < nb; ++b) {
        if constexpr (sizeof(Block) == sizeof(block_q8_0)) {
            q8_0_block<NT>(w[b], x, b, acc[0]);
        } else {
            q4_0_block<NT>(w[b], x, b, acc[0], offset);
        }
    }
    for (int t = 0; t < NT; ++t) {
        __m256 a = acc[0][t];
        for (int i = 1; i < u; ++i) {
            a = _mm256_add_ps(a, acc[i][t]);
        }
        out[t] = hsum(a) - 8.0f * offset[t]; // offset stays 0 for Q8_0
    }
}

// ---- K-quants --------------------------------------------------------------

/// The 8 scales and mins of a Q4_K/Q5_K super-block (layout in quant.hh).
inline void scales_mins(const uint8_t* b, int* sc, int* m) {
    for (int s = 0; s < 4; ++s) {
        sc[s] = b[s] & 63;
        m[s] = b[s + 4] & 63;
    }
    for (int s = 4; s < 8; ++s) {
        sc[s] = (b[s + 4] & 0xf) | (b[s - 4] >> 6) << 4;
        m[s] = (b[s + 4] >> 4) | (b[s] >> 6) << 4;
    }
}

template <typename Block, bool Five, int NT>
LLMOS_AVX2 void dot_affine_k(const void* w_row, const void* act, size_t stride, int64_t cols,
                             float* out) {
    const auto* w = static_cast<const Block*>(w_row);
    const act_q8_256* x[NT];
    __m256 acc[NT];
    float mins[NT];
    for (int t = 0; t < NT; ++t) {
        x[t] = act_row<act_q8_256>(act, stride, t);
        acc[t] = _mm256_setzero_ps();
        mins[t] = 0.0f;
    }
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i one = _mm256_set1_epi8(1);
    for (int64_t b = 0; b < cols / qk_super; ++b) {
        int sc[8];
        int m[8];
        scales_mins(w[b].scales, sc, m);
        __m256i sumi[NT];
        for (int t = 0; t < NT; ++t) {
            sumi[t] = _mm256_setzero_si256();
        }
        [[maybe_unused]] __m256i hbits;
        if constexpr (Five) {
            hbits = load(w[b].qh);
        }
        for (int ch = 0; ch < 4; ++ch) {
            const __m256i q = load(w[b].qs + 32 * ch);
            __m256i lo = _mm256_and_si256(q, m4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if constexpr (Five) {
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(hbits, one), 4));
                hi = _mm256_or_si256(
                    hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 1), one), 4));
                hbits = _mm256_srli_epi16(hbits, 2);
            }
            const __m256i s_lo = _mm256_set1_epi16(static_cast<int16_t>(sc[2 * ch]));
            const __m256i s_hi = _mm256_set1_epi16(static_cast<int16_t>(sc[2 * ch + 1]));
            for (int t = 0; t < NT; ++t) {
                const int8_t* xq = x[t][b].qs + 64 * ch;
                const __m256i pl = dot_u8_i8_scaled(lo, load(xq), s_lo);
                const __m256i ph = dot_u8_i8_scaled(hi, load(xq + 32), s_hi);
                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(pl, ph));
            }
        }
        const float d = half(w[b].d);
        const float dmin = half(w[b].dmin);
        for (int t = 0; t < NT; ++t) {
            const int16_t* bs = x[t][b].bsums;
            int summ = 0;
            for (int s = 0; s < 8; ++s) {
                summ += m[s] * (bs[2 * s] + bs[2 * s + 1]);
            }
            acc[t] =
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[t]), _mm256_set1_ps(d * x[t][b].d), acc[t]);
            mins[t] += dmin * x[t][b].d * static_cast<float>(summ);
        }
    }
    for (int t = 0; t < NT; ++t) {
        out[t] = hsum(acc[t]) - mins[t];
    }
}

template <int NT>
LLMOS_AVX2 void dot_q6_k(const void* w_row, const void* act, size_t stride, int64_t cols,
                         float* out) {
    const auto* w = static_cast<const block_q6_k*>(w_row);
    const act_q8_256* x[NT];
    __m256 acc[NT];
    float offset[NT];
    for (int t = 0; t < NT; ++t) {
        x[t] = act_row<act_q8_256>(act, stride, t);
        acc[t] = _mm256_setzero_ps();
        offset[t] = 0.0f;
    }
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i m30 = _mm256_set1_epi8(0x30);
    for (int64_t b = 0; b < cols / qk_super; ++b) {
        const int8_t* scales = w[b].scales;
        const __m256i sc16 =
            _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales)));
        __m256i sumi[NT];
        for (int t = 0; t < NT; ++t) {
            sumi[t] = _mm256_setzero_si256();
        }
        for (int h = 0; h < 2; ++h) {
            const __m256i ql0 = load(w[b].ql + 64 * h);
            const __m256i ql1 = load(w[b].ql + 64 * h + 32);
            const __m256i qh = load(w[b].qh + 32 * h);
            // The four quarters of the half, 32 values of 0..63 each.
            const __m256i q[4] = {
                _mm256_or_si256(_mm256_and_si256(ql0, m4),
                                _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30)),
                _mm256_or_si256(_mm256_and_si256(ql1, m4),
                                _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                                _mm256_and_si256(qh, m30)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30)),
            };
            for (int k = 0; k < 4; ++k) {
                const int sub = 8 * h + 2 * k;
                const __m256i scale =
                    _mm256_set_m128i(_mm_set1_epi16(scales[sub + 1]), _mm_set1_epi16(scales[sub]));
                for (int t = 0; t < NT; ++t) {
                    const __m256i p = dot_u8_i8_scaled(q[k], load(x[t][b].qs + 16 * sub), scale);
                    sumi[t] = _mm256_add_epi32(sumi[t], p);
                }
            }
        }
        const float d = half(w[b].d);
        for (int t = 0; t < NT; ++t) {
            const __m256i o = _mm256_madd_epi16(sc16, load(x[t][b].bsums));
            const float dd = d * x[t][b].d;
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[t]), _mm256_set1_ps(dd), acc[t]);
            offset[t] += dd * hsum(_mm256_cvtepi32_ps(o));
        }
    }
    for (int t = 0; t < NT; ++t) {
        out[t] = hsum(acc[t]) - 32.0f * offset[t];
    }
}

/// The kernel for a runtime token count, from one templated on it.
template <template <int> class K>
void by_tile(const void* w_row, const void* act, size_t stride, int nt, int64_t cols, float* out) {
    switch (nt) {
    case 1:
        K<1>::run(w_row, act, stride, cols, out);
        break;
    case 2:
        K<2>::run(w_row, act, stride, cols, out);
        break;
    case 3:
        K<3>::run(w_row, act, stride, cols, out);
        break;
    default:
        K<4>::run(w_row, act, stride, cols, out);
        break;
    }
}

template <int NT>
struct k_f32 {
    static void run(const void* w, const void* a, size_t s, int64_t c, float* o) {
        dot_float<float, NT>(w, a, s, c, o);
    }
};
template <int NT>
struct k_f16 {
    static void run(const void* w, const void* a, size_t s, int64_t c, float* o) {
        dot_float<uint16_t, NT>(w, a, s, c, o);
    }
};
template <int NT>
struct k_q8_0 {
    static void run(const void* w, const void* a, size_t s, int64_t c, float* o) {
        dot_q_32<block_q8_0, NT>(w, a, s, c, o);
    }
};
template <int NT>
struct k_q4_0 {
    static void run(const void* w, const void* a, size_t s, int64_t c, float* o) {
        dot_q_32<block_q4_0, NT>(w, a, s, c, o);
    }
};
template <int NT>
struct k_q4_k {
    static void run(const void* w, const void* a, size_t s, int64_t c, float* o) {
        dot_affine_k<block_q4_k, false, NT>(w, a, s, c, o);
    }
};
template <int NT>
struct k_q5_k {
    static void run(const void* w, const void* a, size_t s, int64_t c, float* o) {
        dot_affine_k<block_q5_k, true, NT>(w, a, s, c, o);
    }
};
template <int NT>
struct k_q6_k {
    static void run(const void* w, const void* a, size_t s, int64_t c, float* o) {
        dot_q6_k<NT>(w, a, s, c, o);
    }
};

} // namespace

row_kernel row_kernel_avx2(ggml_type t) noexcept {
    switch (t) {
    case ggml_type::f32:
        return by_tile<k_f32>;
    case ggml_type::f16:
        return by_tile<k_f16>;
    case ggml_type::q8_0:
        return by_tile<k_q8_0>;
    case ggml_type::q4_0:
        return by_tile<k_q4_0>;
    case ggml_type::q4_k:
        return by_tile<k_q4_k>;
    case ggml_type::q5_k:
        return by_tile<k_q5_k>;
    case ggml_type::q6_k:
        return by_tile<k_q6_k>;
    default:
        return nullptr;
    }
}

act_quantizer act_quantizer_avx2(act_format f) noexcept {
    switch (f) {
    case act_format::q8_32:
        return quantize_act_q8_32;
    case act_format::q8_256:
        return quantize_act_q8_256;
    case act_format::f32:
        return nullptr;
    }
    return nullptr;
}

LLMOS_AVX2 void fp16_to_fp32_row_f16c(const uint16_t* src, float* dst, int64_t n) noexcept {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
    for (; i < n; ++i) {
        dst[i] = _cvtsh_ss(src[i]);
    }
}

LLMOS_AVX2 void fp32_to_fp16_row_f16c(const float* src, uint16_t* dst, int64_t n) noexcept {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
    }
    for (; i < n; ++i) {
        dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
    }
}

} // namespace llmos::engine::detail
