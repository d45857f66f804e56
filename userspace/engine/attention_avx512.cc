// SPDX-License-Identifier: MIT
//
// Prefill attention on AVX-512 (attention.hh). The queries of a job (a KV
// head's G heads over up to 16 tokens) go 16 to a vector, transposed once
// ([d][lane], scaled); for each tile of 16 keys, whose K and V rows are
// widened to floats once for all the queries, a group of 16 queries gets
//   S[j] = sum over d of Q[d] * k_j[d]         16 vectors, lanes = queries
//   m'   = max(m, S[j] where key j is visible)  per lane
//   P[j] = e^(S[j] - m') (0 where not visible)
//   l    = l e^(m - m') + sum of P[j]
//   O[d] = O[d] e^(m - m') + sum of P[j] * v_j[d]
// and the output is O / l, transposed back.
#include "attention.hh"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <llmos/engine/quant.hh>

// GCC 12 takes the self-initialized _mm512_undefined_*() inside some
// AVX-512 intrinsics for an uninitialized read.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#define LLMOS_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma,f16c")))

namespace llmos::engine::detail {

namespace {

constexpr uint32_t lanes = 16;

/// e^x for 16 floats, as context.cc's exp8: x = n ln2 + r, e^r by its
/// Taylor series to r^6, 2^n into the exponent; x clamped to [-87.3, 88.7].
LLMOS_AVX512 inline __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.7f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    const __m512i e = _mm512_slli_epi32(_mm512_cvtps_epi32(n), 23);
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), e));
}

/// D halves to floats.
LLMOS_AVX512 inline void widen(const uint16_t* src, float* dst, uint32_t D) {
    for (uint32_t d = 0; d < D; d += lanes) {
        _mm512_store_ps(dst + d, _mm512_cvtph_ps(_mm256_loadu_si256(
                                     reinterpret_cast<const __m256i*>(src + d))));
    }
}

struct layout {
    uint32_t groups;
    float* qt;    ///< [group][d][lane]
    float* ot;    ///< [group][d][lane]
    float* kf;    ///< [key][d]
    float* vf;    ///< [key][d]
    float* mx;    ///< [group][lane]
    float* l;     ///< [group][lane]
    int32_t* pos; ///< [group][lane]: the query's position, -1 past the last
};

layout carve(float* scratch, uint32_t D, uint32_t M) {
    layout s{};
    s.groups = (M + lanes - 1) / lanes;
    const size_t per_group = size_t(D) * lanes;
    s.qt = scratch;
    s.ot = s.qt + s.groups * per_group;
    s.kf = s.ot + s.groups * per_group;
    s.vf = s.kf + size_t(lanes) * D;
    s.mx = s.vf + size_t(lanes) * D;
    s.l = s.mx + s.groups * lanes;
    s.pos = reinterpret_cast<int32_t*>(s.l + s.groups * lanes);
    return s;
}

/// One group of 16 queries against the tile of 16 keys from j0 (nk of them
/// real, widened in kf and vf).
LLMOS_AVX512 void tile(const layout& s, uint32_t g, uint32_t D, uint32_t j0) {
    const float* qt = s.qt + size_t(g) * D * lanes;
    float* ot = s.ot + size_t(g) * D * lanes;
    __m512 acc[lanes];
#pragma GCC unroll 16
    for (uint32_t j = 0; j < lanes; ++j) {
        acc[j] = _mm512_setzero_ps();
    }
    for (uint32_t d = 0; d < D; ++d) {
        const __m512 q = _mm512_load_ps(qt + size_t(d) * lanes);
#pragma GCC unroll 16
        for (uint32_t j = 0; j < lanes; ++j) {
            acc[j] = _mm512_fmadd_ps(q, _mm512_set1_ps(s.kf[size_t(j) * D + d]), acc[j]);
        }
    }
    // Key j0 + j is visible to a query at position p >= j0 + j (a key past
    // the sequence's end sits past every query).
    const __m512i pos = _mm512_load_si512(s.pos + size_t(g) * lanes);
    const __m512 m_old = _mm512_load_ps(s.mx + size_t(g) * lanes);
    __m512 m_new = m_old;
    __mmask16 seen[lanes];
#pragma GCC unroll 16
    for (uint32_t j = 0; j < lanes; ++j) {
        seen[j] = _mm512_cmpge_epi32_mask(pos, _mm512_set1_epi32(int32_t(j0 + j)));
        m_new = _mm512_mask_max_ps(m_new, seen[j], m_new, acc[j]);
    }
    // Lanes that have seen nothing yet keep -inf: their alpha is e^(clamped
    // NaN) ~ 0 on sums that are 0.
    const __m512 alpha = exp16(_mm512_sub_ps(m_old, m_new));
    __m512 sum = _mm512_mul_ps(_mm512_load_ps(s.l + size_t(g) * lanes), alpha);
#pragma GCC unroll 16
    for (uint32_t j = 0; j < lanes; ++j) {
        acc[j] = _mm512_maskz_mov_ps(seen[j], exp16(_mm512_sub_ps(acc[j], m_new)));
        sum = _mm512_add_ps(sum, acc[j]);
    }
    _mm512_store_ps(s.l + size_t(g) * lanes, sum);
    _mm512_store_ps(s.mx + size_t(g) * lanes, m_new);
    for (uint32_t d = 0; d < D; ++d) {
        __m512 o = _mm512_mul_ps(_mm512_load_ps(ot + size_t(d) * lanes), alpha);
#pragma GCC unroll 16
        for (uint32_t j = 0; j < lanes; ++j) {
            o = _mm512_fmadd_ps(acc[j], _mm512_set1_ps(s.vf[size_t(j) * D + d]), o);
        }
        _mm512_store_ps(ot + size_t(d) * lanes, o);
    }
}

} // namespace

