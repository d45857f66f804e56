// SPDX-License-Identifier: MIT
//
// AVX2 kernels on the packed panels of 16 rows (the layout is in
// quant_kernels.hh), for CPUs without AVX-512: the same panels, read as
// two halves of 8 rows. The 32-byte half h of a panel's 64-byte vector is
// its rows 8h .. 8h + 7, 4 elements of each; with 4 activations broadcast
// to every 32-bit lane, maddubs gives each row's two pair sums (int16) and
// madd against ones (or the sub-block's scales) the row's int32 sum. So
// the row kernels' horizontal sums go, and an unpacked weight vector
// serves every token of the call.
//
// int16 sums take as many vectors as cannot overflow (levels times
// activations, |x| <= 127): 8 of 4-bit levels, 4 of 5-bit. Q8_0's levels
// are q + 128, too wide for maddubs: the kernel makes them q again and
// multiplies |q| by x with q's sign (each pair <= 2 * 128 * 127). Per
// token and block the floats go in one order whatever the call's tokens,
// so a token gets the same bits alone or with others.
//
// The 32-element types and Q4_K run here. Q5_K and Q6_K keep the row
// kernels: their panel kernels were written and measured (prefill 1.6-2x
// the row kernels', but one token 1.5-2x slower: the fifth bits' and the
// 2-bit plane's unpacking with both halves' scales outgrow the 16
// registers), so model::load leaves their rows unpacked at this level.
//
// Every function carries its target attribute; matmul only calls in here
// after detected_simd() said avx2 or better.
#include "quant_kernels.hh"

#include <algorithm>
#include <cstring>
#include <immintrin.h>

#define LLMOS_AVX2P __attribute__((target("avx2,fma,f16c")))
#define LLMOS_AVX2P_INLINE LLMOS_AVX2P inline __attribute__((always_inline))

namespace llmos::engine::detail {

namespace {

LLMOS_AVX2P_INLINE __m256i load(const void* p) {
    return _mm256_load_si256(static_cast<const __m256i*>(p));
}

/// 4 activations at p in every 32-bit lane.
LLMOS_AVX2P_INLINE __m256i bcast4(const void* p) {
    return _mm256_set1_epi32(load_i32(p));
}

/// 8 halves at p as floats.
LLMOS_AVX2P_INLINE __m256 halves8(const void* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(static_cast<const __m128i*>(p)));
}

/// 0x10 in byte n where bit n of m is set.
LLMOS_AVX2P_INLINE __m256i bit4_bytes(uint32_t m) {
    // Each 128-bit half holds m's 4 bytes: the lower half picks bytes 0
    // and 1 (8 lanes each), the upper one bytes 2 and 3.
    const __m256i spread =
        _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int32_t>(m)),
                            _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2,
                                             2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit),
                            _mm256_set1_epi8(0x10));
}

/// Half h of vectors 2j and 2j + 1 of the nibbles at lv (4-bit levels).
LLMOS_AVX2P_INLINE void nibbles(const uint8_t* lv, int j, int h, __m256i& a, __m256i& b) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i raw = load(lv + 64 * j + 32 * h);
    a = _mm256_and_si256(raw, m4);
    b = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
}

/// The fifth bits of vectors 2j, 2j + 1 (half h) from the masks at masks.
LLMOS_AVX2P_INLINE void fifth(const uint8_t* masks, int j, int h, __m256i& a, __m256i& b) {
    a = _mm256_or_si256(a, bit4_bytes(load_u32(masks + 8 * (2 * j) + 4 * h)));
    b = _mm256_or_si256(b, bit4_bytes(load_u32(masks + 8 * (2 * j + 1) + 4 * h)));
}

/// v, as far as the compiler knows a new value: a sum built up in a
/// register stays one chain (GCC otherwise reassociates the integer adds
/// of a call's tokens into trees whose partial sums spill to the stack).
LLMOS_AVX2P_INLINE __m256i chain(__m256i v) {
    asm("" : "+x"(v));
    return v;
}

