// SPDX-License-Identifier: MIT
//
// AVX-512 (F, BW, VL, DQ, VNNI) kernels. As in quant_avx2.cc, every
// function carries its target attribute, and matmul only calls in here
// after detected_simd() said avx512.
//
// The 32-element types run on weights packed in panels of 16 rows (the
// layout is in quant_kernels.hh): each 32-bit lane of a vector is one
// row, so one vpdpbusd adds 4 products to each of 16 rows' sums, the 4
// activations broadcast to every lane. A call takes one panel and up to
// panel_tile tokens: the panel's levels are unpacked once per block for
// all of them. Per token and block the integer sum starts from the
// activations' z (-zero * sum(q), so the levels' offset is exact), and
// the floats go in one order whatever the tile: facc += sum * (d_w *
// d_x), then (affine types) facc += m_w * ds_x. A token thus gets the
// same bits alone or in a tile.
//
// F32 and F16 weights: the AVX2 row kernels' shape on 512-bit vectors.
#include "panel_avx512.hh"
#include "quant_kernels.hh"
#include "vec_avx512.hh"

#include <algorithm>
#include <cstring>
#include <type_traits>

namespace llmos::engine::detail {

namespace {

// ---- activations -----------------------------------------------------------

/// act32 rows with the AVX2 quantizer's q and d (the same products,
/// rounded the same way), and each block's z = -Zero * sum(q), in one pass.
/// Sixteen blocks at a time (fewer at the end): their maxima and sums come
/// out of the vectors together (across16), not one block's at a time.
template <int Zero>
LLMOS_AVX512 void quantize_act_panel(const float* x, void* dst, int64_t cols) {
    auto* qs = static_cast<int8_t*>(dst);
    auto* dd = const_cast<float*>(act32_d(dst, cols));
    auto* ds = const_cast<float*>(act32_ds(dst, cols));
    auto* z = const_cast<int32_t*>(act_panel_z(dst, cols));
    const int64_t nb = cols / qk_block;
    for (int64_t b = 0; b < nb; b += 16) {
        const int n = static_cast<int>(std::min<int64_t>(16, nb - b));
        const __mmask16 k = static_cast<__mmask16>((1u << n) - 1);
        const float* xb = x + qk_block * b;
        __m512 v[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) {
            v[i] = i < n ? _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(xb + qk_block * i)),
                                         _mm512_abs_ps(_mm512_loadu_ps(xb + qk_block * i + 16)))
                         : _mm512_setzero_ps();
        }
        const __m512 d = _mm512_div_ps(across16(v, max16), _mm512_set1_ps(127.0f));
        alignas(64) float id[16];
        _mm512_store_ps(id,
                        _mm512_maskz_div_ps(_mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_GT_OQ),
                                            _mm512_set1_ps(1.0f), d));
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) {
            if (i < n) {
                const __m512 s = _mm512_set1_ps(id[i]);
                const __m512i q0 =
                    _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + qk_block * i), s));
                const __m512i q1 =
                    _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + qk_block * i + 16), s));
                int8_t* q = qs + qk_block * (b + i);
                _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtsepi32_epi8(q0));
                _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16), _mm512_cvtsepi32_epi8(q1));
                v[i] = _mm512_castsi512_ps(_mm512_add_epi32(q0, q1));
            } // v[i] past n: still the zeros of the maxima's loop
        }
        const __m512i sum = _mm512_castps_si512(across16(v, add16_i32));
        _mm512_mask_storeu_ps(dd + b, k, d);
        _mm512_mask_storeu_ps(ds + b, k, _mm512_mul_ps(d, _mm512_cvtepi32_ps(sum)));
        _mm512_mask_storeu_epi32(z + b, k, _mm512_mullo_epi32(sum, _mm512_set1_epi32(-Zero)));
    }
}

// ---- packed 32-element types ------------------------------------------------

// The quantized panel kernels leave the memory to the hardware
// prefetchers: a panel is one stream (quant_kernels.hh), and prefetching
// 2 KB ahead in a one-token call measured no faster (Q4_0, Q4_K) to 20%
// slower (Q8_0, Q6_K: a burst of prefetches per super-block) on Zen 4.

