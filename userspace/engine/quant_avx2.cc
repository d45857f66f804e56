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
// Q5_0's 16, Q6_K's 32, the mins of Q4_1, Q5_1 and the K-quants) applied
// through the activation sums.
#include "quant_kernels.hh"

#include <array>
#include <cmath>
#include <cstring>
#include <immintrin.h>
#include <type_traits>

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
    auto* qs = static_cast<int8_t*>(dst);
    auto* dd = const_cast<float*>(act32_d(dst, cols));
    auto* ds = const_cast<float*>(act32_ds(dst, cols));
    for (int64_t b = 0; b < cols / qk_block; ++b, x += qk_block, qs += qk_block) {
        const float d = absmax(x, qk_block) / 127.0f;
        const __m256 id = _mm256_set1_ps(d > 0.0f ? 1.0f / d : 0.0f);
        const __m256i q0 = round8(x, id);
        const __m256i q1 = round8(x + 8, id);
        const __m256i q2 = round8(x + 16, id);
        const __m256i q3 = round8(x + 24, id);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs), pack32(q0, q1, q2, q3));
        const __m256i s = _mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3));
        const __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        const __m128i s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
        // Wrapping, as the vector adds do: a NaN or infinite activation
        // rounds to INT_MIN (its block is garbage then, but no UB).
        const auto sum = static_cast<int32_t>(static_cast<uint32_t>(_mm_cvtsi128_si32(s2)) +
                                              static_cast<uint32_t>(_mm_extract_epi32(s2, 1)));
        dd[b] = d;
        ds[b] = d * static_cast<float>(sum);
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
    if constexpr (std::is_same_v<W, uint16_t>) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k)));
    } else if constexpr (std::is_same_v<W, bf16>) {
        // A bfloat16 is the upper half of its float.
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16));
    } else {
        return _mm256_loadu_ps(w + k);
    }
}

template <typename W>
inline float scalar_w(const W* w, int64_t k) {
    if constexpr (std::is_same_v<W, uint16_t>) {
        return fp16_to_fp32(w[k]);
    } else if constexpr (std::is_same_v<W, bf16>) {
        return bf16_to_fp32(w[k].bits);
    } else {
        return w[k];
    }
}

template <typename W, int NT>
LLMOS_AVX2 void dot_float(const void* w_row, const void* act, size_t stride, int64_t cols,
                          float* out) {
    // Independent accumulators hide the FMA latency: 3 per token, however
    // many tokens (4 tokens' then fit the 16 registers with the weights),
    // so that a token's sums are the same whatever else is in its tile: a
    // step's tokens get the same bits alone or batched. (4 for one token
    // and 2 for more, as before, made decode and prefill differ; 3 for
    // all measured within noise of that on both.)
    constexpr int u = 3;
    const auto* w = static_cast<const W*>(w_row);
    const float* x[NT];
    __m256 acc[NT][u];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
        x[t] = act_row<float>(act, stride, t);
#pragma GCC unroll 8
        for (int i = 0; i < u; ++i) {
            acc[t][i] = _mm256_setzero_ps();
        }
    }
    int64_t k = 0;
    for (; k + 8 * u <= cols; k += 8 * u) {
        if constexpr (NT == 1) {
            // One token streams the weights as fast as it can convert and
            // multiply them; an early request for the next lines helps F16.
            _mm_prefetch(reinterpret_cast<const char*>(w + k) + 1024, _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(w + k) + 1024 + 64, _MM_HINT_T0);
        }
#pragma GCC unroll 8
        for (int i = 0; i < u; ++i) {
            const __m256 wv = load_w(w, k + 8 * i);
#pragma GCC unroll 8
            for (int t = 0; t < NT; ++t) {
                acc[t][i] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x[t] + k + 8 * i), acc[t][i]);
            }
        }
    }
    for (; k + 8 <= cols; k += 8) {
        const __m256 wv = load_w(w, k);
#pragma GCC unroll 8
        for (int t = 0; t < NT; ++t) {
            acc[t][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x[t] + k), acc[t][0]);
        }
    }