size_t prefill_attn_scratch_floats(uint32_t D, uint32_t M) noexcept {
    const size_t groups = (M + lanes - 1) / lanes;
    return 2 * groups * D * lanes + 2 * size_t(lanes) * D + 3 * groups * lanes;
}

LLMOS_AVX512 void prefill_attend_avx512(const prefill_attn_args& a) noexcept {
    const uint32_t D = a.D;
    const uint32_t G = a.G;
    const uint32_t M = a.T * G;
    const layout s = carve(a.scratch, D, M);
    // Query m is token m / G's head m % G.
    for (uint32_t g = 0; g < s.groups; ++g) {
        float* qt = s.qt + size_t(g) * D * lanes;
        for (uint32_t lane = 0; lane < lanes; ++lane) {
            const uint32_t m = g * lanes + lane;
            const float* q = m < M ? a.q + (m / G) * a.q_stride + size_t(m % G) * D : nullptr;
            for (uint32_t d = 0; d < D; ++d) {
                qt[size_t(d) * lanes + lane] = q ? q[d] * a.scale : 0.0f;
            }
            s.pos[size_t(g) * lanes + lane] = m < M ? int32_t(a.pos0 + m / G) : -1;
        }
        std::fill_n(s.ot + size_t(g) * D * lanes, size_t(D) * lanes, 0.0f);
        std::fill_n(s.mx + size_t(g) * lanes, lanes, -INFINITY);
        std::fill_n(s.l + size_t(g) * lanes, lanes, 0.0f);
    }
    const uint32_t n_keys = a.pos0 + a.T;
    for (uint32_t j0 = 0; j0 < n_keys; j0 += lanes) {
        const uint32_t nk = std::min(lanes, n_keys - j0);
        for (uint32_t j = 0; j < lanes; ++j) {
            if (j < nk) {
                const auto* k = static_cast<const uint16_t*>(a.kv->k_row(a.layer, j0 + j)) + a.off;
                const auto* v = static_cast<const uint16_t*>(a.kv->v_row(a.layer, j0 + j)) + a.off;
                widen(k, s.kf + size_t(j) * D, D);
                widen(v, s.vf + size_t(j) * D, D);
            } else { // never visible, but 0 * (stale bits) could be a NaN
                std::fill_n(s.kf + size_t(j) * D, D, 0.0f);
                std::fill_n(s.vf + size_t(j) * D, D, 0.0f);
            }
        }
        for (uint32_t g = 0; g < s.groups; ++g) {
            const uint32_t last_m = std::min(M, (g + 1) * lanes) - 1;
            if (a.pos0 + last_m / G < j0) {
                continue; // no query of this group sees these keys
            }
            tile(s, g, D, j0);
        }
    }
    for (uint32_t m = 0; m < M; ++m) {
        const uint32_t g = m / lanes;
        const uint32_t lane = m % lanes;
        const float* ot = s.ot + size_t(g) * D * lanes + lane;
        const float inv = 1.0f / s.l[size_t(g) * lanes + lane];
        float* out = a.out + (m / G) * a.out_stride + size_t(m % G) * D;
        for (uint32_t d = 0; d < D; ++d) {
            out[d] = ot[size_t(d) * lanes] * inv;
        }
    }
}

} // namespace llmos::engine::detail