/// acc + the 4 unsigned bytes of each lane of w times the 4 signed ones
/// at x (vpdpbusd with x broadcast from memory). GCC 12 does not fold
/// _mm512_set1_epi32() into the instruction: a separate vpbroadcastd per
/// product, twice the instructions of the kernels' inner loops, which ran
/// them 8-14% slower (Q8_0, Q4_K, 8 tokens, Zen 4).
LLMOS_AVX512_INLINE __m512i dpbusd_bcst(__m512i acc, __m512i w, const void* x) {
    using i32_alias = int32_t __attribute__((may_alias));
    asm("vpdpbusd %1%{1to16%}, %2, %0"
        : "+v"(acc)
        : "m"(*static_cast<const i32_alias*>(x)), "v"(w));
    return acc;
}

/// One group's products for NT tokens into facc: levels at lv, the 16
/// rows' d (and m) as halves at dp (mp); b is the group's index in the
/// activations' rows.
template <typename Block, int NT>
LLMOS_AVX512_INLINE void panel_group(const uint8_t* lv, const uint8_t* dp,
                                     [[maybe_unused]] const uint8_t* mp, const std::byte* xq,
                                     const std::byte* xd, [[maybe_unused]] const std::byte* xds,
                                     const std::byte* xz, size_t stride, int64_t b, __m512* facc) {
    using tr = block32_traits<Block>;
    __m512i acc[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
        acc[t] = _mm512_set1_epi32(load_i32(xz + t * stride + 4 * b));
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
        __m512i w0;
        __m512i w1;
        levels_pair<Block>(lv, j, w0, w1);
#pragma GCC unroll 8
        for (int t = 0; t < NT; ++t) {
            const std::byte* x = xq + t * stride + qk_block * b + 8 * j;
            acc[t] = dpbusd_bcst(acc[t], w0, x);
            acc[t] = dpbusd_bcst(acc[t], w1, x + 4);
        }
    }
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(dp)));
    [[maybe_unused]] __m512 m;
    if constexpr (tr::affine) {
        m = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(mp)));
    }
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
        const __m512 dd = _mm512_mul_ps(d, _mm512_set1_ps(load_f32(xd + t * stride + 4 * b)));
        facc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[t]), dd, facc[t]);
        if constexpr (tr::affine) {
            facc[t] =
                _mm512_fmadd_ps(m, _mm512_set1_ps(load_f32(xds + t * stride + 4 * b)), facc[t]);
        }
    }
}

template <typename Block, int NT>
LLMOS_AVX512 void panel_dot(const void* panel, const void* act, size_t stride, int64_t cols,
                            float* out, size_t out_stride) {
    using tr = block32_traits<Block>;
    constexpr size_t lb = tr::level_bytes;
    constexpr size_t scale = panel_rows * sizeof(uint16_t);
    const int64_t nb = cols / qk_block;
    const auto* pan = static_cast<const uint8_t*>(panel);
    // Token t's fields are at the same offsets from act + t * stride.
    const auto* a = static_cast<const std::byte*>(act);
    const auto* xq = reinterpret_cast<const std::byte*>(act32_qs(a));
    const auto* xd = reinterpret_cast<const std::byte*>(act32_d(a, cols));
    const auto* xds = reinterpret_cast<const std::byte*>(act32_ds(a, cols));
    const auto* xz = reinterpret_cast<const std::byte*>(act_panel_z(a, cols));
    __m512 facc[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
        facc[t] = _mm512_setzero_ps();
    }
    // Whole pairs [levels 0][levels 1][d 0][d 1]([m 0][m 1]), then a last
    // odd group alone (group32_at()).
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2, pan += 2 * tr::group_bytes) {
        const uint8_t* dp = pan + 2 * lb;
        panel_group<Block, NT>(pan, dp, dp + 2 * scale, xq, xd, xds, xz, stride, b, facc);
        panel_group<Block, NT>(pan + lb, dp + scale, dp + 3 * scale, xq, xd, xds, xz, stride, b + 1,
                               facc);
    }
    if (b < nb) {
        panel_group<Block, NT>(pan, pan + lb, pan + lb + scale, xq, xd, xds, xz, stride, b, facc);
    }
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
        _mm512_storeu_ps(out + t * out_stride, facc[t]);
    }
}

// ---- packed K-quants --------------------------------------------------------