#pragma GCC unroll 8
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

// ---- Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 -----------------------------------------

/// What a 32-element block type needs: Q8_0 is signed (the sign trick),
/// the others unsigned levels with an offset from the activation sums:
/// m * ds for the affine Q4_1/Q5_1, -zero * d * ds for Q4_0 (8) and Q5_0
/// (16). Q5_0/Q5_1 add a fifth bit from qh.
template <typename Block>
struct q32_traits : block32_traits<Block> {
    using kind = block32_traits<Block>;
    static constexpr float zero = kind::q8 || kind::affine ? 0.0f : kind::five ? 16.0f : 8.0f;
};

/// The 8 halves `Field` (d or m) of blocks b..b+7 as floats.
template <auto Field, typename Block>
LLMOS_AVX2_INLINE __m256 halves8(const Block* w) {
    uint64_t lo = 0;
    uint64_t hi = 0;
#pragma GCC unroll 8
    for (int i = 0; i < 4; ++i) {
        lo |= static_cast<uint64_t>(w[i].*Field) << (16 * i);
        hi |= static_cast<uint64_t>(w[i + 4].*Field) << (16 * i);
    }
    return _mm256_cvtph_ps(_mm_set_epi64x(static_cast<int64_t>(hi), static_cast<int64_t>(lo)));
}

/// Lane sums of 8 vectors v0..v7 given as pairs[i] = hadd(v[2i], v[2i+1]):
/// lane i of the result is the sum of v[i]'s lanes.
LLMOS_AVX2_INLINE __m256i sum_pairs4(const __m256i* pairs) {
    const __m256i ab = _mm256_hadd_epi32(pairs[0], pairs[1]); // v0..v3: low | high halves
    const __m256i cd = _mm256_hadd_epi32(pairs[2], pairs[3]); // v4..v7
    return _mm256_add_epi32(_mm256_permute2x128_si256(ab, cd, 0x20),
                            _mm256_permute2x128_si256(ab, cd, 0x31));
}

/// Q5_0/Q5_1's fifth bits as 0x10 in byte j for element j: byte j takes
/// byte j / 8 of the word, then keeps bit j % 8 of it.
LLMOS_AVX2_INLINE __m256i fifth_bits(const uint8_t* qh) {
    uint32_t h = 0;
    std::memcpy(&h, qh, sizeof h);
    // Each 128-bit half holds the word's 4 bytes repeated: the lower half
    // picks bytes 0 and 1, the upper one bytes 2 and 3.
    const __m256i spread =
        _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int32_t>(h)),
                            _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2,
                                             2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

/// The 32 levels of a Q4_0/Q4_1/Q5_0/Q5_1 block as unsigned bytes, in
/// element order.
template <typename Block>
LLMOS_AVX2_INLINE __m256i levels32(const Block& w) {
    // Both halves of the register get the 16 bytes; the upper one shifted
    // by 4 holds the high nibbles (elements 16..31).
    const __m256i raw =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.qs)));
    __m256i q = _mm256_and_si256(_mm256_srlv_epi64(raw, _mm256_setr_epi64x(0, 0, 4, 4)),
                                 _mm256_set1_epi8(0x0f));
    if constexpr (q32_traits<Block>::five) {
        q = _mm256_or_si256(q, fifth_bits(w.qh));
    }
    return q;
}

/// A block's weights (Q8_0 as they are, the others as levels) times
/// activations: 8 int32 lanes of sum(q * x).
template <typename Block>
LLMOS_AVX2_INLINE __m256i q32_dot(const Block& w, const int8_t* x) {
    if constexpr (q32_traits<Block>::q8) {
        const __m256i wq = load(w.qs);
        return dot_u8_i8(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(load(x), wq));
    } else {
        return dot_u8_i8(levels32(w), load(x));
    }
}