/// s + the pair sums of unsigned levels u times the 4 activations at x.
LLMOS_AVX2P_INLINE __m256i add_pairs(__m256i s, __m256i u, const void* x) {
    return chain(_mm256_add_epi16(s, _mm256_maddubs_epi16(u, bcast4(x))));
}

/// Each row's sum of its two int16 lanes times scale's (int16 lanes).
LLMOS_AVX2P_INLINE __m256i row_sums(__m256i s16, __m256i scale) {
    return _mm256_madd_epi16(s16, scale);
}

// ---- 32-element types -------------------------------------------------------
//
// A kernel call takes NT tokens and H halves from half h0: H = 2 (both
// halves in one pass, the panel read once: one token) or 1 (the
// accumulators of more tokens fill the registers). Slot t * H + k holds
// token t's sums of half h0 + k.

/// One group's products for NT tokens and H halves into facc: levels at
/// lv, the 16 rows' d (and m) as halves at dp (mp); b is the group's index
/// in the activation rows (fields at xq, xd, xds, xz of the first, stride
/// bytes apart).
template <typename Block, int NT, int H>
LLMOS_AVX2P_INLINE void
half_group(const uint8_t* lv, const uint8_t* dp, [[maybe_unused]] const uint8_t* mp, int h0,
           const std::byte* xq, const std::byte* xd, [[maybe_unused]] const std::byte* xds,
           [[maybe_unused]] const std::byte* xz, size_t stride, int64_t b, __m256* facc) {
    using tr = block32_traits<Block>;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[NT * H];
    if constexpr (tr::q8) {
#pragma GCC unroll 8
        for (int i = 0; i < NT * H; ++i) {
            acc[i] = _mm256_setzero_si256();
        }
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) {
            __m256i q[H];
            __m256i aq[H];
#pragma GCC unroll 2
            for (int k = 0; k < H; ++k) {
                q[k] = _mm256_xor_si256(load(lv + 64 * i + 32 * (h0 + k)), _mm256_set1_epi8(-128));
                aq[k] = _mm256_abs_epi8(q[k]);
            }
#pragma GCC unroll 4
            for (int t = 0; t < NT; ++t) {
                const __m256i x = bcast4(xq + t * stride + qk_block * b + 4 * i);
#pragma GCC unroll 2
                for (int k = 0; k < H; ++k) {
                    acc[t * H + k] = chain(_mm256_add_epi32(
                        acc[t * H + k],
                        row_sums(_mm256_maddubs_epi16(aq[k], _mm256_sign_epi8(x, q[k])), ones)));
                }
            }
        }
    } else {
        __m256i s16[NT * H];
#pragma GCC unroll 4
        for (int t = 0; t < NT; ++t) {
#pragma GCC unroll 2
            for (int k = 0; k < H; ++k) {
                acc[t * H + k] = _mm256_set1_epi32(load_i32(xz + t * stride + 4 * b));
                s16[t * H + k] = _mm256_setzero_si256();
            }
        }
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
            __m256i w0[H];
            __m256i w1[H];
#pragma GCC unroll 2
            for (int k = 0; k < H; ++k) {
                nibbles(lv, j, h0 + k, w0[k], w1[k]);
                if constexpr (tr::five) {
                    fifth(lv + 256, j, h0 + k, w0[k], w1[k]);
                }
            }
#pragma GCC unroll 4
            for (int t = 0; t < NT; ++t) {
                const std::byte* x = xq + t * stride + qk_block * b + 8 * j;
#pragma GCC unroll 2
                for (int k = 0; k < H; ++k) {
                    s16[t * H + k] = add_pairs(add_pairs(s16[t * H + k], w0[k], x), w1[k], x + 4);
                }
            }
            if (tr::five && j == 1) { // 4 vectors of 5-bit levels: all int16 holds
#pragma GCC unroll 8
                for (int i = 0; i < NT * H; ++i) {
                    acc[i] = chain(_mm256_add_epi32(acc[i], row_sums(s16[i], ones)));
                    s16[i] = _mm256_setzero_si256();
                }
            }
        }
#pragma GCC unroll 8
        for (int i = 0; i < NT * H; ++i) {
            acc[i] = _mm256_add_epi32(acc[i], row_sums(s16[i], ones));
        }
    }