/// Q4_K, Q5_K: per token and sub-block s, the integer sum times d * sc[s]
/// into a float sum; per super-block that sum times the activations' d,
/// less dmin * d_x * sum(m[s] * sums32[s]) (vpdpwssd over the mins' pairs).
template <bool Five, int NT>
LLMOS_AVX512 void panel_dot_affine_k(const void* panel, const void* act, size_t stride,
                                     int64_t cols, float* out, size_t out_stride) {
    constexpr size_t lb = Five ? 320 : 256;
    constexpr size_t sbb = k_panel_bytes(Five ? ggml_type::q5_k : ggml_type::q4_k);
    const auto* sb = static_cast<const uint8_t*>(panel);
    const auto* a = static_cast<const std::byte*>(act);
    __m512 facc[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
        facc[t] = _mm512_setzero_ps();
    }
    for (int64_t b = 0; b < cols / qk_super; ++b, sb += sbb) {
        const uint8_t* sc = sb + 8 * lb;
        const uint8_t* mins = sc + 8 * panel_rows;
        const auto* dd = reinterpret_cast<const __m256i*>(mins + 16 * panel_rows);
        const __m512 d = _mm512_cvtph_ps(_mm256_load_si256(dd));
        const __m512 dmin = _mm512_cvtph_ps(_mm256_load_si256(dd + 1));
        const act_k_panel* x[NT];
        __m512 sumf[NT];
#pragma GCC unroll 8
        for (int t = 0; t < NT; ++t) {
            x[t] = reinterpret_cast<const act_k_panel*>(a + t * stride) + b;
            sumf[t] = _mm512_setzero_ps();
        }
        for (int s = 0; s < 8; ++s) {
            const uint8_t* lv = sb + lb * static_cast<size_t>(s);
            const __m512 dsc =
                _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_load_si128(
                                     reinterpret_cast<const __m128i*>(sc + panel_rows * s)))));
            __m512i acc[NT];
#pragma GCC unroll 8
            for (int t = 0; t < NT; ++t) {
                acc[t] = _mm512_setzero_si512();
            }
#pragma GCC unroll 4
            for (int j = 0; j < 4; ++j) {
                __m512i w0;
                __m512i w1;
                nibble_pair(lv, j, w0, w1);
                if constexpr (Five) {
                    fifth_pair(lv + 256, j, w0, w1);
                }
#pragma GCC unroll 8
                for (int t = 0; t < NT; ++t) {
                    const int8_t* q = x[t]->qs + 32 * s + 8 * j;
                    acc[t] = dpbusd_bcst(acc[t], w0, q);
                    acc[t] = dpbusd_bcst(acc[t], w1, q + 4);
                }
            }
#pragma GCC unroll 8
            for (int t = 0; t < NT; ++t) {
                sumf[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[t]), dsc, sumf[t]);
            }
        }
#pragma GCC unroll 8
        for (int t = 0; t < NT; ++t) {
            __m512i macc = _mm512_setzero_si512();
#pragma GCC unroll 4
            for (int p = 0; p < 4; ++p) {
                macc = _mm512_dpwssd_epi32(macc, _mm512_load_si512(mins + 64 * p),
                                           _mm512_set1_epi32(load_i32(x[t]->sums32 + 2 * p)));
            }
            const __m512 xd = _mm512_set1_ps(x[t]->d);
            facc[t] = _mm512_fmadd_ps(sumf[t], xd, facc[t]);
            facc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(macc), _mm512_mul_ps(dmin, xd), facc[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
        _mm512_storeu_ps(out + t * out_stride, facc[t]);
    }
}