/// The 32-element types, one token: the integer sums of 8 blocks are
/// gathered into one vector before the scales (8 at once) apply; the
/// offsets come from the activation sums (see q32_traits).
template <typename Block>
LLMOS_AVX2 void dot_q32_one(const void* w_row, const void* act, int64_t cols, float* out) {
    using tr = q32_traits<Block>;
    const auto* w = static_cast<const Block*>(w_row);
    const int8_t* xq = act32_qs(act);
    const float* xd = act32_d(act, cols);
    const float* xds = act32_ds(act, cols);
    const int64_t nb = cols / qk_block;
    __m256 acc = _mm256_setzero_ps();
    __m256 off = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
        // Pairs of blocks summed as soon as they are done: fewer live
        // registers than 8 separate sums.
        __m256i pairs[4];
#pragma GCC unroll 8
        for (int i = 0; i < 4; ++i) {
            const int64_t k = b + 2 * i;
            pairs[i] = _mm256_hadd_epi32(q32_dot(w[k], xq + qk_block * k),
                                         q32_dot(w[k + 1], xq + qk_block * (k + 1)));
        }
        const __m256 dw = halves8<&Block::d>(w + b);
        const __m256 sum = _mm256_cvtepi32_ps(sum_pairs4(pairs));
        acc = _mm256_fmadd_ps(sum, _mm256_mul_ps(dw, _mm256_loadu_ps(xd + b)), acc);
        if constexpr (tr::affine) {
            off = _mm256_fmadd_ps(halves8<&Block::m>(w + b), _mm256_loadu_ps(xds + b), off);
        } else if constexpr (!tr::q8) {
            off = _mm256_fmadd_ps(dw, _mm256_loadu_ps(xds + b), off);
        }
    }
    float tail = 0.0f;
    for (; b < nb; ++b) {
        const float dw = half(w[b].d);
        const __m256i s = q32_dot(w[b], xq + qk_block * b);
        tail += dw * xd[b] * hsum(_mm256_cvtepi32_ps(s));
        if constexpr (tr::affine) {
            tail += half(w[b].m) * xds[b];
        } else if constexpr (!tr::q8) {
            tail -= tr::zero * dw * xds[b];
        }
    }
    const float offset = tr::affine ? hsum(off) : -tr::zero * hsum(off);
    out[0] = hsum(acc) + offset + tail;
}

/// A block's weights, unpacked once for all the tile's tokens: Q8_0's as
/// they are, the others' levels.
template <typename Block>
LLMOS_AVX2_INLINE __m256i q32_unpack(const Block& w) {
    if constexpr (q32_traits<Block>::q8) {
        return load(w.qs);
    } else {
        return levels32(w);
    }
}

/// q32_dot with the weights already unpacked (`aw`: Q8_0's magnitudes,
/// the others' levels again).
template <typename Block>
LLMOS_AVX2_INLINE __m256i q32_dot_unpacked(__m256i wq, __m256i aw, const int8_t* x) {
    if constexpr (q32_traits<Block>::q8) {
        return dot_u8_i8(aw, _mm256_sign_epi8(load(x), wq));
    } else {
        return dot_u8_i8(aw, load(x));
    }
}