#pragma GCC unroll 2
    for (int k = 0; k < H; ++k) {
        const __m256 d = halves8(dp + 16 * (h0 + k));
        [[maybe_unused]] __m256 m;
        if constexpr (tr::affine) {
            m = halves8(mp + 16 * (h0 + k));
        }
#pragma GCC unroll 4
        for (int t = 0; t < NT; ++t) {
            const int i = t * H + k;
            const __m256 dd = _mm256_mul_ps(d, _mm256_set1_ps(load_f32(xd + t * stride + 4 * b)));
            facc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[i]), dd, facc[i]);
            if constexpr (tr::affine) {
                facc[i] =
                    _mm256_fmadd_ps(m, _mm256_set1_ps(load_f32(xds + t * stride + 4 * b)), facc[i]);
            }
        }
    }
}

/// Stores the slots' sums: token t's half h0 + k at out + t * out_stride
/// + 8 * (h0 + k).
template <int NT, int H>
LLMOS_AVX2P_INLINE void store_slots(const __m256* facc, int h0, float* out, size_t out_stride) {
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) {
#pragma GCC unroll 2
        for (int k = 0; k < H; ++k) {
            _mm256_storeu_ps(out + t * out_stride + 8 * (h0 + k), facc[t * H + k]);
        }
    }
}

template <typename Block, int NT, int H>
LLMOS_AVX2P void half_dot(const void* panel, const void* act, size_t stride, int64_t cols, int h0,
                          float* out, size_t out_stride) {
    using tr = block32_traits<Block>;
    constexpr size_t lb = tr::level_bytes;
    constexpr size_t scale = panel_rows * sizeof(uint16_t);
    const int64_t nb = cols / qk_block;
    const auto* pan = static_cast<const uint8_t*>(panel);
    const auto* a = static_cast<const std::byte*>(act);
    const auto* xq = reinterpret_cast<const std::byte*>(act32_qs(a));
    const auto* xd = reinterpret_cast<const std::byte*>(act32_d(a, cols));
    const auto* xds = reinterpret_cast<const std::byte*>(act32_ds(a, cols));
    const auto* xz = reinterpret_cast<const std::byte*>(act_panel_z(a, cols));
    __m256 facc[NT * H];
#pragma GCC unroll 8
    for (int i = 0; i < NT * H; ++i) {
        facc[i] = _mm256_setzero_ps();
    }
    // Whole pairs [levels 0][levels 1][d 0][d 1]([m 0][m 1]), then a last
    // odd group alone (group32_at()).
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2, pan += 2 * tr::group_bytes) {
        const uint8_t* dp = pan + 2 * lb;
        half_group<Block, NT, H>(pan, dp, dp + 2 * scale, h0, xq, xd, xds, xz, stride, b, facc);
        half_group<Block, NT, H>(pan + lb, dp + scale, dp + 3 * scale, h0, xq, xd, xds, xz, stride,
                                 b + 1, facc);
    }
    if (b < nb) {
        half_group<Block, NT, H>(pan, pan + lb, pan + lb + scale, h0, xq, xd, xds, xz, stride, b,
                                 facc);
    }
    store_slots<NT, H>(facc, h0, out, out_stride);
}

// ---- K-quants ----------------------------------------------------------------