/// Q6_K: per token and 16-element sub-block j, the integer sum times d *
/// sc[j]; per super-block times d_x, less 32 * d * d_x * sum(sc[j] *
/// bsums[j]) (the levels' offset, vpdpwssd over the scales' pairs).
template <int NT>
LLMOS_AVX512 void panel_dot_q6_k(const void* panel, const void* act, size_t stride, int64_t cols,
                                 float* out, size_t out_stride) {
    constexpr size_t sbb = k_panel_bytes(ggml_type::q6_k);
    const auto* sb = static_cast<const uint8_t*>(panel);
    const auto* a = static_cast<const std::byte*>(act);
    __m512 facc[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
        facc[t] = _mm512_setzero_ps();
    }
    for (int64_t b = 0; b < cols / qk_super; ++b, sb += sbb) {
        const uint8_t* scp = sb + 8 * 384;
        const __m512 d = _mm512_cvtph_ps(
            _mm256_load_si256(reinterpret_cast<const __m256i*>(scp + 32 * panel_rows)));
        const act_k_panel* x[NT];
        __m512 sumf[NT];
#pragma GCC unroll 8
        for (int t = 0; t < NT; ++t) {
            x[t] = reinterpret_cast<const act_k_panel*>(a + t * stride) + b;
            sumf[t] = _mm512_setzero_ps();
        }
        for (int g = 0; g < 8; ++g) {
            const uint8_t* lv = sb + 384 * static_cast<size_t>(g);
            // Sub-blocks 2g (vectors 0-3) and 2g + 1 (vectors 4-7).
            const __m512i pair = _mm512_load_si512(scp + 64 * g);
            const __m512 dsc[2] = {
                _mm512_mul_ps(
                    d, _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(pair, 16), 16))),
                _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_srai_epi32(pair, 16)))};
#pragma GCC unroll 2
            for (int h = 0; h < 2; ++h) {
                __m512i acc[NT];
#pragma GCC unroll 8
                for (int t = 0; t < NT; ++t) {
                    acc[t] = _mm512_setzero_si512();
                }
#pragma GCC unroll 2
                for (int j = 2 * h; j < 2 * h + 2; ++j) {
                    __m512i w0;
                    __m512i w1;
                    nibble_pair(lv, j, w0, w1);
                    high2_pair(lv + 256, j, w0, w1);
#pragma GCC unroll 8
                    for (int t = 0; t < NT; ++t) {
                        const int8_t* q = x[t]->qs + 32 * g + 8 * j;
                        acc[t] = dpbusd_bcst(acc[t], w0, q);
                        acc[t] = dpbusd_bcst(acc[t], w1, q + 4);
                    }
                }
#pragma GCC unroll 8
                for (int t = 0; t < NT; ++t) {
                    sumf[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[t]), dsc[h], sumf[t]);
                }
            }
        }
#pragma GCC unroll 8
        for (int t = 0; t < NT; ++t) {
            __m512i oacc = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int p = 0; p < 8; ++p) {
                oacc = _mm512_dpwssd_epi32(oacc, _mm512_load_si512(scp + 64 * p),
                                           _mm512_set1_epi32(load_i32(x[t]->bsums + 2 * p)));
            }
            const float xd = x[t]->d;
            facc[t] = _mm512_fmadd_ps(sumf[t], _mm512_set1_ps(xd), facc[t]);
            facc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(oacc),
                                       _mm512_mul_ps(d, _mm512_set1_ps(32.0f * xd)), facc[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
        _mm512_storeu_ps(out + t * out_stride, facc[t]);
    }
}

// ---- packed F32, F16 and BF16 -----------------------------------------------

/// Bytes ahead of the weights a one-token call asks the memory for.
constexpr size_t prefetch_ahead = 2048;

/// 16 bfloat16 numbers as floats (each the upper half of its float).
LLMOS_AVX512_INLINE __m512 widen_bf16(__m256i b) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
}

/// 16 rows' weights of one column as floats.
template <typename W>
LLMOS_AVX512_INLINE __m512 panel_column(const W* w) {
    if constexpr (std::is_same_v<W, uint16_t>) {
        return _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(w)));
    } else if constexpr (std::is_same_v<W, bf16>) {
        return widen_bf16(_mm256_load_si256(reinterpret_cast<const __m256i*>(w)));
    } else {
        return _mm512_load_ps(w);
    }
}