/// The 32-element types, NT tokens: 8 blocks' weights unpacked once for
/// all the tokens; per token, the 8 blocks' integer sums gathered into one
/// vector before the scales apply, exactly as dot_q32_one does (so a
/// token's result does not depend on the tokens it shares a tile with).
template <typename Block, int NT>
LLMOS_AVX2 void dot_q32_tile(const void* w_row, const void* act, size_t stride, int64_t cols,
                             float* out) {
    using tr = q32_traits<Block>;
    const auto* w = static_cast<const Block*>(w_row);
    const int8_t* xq[NT];
    const float* xd[NT];
    const float* xds[NT];
    __m256 acc[NT];
    __m256 off[NT];
    float tail[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
        const void* row = static_cast<const std::byte*>(act) + static_cast<size_t>(t) * stride;
        xq[t] = act32_qs(row);
        xd[t] = act32_d(row, cols);
        xds[t] = act32_ds(row, cols);
        acc[t] = _mm256_setzero_ps();
        off[t] = _mm256_setzero_ps();
        tail[t] = 0.0f;
    }
    const int64_t nb = cols / qk_block;
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
        __m256i wq[8];
        __m256i aw[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) {
            wq[i] = q32_unpack(w[b + i]);
            aw[i] = tr::q8 ? _mm256_sign_epi8(wq[i], wq[i]) : wq[i];
        }
        const __m256 dw = halves8<&Block::d>(w + b);
#pragma GCC unroll 8
        for (int t = 0; t < NT; ++t) {
            const int8_t* x = xq[t] + qk_block * b;
            __m256i pairs[4];
#pragma GCC unroll 8
            for (int i = 0; i < 4; ++i) {
                pairs[i] = _mm256_hadd_epi32(
                    q32_dot_unpacked<Block>(wq[2 * i], aw[2 * i], x + qk_block * 2 * i),
                    q32_dot_unpacked<Block>(wq[2 * i + 1], aw[2 * i + 1],
                                            x + qk_block * (2 * i + 1)));
            }
            const __m256 sum = _mm256_cvtepi32_ps(sum_pairs4(pairs));
            acc[t] = _mm256_fmadd_ps(sum, _mm256_mul_ps(dw, _mm256_loadu_ps(xd[t] + b)), acc[t]);
            if constexpr (tr::affine) {
                off[t] =
                    _mm256_fmadd_ps(halves8<&Block::m>(w + b), _mm256_loadu_ps(xds[t] + b), off[t]);
            } else if constexpr (!tr::q8) {
                off[t] = _mm256_fmadd_ps(dw, _mm256_loadu_ps(xds[t] + b), off[t]);
            }
        }
    }
    for (; b < nb; ++b) {
        const float dw = half(w[b].d);
        const __m256i wq = q32_unpack(w[b]);
        const __m256i aw = tr::q8 ? _mm256_sign_epi8(wq, wq) : wq;
#pragma GCC unroll 8
        for (int t = 0; t < NT; ++t) {
            const __m256i s = q32_dot_unpacked<Block>(wq, aw, xq[t] + qk_block * b);
            tail[t] += dw * xd[t][b] * hsum(_mm256_cvtepi32_ps(s));
            if constexpr (tr::affine) {
                tail[t] += half(w[b].m) * xds[t][b];
            } else if constexpr (!tr::q8) {
                tail[t] -= tr::zero * dw * xds[t][b];
            }
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
        const float offset = tr::affine ? hsum(off[t]) : -tr::zero * hsum(off[t]);
        out[t] = hsum(acc[t]) + offset + tail[t];
    }
}

template <typename Block, int NT>
LLMOS_AVX2 void dot_q_32(const void* w_row, const void* act, size_t stride, int64_t cols,
                         float* out) {
    if constexpr (NT == 1) {
        dot_q32_one<Block>(w_row, act, cols, out);
    } else {
        dot_q32_tile<Block, NT>(w_row, act, stride, cols, out);
    }
}

// ---- K-quants --------------------------------------------------------------

/// The 8 six-bit scales (first) and mins (second) of a Q4_K/Q5_K
/// super-block, one per byte, unpacked a word at a time from the layout
/// in quant.hh: bytes 0-3 and 4-7 hold sc0-3 and m0-3 in their low six
/// bits and the top two bits of sc4-7 and m4-7; bytes 8-11 the low
/// nibbles of sc4-7 (low) and m4-7 (high).
inline void scales_mins(const uint8_t* b, uint64_t& sc, uint64_t& m) {
    uint32_t w0 = 0;
    uint32_t w1 = 0;
    uint32_t w2 = 0;
    std::memcpy(&w0, b, 4);
    std::memcpy(&w1, b + 4, 4);
    std::memcpy(&w2, b + 8, 4);
    const uint32_t sc_hi = (w2 & 0x0f0f0f0fu) | ((w0 >> 2) & 0x30303030u);
    const uint32_t m_hi = ((w2 >> 4) & 0x0f0f0f0fu) | ((w1 >> 2) & 0x30303030u);
    sc = (w0 & 0x3f3f3f3fu) | static_cast<uint64_t>(sc_hi) << 32;
    m = (w1 & 0x3f3f3f3fu) | static_cast<uint64_t>(m_hi) << 32;
}