/// Q4_K: per token and sub-block the integer sum times the
/// sub-block's 6-bit scale (madd against it), added up in int32 over the
/// super-block; then d * d_x times that, less dmin * d_x * sum(m *
/// sums32).
template <int NT, int H>
LLMOS_AVX2P void half_dot_q4_k(const void* panel, const void* act, size_t stride, int64_t cols,
                               int h0, float* out, size_t out_stride) {
    constexpr size_t lb = 256;
    constexpr size_t sbb = k_panel_bytes(ggml_type::q4_k);
    const auto* sb = static_cast<const uint8_t*>(panel);
    const auto* a = static_cast<const std::byte*>(act);
    __m256 facc[NT * H];
#pragma GCC unroll 8
    for (int i = 0; i < NT * H; ++i) {
        facc[i] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < cols / qk_super; ++b, sb += sbb) {
        const uint8_t* sc = sb + 8 * lb;
        const uint8_t* mins = sc + 8 * panel_rows;
        const uint8_t* dd = mins + 16 * panel_rows;
        const act_k_panel* x[NT];
        __m256i isum[NT * H];
#pragma GCC unroll 4
        for (int t = 0; t < NT; ++t) {
            x[t] = reinterpret_cast<const act_k_panel*>(a + t * stride) + b;
        }
#pragma GCC unroll 8
        for (int i = 0; i < NT * H; ++i) {
            isum[i] = _mm256_setzero_si256();
        }
        for (int s = 0; s < 8; ++s) {
            const uint8_t* lv = sb + lb * static_cast<size_t>(s);
            // The 8 rows' scales in both int16 lanes of their row.
            __m256i scv[H];
#pragma GCC unroll 2
            for (int k = 0; k < H; ++k) {
                scv[k] = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                    reinterpret_cast<const __m128i*>(sc + panel_rows * s + 8 * (h0 + k))));
                scv[k] = _mm256_or_si256(scv[k], _mm256_slli_epi32(scv[k], 16));
            }
            __m256i s16[NT * H];
#pragma GCC unroll 8
            for (int i = 0; i < NT * H; ++i) {
                s16[i] = _mm256_setzero_si256();
            }
#pragma GCC unroll 4
            for (int j = 0; j < 4; ++j) {
                __m256i w0[H];
                __m256i w1[H];
#pragma GCC unroll 2
                for (int k = 0; k < H; ++k) {
                    nibbles(lv, j, h0 + k, w0[k], w1[k]);
                }
#pragma GCC unroll 4
                for (int t = 0; t < NT; ++t) {
                    const int8_t* q = x[t]->qs + 32 * s + 8 * j;
#pragma GCC unroll 2
                    for (int k = 0; k < H; ++k) {
                        s16[t * H + k] =
                            add_pairs(add_pairs(s16[t * H + k], w0[k], q), w1[k], q + 4);
                    }
                }
            }
#pragma GCC unroll 8
            for (int i = 0; i < NT * H; ++i) {
                isum[i] = chain(_mm256_add_epi32(isum[i], row_sums(s16[i], scv[i % H])));
            }
        }
#pragma GCC unroll 2
        for (int k = 0; k < H; ++k) {
            const __m256 d = halves8(dd + 16 * (h0 + k));
            const __m256 dmin = halves8(dd + 2 * panel_rows + 16 * (h0 + k));
#pragma GCC unroll 4
            for (int t = 0; t < NT; ++t) {
                const int i = t * H + k;
                __m256i macc = _mm256_setzero_si256();
#pragma GCC unroll 4
                for (int p = 0; p < 4; ++p) {
                    macc = _mm256_add_epi32(macc, row_sums(load(mins + 64 * p + 32 * (h0 + k)),
                                                           bcast4(x[t]->sums32 + 2 * p)));
                }
                const __m256 xd = _mm256_set1_ps(x[t]->d);
                facc[i] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i]), _mm256_mul_ps(d, xd), facc[i]);
                facc[i] =
                    _mm256_fnmadd_ps(_mm256_cvtepi32_ps(macc), _mm256_mul_ps(dmin, xd), facc[i]);
            }
        }
    }
    store_slots<NT, H>(facc, h0, out, out_stride);
}

// ---- dispatch ----------------------------------------------------------------

template <typename Block>
struct small {
    template <int NT, int H>
    static void run(const void* p, const void* a, size_t s, int64_t c, int h0, float* o,
                    size_t os) {
        half_dot<Block, NT, H>(p, a, s, c, h0, o, os);
    }
};
struct q4_k {
    template <int NT, int H>
    static void run(const void* p, const void* a, size_t s, int64_t c, int h0, float* o,
                    size_t os) {
        half_dot_q4_k<NT, H>(p, a, s, c, h0, o, os);
    }
};
/// Tokens per pass over a panel's half (the accumulators of more do not
/// fit the 16 registers).
constexpr int half_tile = 4;