/// Per token two sums, of the even and the odd columns (two chains: one
/// token is not bound by the FMA's latency alone), each column's 16
/// weights times the token's value broadcast.
template <typename W, int NT>
LLMOS_AVX512 void panel_dot_float(const void* panel, const void* act, size_t stride, int64_t cols,
                                  float* out, size_t out_stride) {
    const auto* w = static_cast<const W*>(panel);
    const float* x[NT];
    __m512 acc[NT][2];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
        x[t] = reinterpret_cast<const float*>(static_cast<const std::byte*>(act) + t * stride);
        acc[t][0] = _mm512_setzero_ps();
        acc[t][1] = _mm512_setzero_ps();
    }
    int64_t k = 0;
    for (; k + 2 <= cols; k += 2) {
#pragma GCC unroll 2
        for (int u = 0; u < 2; ++u) {
            if constexpr (NT == 1) {
                _mm_prefetch(reinterpret_cast<const char*>(w + (k + u) * panel_rows) +
                                 prefetch_ahead,
                             _MM_HINT_T0);
            }
            const __m512 wv = panel_column(w + (k + u) * panel_rows);
#pragma GCC unroll 8
            for (int t = 0; t < NT; ++t) {
                acc[t][u] = _mm512_fmadd_ps(wv, _mm512_set1_ps(x[t][k + u]), acc[t][u]);
            }
        }
    }
    if (k < cols) {
        const __m512 wv = panel_column(w + k * panel_rows);
#pragma GCC unroll 8
        for (int t = 0; t < NT; ++t) {
            acc[t][0] = _mm512_fmadd_ps(wv, _mm512_set1_ps(x[t][k]), acc[t][0]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
        _mm512_storeu_ps(out + t * out_stride, _mm512_add_ps(acc[t][0], acc[t][1]));
    }
}

/// A panel kernel for a runtime token count, from one templated on it.
template <template <int> class K>
void panel_by_tile(const void* panel, const void* act, size_t stride, int nt, int64_t cols,
                   float* out, size_t out_stride) {
    switch (nt) {
    case 1:
        return K<1>::run(panel, act, stride, cols, out, out_stride);
    case 2:
        return K<2>::run(panel, act, stride, cols, out, out_stride);
    case 3:
        return K<3>::run(panel, act, stride, cols, out, out_stride);
    case 4:
        return K<4>::run(panel, act, stride, cols, out, out_stride);
    case 5:
        return K<5>::run(panel, act, stride, cols, out, out_stride);
    case 6:
        return K<6>::run(panel, act, stride, cols, out, out_stride);
    case 7:
        return K<7>::run(panel, act, stride, cols, out, out_stride);
    default:
        return K<8>::run(panel, act, stride, cols, out, out_stride);
    }
}
static_assert(panel_tile == 8);

template <typename Block>
struct small {
    template <int NT>
    struct k {
        static void run(const void* p, const void* a, size_t s, int64_t c, float* o, size_t os) {
            panel_dot<Block, NT>(p, a, s, c, o, os);
        }
    };
};
template <typename W>
struct floats {
    template <int NT>
    struct k {
        static void run(const void* p, const void* a, size_t s, int64_t c, float* o, size_t os) {
            panel_dot_float<W, NT>(p, a, s, c, o, os);
        }
    };
};
template <int NT>
struct k_q4_k {
    static void run(const void* p, const void* a, size_t s, int64_t c, float* o, size_t os) {
        panel_dot_affine_k<false, NT>(p, a, s, c, o, os);
    }
};
template <int NT>
struct k_q5_k {
    static void run(const void* p, const void* a, size_t s, int64_t c, float* o, size_t os) {
        panel_dot_affine_k<true, NT>(p, a, s, c, o, os);
    }
};
template <int NT>
struct k_q6_k {
    static void run(const void* p, const void* a, size_t s, int64_t c, float* o, size_t os) {
        panel_dot_q6_k<NT>(p, a, s, c, o, os);
    }
};

// ---- float weights ---------------------------------------------------------

/// 16 weights at w + k as floats.
template <typename W>
LLMOS_AVX512_INLINE __m512 load_w(const W* w, int64_t k) {
    if constexpr (std::is_same_v<W, uint16_t>) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k)));
    } else if constexpr (std::is_same_v<W, bf16>) {
        return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k)));
    } else {
        return _mm512_loadu_ps(w + k);
    }
}

/// The last n < 16 weights from w + k as floats, zeros past them.
template <typename W>
LLMOS_AVX512_INLINE __m512 load_w_tail(const W* w, int64_t k, __mmask16 mask) {
    if constexpr (std::is_same_v<W, uint16_t>) {
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, w + k));
    } else if constexpr (std::is_same_v<W, bf16>) {
        return widen_bf16(_mm256_maskz_loadu_epi16(mask, w + k));
    } else {
        return _mm512_maskz_loadu_ps(mask, w + k);
    }
}