/// pshufb controls: row j spreads int16 lane j of each 128-bit half over
/// the whole half.
alignas(32) constexpr auto spread16_table = [] {
    std::array<std::array<uint8_t, 32>, 8> t{};
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
        for (int i = 0; i < 32; i += 2) {
            t[j][i] = static_cast<uint8_t>(2 * j);
            t[j][i + 1] = static_cast<uint8_t>(2 * j + 1);
        }
    }
    return t;
}();

/// Row k: lane 2k in the lower half, lane 2k + 1 in the upper one.
alignas(32) constexpr auto spread16_pair_table = [] {
    std::array<std::array<uint8_t, 32>, 4> t{};
#pragma GCC unroll 8
    for (int k = 0; k < 4; ++k) {
        for (int i = 0; i < 16; i += 2) {
            t[k][i] = static_cast<uint8_t>(4 * k);
            t[k][i + 1] = static_cast<uint8_t>(4 * k + 1);
            t[k][16 + i] = static_cast<uint8_t>(4 * k + 2);
            t[k][16 + i + 1] = static_cast<uint8_t>(4 * k + 3);
        }
    }
    return t;
}();

LLMOS_AVX2_INLINE __m256i spread16(int j) {
    return load(spread16_table[static_cast<size_t>(j)].data());
}

LLMOS_AVX2_INLINE __m256i spread16_pair(int k) {
    return load(spread16_pair_table[static_cast<size_t>(k)].data());
}

template <typename Block, bool Five, int NT>
LLMOS_AVX2 void dot_affine_k(const void* w_row, const void* act, size_t stride, int64_t cols,
                             float* out) {
    const auto* w = static_cast<const Block*>(w_row);
    const act_q8_256* x[NT];
    __m256 acc[NT];
    __m128 mins[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
        x[t] = act_row<act_q8_256>(act, stride, t);
        acc[t] = _mm256_setzero_ps();
        mins[t] = _mm_setzero_ps();
    }
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i one = _mm256_set1_epi8(1);
    for (int64_t b = 0; b < cols / qk_super; ++b) {
        uint64_t sc8 = 0;
        uint64_t m8 = 0;
        scales_mins(w[b].scales, sc8, m8);
        const __m256i scales = _mm256_broadcastsi128_si256(
            _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<int64_t>(sc8))));
        const __m128i mins16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<int64_t>(m8)));
        __m256i sumi[NT];
#pragma GCC unroll 8
        for (int t = 0; t < NT; ++t) {
            sumi[t] = _mm256_setzero_si256();
        }
        [[maybe_unused]] __m256i hbits;
        if constexpr (Five) {
            hbits = load(w[b].qh);
        }
#pragma GCC unroll 8
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
            const __m256i s_lo = _mm256_shuffle_epi8(scales, spread16(2 * ch));
            const __m256i s_hi = _mm256_shuffle_epi8(scales, spread16(2 * ch + 1));
#pragma GCC unroll 8
            for (int t = 0; t < NT; ++t) {
                const int8_t* xq = x[t][b].qs + 64 * ch;
                const __m256i pl = dot_u8_i8_scaled(lo, load(xq), s_lo);
                const __m256i ph = dot_u8_i8_scaled(hi, load(xq + 32), s_hi);
                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(pl, ph));
            }
        }
        const float d = half(w[b].d);
        const float dmin = half(w[b].dmin);