/// The panel kernel of K: one token both halves in one pass; nt
/// (2..panel_tile) tokens half_tile at a time, one half per pass.
template <class K>
void by_tile(const void* panel, const void* act, size_t stride, int nt, int64_t cols, float* out,
             size_t out_stride) {
    if (nt == 1) {
        K::template run<1, 2>(panel, act, stride, cols, 0, out, out_stride);
        return;
    }
    const auto* a = static_cast<const std::byte*>(act);
    for (int t = 0; t < nt; t += half_tile) {
        const void* at = a + static_cast<size_t>(t) * stride;
        float* o = out + static_cast<size_t>(t) * out_stride;
        for (int h = 0; h < 2; ++h) {
            switch (std::min(nt - t, half_tile)) {
            case 1:
                K::template run<1, 1>(panel, at, stride, cols, h, o, out_stride);
                break;
            case 2:
                K::template run<2, 1>(panel, at, stride, cols, h, o, out_stride);
                break;
            case 3:
                K::template run<3, 1>(panel, at, stride, cols, h, o, out_stride);
                break;
            default:
                K::template run<4, 1>(panel, at, stride, cols, h, o, out_stride);
                break;
            }
        }
    }
}
static_assert(half_tile == 4);

// ---- activations -----------------------------------------------------------

/// act32 rows as the AVX2 row kernels' quantizer writes them, then each
/// block's z = -Zero * sum(q).
template <int Zero>
LLMOS_AVX2P void quantize_act_panel(const float* x, void* dst, int64_t cols) {
    act_quantizer_avx2(act_format::q8_32)(x, dst, cols);
    const int8_t* qs = act32_qs(dst);
    auto* z = const_cast<int32_t*>(act_panel_z(dst, cols));
    for (int64_t b = 0; b < cols / qk_block; ++b) {
        const __m256i p = _mm256_madd_epi16(
            _mm256_maddubs_epi16(
                _mm256_set1_epi8(1),
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + qk_block * b))),
            _mm256_set1_epi16(1));
        const __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
        const __m128i s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
        z[b] = -Zero * (_mm_cvtsi128_si32(s2) + _mm_extract_epi32(s2, 1));
    }
}

} // namespace

LLMOS_AVX2P void quantize_act_k_panel(const float* x, void* dst, int64_t cols) noexcept {
    act_quantizer_avx2(act_format::q8_256)(x, dst, cols);
    auto* y = static_cast<act_k_panel*>(dst);
    for (int64_t b = 0; b < cols / qk_super; ++b) {
        for (int s = 0; s < qk_super / 32; ++s) {
            y[b].sums32[s] = static_cast<int16_t>(y[b].bsums[2 * s] + y[b].bsums[2 * s + 1]);
        }
    }
}

panel_kernel panel_kernel_avx2(ggml_type t) noexcept {
    switch (t) {
    case ggml_type::q8_0:
        return by_tile<small<block_q8_0>>;
    case ggml_type::q4_0:
        return by_tile<small<block_q4_0>>;
    case ggml_type::q4_1:
        return by_tile<small<block_q4_1>>;
    case ggml_type::q5_0:
        return by_tile<small<block_q5_0>>;
    case ggml_type::q5_1:
        return by_tile<small<block_q5_1>>;
    case ggml_type::q4_k:
        return by_tile<q4_k>;
    default: // Q5_K, Q6_K: the row kernels (see the top)
        return nullptr;
    }
}

act_quantizer panel_quantizer_avx2(ggml_type t) noexcept {
    switch (t) {
    case ggml_type::q8_0:
        return quantize_act_panel<block32_traits<block_q8_0>::panel_zero>;
    case ggml_type::q4_0:
        return quantize_act_panel<block32_traits<block_q4_0>::panel_zero>;
    case ggml_type::q5_0:
        return quantize_act_panel<block32_traits<block_q5_0>::panel_zero>;
    case ggml_type::q4_1:
    case ggml_type::q5_1:
        return quantize_act_panel<0>;
    case ggml_type::q4_k:
        return quantize_act_k_panel;
    default:
        return nullptr;
    }
}

} // namespace llmos::engine::detail