template <typename W, int NT>
LLMOS_AVX512 void dot_float(const void* w_row, const void* act, size_t stride, int64_t cols,
                            float* out) {
    // Independent sums per token, as many whatever the tile (4 tokens'
    // fit the 32 registers): a token gets the same bits alone or batched.
    constexpr int u = 4;
    const auto* w = static_cast<const W*>(w_row);
    const float* x[NT];
    __m512 acc[NT][u];
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
        x[t] = reinterpret_cast<const float*>(static_cast<const std::byte*>(act) + t * stride);
#pragma GCC unroll 8
        for (int i = 0; i < u; ++i) {
            acc[t][i] = _mm512_setzero_ps();
        }
    }
    int64_t k = 0;
    for (; k + 16 * u <= cols; k += 16 * u) {
        if constexpr (NT == 1) {
            _mm_prefetch(reinterpret_cast<const char*>(w + k) + 1024, _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(w + k) + 1024 + 64, _MM_HINT_T0);
        }
#pragma GCC unroll 8
        for (int i = 0; i < u; ++i) {
            const __m512 wv = load_w(w, k + 16 * i);
#pragma GCC unroll 8
            for (int t = 0; t < NT; ++t) {
                acc[t][i] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x[t] + k + 16 * i), acc[t][i]);
            }
        }
    }
    for (; k < cols; k += 16) {
        const auto n = static_cast<unsigned>(std::min<int64_t>(16, cols - k));
        const auto mask = static_cast<__mmask16>((1u << n) - 1u);
        const __m512 wv = load_w_tail(w, k, mask);
#pragma GCC unroll 8
        for (int t = 0; t < NT; ++t) {
            acc[t][0] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(mask, x[t] + k), acc[t][0]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
        __m512 s = acc[t][0];
        for (int i = 1; i < u; ++i) {
            s = _mm512_add_ps(s, acc[t][i]);
        }
        out[t] = _mm512_reduce_add_ps(s);
    }
}

template <typename W>
void float_by_tile(const void* w_row, const void* act, size_t stride, int nt, int64_t cols,
                   float* out) {
    switch (nt) {
    case 1:
        return dot_float<W, 1>(w_row, act, stride, cols, out);
    case 2:
        return dot_float<W, 2>(w_row, act, stride, cols, out);
    case 3:
        return dot_float<W, 3>(w_row, act, stride, cols, out);
    default:
        return dot_float<W, 4>(w_row, act, stride, cols, out);
    }
}
static_assert(max_tile == 4);

} // namespace

panel_kernel panel_kernel_avx512(ggml_type t) noexcept {
    switch (t) {
    case ggml_type::q8_0:
        return panel_by_tile<small<block_q8_0>::k>;
    case ggml_type::q4_0:
        return panel_by_tile<small<block_q4_0>::k>;
    case ggml_type::q4_1:
        return panel_by_tile<small<block_q4_1>::k>;
    case ggml_type::q5_0:
        return panel_by_tile<small<block_q5_0>::k>;
    case ggml_type::q5_1:
        return panel_by_tile<small<block_q5_1>::k>;
    case ggml_type::q4_k:
        return panel_by_tile<k_q4_k>;
    case ggml_type::q5_k:
        return panel_by_tile<k_q5_k>;
    case ggml_type::q6_k:
        return panel_by_tile<k_q6_k>;
    case ggml_type::f32:
        return panel_by_tile<floats<float>::k>;
    case ggml_type::f16:
        return panel_by_tile<floats<uint16_t>::k>;
    case ggml_type::bf16:
        return panel_by_tile<floats<bf16>::k>;
    default:
        return nullptr;
    }
}

act_quantizer panel_quantizer_avx512(ggml_type t) noexcept {
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
    case ggml_type::q5_k:
    case ggml_type::q6_k:
        return quantize_act_k_panel;
    default:
        return nullptr;
    }
}

row_kernel row_kernel_avx512(ggml_type t) noexcept {
    switch (t) {
    case ggml_type::f32:
        return float_by_tile<float>;
    case ggml_type::f16:
        return float_by_tile<uint16_t>;
    case ggml_type::bf16:
        return float_by_tile<bf16>;
    default:
        return nullptr;
    }
}

} // namespace llmos::engine::detail