#pragma GCC unroll 8
        for (int t = 0; t < NT; ++t) {
            // sum over sub-blocks of m * (sum of its 32 activations)
            const __m256i bs = load(x[t][b].bsums);
            const __m128i bs32 =
                _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
            const __m128 pm = _mm_cvtepi32_ps(_mm_madd_epi16(mins16, bs32));
            mins[t] = _mm_fmadd_ps(pm, _mm_set1_ps(dmin * x[t][b].d), mins[t]);
            acc[t] =
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[t]), _mm256_set1_ps(d * x[t][b].d), acc[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
        const __m256 m = _mm256_insertf128_ps(_mm256_setzero_ps(), mins[t], 0);
        out[t] = hsum(_mm256_sub_ps(acc[t], m));
    }
}

template <int NT>
LLMOS_AVX2 void dot_q6_k(const void* w_row, const void* act, size_t stride, int64_t cols,
                         float* out) {
    const auto* w = static_cast<const block_q6_k*>(w_row);
    const act_q8_256* x[NT];
    __m256 acc[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
        x[t] = act_row<act_q8_256>(act, stride, t);
        acc[t] = _mm256_setzero_ps();
    }
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i m30 = _mm256_set1_epi8(0x30);
    for (int64_t b = 0; b < cols / qk_super; ++b) {
        const __m256i sc16 =
            _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w[b].scales)));
        const __m256i by_half[2] = {_mm256_permute2x128_si256(sc16, sc16, 0x00),
                                    _mm256_permute2x128_si256(sc16, sc16, 0x11)};
        __m256i sumi[NT];
#pragma GCC unroll 8
        for (int t = 0; t < NT; ++t) {
            // The -32 of every weight: -32 * sum of scale * (sum of its 16 activations).
            const __m256i o = _mm256_madd_epi16(sc16, load(x[t][b].bsums));
            sumi[t] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(o, 5));
        }
#pragma GCC unroll 8
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
#pragma GCC unroll 8
            for (int k = 0; k < 4; ++k) {
                // Scales of sub-blocks 8h + 2k (lower half) and 8h + 2k + 1.
                const __m256i scale = _mm256_shuffle_epi8(by_half[h], spread16_pair(k));
                const int sub = 8 * h + 2 * k;
#pragma GCC unroll 8
                for (int t = 0; t < NT; ++t) {
                    const __m256i p = dot_u8_i8_scaled(q[k], load(x[t][b].qs + 16 * sub), scale);
                    sumi[t] = _mm256_add_epi32(sumi[t], p);
                }
            }
        }
        const float d = half(w[b].d);
#pragma GCC unroll 8
        for (int t = 0; t < NT; ++t) {
            acc[t] =
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[t]), _mm256_set1_ps(d * x[t][b].d), acc[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
        out[t] = hsum(acc[t]);
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
struct k_bf16 {
    static void run(const void* w, const void* a, size_t s, int64_t c, float* o) {
        dot_float<bf16, NT>(w, a, s, c, o);
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
struct k_q4_1 {
    static void run(const void* w, const void* a, size_t s, int64_t c, float* o) {
        dot_q_32<block_q4_1, NT>(w, a, s, c, o);
    }
};
template <int NT>
struct k_q5_0 {
    static void run(const void* w, const void* a, size_t s, int64_t c, float* o) {
        dot_q_32<block_q5_0, NT>(w, a, s, c, o);
    }
};
template <int NT>
struct k_q5_1 {
    static void run(const void* w, const void* a, size_t s, int64_t c, float* o) {
        dot_q_32<block_q5_1, NT>(w, a, s, c, o);
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
    case ggml_type::bf16:
        return by_tile<k_bf16>;
    case ggml_type::q8_0:
        return by_tile<k_q8_0>;
    case ggml_type::q4_0:
        return by_tile<k_q4_0>;
    case ggml_type::q4_1:
        return by_tile<k_q4_1>;
    case ggml_type::q5_0:
        return by_tile<k_q5_0>;
    case ggml_type::q5_1:
        return by_tile<k_q5_1>;
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
